"""The radiologist's view: the OHIF viewer showing cad-node's SEG and SR from Orthanc's DICOMweb.

A chest CT goes ``storescu`` -> Orthanc -> plugin -> ``cad-node serve``; the SEG and
SR come back into Orthanc. OHIF's prebuilt viewer (``deploy/ohif/fetch-ohif.sh``,
with the site's ``deploy/ohif/app-config.js``) and Orthanc's DICOMweb root share
one origin, as nginx gives them on a site (``deploy/ohif/nginx.conf``); here a small
proxy in this module plays nginx. Headless Chromium (WebGL from SwiftShader) opens
the study the way a radiologist would: double-click the SEG, pick a segment, then
double-click the SR and step through its findings.

The screenshots are checked against the phantom's ground truth: pixels of the
segment's colour lie on a nodule of the displayed slice, the SR's circle lies on
a nodule, and the SR's measurements shown are those in the SR file.

A synthetic four-view mammogram takes the same way (Orthanc forwards MG); all of
cad-node's results come back. Double-clicking the Parametric Map (the Grad-CAM
heatmap) shows it over its view: the heatmap's hottest colours lie on the view's
lesion. OHIF reads the SR's findings with the measurements in the SR file and draws
them on their view; that needs the site's app-config.js, whose
``onBeforeSRAddMeasurement`` lets OHIF 3.13.2 pass over the per-breast assessment
groups (no image region) it would otherwise stop at.
``CAD_NODE_SCREENSHOTS`` names a folder to keep the screenshots (docs/images holds
copies).

In CI (``CI`` set) a missing OHIF, Chromium, chromedriver or Orthanc fails these
tests; elsewhere they are skipped.
"""

import http.client
import importlib
import io
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import Comprehensive3DSRStorage, ParametricMapStorage
from sqlalchemy import select

from cad_node.domain.states import DeliveryState, JobState
from cad_node.store.schema import Delivery, Job
from cad_node.synth import mammo
from cad_node.synth.ct import NoduleTruth
from tests import sr_content
from tests.dcmtk import free_port, storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import NodeProcess, query, running_node, wait_for, write_config
from tests.synthetic import SyntheticSeries
from tests.system.orthanc_peer import (
    CAD_NODE_AET,
    DICOMWEB_ROOT,
    ORTHANC_AET,
    OrthancProcess,
    require_orthanc,
    running_orthanc,
)
from tests.system.test_orthanc import download_instances, result_series, series_in_study

REPOSITORY = Path(__file__).parents[2]
FETCH_OHIF = REPOSITORY / "deploy" / "ohif" / "fetch-ohif.sh"
OHIF_VERSION = re.findall(r'^OHIF_VERSION="(.+)"$', FETCH_OHIF.read_text(), re.MULTILINE)[0]
OHIF_DIST = REPOSITORY / ".cache" / "ohif" / OHIF_VERSION / "dist"
SITE_APP_CONFIG = REPOSITORY / "deploy" / "ohif" / "app-config.js"
WINDOW = (1600, 1000)
DIAMETER, VOLUME = "81827009", "118565006"  # SCT
CERTAINTY, IMAGE_REGION, TRACKING_IDENTIFIER = "111012", "111030", "112039"  # DCM
CHROMIUM_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    # OHIF draws with WebGL: SwiftShader gives it one without a GPU
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)


def _missing_peers() -> list[str]:
    return [
        what
        for what, present in (
            (
                f"OHIF {OHIF_VERSION} in {OHIF_DIST} (run deploy/ohif/fetch-ohif.sh)",
                (OHIF_DIST / "index.html").is_file(),
            ),
            ("Debian's chromium", shutil.which("chromium") is not None),
            ("Debian's chromium-driver", shutil.which("chromedriver") is not None),
        )
        if not present
    ]


if _missing_peers() and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the OHIF test; missing: {', '.join(_missing_peers())}")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing_peers()), reason=f"missing: {', '.join(_missing_peers())}"),
]
webdriver = (
    importlib.import_module("selenium.webdriver")
    if os.environ.get("CI")
    else pytest.importorskip("selenium.webdriver")
)
from selenium.common.exceptions import (  # noqa: E402 - after the importorskip
    ElementClickInterceptedException,
    ElementNotInteractableException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402

Polled = TypeVar("Polled")


# --- one origin for OHIF and Orthanc's DICOMweb (what nginx.conf does on a site) ---------------


class OhifOriginHandler(SimpleHTTPRequestHandler):
    """OHIF's dist at ``/`` (index.html for the SPA's routes), Orthanc's DICOMweb at /dicom-web/."""

    server: "OhifOrigin"
    forwarded_request_headers = ("Accept", "Range")
    forwarded_response_headers = ("Content-Type", "Content-Range", "ETag")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(OHIF_DIST), **kwargs)

    def do_GET(self) -> None:
        if self.path.startswith(DICOMWEB_ROOT):
            self._forward_to_orthanc()
        else:
            super().do_GET()

    def translate_path(self, path: str) -> str:
        route = path.split("?", 1)[0].split("#", 1)[0]
        if route == "/app-config.js":
            return str(SITE_APP_CONFIG)
        if "." not in route.rsplit("/", 1)[-1]:  # a route of the single-page app, not a file
            return str(OHIF_DIST / "index.html")
        return super().translate_path(path)

    def end_headers(self) -> None:
        # cornerstone3D shares volumes with its workers: SharedArrayBuffer needs isolation
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def _forward_to_orthanc(self) -> None:
        headers = {name: self.headers[name] for name in self.forwarded_request_headers}
        # as nginx.conf does: Orthanc writes its URLs (BulkDataURI ...) for this origin
        headers["Forwarded"] = f"host={self.headers['Host']};proto=http"
        orthanc = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_http_port, timeout=60)
        try:
            orthanc.request("GET", self.path, headers={k: v for k, v in headers.items() if v})
            answer = orthanc.getresponse()
            body = answer.read()
        finally:
            orthanc.close()
        self.send_response(answer.status)
        for name in self.forwarded_response_headers:
            if value := answer.getheader(name):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.answers.append((self.path, int(code)))

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: ``answers`` keeps each request's status."""


class OhifOrigin(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, orthanc_http_port: int) -> None:
        super().__init__(("127.0.0.1", 0), OhifOriginHandler)
        self.orthanc_http_port = orthanc_http_port
        self.answers: list[tuple[str, int]] = []
        """(path, HTTP status) of each request, in order"""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def failed_requests(self) -> list[tuple[str, int]]:
        return [(path, status) for path, status in self.answers[:] if status >= 400]


@contextmanager
def serving_ohif(orthanc_http_port: int) -> Iterator[OhifOrigin]:
    origin = OhifOrigin(orthanc_http_port)
    thread = threading.Thread(target=origin.serve_forever, name="ohif-origin", daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        origin.shutdown()
        origin.server_close()
        thread.join(timeout=10)


# --- the study in Orthanc, with cad-node's results ----------------------------------------------


@dataclass(frozen=True)
class StudyWithResults:
    """The CT study in Orthanc after cad-node's SEG and SR came back, and the viewer's origin."""

    ct: SyntheticSeries = field(repr=False)
    seg: Dataset = field(repr=False)
    sr: Dataset = field(repr=False)
    origin: OhifOrigin

    def series_number(self, modality: str) -> int:
        return int({"SEG": self.seg, "SR": self.sr}[modality].SeriesNumber)

    def segment_labels(self) -> list[str]:
        return [str(segment.SegmentLabel) for segment in self.seg.SegmentSequence]

    def finding_texts(self) -> list[list[str]]:
        """For each SR finding drawn on an image, the measurement lines OHIF writes beside it.

        The groups that only reference a SEG segment have no image region: OHIF shows none.
        """
        return [
            [
                f"Diameter: {number(group, DIAMETER)} mm",
                f"Volume: {number(group, VOLUME)} mm3",
                f"Certainty of Finding: {number(group, CERTAINTY)} %",
            ]
            for group in sr_content.groups(self.sr)
            if sr_content.items(group, IMAGE_REGION)
        ]


def number(group: Dataset, code_value: str) -> str:
    """A NUM item's value as OHIF writes it: two decimals."""
    value = sr_content.item(group, code_value).MeasuredValueSequence[0].NumericValue
    return f"{float(value):.2f}"


@pytest.fixture(scope="module")
def study(
    tmp_path_factory: pytest.TempPathFactory, chest_ct: SyntheticSeries
) -> Iterator[StudyWithResults]:
    require_orthanc(dicomweb=True)
    folder = tmp_path_factory.mktemp("ohif")
    cad_node_port = free_port()
    with running_orthanc(folder / "orthanc", cad_node_port=cad_node_port, dicomweb=True) as orthanc:
        seg, sr = results_from_cad_node(folder, orthanc, cad_node_port, chest_ct)
        with serving_ohif(orthanc.http_port) as origin:
            yield StudyWithResults(chest_ct, seg, sr, origin)


def through_orthanc(
    folder: Path,
    orthanc: OrthancProcess,
    cad_node_port: int,
    images: Sequence[Path],
    *,
    arrived: Callable[[NodeProcess], bool],
    what: str,
) -> None:
    """Send ``images`` to Orthanc, whose plugin forwards them to a cad-node that delivers its
    results back to Orthanc; wait until ``arrived(node)`` (the node's log in the failure)."""
    config_path = write_config(
        folder,
        ae_title=CAD_NODE_AET,
        port=cad_node_port,
        destinations={
            "pacs": {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": ORTHANC_AET}
        },
    )
    with running_node(config_path, folder / "node.log") as node:
        sent = storescu(orthanc.dicom_port, list(images), called_ae=ORTHANC_AET)
        assert sent.returncode == 0, sent.stderr
        try:
            wait_for(lambda: arrived(node), 300, what)
        except AssertionError as exc:
            exc.add_note(f"--- cad-node log ---\n{node.log()[-5000:]}")
            raise


def results_from_cad_node(
    folder: Path, orthanc: OrthancProcess, cad_node_port: int, ct: SyntheticSeries
) -> tuple[Dataset, Dataset]:
    """Send the CT to Orthanc, let the plugin forward it to cad-node; the SEG and SR, validated."""

    def arrived(_: NodeProcess) -> bool:
        return set(result_series(orthanc, ct.study_instance_uid)) == {"SEG", "SR"}

    through_orthanc(
        folder, orthanc, cad_node_port, ct.paths, arrived=arrived, what="the SEG and SR in Orthanc"
    )
    results = result_series(orthanc, ct.study_instance_uid)
    downloaded = download_instances(orthanc, results, folder / "results")
    for path in downloaded:
        assert_valid_dicom(path)
    by_modality = {str(dataset.Modality): dataset for dataset in map(dcmread, downloaded)}
    return by_modality["SEG"], by_modality["SR"]


# --- the viewer in a browser ---------------------------------------------------------------------

# cornerstone's off-screen viewports that draw thumbnails (utilities.renderToCanvasGPU); one
# whose thumbnail failed (OHIF 3.13 fails to draw a mammogram's) stays, off the page
THUMBNAIL_VIEWPORT = """const THUMBNAIL_VIEWPORT = 'renderGPUViewport-';"""

# The one viewport's place on the page, and where nodules (world coordinates, mm) fall on it.
GEOMETRY_SCRIPT = (
    THUMBNAIL_VIEWPORT
    + """
const [nodules] = arguments;
if (!window.cornerstone) return null;
const viewports = window.cornerstone.getRenderingEngines()
  .flatMap(e => e.getViewports())
  .filter(v => !v.id.startsWith(THUMBNAIL_VIEWPORT));
if (viewports.length !== 1 || !viewports[0].getCurrentImageId()) return null;
const viewport = viewports[0];
const camera = viewport.getCamera();
const box = viewport.element.getBoundingClientRect();
const toPlane = p =>
  p.reduce((s, x, i) => s + (x - camera.focalPoint[i]) * camera.viewPlaneNormal[i], 0);
return {
  box: [box.left, box.top, box.width, box.height],
  scale: window.devicePixelRatio,
  nodules: nodules.map(([centre, radius]) => ({
    centre: viewport.worldToCanvas(centre),
    edge: viewport.worldToCanvas(centre.map((x, i) => x + radius * camera.viewUp[i])),
    radius: radius,
    planeDistance: Math.abs(toPlane(centre)),
  })),
};
"""
)


@dataclass(frozen=True)
class NoduleOnScreen:
    """A ground-truth nodule where the displayed slice cuts it, in screenshot pixels."""

    centre: tuple[int, int]
    radius: float
    """Radius of the nodule's section by the displayed slice; 0 when the slice misses it."""
    pixels_per_mm: float


@dataclass(frozen=True)
class ViewportOnScreen:
    """The viewport on the page, from ``GEOMETRY_SCRIPT``'s answer."""

    geometry: dict[str, Any]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """left, top, right, bottom in screenshot pixels"""
        width, height = self.geometry["box"][2:]
        return (*self.to_screen(0, 0), *self.to_screen(width, height))

    def to_screen(self, canvas_x: float, canvas_y: float) -> tuple[int, int]:
        """Screenshot pixel of a point of the viewport's canvas (CSS pixels)."""
        left, top = self.geometry["box"][:2]
        return round((left + canvas_x) * self.scale), round((top + canvas_y) * self.scale)

    @property
    def scale(self) -> float:
        """Screenshot pixels per CSS pixel"""
        return float(self.geometry["scale"])

    @property
    def nodules(self) -> list[NoduleOnScreen]:
        return [self._nodule(nodule) for nodule in self.geometry["nodules"]]

    def _nodule(self, nodule: dict[str, Any]) -> NoduleOnScreen:
        centre = self.to_screen(*nodule["centre"])
        pixels_per_mm = math.dist(centre, self.to_screen(*nodule["edge"])) / nodule["radius"]
        section = math.sqrt(max(nodule["radius"] ** 2 - nodule["planeDistance"] ** 2, 0.0))
        return NoduleOnScreen(centre, section * pixels_per_mm, pixels_per_mm)

    def nearest_nodule(self, x: float, y: float) -> NoduleOnScreen:
        """The nearest nodule the displayed slice cuts (any nodule if it cuts none)."""
        cut = [nodule for nodule in self.nodules if nodule.radius > 0] or self.nodules
        return min(cut, key=lambda nodule: math.dist(nodule.centre, (x, y)))


def _shown(element: WebElement) -> bool:
    try:
        return bool(element.is_displayed())
    except StaleElementReferenceException:
        return False


class OhifViewer:
    """OHIF in a browser, used as a radiologist uses it: clicks, double-clicks, panels."""

    def __init__(
        self, driver: WebDriver, origin: OhifOrigin, nodules: Sequence[NoduleTruth]
    ) -> None:
        self.driver = driver
        self.origin = origin
        self._nodules = [[list(n.centre_patient_mm), n.diameter_mm / 2] for n in nodules]

    def open_study(self, study_instance_uid: str) -> None:
        """Open the viewer on the study; wait for its first image; close the first-visit dialogs."""
        self.driver.get(f"{self.origin.url}/viewer?StudyInstanceUIDs={study_instance_uid}")
        poll(lambda: self.viewport() is not None, 90, "OHIF to show the study's first image")
        self.dismiss_first_visit_dialogs()

    def dismiss_first_visit_dialogs(self) -> None:
        """Close the guided tour and the "for investigational use only" banner a first visit shows.

        Both come shortly after the first image; a browser that saw them before shows neither.
        """
        buttons = [
            "//button[text()='Skip all']",
            "//button[@data-cy='confirm-and-hide-button']",
        ]
        with suppress(AssertionError):
            wait_for(
                lambda: all(self.driver.find_elements(By.XPATH, button) for button in buttons),
                20,
                "the first-visit dialogs",
            )
        for button in buttons:
            wait_for(partial(self._clicked_away, button), 20, f"{button} to close")

    def _clicked_away(self, xpath: str) -> bool:
        """Click each shown match of ``xpath``; True once none is shown.

        A dialog's button can be in the page before it takes clicks (it fades in) or lie
        under a notification, and the tour's button can go stale as the next step replaces
        it: try again then.
        """
        shown = [
            element for element in self.driver.find_elements(By.XPATH, xpath) if _shown(element)
        ]
        for element in shown:
            with suppress(
                ElementClickInterceptedException,  # under a notification a while
                ElementNotInteractableException,
                StaleElementReferenceException,
            ):
                element.click()
        return not shown

    def viewport(self) -> ViewportOnScreen | None:
        geometry = self.driver.execute_script(GEOMETRY_SCRIPT, self._nodules)
        return None if geometry is None else ViewportOnScreen(geometry)

    def study_browser_text(self) -> str:
        return str(self.find("[data-cy='studyBrowser-panel']").text)

    def load_series(self, series_number: int) -> None:
        """Double-click the series' entry in the study browser: OHIF loads it in the viewport."""
        entry = self.find(f"[data-cy^='study-browser-thumbnail'][data-series='{series_number}']")
        ActionChains(self.driver).double_click(entry).perform()

    def open_panel(self, name: str) -> None:
        self.find(f"[data-cy='{name}-btn']").click()

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def rest_pointer(self) -> None:
        """Move the pointer off the viewport and the panels, so no tooltip covers them."""
        ActionChains(self.driver).move_to_element(self.find("[data-cy='seriesList-btn']")).perform()

    def screenshot(self) -> Image.Image:
        return Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")


def poll(probe: Callable[[], Polled | None], timeout: float, what: str) -> Polled:
    """``probe()`` once truthy; WebDriverException counts as not yet (the page is changing)."""
    answers: list[Polled] = []

    def settled() -> bool:
        try:
            answer = probe()
        except WebDriverException:
            return False
        if answer:
            answers.append(answer)
        return bool(answer)

    wait_for(settled, timeout, what)
    return answers[-1]


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """Headless Chromium driven by chromedriver, its page the size of ``WINDOW``."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for argument in CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        # headless --window-size counts the window frame: fix the page's own size
        metrics = {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def viewer(study: StudyWithResults) -> Iterator[OhifViewer]:
    with chromium() as driver:
        yield OhifViewer(driver, study.origin, study.ct.nodules)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CAD_NODE_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- reading the screenshots ---------------------------------------------------------------------

# PIL's HSV: hue and saturation on 0-255
HUE_TOLERANCE = 8
GREY_SATURATION = 64


def colour_mask(image: Image.Image, rgb: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    """Pixels of the hue of ``rgb`` and too saturated to be CT grey (an overlay over grey keeps
    its hue whatever its opacity)."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.int16)
    target = np.asarray(Image.new("RGB", (1, 1), rgb).convert("HSV"), dtype=np.int16)[0, 0]
    hue_distance = np.abs(hsv[..., 0] - target[0])
    hue_distance = np.minimum(hue_distance, 256 - hue_distance)
    mask: npt.NDArray[np.bool_] = (hue_distance <= HUE_TOLERANCE) & (hsv[..., 1] >= GREY_SATURATION)
    return mask


def segment_on_nodule(
    image: Image.Image, viewport: ViewportOnScreen, rgb: tuple[int, int, int]
) -> str | None:
    """None when the pixels of the segment's colour lie on a nodule the slice cuts; else why not."""
    left, top = viewport.box[:2]
    mask = colour_mask(image.crop(viewport.box), rgb)
    rows, columns = np.nonzero(mask)
    if len(rows) < 30:
        return f"{len(rows)} pixels of the segment colour {rgb} in the viewport"
    x, y = left + float(columns.mean()), top + float(rows.mean())
    nodule = viewport.nearest_nodule(x, y)
    if math.dist((x, y), nodule.centre) > max(nodule.radius / 2, 3):
        return f"segment colour centred at {x:.0f},{y:.0f}, nearest nodule section {nodule}"
    distances = np.hypot(left + columns - nodule.centre[0], top + rows - nodule.centre[1])
    outside = float(np.mean(distances > 1.5 * nodule.radius + 3))
    covered = disc_fraction(mask, (nodule.centre[0] - left, nodule.centre[1] - top), nodule.radius)
    if outside > 0.1 or covered < 0.5:
        return f"{outside:.0%} of the segment colour off the nodule, {covered:.0%} of it covered"
    return None


def disc_fraction(mask: npt.NDArray[np.bool_], centre: tuple[float, float], radius: float) -> float:
    """The fraction of the disc of 0.6 ``radius`` around ``centre`` that ``mask`` covers."""
    ys, xs = np.indices(mask.shape)
    disc = np.hypot(xs - centre[0], ys - centre[1]) <= max(0.6 * radius, 2)
    return float(mask[disc].mean())


def circle_on_nodule(
    image: Image.Image, viewport: ViewportOnScreen, ellipse: WebElement, diameter_mm: float
) -> str | None:
    """None when OHIF's circle of an SR finding is drawn on a nodule, sized as the finding."""
    cx, cy, rx = (float(ellipse.get_attribute(name) or 0) for name in ("cx", "cy", "rx"))
    centre = viewport.to_screen(cx, cy)
    radius = rx * viewport.scale
    nodule = viewport.nearest_nodule(*centre)
    if nodule.radius == 0 or math.dist(centre, nodule.centre) > max(nodule.radius / 2, 3):
        return f"circle at {centre}, nearest nodule section {nodule}"
    expected = diameter_mm / 2 * nodule.pixels_per_mm
    if not 0.8 * expected <= radius <= 1.25 * expected:
        return f"circle of radius {radius:.1f} px for a diameter of {diameter_mm} mm"
    stroke = rgb_of(ellipse.get_attribute("stroke") or "")
    drawn = outline_fraction(colour_mask(image, stroke), centre, radius)
    if drawn < 0.6:
        return f"{drawn:.0%} of the circle's outline in {stroke} on the screenshot"
    return None


def outline_fraction(mask: npt.NDArray[np.bool_], centre: tuple[int, int], radius: float) -> float:
    """The fraction of 72 points of the circle with a ``mask`` pixel within 2 pixels."""
    hits = []
    for angle in np.linspace(0, 2 * math.pi, 72, endpoint=False):
        x = round(centre[0] + radius * math.cos(angle))
        y = round(centre[1] + radius * math.sin(angle))
        hits.append(bool(mask[y - 2 : y + 3, x - 2 : x + 3].any()))
    return float(np.mean(hits))


def rgb_of(css_colour: str) -> tuple[int, int, int]:
    """``rgb(r, g, b)`` or ``rgba(r, g, b, a)`` as an RGB tuple."""
    red, green, blue = (int(part) for part in css_colour.strip("rgba() ").split(",")[:3])
    return red, green, blue


def settle(check: Callable[[], str | None], timeout: float) -> str | None:
    """Repeat ``check`` while it fails (the viewer may still be drawing); its last answer."""
    answer = check()
    deadline = time.monotonic() + timeout
    while answer is not None and time.monotonic() < deadline:
        time.sleep(1)
        answer = check()
    return answer


# --- the tests -----------------------------------------------------------------------------------


def test_ohif_shows_the_seg_overlay_on_a_nodule(
    study: StudyWithResults, viewer: OhifViewer, screenshots: Path
) -> None:
    viewer.open_study(study.ct.study_instance_uid)
    browser_text = viewer.study_browser_text()
    assert browser_text.count("NOT FOR CLINICAL USE") == 2, browser_text  # the SEG and the SR

    viewer.load_series(study.series_number("SEG"))
    viewer.open_panel("panelSegmentation")
    rows = poll(
        lambda: viewer.find_all("[data-cy='data-row']"), 60, "the SEG's segments in the panel"
    )
    titles = [row.find_element(By.CSS_SELECTOR, "[data-cy='data-row-title']") for row in rows]
    assert [title.text for title in titles] == study.segment_labels()
    swatch = rows[0].find_element(By.CSS_SELECTOR, "[data-cy='data-row-colorhex']")
    colour = rgb_of(swatch.value_of_css_property("background-color"))
    titles[0].click()  # OHIF jumps to the segment's centre
    viewer.rest_pointer()

    def check() -> str | None:
        viewport = viewer.viewport()
        assert viewport is not None
        return segment_on_nodule(viewer.screenshot(), viewport, colour)

    failure = settle(check, 30)
    viewer.screenshot().save(screenshots / "ohif-seg.png")
    assert failure is None, f"{failure} (see {screenshots / 'ohif-seg.png'})"
    assert not study.origin.failed_requests()


def test_ohif_shows_the_sr_findings_on_the_nodules_with_their_measurements(
    study: StudyWithResults, viewer: OhifViewer, screenshots: Path
) -> None:
    viewer.open_study(study.ct.study_instance_uid)
    viewer.load_series(study.series_number("SR"))
    expected = study.finding_texts()
    annotation = "[data-cy='viewport-pane'] svg text tspan"

    def shown_lines() -> list[str]:
        return [line.text for line in viewer.find_all(annotation)]

    first = poll(shown_lines, 60, "the SR's first finding in the viewport")
    assert first[:3] in expected, f"{first} not among the SR's findings {expected}"
    ellipse = viewer.find("[data-cy='viewport-pane'] svg ellipse")
    diameter = float(first[0].removeprefix("Diameter: ").removesuffix(" mm"))

    def check() -> str | None:
        viewport = viewer.viewport()
        assert viewport is not None
        return circle_on_nodule(viewer.screenshot(), viewport, ellipse, diameter)

    failure = settle(check, 30)
    viewer.screenshot().save(screenshots / "ohif-sr.png")
    assert failure is None, f"{failure} (see {screenshots / 'ohif-sr.png'})"

    shown = [first[:3]]

    def next_finding() -> list[str] | None:
        lines = shown_lines()[:3]
        return lines if lines and lines not in shown else None

    for _ in expected[1:]:
        viewer.find("[data-cy='viewport-action-arrows-right']").click()
        shown.append(poll(next_finding, 30, "OHIF to show the SR's next finding"))
    assert sorted(shown) == sorted(expected)
    assert not study.origin.failed_requests()


# --- a mammogram: its Parametric Map (a Grad-CAM heatmap) and its SR ----------------------------

MAMMOGRAPHY_PLUGIN_SETTINGS = {"Modality": "cad-node", "Filter": {"Modality": ["MG"]}}


@dataclass(frozen=True)
class MammogramWithResults:
    """The four-view mammogram in Orthanc after all of cad-node's results came back."""

    truth: mammo.MammoTruth = field(repr=False)
    results: list[Dataset] = field(repr=False)
    origin: OhifOrigin

    def of_class(self, sop_class_uid: str) -> list[Dataset]:
        return [dataset for dataset in self.results if dataset.SOPClassUID == sop_class_uid]

    def lesions_on(self, sop_instance_uid: str) -> list[tuple[tuple[float, float], float]]:
        """(row, column) centre and radius (pixels) of each malignant lesion on the view."""
        view = self.truth.view(sop_instance_uid)
        lesions = []
        for _, mask in self.truth.lesion_masks(view):
            rows, columns = np.nonzero(mask)
            lesions.append(
                ((float(rows.mean()), float(columns.mean())), math.sqrt(len(rows) / math.pi))
            )
        return lesions


def map_source(parametric_map: Dataset) -> str:
    """The SOP Instance UID of the image a one-frame Parametric Map was computed on."""
    derivation = parametric_map.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    return str(derivation.SourceImageSequence[0].ReferencedSOPInstanceUID)


@pytest.fixture(scope="module")
def mammogram_study(
    tmp_path_factory: pytest.TempPathFactory, mammogram: tuple[Path, mammo.MammoTruth]
) -> Iterator[MammogramWithResults]:
    require_orthanc(dicomweb=True)
    folder = tmp_path_factory.mktemp("ohif-mammogram")
    views, truth = mammogram
    cad_node_port = free_port()
    with running_orthanc(
        folder / "orthanc",
        cad_node_port=cad_node_port,
        dicomweb=True,
        plugin_settings=MAMMOGRAPHY_PLUGIN_SETTINGS,
    ) as orthanc:
        results = all_results_from_cad_node(
            folder, orthanc, cad_node_port, views_ohif_draws(views, folder / "views")
        )
        with serving_ohif(orthanc.http_port) as origin:
            yield MammogramWithResults(truth, results, origin)


def views_ohif_draws(views: Path, folder: Path) -> list[Path]:
    """Copies of the views without VOI LUT Function (0028,1056).

    OHIF 3.13.2 passes that attribute from the DICOMweb metadata to Cornerstone as a
    list, which Cornerstone refuses ("Invalid VOI LUT function"): a view that has it is
    drawn black in a stack viewport. Sites meet this with their own mammograms; the
    test is about cad-node's objects, so it sends views OHIF can draw.
    """
    folder.mkdir()
    copies = []
    for path in sorted(views.glob("*.dcm")):
        dataset = dcmread(path)
        if "VOILUTFunction" in dataset:
            del dataset.VOILUTFunction
        copy = folder / path.name
        dataset.save_as(copy)
        copies.append(copy)
    return copies


def all_results_from_cad_node(
    folder: Path, orthanc: OrthancProcess, cad_node_port: int, images: list[Path]
) -> list[Dataset]:
    """Send the images to Orthanc; all results cad-node delivered there, validated."""

    def arrived(node: NodeProcess) -> bool:
        return all_delivered(node.config)

    through_orthanc(
        folder, orthanc, cad_node_port, images, arrived=arrived, what="all results in Orthanc"
    )
    sources = {str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID) for path in images}
    study_instance_uid = str(dcmread(images[0], stop_before_pixels=True).StudyInstanceUID)
    results = {
        resource["ID"]: resource
        for resource in series_in_study(orthanc, study_instance_uid)
        if resource["MainDicomTags"]["SeriesInstanceUID"] not in sources
    }
    downloaded = download_instances(orthanc, results, folder / "results")
    for path in downloaded:
        assert_valid_dicom(path)
    return [dcmread(path) for path in downloaded]


def all_delivered(node_config: dict[str, Any]) -> bool:
    """cad-node's one job done and each of its deliveries acknowledged by Orthanc."""
    jobs = query(node_config, select(Job))
    deliveries = query(node_config, select(Delivery.state))
    return (
        len(jobs) == 1
        and jobs[0].state == JobState.DONE
        and bool(deliveries)
        and set(deliveries) == {DeliveryState.DELIVERED}
    )


def load_series_until(
    viewer: OhifViewer, series_number: int, probe: Callable[[], Polled | None], what: str
) -> Polled:
    """Double-click the series' entry until ``probe()`` answers (60 s in all).

    Once in several runs on a busy machine, OHIF did not load a series of the
    mammogram's study after the first double-click (the cause is not known); a
    radiologist would double-click again.
    """
    for _ in range(2):
        viewer.load_series(series_number)
        with suppress(AssertionError):
            return poll(probe, 20, what)
    viewer.load_series(series_number)
    return poll(probe, 20, what)


@pytest.fixture
def mammogram_viewer(mammogram_study: MammogramWithResults) -> Iterator[OhifViewer]:
    with chromium() as driver:
        yield OhifViewer(driver, mammogram_study.origin, [])


# OHIF's viewport of a Parametric Map: a volume viewport of the map's source image with the
# map's volume (OHIF multiplies the values by 100) over it; where image pixels fall on the page.
PARAMETRIC_MAP_SCRIPT = (
    THUMBNAIL_VIEWPORT
    + """
const [pixels] = arguments;
const cs = window.cornerstone;
if (!cs) return null;
const viewports = cs.getRenderingEngines()
  .flatMap(e => e.getViewports())
  .filter(v => !v.id.startsWith(THUMBNAIL_VIEWPORT));
if (viewports.length !== 1 || !viewports[0].getActors) return null;
const viewport = viewports[0];
const actors = viewport.getActors();
const map = actors.find(a => String(a.referencedId).startsWith('pmap.'));
const image = actors.find(a => a !== map);
if (actors.length !== 2 || !map) return null;
const mapVolume = cs.cache.getVolume(map.referencedId);
const imageVolume = cs.cache.getVolume(image.referencedId);
if (!mapVolume?.loadStatus?.loaded || !imageVolume) return null;
let maximum = -Infinity;
for (const value of mapVolume.voxelManager.getCompleteScalarDataArray()) {
  if (value > maximum) maximum = value;
}
const box = viewport.element.getBoundingClientRect();
return {
  box: [box.left, box.top, box.width, box.height],
  scale: window.devicePixelRatio,
  imageIds: imageVolume.imageIds,
  maximum: maximum,
  pixels: pixels.map(([row, column]) =>
    viewport.worldToCanvas(imageVolume.imageData.indexToWorld([column, row, 0]))),
};
"""
)

RENDER_SCRIPT = (
    THUMBNAIL_VIEWPORT
    + """
window.cornerstone.getRenderingEngines()
  .flatMap(e => e.getViewports())
  .filter(v => !v.id.startsWith(THUMBNAIL_VIEWPORT))
  .forEach(v => v.render());
"""
)

HOT_HUE = 20
"""PIL hues (0-255) of red to orange: the top of OHIF's heatmap colour map ("rainbow_2"); its
"Parametric Map" notification is amber (hues from 32)."""
MAP_TOLERANCE_MM = 10.0
"""How far the centre of a heatmap's hottest colours may lie from a lesion's edge."""


@dataclass(frozen=True)
class LesionOnScreen:
    """A ground-truth lesion of the displayed view, in screenshot pixels."""

    centre: tuple[int, int]
    radius: float


def heatmap_on_lesion(
    image: Image.Image,
    extent: tuple[int, int, int, int],
    lesions: list[LesionOnScreen],
    tolerance: float,
) -> str | None:
    """None when the heatmap's hottest colours lie within ``tolerance`` pixels of a lesion.

    ``extent``: left, top, right, bottom of the map's (and its image's) pixels on screen.
    """
    inside = (extent[0] + 1, extent[1] + 1, extent[2] - 1, extent[3] - 1)
    hsv = np.asarray(image.crop(inside).convert("HSV"), dtype=np.int16)
    coloured = hsv[..., 1] >= GREY_SATURATION
    hot = coloured & ((hsv[..., 0] <= HOT_HUE) | (hsv[..., 0] >= 250))
    if hot.sum() < 30:
        return f"{coloured.sum()} pixels of colour, {hot.sum()} of the heatmap's hottest"
    rows, columns = np.nonzero(hot)
    x, y = inside[0] + float(columns.mean()), inside[1] + float(rows.mean())
    off = min(math.dist((x, y), lesion.centre) - lesion.radius for lesion in lesions)
    if off > tolerance:
        return (
            f"the heatmap's hottest colours centred at {x:.0f},{y:.0f}, {off:.0f} px off a lesion"
        )
    return None


def test_ohif_shows_the_mammogram_heatmap_on_the_lesion(
    mammogram_study: MammogramWithResults, mammogram_viewer: OhifViewer, screenshots: Path
) -> None:
    viewer = mammogram_viewer
    # OHIF makes one display set of a Parametric Map series: of its first map
    (parametric_map,) = mammogram_study.of_class(ParametricMapStorage)
    source = map_source(parametric_map)
    lesions = mammogram_study.lesions_on(source)
    assert lesions, "the map explains a view with a lesion"
    viewer.open_study(mammogram_study.truth.study_instance_uid)
    corner = (float(parametric_map.Rows), float(parametric_map.Columns))
    pixels = [centre for centre, _ in lesions] + [(0.0, 0.0), (0.0, 100.0), corner]
    geometry = load_series_until(
        viewer,
        int(parametric_map.SeriesNumber),
        lambda: viewer.driver.execute_script(PARAMETRIC_MAP_SCRIPT, pixels),
        "OHIF to load the Parametric Map over its image",
    )
    assert [source in image_id for image_id in geometry["imageIds"]] == [True]
    assert geometry["maximum"] == pytest.approx(
        100 * float(parametric_map.pixel_array.max()), rel=1e-3
    )
    viewer.rest_pointer()
    # OHIF 3.13 does not draw the map once its volume has loaded: the canvas keeps the
    # image alone until the viewport renders again, as any interaction makes it do
    viewer.driver.execute_script(RENDER_SCRIPT)

    viewport = ViewportOnScreen(geometry)
    *centres, origin, hundred, end = [viewport.to_screen(*point) for point in geometry["pixels"]]
    left, top, right, bottom = viewport.box
    extent = (max(origin[0], left), max(origin[1], top), min(end[0], right), min(end[1], bottom))
    per_pixel = math.dist(origin, hundred) / 100
    on_screen = [
        LesionOnScreen(centre, radius * per_pixel)
        for centre, (_, radius) in zip(centres, lesions, strict=True)
    ]
    tolerance = MAP_TOLERANCE_MM / mammogram_study.truth.pixel_spacing_mm[0] * per_pixel
    failure = settle(
        lambda: heatmap_on_lesion(viewer.screenshot(), extent, on_screen, tolerance), 30
    )
    viewer.screenshot().save(screenshots / "ohif-pmap.png")
    assert failure is None, f"{failure} (see {screenshots / 'ohif-pmap.png'})"
    assert not mammogram_study.origin.failed_requests()


# OHIF's SR display set: the measurements it read from the SR, each with its labels
SR_MEASUREMENTS_SCRIPT = """
const [seriesInstanceUID] = arguments;
const displaySets = window.services?.displaySetService
  .getActiveDisplaySets()
  .filter(d => d.SeriesInstanceUID === seriesInstanceUID);
if (displaySets?.length !== 1) return null;
const [sr] = displaySets;
if (!sr.isLoaded || !sr.measurements) return null;
return sr.measurements.map(m => ({
  tracking: m.TrackingIdentifier,
  graphicType: m.graphicType ?? null,
  labels: m.labels.map(l => `${l.label}: ${l.value}`),
}));
"""


def sr_measurement_labels(sr: Dataset) -> dict[str, list[str]]:
    """Each TID 1500 finding's NUM items as OHIF labels them, by Tracking Identifier.

    OHIF merges the groups of one Tracking Unique Identifier (a finding's outline and its
    segment) into one measurement and labels each NUM "meaning: value unit", two decimals.
    """
    labels: dict[str, list[str]] = {}
    for group in sr_content.groups(sr):
        tracking = sr_content.item(group, TRACKING_IDENTIFIER).TextValue
        for entry in group.ContentSequence:
            if entry.ValueType == "NUM":
                value = entry.MeasuredValueSequence[0]
                unit = value.MeasurementUnitsCodeSequence[0].CodeValue
                meaning = entry.ConceptNameCodeSequence[0].CodeMeaning
                labels.setdefault(str(tracking), []).append(
                    f"{meaning}: {float(value.NumericValue):.2f} {unit}"
                )
    return labels


def test_ohif_loads_the_mammogram_sr_findings(
    mammogram_study: MammogramWithResults, mammogram_viewer: OhifViewer
) -> None:
    viewer = mammogram_viewer
    (sr,) = mammogram_study.of_class(Comprehensive3DSRStorage)
    viewer.open_study(mammogram_study.truth.study_instance_uid)
    measurements = load_series_until(
        viewer,
        int(sr.SeriesNumber),
        lambda: viewer.driver.execute_script(SR_MEASUREMENTS_SCRIPT, str(sr.SeriesInstanceUID)),
        "OHIF to read the SR's findings",
    )

    expected = sr_measurement_labels(sr)
    loaded = {m["tracking"]: m for m in measurements}
    assert sorted(loaded) == sorted(expected)
    for tracking, labels in expected.items():
        assert set(labels) <= set(loaded[tracking]["labels"]), tracking
    outlined = {tracking for tracking, m in loaded.items() if m["graphicType"] == "POLYLINE"}
    assert outlined == {
        str(sr_content.item(group, TRACKING_IDENTIFIER).TextValue)
        for group in sr_content.groups(sr)
        if sr_content.items(group, IMAGE_REGION)
    }
    assert not mammogram_study.origin.failed_requests()


def test_ohif_shows_the_mammogram_sr_findings_on_their_view(
    mammogram_study: MammogramWithResults, mammogram_viewer: OhifViewer
) -> None:
    viewer = mammogram_viewer
    (sr,) = mammogram_study.of_class(Comprehensive3DSRStorage)
    viewer.open_study(mammogram_study.truth.study_instance_uid)
    viewer.load_series(int(sr.SeriesNumber))
    expected = {label for labels in sr_measurement_labels(sr).values() for label in labels}

    def shown_lines() -> list[str]:
        return [line.text for line in viewer.find_all("[data-cy='viewport-pane'] svg text tspan")]

    shown = poll(shown_lines, 30, "the SR's first finding in the viewport")
    assert set(shown) & expected, f"{shown} not among the SR's findings"

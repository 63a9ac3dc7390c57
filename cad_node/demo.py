"""``cad-node demo``: a synthetic chest CT through a real node, results drawn for a person to see.

Generates a synthetic chest CT with known nodules, runs a node in this process
(temporary storage, free ports, admin off) and a local destination (a Storage
SCP, PS3.4 Annex B) that keeps what it receives, sends the series by C-STORE,
waits for the SEG, SR and burned-in overlay images, and writes PNGs and a
one-page ``index.html`` into the output folder.  NOT FOR CLINICAL USE.
"""

import html
import logging
import math
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image, ImageDraw
from pydicom import Dataset, dcmread
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]  # generated names
from sqlalchemy import select
from tqdm import tqdm

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.app import Node
from cad_node.config import load_settings
from cad_node.domain import ImageVolume
from cad_node.domain.states import DeliveryState, JobState
from cad_node.errors import CadNodeError
from cad_node.imaging.volume import load_volume
from cad_node.results.overlay import CONTOUR_COLOURS, LUNG_WINDOW, contour, lung_window
from cad_node.store.schema import Delivery, Job
from cad_node.synth.ct import NoduleTruth, PhantomSpec, generate_ct, load_ground_truth, write_series

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
DEMO_AE_TITLE = "DEMODEST"
_TRUTH_COLOUR = (0, 200, 255)
PNG_MIN_WIDTH = 512


class DemoError(CadNodeError):
    """The demo could not finish (no result in time, a failed delivery)."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``cad-node demo`` generates and how long it waits."""

    out_dir: Path
    rows: int = 384
    slices: int = 200
    slice_thickness_mm: float = 1.25
    seed: int = 20261125
    nodule_count: int = 3
    timeout_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class ReportedFinding:
    """One finding as the SR reports it and the SEG locates it."""

    label: str
    diameter_mm: float | None
    volume_mm3: float | None
    probability: float | None
    centre_patient_mm: tuple[float, float, float] | None
    truth_distance_mm: float | None
    png: str | None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the local destination ----------------------------------------------------------------------


@contextmanager
def destination_scp(port: int, folder: Path) -> Iterator[None]:
    """A Storage SCP (PS3.4 Annex B) on 127.0.0.1 writing each received instance to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: Event) -> int:
        dataset = event.dataset
        (folder / f"{dataset.SOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=DEMO_AE_TITLE)
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    if server is None:
        raise DemoError(f"cannot listen on port {port}")
    try:
        yield
    finally:
        server.shutdown()


def send_series(paths: Sequence[Path], port: int, ae_title: str) -> None:
    """C-STORE ``paths`` to the node in one association, one progress bar tick per image."""
    ae = AE(ae_title="DEMOSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise DemoError(f"the node on port {port} refused the association")
    try:
        for path in tqdm(paths, desc="send CT", unit="img"):
            status = assoc.send_c_store(dcmread(path))
            if getattr(status, "Status", None) != 0x0000:
                raise DemoError(f"C-STORE of {path.name} failed: {status}")
    finally:
        assoc.release()


# --- the node ------------------------------------------------------------------------------------


def node_config(work_dir: Path, node_port: int, destination_port: int) -> Path:
    """The embedded default config, made local: free ports, quiet 2 s, admin off, overlay on."""
    config = yaml.safe_load(load_settings_text())
    config.update(
        {
            "port": node_port,
            "bind_address": "127.0.0.1",
            "storage_dir": str(work_dir / "node"),
            "quiet_seconds": 2,
            "admin": {"enabled": False},
            "destinations": {
                "pacs": {
                    "host": "127.0.0.1",
                    "port": destination_port,
                    "ae_title": DEMO_AE_TITLE,
                    "results": ["seg", "sr", "overlay"],
                }
            },
        }
    )
    path = work_dir / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load_settings_text() -> str:
    from importlib import resources

    from cad_node.config import DEFAULT_CONFIG

    return resources.files("cad_node").joinpath(DEFAULT_CONFIG).read_text()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    with tqdm(desc=what, unit="s", bar_format="{desc}: {elapsed}") as bar:
        while not condition():
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)
            bar.update()


def all_delivered(node: Node) -> bool:
    """Whether the job ran and every result reached the destination."""
    with node.sessions() as session:
        jobs = list(session.scalars(select(Job.state)))
        states = list(session.scalars(select(Delivery.state)))
    if any(state == DeliveryState.FAILED for state in states):
        raise DemoError("a delivery failed; see the log above")
    if JobState.FAILED in jobs:
        raise DemoError("the job failed; see the log above")
    return bool(states) and all(state == DeliveryState.DELIVERED for state in states)


# --- drawing -------------------------------------------------------------------------------------


def segment_masks(seg: Dataset, volume: ImageVolume) -> dict[int, npt.NDArray[np.bool_]]:
    """Each segment of ``seg`` as a mask in ``volume``'s index space (frames by source image)."""
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    numbers = list(segmentation.segment_numbers)
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids),
        segment_numbers=numbers,
        assert_missing_frames_are_empty=True,
    )
    return {n: pixels[..., i].astype(bool) for i, n in enumerate(numbers)}


def draw_seg_slice(
    volume: ImageVolume,
    mask: npt.NDArray[np.bool_],
    label: str,
    colour: tuple[int, int, int],
    truths: Sequence[NoduleTruth],
) -> Image.Image:
    """The slice through a segment's centre, its contour, label and the true nodule centres."""
    k = round(float(np.argwhere(mask)[:, 0].mean()))
    grey = lung_window(volume.voxels[k], *LUNG_WINDOW)
    rgb = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    rgb[contour(mask[k], max(1, volume.shape[1] // 256))] = colour
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    for truth in truths:
        tk, tr, tc = truth.centre_index
        if abs(tk - k) * volume.spacing_mm[0] <= truth.diameter_mm / 2:
            draw.line((tc - 4, tr, tc + 4, tr), fill=_TRUTH_COLOUR)
            draw.line((tc, tr - 4, tc, tr + 4), fill=_TRUTH_COLOUR)
    image = enlarged(image)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width - 1, 13), fill=(170, 0, 0))
    draw.text((3, 1), f"{label} (SEG), slice {k + 1}  {NOT_FOR_CLINICAL_USE}", fill="white")
    return image


def enlarged(image: Image.Image) -> Image.Image:
    """``image`` scaled up by a whole factor to at least ``PNG_MIN_WIDTH`` (pixels stay square)."""
    factor = max(1, -(-PNG_MIN_WIDTH // image.width))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def sr_measurements(sr: Dataset) -> dict[str, dict[str, float]]:
    """For each tracking identifier ("Nodule 1" ...), its measurements by name (PS3.16 TID 1500)."""
    content = hd.sr.srread(sr.filename).content
    if not isinstance(content, hd.sr.MeasurementReport):
        return {}
    found: dict[str, dict[str, float]] = {}
    groups = [
        *content.get_planar_roi_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
    ]
    for group in groups:
        label = str(group.tracking_identifier)
        values = found.setdefault(label, {})
        for measurement in group.get_measurements():
            values.setdefault(measurement.name.meaning.lower(), float(measurement.value))
    return found


def _pick(values: dict[str, float], word: str) -> float | None:
    return next((v for name, v in values.items() if word in name), None)


def reported_findings(
    seg: Dataset | None,
    sr: Dataset,
    volume: ImageVolume,
    truths: Sequence[NoduleTruth],
    out_dir: Path,
) -> list[ReportedFinding]:
    """The findings, with the SEG drawn on the slice through each one (PNG in ``out_dir``)."""
    measurements = sr_measurements(sr)
    masks = segment_masks(seg, volume) if seg is not None else {}
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence} if seg else {}
    findings = []
    for number, mask in tqdm(masks.items(), desc="draw SEG", unit="nodule"):
        label = labels[number]
        centre_index = np.argwhere(mask).mean(axis=0)
        centre = tuple(float(v) for v in volume.index_to_patient(tuple(centre_index)))
        distance = min((math.dist(centre, t.centre_patient_mm) for t in truths), default=None)
        colour = CONTOUR_COLOURS[(number - 1) % len(CONTOUR_COLOURS)]
        png = f"seg-{number}.png"
        draw_seg_slice(volume, mask, label, colour, truths).save(out_dir / png)
        values = measurements.get(label, {})
        findings.append(
            ReportedFinding(
                label=label,
                diameter_mm=_pick(values, "diameter"),
                volume_mm3=_pick(values, "volume"),
                probability=_probability(_pick(values, "certainty")),
                centre_patient_mm=centre,  # type: ignore[arg-type]  # 3 values from a 3-vector
                truth_distance_mm=distance,
                png=png,
            )
        )
    return findings


def _probability(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


def save_overlay_pngs(overlays: Sequence[Dataset], out_dir: Path) -> list[str]:
    """The received burned-in Secondary Capture images as PNGs, in InstanceNumber order."""
    names = []
    ordered = sorted(overlays, key=lambda ds: int(ds.InstanceNumber))
    for ds in tqdm(ordered, desc="draw overlays", unit="img"):
        name = f"overlay-{int(ds.InstanceNumber)}.png"
        enlarged(Image.fromarray(ds.pixel_array.astype(np.uint8), mode="RGB")).save(out_dir / name)
        names.append(name)
    return names


# --- the page ------------------------------------------------------------------------------------


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_html(
    findings: Sequence[ReportedFinding],
    truths: Sequence[NoduleTruth],
    overlay_pngs: Sequence[str],
    seconds: float,
) -> str:
    """The one-page summary: the findings, the ground truth, the pictures."""
    rows = "\n".join(
        f"<tr><td>{html.escape(f.label)}</td><td>{_cell(f.diameter_mm, 1)}</td>"
        f"<td>{_cell(f.volume_mm3, 0)}</td><td>{_cell(f.probability, 2)}</td>"
        f"<td>{_cell(f.truth_distance_mm, 1)}</td></tr>"
        for f in findings
    )
    truth_rows = "\n".join(
        f"<tr><td>{t.label}</td><td>{t.diameter_mm:.1f}</td><td>{html.escape(str(t.nodule_type))}"
        f"</td><td>{', '.join(f'{v:.1f}' for v in t.centre_patient_mm)}</td></tr>"
        for t in truths
    )
    pictures = "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name in [*(f.png for f in findings if f.png), *overlay_pngs]
    )
    return _PAGE.format(
        banner=NOT_FOR_CLINICAL_USE,
        count=len(findings),
        truth_count=len(truths),
        seconds=seconds,
        rows=rows or '<tr><td colspan="5">no finding</td></tr>',
        truth_rows=truth_rows,
        pictures=pictures,
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cad-node demo</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.banner {{ background: #a00; color: #fff; font-weight: bold; padding: .4em; text-align: center; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
td, th {{ border: 1px solid #999; padding: .2em .6em; text-align: right; }}
figure {{ display: inline-block; margin: .3em; }} img {{ max-width: 512px; }}
</style></head><body>
<div class="banner">{banner}</div>
<h1>cad-node demo: synthetic chest CT</h1>
<p>{count} finding(s) reported for {truth_count} synthetic nodule(s), in {seconds:.0f} s.</p>
<h2>Findings (from the SR and SEG the node sent)</h2>
<table id="findings"><tr><th>Finding</th><th>Diameter (mm)</th><th>Volume (mm&sup3;)</th>
<th>Probability</th><th>Distance to nearest true nodule (mm)</th></tr>
{rows}
</table>
<h2>Ground truth</h2>
<table id="truth"><tr><th>Nodule</th><th>Diameter (mm)</th><th>Type</th>
<th>Centre x, y, z (mm)</th></tr>
{truth_rows}
</table>
<h2>Images</h2>
<p>seg-N.png: the SEG mask drawn on the slice through each finding (blue crosses: true
centres); overlay-N.png: the burned-in Secondary Capture images as received.</p>
{pictures}
<div class="banner">{banner}</div>
</body></html>
"""


# --- the whole demo ------------------------------------------------------------------------------


def synthesize(options: DemoOptions, folder: Path) -> list[Path]:
    """Write the synthetic series; files in InstanceNumber order."""
    spec = PhantomSpec(
        rows=options.rows,
        slices=options.slices,
        slice_thickness_mm=options.slice_thickness_mm,
        seed=options.seed,
        nodule_count=options.nodule_count,
        diameter_range_mm=(8.0, 20.0),
    )
    phantom = generate_ct(spec)
    return sorted(write_series(phantom, folder, series_description="Synthetic chest CT demo"))


def run_demo(options: DemoOptions) -> Path:
    """Run the demo; returns the path of ``index.html``.

    Raises
    ------
    DemoError
        When the results do not arrive within ``options.timeout_seconds``.
    """
    started = time.monotonic()
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cad-node-demo-") as work:
        work_dir = Path(work)
        steps = tqdm(total=4, desc="demo", unit="step")
        paths = synthesize(options, work_dir / "ct")
        steps.update()
        received_dir = work_dir / "received"
        _run_node_and_send(options, work_dir, paths, received_dir)
        steps.update()
        datasets = [dcmread(path) for path in paths]
        volume = load_volume(datasets)
        truths = load_ground_truth(work_dir / "ct").nodules
        received = [dcmread(path) for path in sorted(received_dir.glob("*.dcm"))]
        by_class = _by_sop_class(received)
        (sr,) = by_class.get(COMPREHENSIVE_3D_SR, [None])
        if sr is None:
            raise DemoError("no SR arrived")
        segs = by_class.get(SEG_SOP_CLASS, [])
        findings = reported_findings(segs[0] if segs else None, sr, volume, truths, out_dir)
        overlay_pngs = save_overlay_pngs(by_class.get(SecondaryCaptureImageStorage, []), out_dir)
        steps.update()
        page = out_dir / "index.html"
        page.write_text(
            render_html(findings, truths, overlay_pngs, time.monotonic() - started),
            encoding="utf-8",
        )
        steps.update()
        steps.close()
    return page


def _by_sop_class(datasets: Sequence[Dataset]) -> dict[str, list[Dataset]]:
    grouped: dict[str, list[Dataset]] = {}
    for ds in datasets:
        grouped.setdefault(str(ds.SOPClassUID), []).append(ds)
    return grouped


def _run_node_and_send(
    options: DemoOptions, work_dir: Path, paths: Sequence[Path], received_dir: Path
) -> None:
    node_port, destination_port = free_port(), free_port()
    settings = load_settings(node_config(work_dir, node_port, destination_port))
    node = Node(settings)
    with destination_scp(destination_port, received_dir):
        node.start()
        try:
            send_series(paths, node_port, settings.ae_title)
            wait_until(lambda: all_delivered(node), options.timeout_seconds, "model and delivery")
        finally:
            node.stop()

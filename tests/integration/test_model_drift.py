"""The drift test (issue 22): a stream of synthetic CTs through a running node whose inputs
change (another manufacturer, thicker slices) raises the model drift alert; an unchanged
stream does not.

An in-process node (``cad_node.app.Node``) with a stepped clock routes every CT it receives
by C-STORE (pynetdicom) to the lung model in shadow mode (no destination). ``monitoring``:
one baseline week, 3 jobs a window at least. Week 1: three copies (new UIDs) of one small
CT from the site's scanner ("SiteCT"); week 2: three more, and no alert; week 3: three CTs
of 5 mm slices from "OtherCT", and the alert is on in ``/metrics``
(``cad_node_model_drift_alert``), in ``/api/monitoring/alerts`` and on the admin page's
banner (Chromium). Weeks pass on the clock, not by sleeping.

Neither scanner is in the shipped model's validated domain, so each job ends at the
domain check (``on_out_of_domain: skip``) in about a second and its outputs are journaled
as abstained: this test is about inputs; running the network nine times would take
minutes on 2 cores (output drift is in tests/unit/test_model_drift.py).
"""

import copy
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from cad_node.app import Node
from cad_node.config import Settings
from cad_node.store.schema import JobOutput
from tests.conftest import send
from tests.dcmtk import NODE_AE_TITLE, free_port
from tests.integration.conftest import READ_TOKEN, api_client, base_url, in_process_node, sha256
from tests.integration.peers import wait_for
from tests.synthetic import write_ct_series

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

MODEL = "lung_nodule_ct"
PER_WEEK = 3
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
"""A Monday: week 1 is the baseline (ISO week 2026-W10)."""
A_WEEK = timedelta(days=7, hours=1)
"""A week and an hour: the last 7 days no longer hold the week before's jobs."""
SITE_CT = "SiteCT"
"""The site's usual scanner: outside the shipped lung model's validated domain (its
manufacturers), so each job ends at the domain check in about a second."""
ALERT_GAUGE = f'cad_node_model_drift_alert{{model="{MODEL}"}}'


class SteppedClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Week:
    """What the node said once a week's jobs were done and its drift computed."""

    alerts: dict[str, Any]
    metrics: str


@dataclass(frozen=True)
class Streamed:
    node: Node
    unchanged: Week
    changed: Week


def settings(folder: Path) -> Settings:
    return Settings.model_validate(
        {
            "ae_title": NODE_AE_TITLE,
            "port": 0,
            "bind_address": "127.0.0.1",
            "storage_dir": str(folder / "storage"),
            "quiet_seconds": 30,  # each CT completes by its ImagesInAcquisition
            "device": "cpu",
            "rules": [
                {
                    "name": "ct-shadow",
                    "priority": 10,
                    "mode": "shadow",
                    "model": MODEL,
                    "on_out_of_domain": "skip",
                    "when": {"keyword": "Modality", "equals": "CT"},
                }
            ],
            "monitoring": {"baseline_weeks": 1, "min_samples": PER_WEEK},
            "admin": {
                "port": free_port(),
                "tokens": [{"name": "bob", "role": "read", "sha256": sha256(READ_TOKEN)}],
            },
        }
    )


def copies(paths: Sequence[Path], count: int, **attributes: str) -> list[list[Dataset]]:
    """``count`` copies of a series as new studies (new UIDs), ``attributes`` set on each."""
    originals = [dcmread(path) for path in paths]
    studies: list[list[Dataset]] = []
    for _ in range(count):
        study_uid, series_uid = generate_uid(), generate_uid()
        series: list[Dataset] = []
        for original in originals:
            dataset = copy.deepcopy(original)
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
            dataset.SOPInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            for keyword, value in attributes.items():
                setattr(dataset, keyword, value)
            series.append(dataset)
        studies.append(series)
    return studies


def outputs(node: Node) -> int:
    with node.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(JobOutput)) or 0)


def stream(
    node: Node, clock: SteppedClock, studies: list[list[Dataset]], api: httpx.Client
) -> Week:
    """Send ``studies``, wait for their jobs' outputs and for drift computed after them."""
    expected = outputs(node) + len(studies)
    for series in studies:
        assert set(send(node.scp.port, series)) == {0x0000}
    wait_for(lambda: outputs(node) == expected, 120, f"{expected} jobs' outputs")
    now = clock.now

    def computed() -> bool:
        computed_at = api.get("/api/monitoring/alerts").json()["computed_at"]
        return computed_at is not None and datetime.fromisoformat(computed_at) >= now

    wait_for(computed, 60, "model drift computed after the week's jobs")
    return Week(api.get("/api/monitoring/alerts").json(), api.get("/metrics").text)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Streamed]:
    folder = tmp_path_factory.mktemp("model-drift")
    usual = write_ct_series(
        folder / "usual", seed=11, rows=64, slices=12, nodule_count=1, images_in_acquisition=True
    )
    thick = write_ct_series(
        folder / "thick",
        seed=12,
        rows=64,
        slices=12,
        slice_thickness_mm=5.0,
        nodule_count=1,
        images_in_acquisition=True,
    )
    clock = SteppedClock()
    with (
        in_process_node(settings(folder), clock=clock) as node,
        api_client(node, READ_TOKEN) as api,
    ):
        stream(node, clock, copies(usual.paths, PER_WEEK, Manufacturer=SITE_CT), api)
        clock.now += A_WEEK
        unchanged = stream(node, clock, copies(usual.paths, PER_WEEK, Manufacturer=SITE_CT), api)
        clock.now += A_WEEK
        changed = stream(node, clock, copies(thick.paths, PER_WEEK, Manufacturer="OtherCT"), api)
        yield Streamed(node, unchanged, changed)


def gauge(metrics: str, sample: str) -> float:
    (line,) = [line for line in metrics.splitlines() if line.startswith(sample + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_an_unchanged_stream_raises_no_alert(streamed: Streamed) -> None:
    assert streamed.unchanged.alerts["alerts"] == []
    metrics = streamed.unchanged.metrics
    assert gauge(metrics, ALERT_GAUGE) == 0.0
    for feature in ("Manufacturer", "SliceThickness", "PixelSpacing", "KVP", "abstained"):
        sample = f'cad_node_model_drift_psi{{feature="{feature}",model="{MODEL}"}}'
        assert gauge(metrics, sample) == 0.0, feature


def test_another_manufacturer_with_thicker_slices_raises_the_alert(streamed: Streamed) -> None:
    alerts = streamed.changed.alerts["alerts"]
    by_feature = {alert["feature"]: alert for alert in alerts}
    assert {"Manufacturer", "SliceThickness"} <= set(by_feature)
    manufacturer = by_feature["Manufacturer"]
    assert (manufacturer["model"], manufacturer["level"]) == (MODEL, "alert")
    assert manufacturer["psi"] == pytest.approx(18.42, abs=0.01)  # all of one bin to the other
    assert manufacturer["message"] == f"{MODEL}: Manufacturer PSI 18.42 (alert)"
    assert alerts[0]["level"] == "alert"
    metrics = streamed.changed.metrics
    assert gauge(metrics, ALERT_GAUGE) == 1.0
    psi_sample = f'cad_node_model_drift_psi{{feature="SliceThickness",model="{MODEL}"}}'
    assert gauge(metrics, psi_sample) >= 0.25
    with api_client(streamed.node, READ_TOKEN) as api:
        drift = api.get(f"/api/monitoring/{MODEL}/drift").json()
    assert drift["alert"] is True
    levels = {feature["feature"]: feature["level"] for feature in drift["features"]}
    assert levels["ManufacturerModelName"] == "ok"
    assert levels["score"] == "too few"  # every job abstained: no score to compare


@pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them; CI fails)",
)
def test_the_admin_page_shows_the_banner(streamed: Streamed, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from tests.integration.browser import sign_in, wait_text

    sign_in(browser, base_url(streamed.node) + "/", READ_TOKEN)
    wait_text(browser, "model-drift-banner", f"Model drift: {MODEL}: Manufacturer PSI 18.42")
    banner = browser.find_element(By.ID, "model-drift-banner")
    assert banner.is_displayed()
    link = banner.find_element(By.TAG_NAME, "a")
    assert link.get_attribute("href").endswith("/ui/monitoring")

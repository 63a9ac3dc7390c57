"""A series whose decoding blows the decoder's memory bound is quarantined, through the real
node: pynetdicom sends it, the worker's decoder process runs out of memory, the series
is QUARANTINED with the reason (the CLI and the admin API show it), an admin's retry queues
it again, and the node goes on serving the next series (DCMTK storescu sends it)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from cad_node.app import Node
from cad_node.config import load_settings
from cad_node.domain.states import JobState, SeriesState
from tests.conftest import send
from tests.dcmtk import free_port, storescu
from tests.integration.conftest import api_client, in_process_node, sha256
from tests.integration.peers import cad_node_status, wait_for, write_config
from tests.synthetic import SyntheticSeries, write_ct_series, write_frame_bombs

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "quarantine-admin-token"
MEMORY_MB = 768
REASON = f"decoding ran out of memory (limit {MEMORY_MB} MB)"


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    folder = tmp_path_factory.mktemp("ct")
    return write_ct_series(folder, seed=17, rows=64, slices=16, slice_thickness_mm=2.5)


@pytest.fixture(scope="module")
def frame_bomb(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A chest CT series of its own whose RLE slices claim 40000 x 40000 pixels (3.2 GB)."""
    source = write_ct_series(
        tmp_path_factory.mktemp("bomb-source"), seed=18, rows=64, slices=4, slice_thickness_mm=2.5
    )
    return write_frame_bombs(source.paths, tmp_path_factory.mktemp("bomb"))


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    admin_token = sha256(ADMIN_TOKEN)
    return write_config(
        tmp_path,
        quiet_seconds=0.5,
        device="cpu",
        torch_threads=1,
        decoding={"timeout_seconds": 120, "memory_mb": MEMORY_MB},
        admin={
            "port": free_port(),
            "tokens": [{"name": "alice", "role": "admin", "sha256": admin_token}],
        },
    )


@pytest.fixture
def node(config_path: Path) -> Iterator[Node]:
    with in_process_node(load_settings(config_path)) as running:
        yield running


@pytest.fixture
def admin(node: Node) -> Iterator[httpx.Client]:
    with api_client(node, ADMIN_TOKEN) as client:
        yield client


def series_of(admin: httpx.Client, series_instance_uid: str) -> dict[str, Any]:
    response = admin.get(f"/api/series/{series_instance_uid}")
    response.raise_for_status()
    return dict(response.json())


def jobs_of(admin: httpx.Client, series_instance_uid: str) -> list[dict[str, Any]]:
    response = admin.get("/api/jobs", params={"series_instance_uid": series_instance_uid})
    response.raise_for_status()
    return list(response.json()["items"])


def job_of(admin: httpx.Client, series_instance_uid: str) -> dict[str, Any]:
    (job,) = jobs_of(admin, series_instance_uid)
    return job


def job_done(admin: httpx.Client, series_instance_uid: str) -> bool:
    return [job["state"] for job in jobs_of(admin, series_instance_uid)] == [JobState.DONE]


def in_state(admin: httpx.Client, series_instance_uid: str, state: SeriesState) -> bool:
    return bool(series_of(admin, series_instance_uid)["state"] == state)


def test_a_frame_bomb_is_quarantined_and_the_node_serves_on(
    node: Node,
    admin: httpx.Client,
    config_path: Path,
    frame_bomb: list[Path],
    small_ct: SyntheticSeries,
) -> None:
    bomb_uid = str(pydicom.dcmread(frame_bomb[0], stop_before_pixels=True).SeriesInstanceUID)
    assert send(node.scp.port, frame_bomb) == [0x0000] * len(frame_bomb)  # RLE, as stored
    wait_for(lambda: in_state(admin, bomb_uid, SeriesState.QUARANTINED), 120, "quarantine")

    assert series_of(admin, bomb_uid)["quarantine_reason"] == REASON
    job = job_of(admin, bomb_uid)
    assert (job["state"], job["error"]) == (JobState.FAILED, REASON)
    listed = admin.get("/api/series", params={"state": "quarantined"}).json()["items"]
    assert [s["series_instance_uid"] for s in listed] == [bomb_uid]
    status = cad_node_status(config_path)
    assert "quarantined 1" in status
    assert REASON in status

    retried = admin.post(f"/api/jobs/{job['id']}/retry")
    assert retried.status_code == 200, retried.text
    wait_for(lambda: job_of(admin, bomb_uid)["attempts"] >= 2, 120, "the retried job")
    wait_for(lambda: in_state(admin, bomb_uid, SeriesState.QUARANTINED), 120, "quarantine again")

    sent = storescu(node.scp.port, small_ct.paths)
    assert sent.returncode == 0, sent.stderr
    good_uid = small_ct.series_instance_uid
    wait_for(lambda: job_done(admin, good_uid), 180, "the next series")
    assert in_state(admin, good_uid, SeriesState.ROUTED)

"""Results delivered by STOW-RS (PS3.18 10.5) to a real Orthanc's DICOMweb plugin.

The node's destination is ``type: dicomweb``. While Orthanc is down, the deliveries wait
and retry (connection refused is transient); the node is killed with them pending, Orthanc
starts, and the node started again delivers each once: nothing lost, nothing doubled (one
SEG and one SR instance in Orthanc, one delivery row each, the job not run again).
Then an Orthanc that requires HTTP basic authentication.
"""

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from cad_node.domain.states import DeliveryState
from cad_node.store.schema import Delivery, Job
from tests.dcmtk import free_port, storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import NodeProcess, query, running_node, wait_for, write_config
from tests.synthetic import SyntheticSeries, write_ct_series
from tests.system.orthanc_peer import (
    CAD_NODE_AET,
    DICOMWEB_ROOT,
    OrthancProcess,
    require_orthanc,
    running_orthanc,
)

pytestmark = pytest.mark.slow

JOB_SECONDS = 240


@pytest.fixture(autouse=True)
def _orthanc_installed() -> None:
    require_orthanc(dicomweb=True)


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    """A small chest CT whose nodule the lung model finds (as tests/integration's)."""
    return write_ct_series(
        tmp_path_factory.mktemp("ct"),
        seed=7,
        rows=128,
        slices=16,
        nodule_count=1,
        diameter_range_mm=(16.0, 20.0),
    )


def node_config(folder: Path, http_port: int, **destination: Any) -> Path:
    url = f"http://127.0.0.1:{http_port}{DICOMWEB_ROOT.rstrip('/')}"
    return write_config(
        folder,
        ae_title=CAD_NODE_AET,
        quiet_seconds=1,
        destinations={"pacs": {"type": "dicomweb", "url": url, **destination}},
    )


def deliveries(node: NodeProcess) -> list[Delivery]:
    return list(query(node.config, select(Delivery)))


def result_instances(orthanc: OrthancProcess, study_instance_uid: str) -> dict[str, list[str]]:
    """Orthanc's SEG and SR instances of the study, by Modality."""
    found: dict[str, list[str]] = {}
    for study in orthanc.get("/studies?expand"):
        if study["MainDicomTags"]["StudyInstanceUID"] != study_instance_uid:
            continue
        for series in orthanc.get(f"/studies/{study['ID']}/series"):
            modality = series["MainDicomTags"]["Modality"]
            found.setdefault(modality, []).extend(series["Instances"])
    return found


def test_deliveries_pending_across_a_node_restart_reach_orthanc_once(
    tmp_path: Path, small_ct: SyntheticSeries
) -> None:
    http_port = free_port()
    config_path = node_config(tmp_path, http_port)
    with running_node(config_path, tmp_path / "node-1.log") as node:
        assert storescu(node.port, list(small_ct.paths)).returncode == 0
        wait_for(lambda: _pending_after_an_attempt(node), JOB_SECONDS, "deliveries to retry")
        before = deliveries(node)
        assert "Connection" in (before[0].last_error or ""), before[0].last_error
        node.kill()  # SIGKILL, deliveries pending

    with (
        running_orthanc(
            tmp_path / "orthanc", cad_node_port=free_port(), dicomweb=True, http_port=http_port
        ) as orthanc,
        running_node(config_path, tmp_path / "node-2.log") as node,
    ):
        try:
            wait_for(lambda: _all_delivered(node), 120, "the deliveries after the restart")
        except AssertionError as exc:
            exc.add_note(f"--- cad-node log ---\n{node.log()[-5000:]}")
            raise
        after = deliveries(node)
        jobs = query(node.config, select(Job))
        found = result_instances(orthanc, small_ct.study_instance_uid)
        files = _download(orthanc, found, tmp_path / "downloaded")
        assert "Traceback" not in node.log()

    assert sorted(d.id for d in after) == sorted(d.id for d in before), "no delivery added"
    assert all(d.attempts >= 2 for d in after), "each was tried before the kill and after"
    assert len(jobs) == 1, "the job did not run again"
    assert {modality: len(ids) for modality, ids in found.items()} == {"SEG": 1, "SR": 1}
    assert {dcmread(path).SOPClassUID for path in files} == {
        SegmentationStorage,
        Comprehensive3DSRStorage,
    }
    for path in files:
        assert_valid_dicom(path)


def _pending_after_an_attempt(node: NodeProcess) -> bool:
    rows = deliveries(node)
    return len(rows) == 2 and all(
        d.state == DeliveryState.PENDING and d.attempts >= 1 for d in rows
    )


def _all_delivered(node: NodeProcess) -> bool:
    rows = deliveries(node)
    return bool(rows) and all(d.state == DeliveryState.DELIVERED for d in rows)


def _download(orthanc: OrthancProcess, found: dict[str, list[str]], folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for modality, instance_ids in found.items():
        for instance_id in instance_ids:
            path = folder / f"{modality}-{instance_id}.dcm"
            path.write_bytes(orthanc.get_bytes(f"/instances/{instance_id}/file"))
            paths.append(path)
    return paths


def test_basic_auth_refused_fails_shown_then_the_right_password_delivers(
    tmp_path: Path, small_ct: SyntheticSeries
) -> None:
    """An Orthanc that requires HTTP basic authentication: a wrong password is HTTP 401, a
    permanent failure (dead letter) whose error says so and no log quotes the password; the
    right one, read from its file at the next attempt, delivers."""
    http_port = free_port()
    secret = tmp_path / "pacs-password"
    secret.write_text("not-the-password\n")
    auth = {"type": "basic", "username": "cadnode", "secret_file": str(secret)}
    config_path = node_config(tmp_path, http_port, auth=auth)
    with (
        running_orthanc(
            tmp_path / "orthanc",
            cad_node_port=free_port(),
            dicomweb=True,
            http_port=http_port,
            users={"cadnode": "s3cret-pw"},
        ) as orthanc,
        running_node(config_path, tmp_path / "node.log") as node,
    ):
        assert storescu(node.port, list(small_ct.paths)).returncode == 0
        wait_for(lambda: _all_in(node, DeliveryState.FAILED), JOB_SECONDS, "the refusals")
        refused = deliveries(node)
        secret.write_text("s3cret-pw\n")
        _due_again(node)
        wait_for(lambda: _all_in(node, DeliveryState.DELIVERED), 60, "the deliveries")
        found = result_instances(orthanc, small_ct.study_instance_uid)
        log = node.log()

    assert all("HTTP 401" in (d.last_error or "") for d in refused), refused[0].last_error
    assert {modality: len(ids) for modality, ids in found.items()} == {"SEG": 1, "SR": 1}
    assert "s3cret-pw" not in log
    assert "not-the-password" not in log


def _all_in(node: NodeProcess, state: DeliveryState) -> bool:
    rows = deliveries(node)
    return len(rows) == 2 and all(d.state == state for d in rows)


def _due_again(node: NodeProcess) -> None:
    """What the admin's "Retry now" does to a failed delivery: pending and due now."""
    engine = create_engine(f"sqlite:///{Path(node.config['storage_dir']) / 'journal.sqlite'}")
    try:
        with Session(engine) as session, session.begin():
            for delivery in session.scalars(select(Delivery)):
                delivery.state = DeliveryState.PENDING
                delivery.attempts = 0
    finally:
        engine.dispose()

"""Odd and missing attributes, end to end: DCMTK storescu -> cad-node serve -> DCMTK storescp
(issue 18, items 4 and 6).

On one shared node, sent before any case is checked so that their quiet timers run together:

- a fundus pair (Ophthalmic Photography) whose images lack NumberOfFrames: the job ends
  DONE, its warnings (journal, ``/api/jobs``, ``cad-node status``) say that 1 was assumed
  for each image, named by UID, and the SEG and SR at the destination are valid and
  reference the pair;
- a small chest CT per Specific Character Set (PS3.3 C.12.1.1.2), its PatientName from
  pydicom's character set test files: the SEG and SR at the destination read back with
  the source's PatientName and StudyDescription, under a Specific Character Set that
  encodes them, valid (dciodvfy);
- a chest CT without PixelSpacing, a Type 1 attribute the CT loader needs: the job fails,
  its error (journal and ``cad-node status``) names the keyword and what failed, and no
  patient value appears in the error, the status or the node's log.
"""

import hashlib
import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom import Dataset, uid
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from sqlalchemy import select

from cad_node.domain.states import DeliveryState, JobState
from cad_node.store.schema import Delivery, Job, Result
from cad_node.synth import fundus
from tests.dcmtk import free_port, storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import (
    NodeProcess,
    query,
    running_node,
    storescp,
    wait_for,
    write_config,
)
from tests.integration.test_mixed_series import referenced_uids
from tests.synthetic import SyntheticSeries
from tests.unit.test_charsets import CHARSETS, Charset, example_name

pytestmark = pytest.mark.slow

TOKEN = "odd-attributes-reader"
JOB_SECONDS = 240
"""Bound for one job and its deliveries; the jobs of all cases queue behind each other."""

SENT_CHARSETS = tuple(CHARSETS)
"""ISO_IR 100, ISO_IR 192, ISO 2022 IR 87 (after an empty value 1), ISO 2022 IR 13 with IR 87,
GB18030 and ISO 2022 IR 149 (after an empty value 1)."""
FUNDUS_MODEL = "fundus_dr"
NO_SPACING = "no-pixel-spacing"

PATIENT_NAME = "Quillfeather^Zebedee^Orrin"
PATIENT_ID = "PID-ODD-77310"
"""Distinctive patient values of the failing series: none may leak into errors or logs."""


@dataclass(frozen=True, slots=True)
class Peers:
    node: NodeProcess
    config_path: Path
    pacs_dir: Path
    admin_port: int


@dataclass(frozen=True, slots=True)
class Sent:
    """What went to the node for every case: series UIDs by case, the fundus image UIDs."""

    series: dict[str, str]
    fundus_uids: frozenset[str]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    folder = tmp_path_factory.mktemp("node")
    admin_port = free_port()
    admin = {
        "port": admin_port,
        "tokens": [
            {"name": "ops", "role": "read", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
        ],
    }
    pacs_port = free_port()
    destinations = {
        "pacs": {
            "host": "127.0.0.1",
            "port": pacs_port,
            "ae_title": "PACS",
            "results": ["seg", "sr"],
        }
    }
    config_path = write_config(folder, quiet_seconds=1, admin=admin, destinations=destinations)
    with running_node(config_path, folder / "node.log") as node:
        with storescp(pacs_port, folder / "pacs"):
            yield Peers(node, config_path, folder / "pacs", admin_port)
        assert "Traceback" not in node.log()


@pytest.fixture(scope="module")
def sent(
    one_nodule_ct: SyntheticSeries,
    fundus_exam: tuple[Path, fundus.FundusTruth],
    peers: Peers,
    tmp_path_factory: pytest.TempPathFactory,
) -> Sent:
    """Every case sent by DCMTK storescu before any is checked."""
    folder = tmp_path_factory.mktemp("sent")
    fundus_paths, fundus_uids = _without_number_of_frames(fundus_exam[0], folder / "fundus")
    _store(peers, fundus_paths)
    series = {}
    for name in SENT_CHARSETS:
        paths, series[name] = _ct_copy(
            one_nodule_ct, name, folder / name, _in_charset(CHARSETS[name])
        )
        _store(peers, paths)
    paths, series[NO_SPACING] = _ct_copy(
        one_nodule_ct, NO_SPACING, folder / NO_SPACING, _no_spacing
    )
    _store(peers, paths)
    return Sent(series, frozenset(fundus_uids))


def _store(peers: Peers, paths: list[Path]) -> None:
    done = storescu(peers.node.port, paths)
    assert done.returncode == 0, done.stdout + done.stderr


def _without_number_of_frames(folder: Path, out: Path) -> tuple[list[Path], list[str]]:
    """Copies of the photographs without NumberOfFrames; their paths and SOP Instance UIDs."""
    out.mkdir()
    paths, uids = [], []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert int(ds.NumberOfFrames) == 1
        del ds.NumberOfFrames
        ds.save_as(out / path.name)
        paths.append(out / path.name)
        uids.append(str(ds.SOPInstanceUID))
    return paths, uids


def _ct_copy(source: SyntheticSeries, name: str, out: Path, change: Any) -> tuple[list[Path], str]:
    """The series under a study and series of its own, each slice changed by ``change``."""
    out.mkdir()
    study, series = (uid.generate_uid(entropy_srcs=[name, kind]) for kind in ("study", "series"))
    paths = []
    for path in source.paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = uid.generate_uid(entropy_srcs=[name, ds.SOPInstanceUID])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        change(ds)
        ds.save_as(out / path.name, enforce_file_format=True)
        paths.append(out / path.name)
    return paths, series


def _in_charset(charset: Charset) -> Any:
    def change(ds: Dataset) -> None:
        ds.SpecificCharacterSet = charset.specific_character_set
        ds.PatientName = example_name(charset)
        ds.StudyDescription = charset.study_description
        encoded = pydicom.dcmread(io.BytesIO(_encoded(ds)))
        assert str(encoded.PatientName) == example_name(charset), "the file holds the name"
        assert encoded.StudyDescription == charset.study_description

    return change


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _no_spacing(ds: Dataset) -> None:
    del ds.PixelSpacing
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID


def _job(peers: Peers, series_instance_uid: str | None = None) -> Job | None:
    statement = select(Job)
    if series_instance_uid is None:
        statement = statement.where(Job.model_name == FUNDUS_MODEL)
    else:
        statement = statement.where(Job.series_instance_uid == series_instance_uid)
    jobs = query(peers.node.config, statement)
    assert len(jobs) <= 1, [job.id for job in jobs]
    return jobs[0] if jobs else None


def _delivered(peers: Peers, job: Job | None) -> bool:
    """The job is DONE and each of its results acknowledged by the destination."""
    if job is None:
        return False
    assert job.state != JobState.FAILED, f"the job failed: {job.error}"
    if job.state != JobState.DONE:
        return False
    states = query(
        peers.node.config,
        select(Delivery.state)
        .join(Result, Result.id == Delivery.result_id)
        .where(Result.job_id == job.id),
    )
    return len(states) >= 2 and all(state == DeliveryState.DELIVERED for state in states)


def _results(peers: Peers, job: Job) -> dict[str, list[Dataset]]:
    """The job's results as storescp wrote them (each validated), by SOP Class UID."""
    uids = set(
        query(peers.node.config, select(Result.sop_instance_uid).where(Result.job_id == job.id))
    )
    found: dict[str, list[Dataset]] = {}
    for path in sorted(peers.pacs_dir.iterdir()):
        ds = pydicom.dcmread(path)
        if ds.SOPInstanceUID in uids:
            assert_valid_dicom(path)
            found.setdefault(str(ds.SOPClassUID), []).append(ds)
    return found


def _status(peers: Peers) -> str:
    return subprocess.run(
        [sys.executable, "-m", "cad_node", "status", "--config", str(peers.config_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_a_fundus_pair_without_number_of_frames_is_done_with_warnings_shown(
    sent: Sent, peers: Peers
) -> None:
    wait_for(lambda: _delivered(peers, _job(peers)), JOB_SECONDS, "the fundus pair's results")
    job = _job(peers)
    assert job is not None
    assert job.error is None
    derived = [note for note in job.warnings or () if "NumberOfFrames absent, 1 derived" in note]
    assert sorted(note.split()[1].rstrip(":") for note in derived) == sorted(sent.fundus_uids)

    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{peers.admin_port}", headers=headers) as client:
        listed = client.get("/api/jobs").json()["items"]
    assert [item["warnings"] for item in listed if item["id"] == job.id] == [job.warnings]
    status = _status(peers)
    for note in derived:
        assert f"job {job.id}: {note}" in status

    results = _results(peers, job)
    (sr,) = results[Comprehensive3DSRStorage]
    assert sent.fundus_uids <= set(referenced_uids(sr))
    assert results[SegmentationStorage]
    for seg in results[SegmentationStorage]:
        assert seg.NumberOfFrames >= 1
        assert set(referenced_uids(seg)) & sent.fundus_uids
        assert set(referenced_uids(seg)) <= sent.fundus_uids


@pytest.mark.parametrize("charset_name", SENT_CHARSETS)
def test_seg_and_sr_keep_the_text_of_the_character_set(
    charset_name: str, sent: Sent, peers: Peers
) -> None:
    charset = CHARSETS[charset_name]
    series = sent.series[charset_name]
    wait_for(lambda: _delivered(peers, _job(peers, series)), JOB_SECONDS, "the series' results")
    job = _job(peers, series)
    assert job is not None

    results = _results(peers, job)
    assert set(results) == {SegmentationStorage, Comprehensive3DSRStorage}
    for result in [ds for datasets in results.values() for ds in datasets]:
        assert str(result.PatientName) == example_name(charset)
        assert result.StudyDescription == charset.study_description
        assert result.SpecificCharacterSet == charset.written


def test_a_series_without_pixel_spacing_fails_naming_the_attribute_not_the_patient(
    sent: Sent, peers: Peers
) -> None:
    series = sent.series[NO_SPACING]

    def finished() -> bool:
        job = _job(peers, series)
        return job is not None and job.state in (JobState.DONE, JobState.FAILED)

    wait_for(finished, JOB_SECONDS, "the series' job to finish")
    job = _job(peers, series)
    assert job is not None
    assert job.state == JobState.FAILED
    assert job.error is not None
    assert "PixelSpacing" in job.error, job.error
    assert "no valid PixelSpacing" in job.error, job.error
    status = _status(peers)
    assert job.error in status
    for text in (job.error, status, peers.node.log()):
        for value in (PATIENT_NAME, PATIENT_ID, *PATIENT_NAME.split("^")):
            assert value not in text

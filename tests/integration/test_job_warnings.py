"""A series with attributes missing that a result can derive still gives results; the job
records a warning the admin sees (issue 18, item 4).

A synthetic four-view mammogram whose views lack PatientOrientation goes into a running
``cad-node serve`` by DCMTK storescu: the job ends DONE, and what its SEG and SR derived
(PatientOrientation from ImageLaterality and ViewPosition) shows in ``cad-node status``
and in the admin API's job listing, naming images by UID only.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import select

from cad_node.domain.states import JobState
from cad_node.store.schema import Job
from cad_node.synth import mammo
from tests.dcmtk import free_port, storescu
from tests.integration.peers import query, running_node, wait_for, write_config

pytestmark = pytest.mark.slow

TOKEN = "job-warnings-reader"


def _without_patient_orientation(folder: Path, out: Path) -> list[str]:
    """Copies of the views in ``out`` without PatientOrientation; their SOP Instance UIDs."""
    out.mkdir()
    uids = []
    for path in sorted(folder.glob("*.dcm")):
        dataset = dcmread(path)
        del dataset.PatientOrientation
        dataset.save_as(out / path.name)
        uids.append(str(dataset.SOPInstanceUID))
    return uids


def test_a_mammogram_without_patient_orientation_is_done_with_warnings_shown(
    mammogram: tuple[Path, mammo.MammoTruth], tmp_path: Path
) -> None:
    uids = _without_patient_orientation(mammogram[0], tmp_path / "views")
    admin_port = free_port()
    admin = {
        "port": admin_port,
        "tokens": [
            {"name": "ops", "role": "read", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
        ],
    }
    config_path = write_config(tmp_path, quiet_seconds=2, admin=admin)

    with running_node(config_path, tmp_path / "node.log") as node:
        sent = storescu(node.port, sorted((tmp_path / "views").glob("*.dcm")))
        assert sent.returncode == 0, sent.stderr

        def finished() -> bool:
            states = query(node.config, select(Job.state))
            return len(states) == 1 and states[0] in (JobState.DONE, JobState.FAILED)

        wait_for(finished, 240, "the mammogram's job to finish")
        (job,) = query(node.config, select(Job))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", headers=headers) as client:
            listed = client.get("/api/jobs").json()["items"]
        status = subprocess.run(
            [sys.executable, "-m", "cad_node", "status", "--config", str(config_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    assert (job.state, job.error) == (JobState.DONE, None)
    assert job.warnings is not None
    derived = [note for note in job.warnings if "PatientOrientation absent" in note]
    assert sorted(note.split()[1].rstrip(":") for note in derived) == sorted(uids)
    assert listed[0]["warnings"] == job.warnings
    for note in job.warnings:
        assert f"job {job.id}: {note}" in status

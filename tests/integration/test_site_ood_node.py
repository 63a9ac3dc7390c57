"""A calibrated site model abstains through the whole node (issue 17): ``cad-node models add``
and ``models calibrate`` while ``cad-node serve`` runs, then a series like the calibration cases
gets its SEG and SR, and one unlike them only an SR saying it was not assessed.

Real ``cad-node serve`` and CLI processes, pynetdicom's C-STORE to the node, DCMTK storescp as
the destination; the model is tests/site_runners.py's scripted MONAI bundle.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import SegmentationStorage
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from cad_node.domain.states import JobState
from cad_node.models.site.ood import METHOD
from cad_node.store.schema import Job
from tests.bundles import label_entry
from tests.conftest import send
from tests.dcmtk import free_port
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import running_node, storescp, wait_for, write_config
from tests.integration.test_site_pipeline import admin_settings, models_add, rule, save_rules
from tests.site_runners import write_scripted_bundle
from tests.synthetic import write_ct_series

pytestmark = pytest.mark.slow

NAME, SERIES = "bright", "Site CT"
LABELS = {1: label_entry("bright", "371861004", "Mild intensity")}
SUCCESS = 0x0000
JOBS_SECONDS = 600.0
"""The model's first job (its child imports torch and MONAI) on two busy cores."""


def _jobs(storage: Path) -> list[Job]:
    engine = create_engine(f"sqlite:///{storage / 'journal.sqlite'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(select(Job).order_by(Job.id)))
    finally:
        engine.dispose()


def _finished(storage: Path, count: int) -> bool:
    jobs = _jobs(storage)
    return len(jobs) == count and all(j.state in (JobState.DONE, JobState.FAILED) for j in jobs)


def _calibrate(config: Path, data: Path) -> None:
    command = [
        *(sys.executable, "-m", "cad_node", "models", "--config", str(config), "--device", "cpu"),
        *("calibrate", NAME, "--data", str(data)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr


def test_a_series_unlike_the_calibration_cases_is_not_assessed(tmp_path: Path) -> None:
    pacs_port, pacs_dir, admin_port = free_port(), tmp_path / "pacs", free_port()
    config = write_config(
        tmp_path,
        models_dir=str(tmp_path / "models"),
        device="cpu",
        torch_threads=1,
        workers=1,
        quiet_seconds=1,
        destinations={"pacs": {"host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"}},
        rules=[],
        admin=admin_settings(admin_port),
    )
    storage = Path(yaml.safe_load(config.read_text())["storage_dir"])
    for seed in range(1, 7):
        write_ct_series(tmp_path / "cases" / str(seed), seed=seed, rows=64, slices=12)
    like = write_ct_series(
        tmp_path / "like", seed=50, rows=64, slices=12, series_description=SERIES
    )
    unlike = write_ct_series(
        tmp_path / "unlike",
        seed=51,
        rows=64,
        slices=12,
        slice_thickness_mm=6.0,
        nodule_count=0,
        series_description=SERIES,
    )
    with running_node(config, tmp_path / "node.log") as node, storescp(pacs_port, pacs_dir):
        added = models_add(config, write_scripted_bundle(tmp_path / "bundle"), NAME, LABELS)
        assert "validated domain: not declared - every input accepted" in added
        _calibrate(config, tmp_path / "cases")  # the running node picks the score up
        save_rules(admin_port, rule(NAME, SERIES))
        assert send(node.port, list(like.paths)) == [SUCCESS] * len(like.paths)
        wait_for(lambda: _finished(storage, 1), JOBS_SECONDS, "the first job")
        assert send(node.port, list(unlike.paths)) == [SUCCESS] * len(unlike.paths)
        wait_for(lambda: _finished(storage, 2), JOBS_SECONDS, "the second job")
        wait_for(lambda: len(list(pacs_dir.glob("*"))) >= 3, 120, "a SEG and two SRs")

    assessed, abstained = _jobs(storage)
    assert (assessed.state, abstained.state) == (JobState.DONE, JobState.DONE)
    assert assessed.abstention is None
    assert abstained.abstention is not None
    assert abstained.abstention["reason"] == "out_of_distribution"
    assert abstained.abstention["ood"]["method"] == METHOD
    assert abstained.abstention["ood"]["score"] > abstained.abstention["ood"]["threshold"]

    by_study: dict[str, list[str]] = {}
    for path in sorted(pacs_dir.glob("*")):
        assert_valid_dicom(path)
        dataset = dcmread(path)
        by_study.setdefault(str(dataset.StudyInstanceUID), []).append(str(dataset.SOPClassUID))
    assert SegmentationStorage in by_study[like.study_instance_uid]
    (only,) = by_study[unlike.study_instance_uid]  # the abstention SR, no SEG
    assert only != SegmentationStorage

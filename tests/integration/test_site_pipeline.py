"""A site's MONAI bundle through the whole node: ``cad-node models add``, a rule naming it, a CT
series by C-STORE, and its SEG and SR at the destination; a second bundle that raises fails only
its own job (issue 16, items 1, 2, 4 and 5).

Real ``cad-node serve`` and ``cad-node models add`` processes, pynetdicom's C-STORE to the node,
DCMTK storescp as the destination. The zoo's spleen_ct_segmentation runs unchanged with seeded
weights (tests/bundles.py); the refusing bundle is tests/site_runners.py's.
"""

import hashlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import Dataset, dcmread
from pydicom.uid import SegmentationStorage
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from cad_node.domain.states import JobState
from cad_node.store.schema import Job
from tests.bundles import label_entry, zoo_bundle
from tests.conftest import send
from tests.dcmtk import free_port
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import running_node, storescp, wait_for, write_config
from tests.integration.test_site_process import assert_gone
from tests.site_runners import write_scripted_bundle
from tests.synthetic import SyntheticSeries, write_ct_series

pytestmark = pytest.mark.slow

SPLEEN, REFUSER = "spleen", "refuser"
SPLEEN_SERIES, REFUSED_SERIES = "Spleen CT", "Refused CT"
SUCCESS = 0x0000
JOBS_SECONDS = 600.0
"""Two bundles' first jobs (their children import torch and MONAI) on two busy cores."""
SPLEEN_LABELS = {1: label_entry("spleen", "78961009", "Spleen")}
REFUSER_LABELS = {1: label_entry("spot", "49755003", "Morphologically abnormal structure")}


@dataclass(frozen=True)
class Delivered:
    """What the node did with the two series."""

    jobs: dict[str, Job]
    """By model name."""
    received: list[Path]
    """The files the destination received."""
    spleen_series: SyntheticSeries
    child_pids: list[int]
    """Every site model child process the node logged."""


def models_add(config: Path, folder: Path, name: str, labels: dict[int, Any]) -> str:
    """``cad-node models add FOLDER --name NAME --labels LABELS.yaml --task segmentation``."""
    labels_path = folder.parent / f"{name}-LABELS.yaml"
    labels_path.write_text(yaml.safe_dump(labels, sort_keys=False))
    command = [
        *(sys.executable, "-m", "cad_node", "models", "add", str(folder)),
        *("--name", name, "--labels", str(labels_path), "--task", "segmentation"),
        *("--config", str(config)),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def rule(model: str, series_description: str) -> dict[str, Any]:
    return {
        "name": f"{model}-rule",
        "model": model,
        "destinations": ["pacs"],
        "when": {"keyword": "SeriesDescription", "equals": series_description},
    }


ADMIN_TOKEN = "site-pipeline-admin-token"


def admin_settings(port: int) -> dict[str, Any]:
    token = {
        "name": "ci",
        "role": "admin",
        "sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
    }
    return {"enabled": True, "port": port, "tokens": [token]}


def save_rules(admin_port: int, *rules: dict[str, Any]) -> None:
    """Add ``rules`` through the running node's admin API."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    base_url = f"http://127.0.0.1:{admin_port}"
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        for each in rules:
            answer = client.post("/api/rules", json=each)
            assert answer.status_code == 201, answer.text


def jobs_by_model(storage: Path) -> dict[str, Job]:
    engine = create_engine(f"sqlite:///{storage / 'journal.sqlite'}")
    try:
        with Session(engine) as session:
            return {job.model_name: job for job in session.scalars(select(Job))}
    finally:
        engine.dispose()


def finished(storage: Path) -> bool:
    jobs = jobs_by_model(storage)
    done = (JobState.DONE, JobState.FAILED)
    return len(jobs) == 2 and all(job.state in done for job in jobs.values())


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> Delivered:
    """A refusing bundle's series, then a spleen series, through one node with one worker."""
    tmp = tmp_path_factory.mktemp("site-pipeline")
    pacs_port, pacs_dir, admin_port = free_port(), tmp / "pacs", free_port()
    config = write_config(
        tmp,
        models_dir=str(tmp / "models"),
        device="cpu",
        torch_threads=1,
        workers=1,
        quiet_seconds=1,
        destinations={"pacs": {"host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"}},
        rules=[],
        admin=admin_settings(admin_port),
    )
    storage = Path(yaml.safe_load(config.read_text())["storage_dir"])
    refused = write_ct_series(
        tmp / "refused", seed=161, rows=64, slices=8, series_description=REFUSED_SERIES
    )
    spleen = write_ct_series(
        tmp / "spleen", seed=162, rows=64, slices=8, series_description=SPLEEN_SERIES
    )
    with running_node(config, tmp / "node.log") as node, storescp(pacs_port, pacs_dir):
        # added while the node runs: it picks them up without a restart
        models_add(
            config, zoo_bundle("spleen_ct_segmentation", tmp / "zoo", seed=0), SPLEEN, SPLEEN_LABELS
        )
        models_add(
            config, write_scripted_bundle(tmp / "refuser", refuse=True), REFUSER, REFUSER_LABELS
        )
        # a rule may name a model only once it is installed (issue 24): saved now, at once
        save_rules(admin_port, rule(SPLEEN, SPLEEN_SERIES), rule(REFUSER, REFUSED_SERIES))
        assert send(node.port, list(refused.paths)) == [SUCCESS] * len(refused.paths)
        assert send(node.port, list(spleen.paths)) == [SUCCESS] * len(spleen.paths)
        wait_for(lambda: finished(storage), JOBS_SECONDS, "both jobs to finish")
        wait_for(lambda: len(list(pacs_dir.glob("*"))) >= 2, 120, "the SEG and the SR")
        pids = [int(pid) for pid in re.findall(r"process (\d+) ready", node.log())]
    return Delivered(jobs_by_model(storage), sorted(pacs_dir.glob("*")), spleen, pids)


def test_the_refusing_bundle_fails_only_its_own_job_with_its_message(
    delivered: Delivered,
) -> None:
    refused, spleen = delivered.jobs[REFUSER], delivered.jobs[SPLEEN]

    assert refused.state == JobState.FAILED
    assert refused.error == f"model {REFUSER}: bundle says no"
    assert spleen.state == JobState.DONE, spleen.error
    assert spleen.id > refused.id, "the spleen job ran after the failure"


def test_the_spleen_seg_and_sr_arrive_valid_with_the_labels_code(delivered: Delivered) -> None:
    results = {str(ds.SOPClassUID): ds for ds in map(dcmread, delivered.received)}
    assert len(results) == 2, "one SEG and one SR"
    for path in delivered.received:
        assert_valid_dicom(path)

    seg = results.pop(SegmentationStorage)
    (sr,) = results.values()
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "spleen"
    assert _code(segment.SegmentedPropertyTypeCodeSequence[0]) == ("78961009", "SCT", "Spleen")
    assert _code(segment.SegmentedPropertyCategoryCodeSequence[0]) == (
        "123037004",
        "SCT",
        "Anatomical structure",
    )
    for result in (seg, sr):
        assert result.StudyInstanceUID == delivered.spleen_series.study_instance_uid
    assert _referenced(seg) & set(delivered.spleen_series.sop_instance_uids)


def test_no_site_model_process_outlives_the_node(delivered: Delivered) -> None:
    assert delivered.child_pids, "the node logged no site model process"
    for pid in delivered.child_pids:
        assert_gone(pid)


def _code(item: Dataset) -> tuple[str, str, str]:
    return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def _referenced(dataset: Dataset) -> set[str]:
    return {
        str(element.value)
        for element in dataset.iterall()
        if element.keyword == "ReferencedSOPInstanceUID"
    }

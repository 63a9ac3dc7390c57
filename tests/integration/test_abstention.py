"""Abstention through a node, with real peers: real images no one here made go, by permissive
rules, to each shipped model, and the node says they were NOT ASSESSED, and why.

pynetdicom C-STOREs into a node started in this process; DCMTK storescp is the PACS. Under
``on_out_of_domain: report`` one SR arrives saying so (valid to dciodvfy and DicomSRValidator),
no SEG; under ``skip`` nothing is sent; under ``run_anyway`` the findings arrive and the SR
carries the caveat. The journal, ``cad-node status``, the admin API and the metrics count the
abstentions per model and reason.
"""

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import SegmentationStorage
from sqlalchemy import select

from cad_node.app import Node
from cad_node.commands.status import render_status
from cad_node.config import Settings
from cad_node.domain.abstention import AbstentionReason, OodScore
from cad_node.domain.image_sets import ImageSet, PlanarResult
from cad_node.domain.states import JobState
from cad_node.models.base import InputKind
from cad_node.models.manifest import Manifest
from cad_node.models.registry import FACTORIES
from cad_node.store.schema import Delivery, Job, Result
from tests.conftest import send
from tests.dcmtk import NODE_AE_TITLE, free_port
from tests.dicom_validation import assert_valid_dicom, sr_validator_errors
from tests.integration.conftest import ADMIN_TOKEN, admin_tokens, api_client, in_process_node
from tests.integration.peers import storescp, wait_for
from tests.real_images import as_new_series, real_ct_series, real_file, retina_photograph

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

LUNG, MAMMO, FUNDUS = "lung_nodule_ct", "mammo_screening", "fundus_dr"
SR_MODALITY = "SR"


def rule(model: str, action: str) -> dict[str, Any]:
    """A permissive rule: every series described ``to <model>`` goes to ``model``."""
    return {
        "name": f"to-{model}",
        "mode": "active",
        "model": model,
        "destinations": ["pacs"],
        "when": {"keyword": "SeriesDescription", "equals": f"to {model}"},
        "on_out_of_domain": action,
    }


def settings_for(tmp_path: Path, action: str) -> Settings:
    """A node whose rules send to each shipped model (and to OOD_DOUBLE, installed in its
    ``models_dir``), choosing ``action`` out of domain."""
    install_ood_double(tmp_path / "storage" / "models")
    return Settings.model_validate(
        {
            "ae_title": NODE_AE_TITLE,
            "port": 0,
            "bind_address": "127.0.0.1",
            "storage_dir": str(tmp_path / "storage"),
            "quiet_seconds": 0.5,
            "device": "cpu",
            "destinations": {
                "pacs": {"host": "127.0.0.1", "port": free_port(), "ae_title": "PACS"}
            },
            "rules": [rule(model, action) for model in (LUNG, MAMMO, FUNDUS, OOD_DOUBLE)],
            "admin": {"port": free_port(), "tokens": admin_tokens()},
        }
    )


@pytest.fixture
def pacs_dir(tmp_path: Path) -> Path:
    return tmp_path / "pacs"


# -- a model double with an OOD score over its threshold ----------------------------------------

OOD_DOUBLE = "ood_double"
DOUBLE_SCORE = OodScore("test double", 48.0, 12.0)


class OodDouble:
    """Reads an image set, finds nothing, and scores it out of distribution."""

    input_kind = InputKind.IMAGE_SET

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.identity = manifest.identity()

    def load(self, device: str) -> None:
        pass

    def predict(self, images: ImageSet) -> PlanarResult:
        return PlanarResult(self.identity, images.study_instance_uid, (), (), ood=DOUBLE_SCORE)


def install_ood_double(models_dir: Path) -> None:
    """A model folder of family ``ood_double`` declaring no validated domain."""
    folder = models_dir / OOD_DOUBLE
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": OOD_DOUBLE,
        "version": "1",
        "family": OOD_DOUBLE,
        "modality": "OP",
        "weights_file": "none",
        "sha256": "0" * 64,
        "operating_threshold": 0.5,
        "intended_use": "tests: a model whose OOD score is always over its threshold",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(autouse=True)
def _ood_double_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FACTORIES, OOD_DOUBLE, OodDouble)


@contextmanager
def start(tmp_path: Path, pacs_dir: Path, action: str) -> Iterator[Node]:
    """The node, with storescp as its ``pacs``, running while the block runs."""
    settings = settings_for(tmp_path, action)
    with in_process_node(settings) as node, storescp(settings.destinations["pacs"].port, pacs_dir):
        yield node


def jobs(node: Node) -> list[Job]:
    with node.sessions() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def all_done(node: Node, count: int) -> bool:
    finished = [job for job in jobs(node) if job.state in (JobState.DONE, JobState.FAILED)]
    return len(finished) == count


def deliveries(node: Node) -> list[Delivery]:
    with node.sessions() as session:
        return list(session.scalars(select(Delivery)))


def all_delivered(node: Node, count: int) -> bool:
    sent = [d for d in deliveries(node) if d.state == "delivered"]
    return len(sent) == count


def received(pacs_dir: Path) -> list[Dataset]:
    return [dcmread(path) for path in sorted(pacs_dir.glob("*")) if path.is_file()]


def texts(dataset: Dataset) -> list[str]:
    """Every TEXT content item's value in an SR's content tree."""
    found: list[str] = []
    for item in dataset.get("ContentSequence", ()):
        if item.get("ValueType") == "TEXT":
            found.append(str(item.TextValue))
        found += texts(item)
    return found


def assert_valid_sr(path: Path) -> None:
    assert_valid_dicom(path)
    assert sr_validator_errors(path) == []


REAL_INPUTS = {
    LUNG: lambda: as_new_series(real_file("CT_small.dcm"), f"to {LUNG}"),
    MAMMO: lambda: as_new_series(real_file("RG1_UNCI.dcm"), f"to {MAMMO}"),
    FUNDUS: lambda: retina_photograph(f"to {FUNDUS}"),
}
"""A real image for each shipped model: a GE CT, a Philips CR chest radiograph, the retina."""
EXPECTED_DETAIL = {
    LUNG: "Manufacturer 'GE MEDICAL SYSTEMS' is not among the validated manufacturers",
    MAMMO: "Modality 'CR' is not among the validated modalities ('MG')",
    FUNDUS: "Manufacturer is absent; the validated manufacturers are ('cad-node synthetic')",
}


def send_real_images(node: Node, models: Sequence[str]) -> dict[str, Dataset]:
    sent = {model: REAL_INPUTS[model]() for model in models}
    for dataset in sent.values():
        assert send(node.scp.port, [dataset]) == [0x0000]
    return sent


def test_real_images_to_each_shipped_model_get_one_not_assessed_sr(
    tmp_path: Path, pacs_dir: Path
) -> None:
    models = (LUNG, MAMMO, FUNDUS)
    with start(tmp_path, pacs_dir, "report") as node:
        sent = send_real_images(node, models)
        wait_for(lambda: all_done(node, 3), 120, "the three jobs to end")
        wait_for(lambda: all_delivered(node, 3), 60, "three SRs at the PACS")
        done = {job.model_name: job for job in jobs(node)}
        with api_client(node, ADMIN_TOKEN) as api:
            counted = api.get("/api/summary").json()["abstentions"]
            metrics = api.get("/metrics").text
            listed = api.get("/api/jobs").json()["items"]
            lung_series = sent[LUNG].SeriesInstanceUID
            timeline = api.get(f"/api/series/{lung_series}/timeline").json()["timeline"]
        status = render_status(node.settings)
        with node.sessions() as session:
            results = list(session.scalars(select(Result)))

    assert [result.kind for result in results] == ["sr", "sr", "sr"]
    by_series = {ds.SeriesInstanceUID: ds for ds in received(pacs_dir)}
    assert len(by_series) == 3
    objects = received(pacs_dir)
    assert {ds.Modality for ds in objects} == {SR_MODALITY}
    assert not [ds for ds in objects if ds.SOPClassUID == SegmentationStorage]
    for model in models:
        job = done[model]
        assert job.state == JobState.DONE, job.error
        assert job.finding_count == 0
        assert job.abstention is not None
        assert job.abstention["reason"] == AbstentionReason.OUTSIDE_VALIDATED_DOMAIN
        assert any(EXPECTED_DETAIL[model] in d for d in job.abstention["details"])
        (sr,) = [ds for ds in objects if ds.StudyInstanceUID == sent[model].StudyInstanceUID]
        words = " ".join(texts(sr))
        assert "NOT ASSESSED" in words
        assert EXPECTED_DETAIL[model] in words
    for path in sorted(pacs_dir.glob("*")):
        assert_valid_sr(path)

    assert {(c["model_name"], c["reason"], c["count"]) for c in counted} == {
        (model, "outside_validated_domain", 1) for model in models
    }
    assert (
        'cad_node_abstentions_total{model="fundus_dr",on_out_of_domain="report",'
        'reason="outside_validated_domain"} 1.0' in metrics
    )
    assert {job["abstention"]["reason"] for job in listed} == {"outside_validated_domain"}
    assert {job["on_out_of_domain"] for job in listed} == {"report"}
    (finished,) = [event for event in timeline if "not assessed" in event["summary"]]
    assert "rule said report: SR sent saying so" in finished["summary"]
    assert any(EXPECTED_DETAIL[LUNG] in detail for detail in finished["details"])
    assert f"{LUNG} outside_validated_domain 1 (report)" in status
    assert EXPECTED_DETAIL[LUNG] in status


def test_skip_sends_nothing_and_records_the_abstention(tmp_path: Path, pacs_dir: Path) -> None:
    with start(tmp_path, pacs_dir, "skip") as node:
        send_real_images(node, (LUNG, MAMMO))
        wait_for(lambda: all_done(node, 2), 120, "both jobs to end")
        with node.sessions() as session:
            results = list(session.scalars(select(Result)))
        finished = jobs(node)
        assert deliveries(node) == []

    assert results == []
    assert not list(pacs_dir.glob("*"))
    for job in finished:
        assert job.state == JobState.DONE, job.error
        assert job.on_out_of_domain == "skip"
        assert job.abstention is not None
        assert job.abstention["reason"] == AbstentionReason.OUTSIDE_VALIDATED_DOMAIN


def test_run_anyway_sends_the_findings_with_the_caveat(tmp_path: Path, pacs_dir: Path) -> None:
    """The real fundus photograph, outside the domain (no Manufacturer), assessed anyway."""
    with start(tmp_path, pacs_dir, "run_anyway") as node:
        send_real_images(node, (FUNDUS,))
        wait_for(lambda: all_done(node, 1), 180, "the fundus job to end")
        (job,) = jobs(node)
        assert job.state == JobState.DONE, job.error
        expected = len(deliveries(node))
        wait_for(lambda: all_delivered(node, expected), 60, "the results at the PACS")
        with api_client(node, ADMIN_TOKEN) as api:
            timeline = api.get(f"/api/series/{job.series_instance_uid}/timeline").json()

    assert job.on_out_of_domain == "run_anyway"
    assert job.abstention is not None
    assert job.abstention["reason"] == AbstentionReason.OUTSIDE_VALIDATED_DOMAIN
    assert job.finding_count
    objects = received(pacs_dir)
    (sr,) = [ds for ds in objects if ds.Modality == SR_MODALITY]
    assert [ds for ds in objects if ds.SOPClassUID == SegmentationStorage], "findings sent"
    words = " ".join(texts(sr))
    assert "ASSESSED OUTSIDE ITS VALIDATED DOMAIN" in words
    assert EXPECTED_DETAIL[FUNDUS] in words
    for path in sorted(pacs_dir.glob("*")):
        assert_valid_dicom(path)
    assert any("assessed anyway" in event["summary"] for event in timeline["timeline"])


@pytest.mark.parametrize("action", ["report", "run_anyway"])
def test_an_ood_score_over_its_threshold_abstains_or_qualifies_the_report(
    tmp_path: Path, pacs_dir: Path, action: str
) -> None:
    """The worker's OOD path with a model double (the shipped models' scores: below)."""
    with start(tmp_path, pacs_dir, action) as node:
        photograph = retina_photograph(f"to {OOD_DOUBLE}", manufacturer="cad-node synthetic")
        assert send(node.scp.port, [photograph]) == [0x0000]
        wait_for(lambda: all_done(node, 1), 60, "the job to end")
        wait_for(lambda: all_delivered(node, 1), 60, "the SR at the PACS")
        (job,) = jobs(node)

    assert job.state == JobState.DONE, job.error
    assert job.abstention is not None
    assert job.abstention["reason"] == AbstentionReason.OUT_OF_DISTRIBUTION
    assert job.abstention["ood"] == {"method": "test double", "score": 48.0, "threshold": 12.0}
    (path,) = pacs_dir.glob("*")
    words = " ".join(texts(dcmread(path)))
    verdict = "NOT ASSESSED" if action == "report" else "ASSESSED OUTSIDE ITS VALIDATED DOMAIN"
    assert verdict in words
    assert "out-of-distribution score 48 (test double) is over the model's threshold 12" in words
    assert_valid_sr(path)


def test_an_image_inside_the_domain_by_its_headers_abstains_out_of_distribution(
    tmp_path: Path, pacs_dir: Path
) -> None:
    """The retina under the synthetic generator's Manufacturer: the headers pass, the fundus
    model's learned OOD score does not."""
    with start(tmp_path, pacs_dir, "report") as node:
        photograph = retina_photograph(f"to {FUNDUS}", manufacturer="cad-node synthetic")
        assert send(node.scp.port, [photograph]) == [0x0000]
        wait_for(lambda: all_done(node, 1), 180, "the fundus job to end")
        wait_for(lambda: all_delivered(node, 1), 60, "the SR at the PACS")
        (job,) = jobs(node)

    assert job.state == JobState.DONE, job.error
    assert job.abstention is not None
    assert job.abstention["reason"] == AbstentionReason.OUT_OF_DISTRIBUTION
    ood = job.abstention["ood"]
    assert ood["score"] > ood["threshold"]
    (sr,) = received(pacs_dir)
    assert sr.Modality == SR_MODALITY
    words = " ".join(texts(sr))
    assert "NOT ASSESSED" in words
    assert "out-of-distribution score" in words
    assert_valid_sr(next(pacs_dir.glob("*")))


def test_real_ct_under_the_phantom_headers_abstains_out_of_distribution(
    tmp_path: Path, pacs_dir: Path
) -> None:
    """Real CT pixels under the synthetic generator's headers, so the header check passes:
    an abdominal slice repeated into 64 slices gives the lung model 150 candidates whose
    score is over its threshold; pydicom's small CT repeated into 16 gives none, infinitely
    far (said in words: the SR's NUM and the journal's JSON hold no infinity)."""
    abdomen = real_ct_series("explicit_VR-UN.dcm", tmp_path / "abdomen", f"to {LUNG}", seed=1)
    small = real_ct_series("CT_small.dcm", tmp_path / "small", f"to {LUNG}", slices=16, seed=2)
    with start(tmp_path, pacs_dir, "report") as node:
        for paths in (abdomen, small):
            series = [dcmread(path) for path in paths]
            assert send(node.scp.port, series) == [0x0000] * len(series)
        wait_for(lambda: all_done(node, 2), 300, "the two lung jobs to end")
        wait_for(lambda: all_delivered(node, 2), 60, "two SRs at the PACS")
        done = {job.series_instance_uid: job for job in jobs(node)}
        with api_client(node, ADMIN_TOKEN) as api:
            listed = api.get("/api/jobs").json()["items"]

    scores = {}
    for paths in (abdomen, small):
        header = dcmread(paths[0], stop_before_pixels=True)
        job = done[header.SeriesInstanceUID]
        assert job.state == JobState.DONE, job.error
        assert job.finding_count == 0
        assert job.abstention is not None
        assert job.abstention["reason"] == AbstentionReason.OUT_OF_DISTRIBUTION
        scores[len(paths)] = job.abstention["ood"]
        (sr,) = [ds for ds in received(pacs_dir) if ds.StudyInstanceUID == header.StudyInstanceUID]
        words = " ".join(texts(sr))
        assert "NOT ASSESSED" in words
        assert "Out-of-distribution score" in words
    assert scores[64]["score"] > scores[64]["threshold"]
    assert scores[16]["score"] is None  # infinite: JSON has no number for it
    assert {job["abstention"]["reason"] for job in listed} == {"out_of_distribution"}
    for path in sorted(pacs_dir.glob("*")):
        assert_valid_sr(path)
    infinite = [ds for ds in received(pacs_dir) if "score infinite" in " ".join(texts(ds))]
    assert len(infinite) == 1

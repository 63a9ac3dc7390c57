"""Every finished job leaves its outputs in the journal (issue 22), and outcome labels come in
from a CSV.

The node's Storage SCP receives a synthetic screening mammogram (pynetdicom), and the same
views as another study from a manufacturer the model was not validated on; a lane worker
(batches of 2: two jobs in one forward pass) runs the shipped ``mammo_screening`` model on
them: the mammogram once for a destination and once in shadow, the other study under
``report``, ``skip`` and ``run_anyway``. The findings journaled carry exactly the Tracking
UIDs of the SR written (read back with pydicom, DCM 112040), abstentions are recorded, and
``cad-node feedback import`` matches a CSV's verdicts to them.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from cad_node.cli import main
from cad_node.domain.states import JobState, ResultKind
from cad_node.ingest.scp import StorageSCP
from cad_node.ingest.spool import Spool
from cad_node.models.base import CadModel
from cad_node.models.registry import ModelRegistry
from cad_node.pipeline.work import JobInput
from cad_node.queueing import LaneWorker
from cad_node.results.options import ResultOptions
from cad_node.store.db import create_schema, make_engine, session_factory, sqlite_url
from cad_node.store.jobs import queue_job
from cad_node.store.lanes import ClaimFilter
from cad_node.store.schema import FeedbackRow, FindingOutputRow, Job, JobOutput, Result
from tests.conftest import FakeClock, Journal, send
from tests.dcmtk import NODE_AE_TITLE
from tests.dicom_validation import assert_valid_dicom

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAMMO = "mammo_screening"
TRACKING_UID = ("112040", "DCM")
TRACKING_IDENTIFIER = ("112039", "DCM")


class CountingLaneWorker(LaneWorker):
    """A lane worker that notes how many image sets each batch predicted at once."""

    predicted: list[int]

    def _predict_batch(self, model: CadModel, batch: Sequence[JobInput]) -> None:
        super()._predict_batch(model, batch)
        self.predicted.append(len(self._batch_registry.results))


@dataclass(frozen=True)
class Run:
    storage: Path
    journal: Journal
    mammogram_study: str
    jobs: dict[str, int]
    """Job id by case: active, shadow, report, skip, run_anyway."""
    batches: list[int]


def receive(storage: Path, journal: Journal, items: Sequence[Path | Dataset]) -> None:
    """Send ``items`` to the node's Storage SCP (journaled and spooled before the answer)."""
    scp = StorageSCP(
        ae_title=NODE_AE_TITLE,
        bind_address="127.0.0.1",
        port=0,
        allowed_calling_aets=[],
        spool=Spool(storage),
        sessionmaker=journal.sessionmaker,
        clock=FakeClock(),
    )
    scp.start()
    try:
        assert set(send(scp.port, items)) == {0x0000}
    finally:
        scp.stop()


def from_another_manufacturer(views: Sequence[Path]) -> list[Dataset]:
    """The views as a new study of a manufacturer outside the model's validated domain."""
    study, series = generate_uid(), generate_uid()
    foreign: list[Dataset] = []
    for path in views:
        dataset = dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.Manufacturer = "ACME Imaging"
        foreign.append(dataset)
    return foreign


def queue(journal: Journal, series_uid: str, cases: Sequence[tuple[str, str, bool]]) -> list[int]:
    """One job of MAMMO per (case, on_out_of_domain, to a destination), revisions 1, 2 ..."""
    ids = []
    with journal.sessionmaker.begin() as session:
        for revision, (case, action, active) in enumerate(cases, start=1):
            job = queue_job(
                session,
                series_instance_uid=series_uid,
                series_revision=revision,
                rule_name=case,
                model_name=MAMMO,
                destinations=["pacs"] if active else [],
                now=FakeClock()(),
            )
            job.on_out_of_domain = action
            session.flush()
            ids.append(job.id)
    return ids


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, mammogram: tuple[Path, Any], one_torch_thread: None
) -> Iterator[Run]:
    storage = tmp_path_factory.mktemp("outputs") / "storage"
    storage.mkdir()
    engine = make_engine(sqlite_url(storage / "journal.sqlite"))  # where the default config looks
    create_schema(engine)
    journal = Journal(engine, session_factory(engine))
    views = sorted(mammogram[0].glob("*.dcm"))
    foreign = from_another_manufacturer(views)
    receive(storage, journal, [*views, *foreign])
    first = dcmread(views[0], stop_before_pixels=True)
    mammo_ids = queue(
        journal,
        str(first.SeriesInstanceUID),
        [("active", "report", True), ("shadow", "report", False)],
    )
    abstaining = [
        ("report", "report", True),
        ("skip", "skip", True),
        ("run_anyway", "run_anyway", True),
    ]
    other_ids = queue(journal, str(foreign[0].SeriesInstanceUID), abstaining)
    worker = CountingLaneWorker(
        sessions=journal.sessionmaker,
        registry=ModelRegistry(device="cpu"),
        storage_dir=storage,
        result_options=ResultOptions(),
        result_kinds={},
        clock=FakeClock(),
        worker_id="test:outputs",
        claims=ClaimFilter(frozenset({MAMMO})),
        batch_size=2,
    )
    worker.predicted = []
    while worker.run_next():
        pass
    cases = ["active", "shadow", "report", "skip", "run_anyway"]
    jobs = dict(zip(cases, mammo_ids + other_ids, strict=True))
    yield Run(storage, journal, str(first.StudyInstanceUID), jobs, worker.predicted)
    engine.dispose()


def sr_of(run: Run, job_id: int) -> tuple[str, Path]:
    with run.journal.sessionmaker() as session:
        result = session.scalars(
            select(Result).where(Result.job_id == job_id, Result.kind == ResultKind.SR)
        ).one()
        return result.sop_instance_uid, run.storage / result.path


def output_of(run: Run, job_id: int) -> tuple[JobOutput, list[FindingOutputRow]]:
    with run.journal.sessionmaker() as session:
        output = session.get_one(JobOutput, job_id)
        findings = session.scalars(
            select(FindingOutputRow)
            .where(FindingOutputRow.job_id == job_id)
            .order_by(FindingOutputRow.id)
        )
        return output, list(findings)


def is_concept(item: Dataset, concept: tuple[str, str]) -> bool:
    names = item.get("ConceptNameCodeSequence") or []
    return bool(names) and (names[0].CodeValue, names[0].CodingSchemeDesignator) == concept


def tracked_groups(dataset: Dataset) -> list[tuple[str, str, str | None]]:
    """(Tracking UID, Tracking Identifier, the image its SCOORD is on) of every content item
    group of the SR holding a Tracking UID (DCM 112040), depth first."""
    found: list[tuple[str, str, str | None]] = []
    for item in dataset.get("ContentSequence", []):
        children = item.get("ContentSequence", [])
        uids = [str(c.UID) for c in children if is_concept(c, TRACKING_UID)]
        if uids:
            labels = [str(c.TextValue) for c in children if is_concept(c, TRACKING_IDENTIFIER)]
            images = [
                str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                for c in children
                if c.get("ValueType") == "SCOORD"
                for image in c.get("ContentSequence", [])
            ]
            found.append((uids[0], labels[0] if labels else "", images[0] if images else None))
        found += tracked_groups(item)
    return found


def test_every_job_finished_and_the_mammograms_were_one_batch(run: Run) -> None:
    with run.journal.sessionmaker() as session:
        states = {case: session.get_one(Job, job_id).state for case, job_id in run.jobs.items()}
    assert set(states.values()) == {JobState.DONE}
    assert run.batches == [2, 2, 0]  # two jobs in one forward pass; the last alone


@pytest.mark.parametrize("case", ["active", "shadow", "run_anyway"])
def test_recorded_findings_carry_the_tracking_uids_of_the_sr_written(run: Run, case: str) -> None:
    sr_uid, sr_path = sr_of(run, run.jobs[case])
    assert_valid_dicom(sr_path)
    output, findings = output_of(run, run.jobs[case])
    assert findings, "the mammogram's mass is found"
    drawn = {(uid, label, image) for uid, label, image in tracked_groups(dcmread(sr_path)) if image}
    recorded = {(f.tracking_uid, f.tracking_identifier, f.sop_instance_uid) for f in findings}
    assert recorded == drawn
    mode = "shadow" if case == "shadow" else "active"
    assert (output.mode, output.sr_sop_instance_uid) == (mode, sr_uid)
    if case != "run_anyway":
        assert output.study_instance_uid == run.mammogram_study
    assert (output.finding_count, output.abstained) == (len(findings), False)
    assert output.model_name == MAMMO
    suspicions = output.assessments or []
    assert sorted(a["laterality"] for a in suspicions) == ["L", "R"]
    assert output.score == max(a["score"] for a in suspicions)
    assert {a["value"] for a in suspicions} <= {"suspicious", "not suspicious"}
    assert all(f.probability is not None and f.laterality in ("L", "R") for f in findings)


def test_abstentions_are_recorded_with_their_sr_or_without(run: Run) -> None:
    report_uid, _ = sr_of(run, run.jobs["report"])
    reported, none_found = output_of(run, run.jobs["report"])
    assert (reported.abstained, reported.score, none_found) == (True, None, [])
    assert (reported.finding_count, reported.sr_sop_instance_uid) == (0, report_uid)
    skipped, _ = output_of(run, run.jobs["skip"])
    assert (skipped.abstained, skipped.score, skipped.sr_sop_instance_uid) == (True, None, None)
    active, _ = output_of(run, run.jobs["active"])
    assert (reported.model_version, reported.weights_sha256) == (
        active.model_version,
        active.weights_sha256,
    )
    anyway, found = output_of(run, run.jobs["run_anyway"])
    assert not anyway.abstained  # the model answered; the SR says why it may not hold
    assert anyway.finding_count == len(found) > 0
    assert anyway.study_instance_uid == reported.study_instance_uid != run.mammogram_study


def test_feedback_import_matches_a_csv_to_the_recorded_outputs(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"storage_dir": str(run.storage)}))
    _, findings = output_of(run, run.jobs["active"])
    study = run.mammogram_study
    csv_file = tmp_path / "outcomes.csv"
    csv_file.write_text(
        "study_instance_uid,verdict,tracking_uid,truth,laterality,note\n"
        f"{study},agree,{findings[0].tracking_uid},,,DOE^JANE\n"
        f"{study},outcome,,malignant,L,biopsy\n"
        "1.2.826.0.1.3680043.10.404,outcome,,benign,,\n"
    )
    argv = ["feedback", "import", str(csv_file), "--reviewer", "qa", "--config", str(config)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # the outcome is one row per model's newest job of the study; the unknown study is kept
    assert "3 rows read, 3 feedback rows recorded, 1 unmatched" in printed
    assert "study 1.2.826.0.1.3680043.10.404 was read by no model here" in printed
    with run.journal.sessionmaker() as session:
        rows = list(session.scalars(select(FeedbackRow).order_by(FeedbackRow.id)))
    assert [(r.verdict, r.source, r.reviewer) for r in rows] == [
        ("agree", "csv", "qa"),
        ("outcome", "csv", "qa"),
        ("outcome", "csv", "qa"),
    ]
    assert rows[0].job_id == run.jobs["active"]
    assert rows[0].finding_output_id == findings[0].id
    assert rows[1].job_id == max(run.jobs["active"], run.jobs["shadow"])  # the newest job
    assert rows[2].job_id is None

    assert main(["feedback", "list", "--study", study, "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "feedback: 2 rows (agree 1, outcome 1); 2 matched to a job, 0 unmatched" in listed
    assert findings[0].tracking_uid in listed
    assert "DOE^JANE" not in printed + listed  # notes are never printed

    bad = tmp_path / "bad.csv"
    bad.write_text(f"study_instance_uid,verdict\n{study},maybe\n")
    assert main(["feedback", "import", str(bad), "--reviewer", "qa", "--config", str(config)]) == 2
    refused = capsys.readouterr()
    assert "line 2: verdict 'maybe' is not one of" in refused.err
    with run.journal.sessionmaker() as session:
        assert len(session.scalars(select(FeedbackRow)).all()) == 3  # nothing recorded

"""A journal with ten weeks of three models' outputs and feedback, for the monitoring API and
page tests (issue 22).

Written the way the node writes them: a study, its series (with the routing attributes drift
reads), a job, :func:`record_outputs` for what the job said and :func:`record_feedback` for
what radiologists said of it. Times count back from ``now``:

- ``lung_nodule_ct`` (active, detection): two studies a day from 70 to 50 days ago (the
  baseline), one every 3 days from 45 to 12 days ago, 24 studies in the last 7 days from
  another manufacturer with thicker slices (the drift; its scores and finding counts do
  not move). One abstained. Studies of the last 46 days are reviewed: agree on the first
  finding, disagree on the second, a missed lesion on every fourth.
- ``lung_nodule_ct_next`` (shadow) read the last 20 lung studies too.
- ``mammo_screening`` (classification per breast): 16 studies, an outcome per breast.
- ``fundus_dr`` (grading per eye): 8 studies, an ICDR grade per eye.
"""

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from cad_node.app import Node
from cad_node.domain.monitoring import (
    AssessmentOutput,
    FeedbackItem,
    FeedbackSource,
    FindingOutput,
    ImagePoint,
    JobOutputs,
    Verdict,
)
from cad_node.domain.states import JobState, SeriesState
from cad_node.store.feedback import record_feedback
from cad_node.store.jobs import queue_job
from cad_node.store.outputs import record_outputs
from cad_node.store.schema import Series, Study
from tests.integration.conftest import admin_tokens, in_process_node, node_settings, sha256

LUNG = "lung_nodule_ct"
LUNG_SHADOW = "lung_nodule_ct_next"
MAMMO = "mammo_screening"
FUNDUS = "fundus_dr"
ROOT = "2.25.220622"
SEND_TOKEN = "send-only-token"
CURRENT_LUNG_STUDIES = 24
"""Lung studies of the last 7 days (drift's current window), from another manufacturer."""
ABSTAINED_LUNG_STUDY = 45
"""The index of the one lung study the model abstained on (neither baseline nor current)."""
BASELINE_ATTRIBUTES = {
    "Modality": "CT",
    "Manufacturer": "SynthCT",
    "ManufacturerModelName": "Phantom 1",
    "ConvolutionKernel": "STANDARD",
    "BodyPartExamined": "CHEST",
    "SliceThickness": 1.25,
    "PixelSpacing": [0.7, 0.7],
    "KVP": 120,
}
DRIFTED_ATTRIBUTES = {
    **BASELINE_ATTRIBUTES,
    "Manufacturer": "OtherVendor",
    "ManufacturerModelName": "Scanner X",
    "SliceThickness": 5.0,
}


@dataclass
class MonitoringJournal:
    """What :func:`fill_journal` wrote, for the tests' hand counts."""

    studies: dict[str, list[str]] = field(default_factory=dict)
    """Model -> Study Instance UIDs it read."""
    feedback: dict[str, int] = field(default_factory=dict)
    """Model -> feedback rows recorded for it."""
    abstained: dict[str, int] = field(default_factory=dict)
    verdicts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Model -> verdict (agree, disagree, missed, outcome) -> items."""


class _Uids:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"{ROOT}.{self.count}"


def _job(
    session: Session,
    uids: _Uids,
    *,
    model: str,
    study_uid: str,
    attributes: dict[str, object],
    at: datetime,
    mode: str,
) -> int:
    if session.get(Study, study_uid) is None:
        session.add(Study(study_instance_uid=study_uid, created_at=at))
        session.flush()
    series_uid = uids()
    session.add(
        Series(
            series_instance_uid=series_uid,
            study_instance_uid=study_uid,
            modality=str(attributes.get("Modality", "OT")),
            state=SeriesState.ROUTED,
            revision=1,
            instance_count=1,
            calling_ae_title="SCANNER",
            attributes=attributes,
            first_received_at=at,
            last_received_at=at,
            completed_at=at,
        )
    )
    session.flush()
    job = queue_job(
        session,
        series_instance_uid=series_uid,
        series_revision=1,
        rule_name=f"{model}-rule",
        model_name=model,
        destinations=["pacs"] if mode == "active" else [],
        now=at,
    )
    job.state = JobState.DONE
    job.finished_at = at
    session.flush()
    return job.id


def _finding(uids: _Uids, index: int, probability: float) -> FindingOutput:
    return FindingOutput(
        tracking_uid=uids(),
        tracking_identifier=f"Nodule {index}",
        finding_type="Nodule",
        probability=probability,
        centre=ImagePoint(uids(), 64.0, 64.0 + index),
        diameter_mm=8.0,
    )


def _lung_times(now: datetime) -> list[tuple[datetime, dict[str, object]]]:
    baseline = [now - timedelta(days=70 - 0.5 * step) for step in range(42)]
    middle = [now - timedelta(days=45 - 3 * step) for step in range(12)]
    current = [now - timedelta(days=6.9 - 0.28 * step) for step in range(CURRENT_LUNG_STUDIES)]
    return [(t, BASELINE_ATTRIBUTES) for t in baseline + middle] + [
        (t, DRIFTED_ATTRIBUTES) for t in current
    ]


def _record(
    session: Session,
    journal: MonitoringJournal,
    model: str,
    items: Sequence[FeedbackItem],
    now: datetime,
) -> None:
    recorded = record_feedback(session, items, now)
    assert not recorded.unmatched, recorded.unmatched
    journal.feedback[model] = journal.feedback.get(model, 0) + recorded.recorded
    counts = journal.verdicts.setdefault(model, {})
    for item in items:
        counts[item.verdict.value] = counts.get(item.verdict.value, 0) + 1


def _lung(session: Session, uids: _Uids, journal: MonitoringJournal, now: datetime) -> None:
    times = _lung_times(now)
    for index, (at, attributes) in enumerate(times):
        study_uid = uids()
        abstained = index == ABSTAINED_LUNG_STUDY
        top = 0.5 + 0.05 * (index % 10)  # the same scores every week: the outputs do not drift
        findings = (
            ()
            if abstained
            else tuple(_finding(uids, n + 1, round(top - 0.1 * n, 3)) for n in range(1 + index % 2))
        )
        for model, mode in ((LUNG, "active"), (LUNG_SHADOW, "shadow")):
            if model == LUNG_SHADOW and index < len(times) - 20:
                continue
            job_id = _job(
                session,
                uids,
                model=model,
                study_uid=study_uid,
                attributes=attributes,
                at=at,
                mode=mode,
            )
            own = (
                findings
                if model == LUNG
                else tuple(_finding(uids, 1, f.probability or 0.5) for f in findings[:1])
            )
            score = max((f.probability or 0.0 for f in own), default=None)
            outputs = JobOutputs(
                model_name=model,
                model_version="1.0.0" if model == LUNG else "1.1.0-rc1",
                weights_sha256=("a" if model == LUNG else "b") * 64,
                study_instance_uid=study_uid,
                mode=mode,
                score=None if abstained else score,
                findings=own,
                abstained=abstained,
                sr_sop_instance_uid=uids(),
            )
            record_outputs(session, job_id, outputs, at)
            journal.studies.setdefault(model, []).append(study_uid)
            journal.abstained[model] = journal.abstained.get(model, 0) + int(abstained)
            if at >= now - timedelta(days=46) and own:
                verdicts = _lung_verdicts(model, study_uid, own, index)
                _record(session, journal, model, verdicts, at)


def _lung_verdicts(
    model: str, study_uid: str, findings: Sequence[FindingOutput], index: int
) -> list[FeedbackItem]:
    items = [
        FeedbackItem(
            source=FeedbackSource.REVIEW,
            reviewer="carol",
            study_instance_uid=study_uid,
            verdict=Verdict.AGREE if n == 0 else Verdict.DISAGREE,
            tracking_uid=finding.tracking_uid,
        )
        for n, finding in enumerate(findings)
    ]
    if index % 4 == 0:
        point = ImagePoint(findings[0].centre.sop_instance_uid, 20.0, 30.0)
        items.append(
            FeedbackItem(
                source=FeedbackSource.API,
                reviewer="carol",
                study_instance_uid=study_uid,
                verdict=Verdict.MISSED,
                location=point,
                model_name=model,
            )
        )
    return items


def _assessed(
    session: Session,
    uids: _Uids,
    journal: MonitoringJournal,
    *,
    model: str,
    at: datetime,
    assessments: tuple[AssessmentOutput, ...],
    truths: dict[str, str],
) -> None:
    study_uid = uids()
    modality = "MG" if model == MAMMO else "OP"
    job_id = _job(
        session,
        uids,
        model=model,
        study_uid=study_uid,
        attributes={"Modality": modality, "Manufacturer": "Synth"},
        at=at,
        mode="active",
    )
    outputs = JobOutputs(
        model_name=model,
        model_version="1.0.0",
        weights_sha256="c" * 64,
        study_instance_uid=study_uid,
        mode="active",
        score=max(a.score for a in assessments),
        assessments=assessments,
        sr_sop_instance_uid=uids(),
    )
    record_outputs(session, job_id, outputs, at)
    journal.studies.setdefault(model, []).append(study_uid)
    items = [
        FeedbackItem(
            source=FeedbackSource.CSV,
            reviewer="outcomes.csv",
            study_instance_uid=study_uid,
            verdict=Verdict.OUTCOME,
            laterality=side,
            truth=truth,
            model_name=model,
        )
        for side, truth in truths.items()
    ]
    _record(session, journal, model, items, at)


def _mammo(session: Session, uids: _Uids, journal: MonitoringJournal, now: datetime) -> None:
    rng = random.Random(7)
    for index in range(16):
        assessments = []
        truths = {}
        for side in ("R", "L"):
            positive = (index + (side == "L")) % 3 == 0
            score = round(min(max(rng.gauss(0.7 if positive else 0.3, 0.2), 0.01), 0.99), 3)
            value = "suspicious" if score >= 0.5 else "not suspicious"
            assessments.append(AssessmentOutput("breast_suspicion", side, score, value))
            truths[side] = "malignant" if positive else "benign"
        at = now - timedelta(days=60 - 3.5 * index)
        _assessed(
            session,
            uids,
            journal,
            model=MAMMO,
            at=at,
            assessments=tuple(assessments),
            truths=truths,
        )


def _fundus(session: Session, uids: _Uids, journal: MonitoringJournal, now: datetime) -> None:
    for index in range(8):
        assessments = []
        truths = {}
        for side in ("R", "L"):
            truth = (index + (side == "L")) % 5
            grade = truth if index % 3 else min(truth + 1, 4)
            assessments.append(
                AssessmentOutput("diabetic_retinopathy", side, float(grade), str(grade))
            )
            truths[side] = str(truth)
        at = now - timedelta(days=40 - 4 * index)
        _assessed(
            session,
            uids,
            journal,
            model=FUNDUS,
            at=at,
            assessments=tuple(assessments),
            truths=truths,
        )


def fill_journal(session: Session, now: datetime) -> MonitoringJournal:
    """Write the three models' outputs and feedback (in the caller's transaction)."""
    journal = MonitoringJournal()
    uids = _Uids()
    _lung(session, uids, journal, now)
    _mammo(session, uids, journal, now)
    _fundus(session, uids, journal, now)
    return journal


@contextmanager
def monitored_node(folder: Path) -> Iterator[tuple[Node, MonitoringJournal]]:
    """A running node in ``folder`` whose journal :func:`fill_journal` wrote (now), with the
    admin and read tokens of the integration tier and a send token (:data:`SEND_TOKEN`)."""
    tokens = [*admin_tokens(), {"name": "scanner", "role": "send", "sha256": sha256(SEND_TOKEN)}]
    with in_process_node(node_settings(folder, tokens=tokens)) as node:
        with node.sessions.begin() as session:
            journal = fill_journal(session, datetime.now(UTC))
        yield node, journal

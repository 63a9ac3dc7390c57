"""What the monitoring reads from the journal, as plain frozen records (issue 22).

The queries here are the only SQLAlchemy of local performance: :mod:`performance`
computes its figures from these records with pure functions, so its tests need no journal.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from cad_node.domain.monitoring import AssessmentOutput, Verdict
from cad_node.store.schema import FeedbackRow, FindingOutputRow, Job, JobOutput

IN_CLAUSE_CHUNK = 500
"""UIDs per ``IN (...)``: well inside SQLite's and PostgreSQL's limits on bound values."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The newest job of one (model, study): what the model said of the study."""

    job_id: int
    model_name: str
    model_version: str
    weights_sha256: str
    mode: str
    study_instance_uid: str
    series_instance_uid: str
    recorded_at: datetime
    score: float | None
    abstained: bool
    finding_count: int
    assessments: tuple[AssessmentOutput, ...] = ()


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """One finding of a job."""

    finding_id: int
    job_id: int
    tracking_uid: str
    finding_type: str
    probability: float | None
    laterality: str | None


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One feedback row about a study the model read (every row; the newest-verdict rule is
    :mod:`performance`'s)."""

    feedback_id: int
    received_at: datetime
    study_instance_uid: str
    verdict: Verdict
    model_name: str | None
    job_id: int | None
    tracking_uid: str | None
    laterality: str | None
    truth: str | None


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A version of the model with outputs in the period."""

    model_version: str
    weights_sha256: str
    jobs: int
    first_recorded: datetime
    last_recorded: datetime
    modes: tuple[str, ...]


def model_names(session: Session) -> list[str]:
    """Every model with outputs in the journal, sorted."""
    return list(session.scalars(select(JobOutput.model_name).distinct().order_by("model_name")))


def newest_jobs(
    session: Session, model_name: str, since: datetime, until: datetime
) -> list[JobRecord]:
    """The newest job (highest job id) of ``model_name`` per study among those recorded in
    ``[since, until)``: a re-run replaces the earlier job. Ordered by job id."""
    newest = (
        select(func.max(JobOutput.job_id))
        .where(
            JobOutput.model_name == model_name,
            JobOutput.recorded_at >= since,
            JobOutput.recorded_at < until,
        )
        .group_by(JobOutput.study_instance_uid)
    )
    rows = session.execute(
        select(JobOutput, Job.series_instance_uid)
        .join(Job, Job.id == JobOutput.job_id)
        .where(JobOutput.job_id.in_(newest))
        .order_by(JobOutput.job_id)
    )
    return [_job_record(output, series_uid) for output, series_uid in rows]


def _job_record(output: JobOutput, series_instance_uid: str) -> JobRecord:
    return JobRecord(
        job_id=output.job_id,
        model_name=output.model_name,
        model_version=output.model_version,
        weights_sha256=output.weights_sha256,
        mode=output.mode,
        study_instance_uid=output.study_instance_uid,
        series_instance_uid=series_instance_uid,
        recorded_at=output.recorded_at,
        score=output.score,
        abstained=output.abstained,
        finding_count=output.finding_count,
        assessments=tuple(_assessment(row) for row in output.assessments or ()),
    )


def _assessment(row: dict[str, Any]) -> AssessmentOutput:
    return AssessmentOutput(
        kind=str(row["kind"]),
        laterality=row.get("laterality"),
        score=float(row["score"]),
        value=str(row["value"]),
    )


def findings_of(session: Session, job_ids: Iterable[int]) -> list[FindingRecord]:
    """The findings of the jobs ``job_ids``, ordered by id."""
    records: list[FindingRecord] = []
    for chunk in _chunks(sorted(set(job_ids))):
        rows = session.scalars(select(FindingOutputRow).where(FindingOutputRow.job_id.in_(chunk)))
        records += [
            FindingRecord(
                finding_id=row.id,
                job_id=row.job_id,
                tracking_uid=row.tracking_uid,
                finding_type=row.finding_type,
                probability=row.probability,
                laterality=row.laterality,
            )
            for row in rows
        ]
    return sorted(records, key=lambda record: record.finding_id)


def feedback_of(
    session: Session, model_name: str, study_instance_uids: Iterable[str]
) -> list[FeedbackRecord]:
    """Feedback rows on the studies for ``model_name`` or for no model (an unmatched verdict
    on a finding is still matched here by its Tracking UID), ordered by (received_at, id)."""
    records: list[FeedbackRecord] = []
    for chunk in _chunks(sorted(set(study_instance_uids))):
        rows = session.scalars(
            select(FeedbackRow).where(
                FeedbackRow.study_instance_uid.in_(chunk),
                or_(FeedbackRow.model_name == model_name, FeedbackRow.model_name.is_(None)),
            )
        )
        records += [_feedback_record(row) for row in rows]
    return sorted(records, key=lambda record: (record.received_at, record.feedback_id))


def _feedback_record(row: FeedbackRow) -> FeedbackRecord:
    return FeedbackRecord(
        feedback_id=row.id,
        received_at=row.received_at,
        study_instance_uid=row.study_instance_uid,
        verdict=Verdict(row.verdict),
        model_name=row.model_name,
        job_id=row.job_id,
        tracking_uid=row.tracking_uid,
        laterality=row.laterality,
        truth=row.truth,
    )


def model_versions(
    session: Session, model_name: str, since: datetime, until: datetime
) -> list[VersionRecord]:
    """The versions of ``model_name`` whose jobs were recorded in ``[since, until)``, oldest
    first (every job, also those a re-run replaced)."""
    rows = session.execute(
        select(
            JobOutput.model_version,
            JobOutput.weights_sha256,
            JobOutput.mode,
            func.count(),
            func.min(JobOutput.recorded_at),
            func.max(JobOutput.recorded_at),
        )
        .where(
            JobOutput.model_name == model_name,
            JobOutput.recorded_at >= since,
            JobOutput.recorded_at < until,
        )
        .group_by(JobOutput.model_version, JobOutput.weights_sha256, JobOutput.mode)
    )
    merged: dict[tuple[str, str], list[Any]] = {}
    for version, sha256, mode, count, oldest, newest in rows:
        first, last = _aware(oldest), _aware(newest)
        entry = merged.setdefault((version, sha256), [0, first, last, set()])
        entry[0] += count
        entry[1], entry[2] = min(entry[1], first), max(entry[2], last)
        entry[3].add(mode)
    versions = [
        VersionRecord(version, sha256, jobs, first, last, tuple(sorted(modes)))
        for (version, sha256), (jobs, first, last, modes) in merged.items()
    ]
    return sorted(versions, key=lambda record: (record.first_recorded, record.model_version))


def _aware(moment: datetime) -> datetime:
    """A naive value from the journal is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), IN_CLAUSE_CHUNK):
        yield values[start : start + IN_CLAUSE_CHUNK]

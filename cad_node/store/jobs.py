"""Journal operations on jobs: queue, claim with a lease, finish, fail, reclaim.

Claiming uses ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so workers
on several hosts never take the same job; SQLite ignores the locking clause and
relies on its single writer, with the state checked again in the UPDATE.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cad_node.domain.priority import DEFAULT_CLASS, PriorityClass
from cad_node.domain.states import DeliveryState, JobState, ResultKind
from cad_node.store.lanes import LANE_FILTER, ClaimFilter
from cad_node.store.schema import Delivery, Job, Result


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A result object written to disk, ready to be journaled."""

    kind: ResultKind
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    path: str
    """Relative to storage_dir."""
    destinations: tuple[str, ...]


def queue_job(
    session: Session,
    *,
    series_instance_uid: str,
    series_revision: int,
    rule_name: str,
    model_name: str,
    destinations: Sequence[str],
    now: datetime,
    series_group: Sequence[str] | None = None,
    priority_class: PriorityClass | None = None,
) -> Job:
    """Queue a job on a series; ``series_group``: every series it reads (a study group);
    ``priority_class``: its clinical priority (None: routine)."""
    job = Job(
        series_instance_uid=series_instance_uid,
        series_revision=series_revision,
        rule_name=rule_name,
        model_name=model_name,
        destinations=list(destinations),
        state=JobState.QUEUED,
        attempts=0,
        created_at=now,
        series_group=list(series_group) if series_group else None,
        priority_class=priority_class.value if priority_class is not None else None,
        priority_rank=(priority_class or DEFAULT_CLASS).rank,
    )
    session.add(job)
    session.flush()
    return job


def claim_next_job(
    session: Session,
    worker_id: str,
    now: datetime,
    lease_seconds: float,
    *,
    models: Collection[str] | None = None,
) -> Job | None:
    """Take the most urgent queued job (lowest ``priority_rank``, oldest first within it) and
    hold it under a lease; None when the queue is empty.

    ``models``: only jobs of these models; None: those the lane this thread claims for lets
    through (:func:`cad_node.store.lanes.claiming_for`), else any.
    """
    lane = LANE_FILTER.get() if models is None else ClaimFilter(frozenset(models))
    statement = select(Job).where(Job.state == JobState.QUEUED)
    if lane is not None and lane.include is not None:
        statement = statement.where(Job.model_name.in_(sorted(lane.include)))
    if lane is not None and lane.exclude:
        statement = statement.where(Job.model_name.not_in(sorted(lane.exclude)))
    statement = (
        statement.order_by(Job.priority_rank, Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    job = session.scalars(statement).first()
    if job is None:
        return None
    claimed = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.QUEUED)
        .values(
            state=JobState.RUNNING,
            worker_id=worker_id,
            started_at=now,
            attempts=Job.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        return None
    session.refresh(job)
    return job


def renew_lease(session: Session, job_id: int, worker_id: str, until: datetime) -> bool:
    """Extend a running job's lease; False when the job is no longer ours."""
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.state == JobState.RUNNING)
        .values(lease_expires_at=until)
    )
    return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]


def requeue_expired(session: Session, now: datetime) -> int:
    """Put running jobs whose lease has expired (their worker died) back in the queue."""
    requeued = session.execute(
        update(Job)
        .where(Job.state == JobState.RUNNING, Job.lease_expires_at <= now)
        .values(state=JobState.QUEUED, worker_id=None, lease_expires_at=None)
    )
    return int(requeued.rowcount)  # type: ignore[attr-defined]


def requeue_all_running(session: Session) -> int:
    """On a single node's start-up every running job is orphaned: run them again."""
    requeued = session.execute(
        update(Job)
        .where(Job.state == JobState.RUNNING)
        .values(state=JobState.QUEUED, worker_id=None, lease_expires_at=None)
    )
    return int(requeued.rowcount)  # type: ignore[attr-defined]


def complete_job(
    session: Session,
    job: Job,
    results: Sequence[StoredResult],
    finding_count: int,
    now: datetime,
    *,
    stage_seconds: Mapping[str, float] | None = None,
    warnings: Sequence[str] = (),
    abstention: Mapping[str, Any] | None = None,
) -> None:
    """Journal the results, one pending delivery per (result, destination), and close the job
    with the ``warnings`` of its run (what was derived or left out; UIDs only) and its
    ``abstention`` (:func:`cad_node.domain.domain_check.abstention_record`; None: none)."""
    for stored in results:
        result = Result(
            job_id=job.id,
            kind=stored.kind,
            sop_class_uid=stored.sop_class_uid,
            sop_instance_uid=stored.sop_instance_uid,
            series_instance_uid=stored.series_instance_uid,
            path=stored.path,
            created_at=now,
        )
        session.add(result)
        session.flush()
        for destination in stored.destinations:
            session.add(
                Delivery(
                    result_id=result.id,
                    destination=destination,
                    state=DeliveryState.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                )
            )
    job.state = JobState.DONE
    job.finished_at = now
    job.finding_count = finding_count
    job.stage_seconds = dict(stage_seconds) if stage_seconds is not None else None
    job.warnings = list(warnings) or None
    job.abstention = dict(abstention) if abstention is not None else None
    job.lease_expires_at = None
    job.error = None


def fail_job(job: Job, reason: str, now: datetime) -> None:
    job.state = JobState.FAILED
    job.finished_at = now
    job.lease_expires_at = None
    job.error = reason


def earlier_results(
    session: Session, series_instance_uid: str, before_revision: int, kind: ResultKind
) -> Sequence[Result]:
    """Results of earlier revisions of the series (a re-run's predecessors)."""
    statement = (
        select(Result)
        .join(Job, Result.job_id == Job.id)
        .where(
            Job.series_instance_uid == series_instance_uid,
            Job.series_revision < before_revision,
            Result.kind == kind,
        )
        .order_by(Job.series_revision)
    )
    return session.scalars(statement).all()

"""Journal operations of clinical priority: promotion of long waits, time to result.

A queued job waiting past its class's age limit (``queue.age_limit_minutes``) is
promoted one rank; the wait restarts at ``promoted_at``, so a screening job
waits the screening limit, then the routine limit, then the urgent one before
it ranks with stat. Its ``priority_class`` keeps the class it was queued with.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cad_node.domain.priority import DEFAULT_CLASS, PriorityClass
from cad_node.domain.states import JobState
from cad_node.store.schema import Job, Series


def promote_waiting(
    session: Session, now: datetime, age_limits: Mapping[PriorityClass, timedelta]
) -> int:
    """Promote each queued job whose wait in its current rank passed the rank's limit; how many.

    Ranks are promoted most urgent first, so a job moves at most one rank per call.
    """
    promoted = 0
    for rank_class in sorted(age_limits, key=lambda c: c.rank):
        if rank_class.rank == 0:
            continue  # stat is the top
        waited_since = func.coalesce(Job.promoted_at, Job.created_at)
        result = session.execute(
            update(Job)
            .where(
                Job.state == JobState.QUEUED,
                Job.priority_rank == rank_class.rank,
                waited_since <= now - age_limits[rank_class],
            )
            .values(priority_rank=rank_class.rank - 1, promoted_at=now)
            .execution_options(synchronize_session=False)
        )
        promoted += int(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE
    return promoted


@dataclass(frozen=True, slots=True)
class TimeToResult:
    """One finished job's time from its series' last instance to its results written."""

    priority_class: PriorityClass
    model_name: str
    seconds: float


def times_to_result(session: Session, since: datetime | None = None) -> list[TimeToResult]:
    """Every DONE job's time to result (finished since ``since`` when given), oldest first."""
    query = (
        select(Job.priority_class, Job.model_name, Series.last_received_at, Job.finished_at)
        .join(Series, Series.series_instance_uid == Job.series_instance_uid)
        .where(Job.state == JobState.DONE, Job.finished_at.is_not(None))
        .order_by(Job.finished_at)
    )
    if since is not None:
        query = query.where(Job.finished_at >= since)
    rows = []
    for class_value, model_name, received, finished in session.execute(query).all():
        if received is None or finished is None:
            continue
        rows.append(
            TimeToResult(
                _class_of(class_value), model_name, max((finished - received).total_seconds(), 0)
            )
        )
    return rows


def _class_of(value: str | None) -> PriorityClass:
    try:
        return PriorityClass(value) if value else DEFAULT_CLASS
    except ValueError:
        return DEFAULT_CLASS

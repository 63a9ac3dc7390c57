"""Journal operations on series: completion and the routing outcome."""

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cad_node.assembly.completion import SeriesProgress, quiet_cutoff
from cad_node.domain.states import SeriesState
from cad_node.store.schema import Instance, Series


def series_due(session: Session, now: datetime, quiet_seconds: float) -> Sequence[Series]:
    """Receiving series that have gone quiet or hold their expected count, oldest first.

    The rows stay locked (PostgreSQL) until the caller's transaction ends, so a
    late instance recorded meanwhile waits and then raises the series revision
    instead of slipping into a series already being routed.
    """
    statement = (
        select(Series)
        .where(Series.state == SeriesState.RECEIVING)
        .where(
            or_(
                Series.last_received_at <= quiet_cutoff(now, quiet_seconds),
                Series.instance_count >= Series.expected_count,
            )
        )
        .order_by(Series.last_received_at)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(statement).all()


def progress_of(series: Series) -> SeriesProgress:
    return SeriesProgress(
        series_instance_uid=series.series_instance_uid,
        instance_count=series.instance_count,
        expected_count=series.expected_count,
        last_received_at=series.last_received_at,
    )


def mark_complete(series: Series, now: datetime) -> None:
    series.state = SeriesState.COMPLETE
    series.completed_at = now


def mark_routed(series: Series, rule_name: str | None, explanation: str) -> None:
    """Record the routing outcome; ``rule_name`` None means no rule matched."""
    series.state = SeriesState.ROUTED if rule_name else SeriesState.UNROUTED
    series.rule_name = rule_name
    series.routing_explanation = explanation


def instance_paths(session: Session, series_instance_uid: str) -> list[str]:
    """Spool paths (relative to storage_dir) of every instance of the series."""
    statement = (
        select(Instance.path)
        .where(Instance.series_instance_uid == series_instance_uid)
        .order_by(Instance.instance_number, Instance.sop_instance_uid)
    )
    return list(session.scalars(statement))

"""Journal operations on series: completion and the routing outcome."""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from cad_node.assembly.completion import (
    SeriesProgress,
    StudyGrouping,
    quiet_cutoff,
    study_group_complete,
)
from cad_node.domain.states import SeriesState
from cad_node.store.schema import Instance, Series


def series_due(
    session: Session,
    now: datetime,
    quiet_seconds: float,
    grouped_modalities: Collection[str] = (),
) -> Sequence[Series]:
    """Receiving series that have gone quiet or hold their expected count, oldest first.

    Series of ``grouped_modalities`` are left out: they complete as a study group
    (:func:`study_groups_due`).  The rows stay locked (PostgreSQL) until the
    caller's transaction ends, so a late instance recorded meanwhile waits and
    then raises the series revision instead of slipping into a series already
    being routed.
    """
    statement = (
        select(Series)
        .where(Series.state == SeriesState.RECEIVING)
        .where(Series.modality.not_in(list(grouped_modalities)))
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


@dataclass(frozen=True, slots=True)
class StudyGroup:
    """Series of one modality in one study, read together by one job."""

    study_instance_uid: str
    modality: str
    receiving: Sequence[Series]
    """The members still RECEIVING, oldest first: they complete now."""
    member_uids: tuple[str, ...]
    """Every series of the modality in the study (earlier complete ones too)."""


def study_groups_due(
    session: Session,
    now: datetime,
    quiet_seconds: float,
    groupings: Mapping[str, StudyGrouping],
) -> list[StudyGroup]:
    """Study groups (by modality, see ``groupings``) whose series are ready to be read.

    A group is ready when all its receiving series have gone quiet or, for
    :attr:`StudyGrouping.FOUR_VIEWS`, when the study holds the four standard views.
    """
    if not groupings:
        return []
    statement = (
        select(Series)
        .where(Series.state == SeriesState.RECEIVING)
        .where(Series.modality.in_(list(groupings)))
        .order_by(Series.study_instance_uid, Series.modality, Series.first_received_at)
        .with_for_update(skip_locked=True)
    )
    due = []
    receiving = session.scalars(statement).all()
    for (study_uid, modality), members in groupby(
        receiving, key=lambda series: (series.study_instance_uid, series.modality)
    ):
        group = list(members)
        last = max(series.last_received_at for series in group)
        views = _views_of(session, study_uid, modality)
        if study_group_complete(groupings[modality], views, last, now, quiet_seconds):
            member_uids = _series_of(session, study_uid, modality)
            due.append(StudyGroup(study_uid, modality, group, member_uids))
    return due


def _views_of(
    session: Session, study_uid: str, modality: str
) -> list[tuple[str | None, str | None]]:
    statement = (
        select(Instance.image_laterality, Instance.view_position)
        .join(Series, Instance.series_instance_uid == Series.series_instance_uid)
        .where(Series.study_instance_uid == study_uid, Series.modality == modality)
        .distinct()
    )
    return [(laterality, view) for laterality, view in session.execute(statement)]


def _series_of(session: Session, study_uid: str, modality: str) -> tuple[str, ...]:
    statement = (
        select(Series.series_instance_uid)
        .where(Series.study_instance_uid == study_uid, Series.modality == modality)
        .order_by(Series.first_received_at, Series.series_instance_uid)
    )
    return tuple(session.scalars(statement))


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


def quarantine(session: Session, series_instance_uids: Collection[str], reason: str) -> None:
    """Set the series aside: their decoding was aborted (``reason``); no automatic retry."""
    session.execute(
        update(Series)
        .where(Series.series_instance_uid.in_(series_instance_uids))
        .values(state=SeriesState.QUARANTINED, quarantine_reason=reason)
    )


def release_from_quarantine(session: Session, series_instance_uids: Collection[str]) -> None:
    """Return quarantined series to ROUTED (an admin queued their job again)."""
    session.execute(
        update(Series)
        .where(
            Series.series_instance_uid.in_(series_instance_uids),
            Series.state == SeriesState.QUARANTINED,
        )
        .values(state=SeriesState.ROUTED, quarantine_reason=None)
    )


def instance_paths(session: Session, *series_instance_uids: str) -> list[str]:
    """Spool paths (relative to storage_dir) of every instance of the series, series by series."""
    order = {uid: position for position, uid in enumerate(series_instance_uids)}
    statement = select(Instance.path, Instance.series_instance_uid).where(
        Instance.series_instance_uid.in_(series_instance_uids)
    )
    statement = statement.order_by(Instance.instance_number, Instance.sop_instance_uid)
    rows = sorted(session.execute(statement), key=lambda row: order[row[1]])
    return [path for path, _series in rows]

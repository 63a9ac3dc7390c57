"""Retention: which series' files may be removed, and their removal (issue 24, item 5).

A series' spooled instances and its result files are removed ("purged") once nothing
may still need them:

- every job that reads the series (its own, and a study group's job that reads it
  along) has ended: done, failed or cancelled; never while one is queued or running;
- every delivery of those jobs' results ended delivered (or delivered with a warning,
  PS3.4 Annex B.2.3); never while one is pending or failed (an admin may retry it);
- the last thing that happened to it (received, completed, a job ended, a delivery
  delivered) is older than ``retention.keep_hours``;
- a series no job reads (unrouted) is kept ``retention.keep_unrouted_hours`` after it
  was last received, or until ``cad-node purge --unrouted`` when that is unset.

The journal keeps every row: :attr:`Series.purged_at` and :attr:`Result.purged_at` say
when the files went. SR files are kept (a few kB each): a later revision's SR
references them (PredecessorDocumentsSequence, PS3.3 C.17.2.3), as
:meth:`~cad_node.pipeline.work.Worker._build` reads them.

A late instance for a purged series raises its revision as any late instance does; its
re-run finds the earlier instances gone and fails with :func:`purged_inputs_error`'s
reason, rather than running the model on a part of the series (docs/admin-guide.md,
"Retention").
"""

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cad_node.config import RetentionSettings
from cad_node.domain.states import DeliveryState, JobState, ResultKind, SeriesState
from cad_node.store.rulesets import record_audit
from cad_node.store.schema import Delivery, Instance, Job, Result, Series

logger = logging.getLogger(__name__)

ENDED_JOBS = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
ENDED_DELIVERIES = frozenset(
    {DeliveryState.DELIVERED, DeliveryState.DELIVERED_WITH_WARNING, DeliveryState.COMMITTED}
)
"""Deliveries done with their files; ``sent`` still awaits its destination's commitment and
may be sent again."""
SETTLED_STATES = (SeriesState.ROUTED, SeriesState.UNROUTED, SeriesState.QUARANTINED)
"""Series states retention looks at; a receiving or complete series is on its way."""
KEPT_KINDS = frozenset({ResultKind.SR})
"""Result files kept after a purge: an SR references its predecessor's SR."""
NODE_ACTOR = "node"
"""The audit's actor for the node's own sweep (as for the data flow's events)."""
BATCH = 500
"""Series looked at per query (bounds the IN lists sent to the journal)."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long settled series keep their files.

    ``keep_unrouted_hours`` None: a series no job reads is never purged.
    """

    keep_hours: float
    keep_unrouted_hours: float | None

    @classmethod
    def from_settings(
        cls,
        settings: RetentionSettings,
        *,
        older_than_hours: float | None = None,
        unrouted: bool = False,
    ) -> "RetentionPolicy":
        """The node's policy; ``cad-node purge`` may shorten the keep time (``older_than_hours``)
        and take unrouted series too (``unrouted``: kept ``older_than_hours``, else
        ``keep_unrouted_hours``, else ``keep_hours``)."""
        keep = settings.keep_hours if older_than_hours is None else older_than_hours
        keep_unrouted = settings.keep_unrouted_hours
        if older_than_hours is not None and keep_unrouted is not None:
            keep_unrouted = min(keep_unrouted, older_than_hours)
        if unrouted:
            keep_unrouted = older_than_hours if older_than_hours is not None else keep_unrouted
            keep_unrouted = settings.keep_hours if keep_unrouted is None else keep_unrouted
        return cls(keep_hours=keep, keep_unrouted_hours=keep_unrouted)

    def keep_for(self, read_by_jobs: bool) -> timedelta | None:
        hours = self.keep_hours if read_by_jobs else self.keep_unrouted_hours
        return None if hours is None else timedelta(hours=hours)


@dataclass(frozen=True, slots=True)
class PurgeCandidate:
    """A series whose files may be removed now."""

    series_instance_uid: str
    state: SeriesState
    settled_at: datetime
    """The last thing that happened to it: received, completed, a job ended, a delivery."""
    instance_count: int
    size_bytes: int
    """Its instances' sizes as the journal recorded them."""


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What one purge removed."""

    purged: tuple[PurgeCandidate, ...]
    files_removed: int
    bytes_removed: int


@dataclass(frozen=True, slots=True)
class _Reader:
    """A job that reads a series, with its deliveries' states and times."""

    state: JobState
    ended_at: datetime | None
    delivery_states: tuple[DeliveryState, ...]
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Spooled:
    """A series' instances as the journal records them."""

    count: int
    size_bytes: int
    last_received_at: datetime | None
    """A resend refreshes it (the series' ``last_received_at`` only while receiving)."""


# -- selection -----------------------------------------------------------------------------


def purgeable_series(
    session: Session,
    policy: RetentionPolicy,
    now: datetime,
    *,
    series_instance_uids: Collection[str] | None = None,
) -> list[PurgeCandidate]:
    """The series whose files may be removed at ``now`` (module docstring), in the order
    they were last received; ``series_instance_uids``: only among those."""
    found: list[PurgeCandidate] = []
    for batch in _settled_batches(session, policy, now, series_instance_uids):
        readers = _readers(session, batch)
        spooled = _spooled(session, [series.series_instance_uid for series in batch])
        for series in batch:
            files = spooled.get(series.series_instance_uid, _Spooled(0, 0, None))
            candidate = _judge(
                series, readers.get(series.series_instance_uid, ()), files, policy, now
            )
            if candidate is not None:
                found.append(candidate)
    return found


def _settled_batches(
    session: Session,
    policy: RetentionPolicy,
    now: datetime,
    series_instance_uids: Collection[str] | None,
) -> Iterable[list[Series]]:
    """Settled series with files left, last received before the shorter keep time."""
    shortest = min(h for h in (policy.keep_hours, policy.keep_unrouted_hours) if h is not None)
    query = (
        select(Series)
        .where(Series.state.in_(SETTLED_STATES))
        .where(Series.last_received_at <= now - timedelta(hours=shortest))
        .where(_files_left())
        .order_by(Series.last_received_at, Series.series_instance_uid)
    )
    if series_instance_uids is not None:
        query = query.where(Series.series_instance_uid.in_(list(series_instance_uids)))
    rows = list(session.scalars(query))
    for start in range(0, len(rows), BATCH):
        yield rows[start : start + BATCH]


def _files_left() -> ColumnElement[bool]:
    """Never purged, or received (a late instance, a resend) or resulted since its purge."""
    received_since = exists().where(
        Instance.series_instance_uid == Series.series_instance_uid,
        Instance.received_at > Series.purged_at,
    )
    results_left = (
        exists()
        .where(Job.series_instance_uid == Series.series_instance_uid)
        .where(Result.job_id == Job.id, Result.purged_at.is_(None))
        .where(Result.kind.not_in(list(KEPT_KINDS)))
    )
    return or_(Series.purged_at.is_(None), received_since, results_left)


def _readers(session: Session, batch: Sequence[Series]) -> dict[str, list[_Reader]]:
    """For each series of ``batch``, the jobs that read it: its own and its study group's."""
    studies = {series.study_instance_uid for series in batch}
    wanted = {series.series_instance_uid for series in batch}
    jobs = session.scalars(
        select(Job)
        .join(Series, Series.series_instance_uid == Job.series_instance_uid)
        .where(Series.study_instance_uid.in_(studies))
    ).all()
    deliveries = _deliveries_by_job(session, [job.id for job in jobs])
    readers: dict[str, list[_Reader]] = {}
    for job in jobs:
        reader = _reader(job, deliveries.get(job.id, ()))
        for uid in wanted.intersection({job.series_instance_uid, *(job.series_group or ())}):
            readers.setdefault(uid, []).append(reader)
    return readers


def _deliveries_by_job(
    session: Session, job_ids: Sequence[int]
) -> dict[int, list[tuple[DeliveryState, datetime | None]]]:
    found: dict[int, list[tuple[DeliveryState, datetime | None]]] = {}
    for start in range(0, len(job_ids), BATCH):
        rows = session.execute(
            select(Result.job_id, Delivery.state, Delivery.delivered_at)
            .join(Delivery, Delivery.result_id == Result.id)
            .where(Result.job_id.in_(job_ids[start : start + BATCH]))
        )
        for job_id, state, delivered_at in rows:
            found.setdefault(job_id, []).append((DeliveryState(state), delivered_at))
    return found


def _reader(job: Job, deliveries: Sequence[tuple[DeliveryState, datetime | None]]) -> _Reader:
    delivered = [at for _state, at in deliveries if at is not None]
    return _Reader(
        state=JobState(job.state),
        ended_at=job.finished_at or job.created_at,
        delivery_states=tuple(state for state, _at in deliveries),
        delivered_at=max(delivered, default=None),
    )


def _judge(
    series: Series,
    readers: Sequence[_Reader],
    spooled: _Spooled,
    policy: RetentionPolicy,
    now: datetime,
) -> PurgeCandidate | None:
    """``series`` as a candidate, or None if something may still need its files."""
    if any(reader.state not in ENDED_JOBS for reader in readers):
        return None
    if any(s not in ENDED_DELIVERIES for reader in readers for s in reader.delivery_states):
        return None
    if not readers and series.state != SeriesState.UNROUTED:
        return None  # routed or quarantined, yet no job reads it: leave it to the admin
    keep = policy.keep_for(read_by_jobs=bool(readers))
    settled_at = _settled_at(series, readers, spooled.last_received_at)
    if keep is None or settled_at > now - keep:
        return None
    return PurgeCandidate(
        series.series_instance_uid,
        SeriesState(series.state),
        settled_at,
        spooled.count,
        spooled.size_bytes,
    )


def _settled_at(
    series: Series, readers: Sequence[_Reader], last_received_at: datetime | None
) -> datetime:
    """The latest of: received (a resend too), completed, a job ended, a delivery."""
    moments = [series.last_received_at, series.completed_at, last_received_at]
    moments += [reader.ended_at for reader in readers]
    moments += [reader.delivered_at for reader in readers]
    return max(moment for moment in moments if moment is not None)


def _spooled(session: Session, uids: Sequence[str]) -> dict[str, _Spooled]:
    rows = session.execute(
        select(
            Instance.series_instance_uid,
            func.count(),
            func.sum(Instance.size_bytes),
            func.max(Instance.received_at),
        )
        .where(Instance.series_instance_uid.in_(uids))
        .group_by(Instance.series_instance_uid)
    )
    return {uid: _Spooled(int(count), int(size or 0), last) for uid, count, size, last in rows}


# -- removal -------------------------------------------------------------------------------


def purge(
    sessions: sessionmaker[Session],
    storage_dir: Path,
    policy: RetentionPolicy,
    now: datetime,
    *,
    actor: str = NODE_ACTOR,
) -> PurgeReport:
    """Remove the files of every purgeable series, one series per transaction.

    Each series is judged again with its row locked (PostgreSQL) or the journal's write
    lock held (SQLite: ``purged_at`` is written before a file goes), so a job queued
    meanwhile by a late instance keeps it; the rows stay. Each purge is audited
    (``series.purged`` by ``actor``: the node's sweep, or ``cli``).
    """
    with sessions() as session:
        candidates = purgeable_series(session, policy, now)
    purged: list[PurgeCandidate] = []
    files = size = 0
    for candidate in candidates:
        try:
            removed = _purge_one(sessions, storage_dir, policy, now, candidate, actor=actor)
        except OperationalError as exc:  # SQLite busy: the next sweep looks again
            logger.debug("purge of series %s deferred: %s", candidate.series_instance_uid, exc)
            continue
        except OSError as exc:  # a file that cannot be removed: the series stays unpurged
            logger.warning(
                "retention: series %s not purged: %s", candidate.series_instance_uid, exc.strerror
            )
            continue
        if removed is not None:
            purged.append(candidate)
            files, size = files + removed[0], size + removed[1]
    report = PurgeReport(tuple(purged), files, size)
    if purged:
        logger.info("retention: purged %d series, %d files, %d bytes", len(purged), files, size)
    return report


def _purge_one(
    sessions: sessionmaker[Session],
    storage_dir: Path,
    policy: RetentionPolicy,
    now: datetime,
    candidate: PurgeCandidate,
    *,
    actor: str,
) -> tuple[int, int] | None:
    """Purge one series; (files, bytes) removed, or None if it is no longer purgeable."""
    uid = candidate.series_instance_uid
    with sessions.begin() as session:
        session.scalars(
            select(Series).where(Series.series_instance_uid == uid).with_for_update()
        ).one()
        if not purgeable_series(session, policy, now, series_instance_uids=[uid]):
            return None
        paths = _mark_purged(session, uid, now)
        session.flush()  # SQLite: takes the write lock before any file goes
        removed = _remove_files(storage_dir, paths)
        detail: dict[str, object] = {"files_removed": removed[0], "bytes_removed": removed[1]}
        detail["settled_at"] = f"{candidate.settled_at:%Y-%m-%d %H:%M:%S} UTC"
        target = f"series {uid}"
        record_audit(
            session, actor=actor, action="series.purged", target=target, now=now, detail=detail
        )
    _remove_empty_folders(storage_dir, paths)
    logger.debug("retention: series %s purged (%d files)", uid, removed[0])
    return removed


def _mark_purged(session: Session, series_instance_uid: str, now: datetime) -> list[str]:
    """Set ``purged_at`` on the series and its removable results; their files' paths."""
    series = session.get_one(Series, series_instance_uid)
    series.purged_at = now
    paths = list(
        session.scalars(
            select(Instance.path).where(Instance.series_instance_uid == series_instance_uid)
        )
    )
    results = session.scalars(
        select(Result)
        .join(Job, Result.job_id == Job.id)
        .where(Job.series_instance_uid == series_instance_uid)
        .where(Result.purged_at.is_(None), Result.kind.not_in(list(KEPT_KINDS)))
    ).all()
    for result in results:
        result.purged_at = now
        paths.append(result.path)
    return paths


def _remove_files(storage_dir: Path, paths: Iterable[str]) -> tuple[int, int]:
    files = size = 0
    for relative in paths:
        path = storage_dir / relative
        try:
            size += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue  # removed before (a purge that did not commit), or never written
        files += 1
    return files, size


def _remove_empty_folders(storage_dir: Path, paths: Iterable[str]) -> None:
    """Remove the series' folders (and a study's) left empty; a folder in use stays.

    The spool makes a folder again when a late instance needs it
    (:meth:`~cad_node.ingest.spool.Spool.place`).
    """
    folders = {parent for relative in paths for parent in Path(relative).parents}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        if len(folder.parts) < 2:
            continue  # spool/ and results/ themselves stay
        try:
            (storage_dir / folder).rmdir()
        except OSError:
            continue  # not empty, or gone


# -- a re-run after a purge -------------------------------------------------------------------


def purged_series(session: Session, series_instance_uids: Collection[str]) -> dict[str, datetime]:
    """When each of ``series_instance_uids`` that was purged was purged."""
    rows = session.execute(
        select(Series.series_instance_uid, Series.purged_at)
        .where(Series.series_instance_uid.in_(list(series_instance_uids)))
        .where(Series.purged_at.is_not(None))
    )
    return {uid: at for uid, at in rows if at is not None}


def purged_inputs_error(
    instance_paths: Sequence[Path], purged: Mapping[str, datetime]
) -> str | None:
    """Why a job cannot run, when instance files of a purged series are gone; else None.

    The model would otherwise read a part of the series (a late instance's slices) and
    report on it as if it were the whole.
    """
    missing = sum(1 for path in instance_paths if not path.exists())
    if not missing or not purged:
        return None
    when = ", ".join(
        f"series {uid} at {at:%Y-%m-%d %H:%M} UTC" for uid, at in sorted(purged.items())
    )
    return (
        f"{missing} of {len(instance_paths)} instance files were removed by retention "
        f"(purged: {when}); the model would read an incomplete series. Send the whole "
        "series again, then retry this job"
    )


def purged_series_count(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Series).where(Series.purged_at.is_not(None))
        )
        or 0
    )

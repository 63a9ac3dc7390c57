"""Recording received instances in the journal: studies, series and instances rows.

Every function works in the caller's transaction; the caller commits, and only
then acknowledges the instance to its sender.
"""

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from cad_node.domain.states import SeriesState
from cad_node.routing.attributes import JsonValue, merge_missing
from cad_node.store.schema import Base, Instance, Series, Study

_UID_MAX_LENGTH = 64
_AE_MAX_LENGTH = 16


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the journal keeps of one received SOP Instance, made from its header.

    Raises
    ------
    ValueError
        If a UID is empty or longer than 64 characters (VR UI), the path is not
        relative to storage_dir, or a count is negative.
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    path: str
    """Relative to storage_dir, POSIX separators."""
    size_bytes: int
    calling_ae_title: str
    attributes: Mapping[str, JsonValue]
    """Series-level routing attributes (``extract_attributes``)."""
    expected_count: int | None
    """Instances expected in the series, from ImagesInAcquisition (0020,1002) or NumberOfFrames."""
    image_laterality: str | None = None
    """ImageLaterality (0020,0062), else Laterality (0020,0060): "L", "R", "B" or "U"."""
    view_position: str | None = None
    """ViewPosition (0018,5101), e.g. "CC" or "MLO"."""

    def __post_init__(self) -> None:
        for name in ("sop_instance_uid", "sop_class_uid", "series_instance_uid"):
            _check_uid(name, getattr(self, name))
        _check_uid("study_instance_uid", self.study_instance_uid)
        _check_uid("transfer_syntax_uid", self.transfer_syntax_uid)
        path = PurePosixPath(self.path)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"path must be relative to storage_dir: {self.path!r}")
        if self.size_bytes < 0:
            raise ValueError(f"size_bytes must not be negative, got {self.size_bytes}")
        if self.expected_count is not None and self.expected_count < 1:
            raise ValueError(f"expected_count must be positive, got {self.expected_count}")
        if len(self.calling_ae_title) > _AE_MAX_LENGTH:
            raise ValueError(f"calling AE title longer than 16: {self.calling_ae_title!r}")

    @property
    def modality(self) -> str:
        """Modality (0008,0060), empty when the header has none."""
        value = self.attributes.get("Modality")
        return value if isinstance(value, str) else ""


def _check_uid(name: str, value: str) -> None:
    if not value or len(value) > _UID_MAX_LENGTH:
        raise ValueError(f"{name} must be 1 to 64 characters (VR UI), got {value!r}")


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What recording one instance did to its series."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    is_new: bool
    """False for a resend of a SOP Instance already recorded (nothing counted twice)."""
    series_revision: int
    revision_raised: bool
    """A new instance arrived after the series was complete: its results must be redone."""
    instance_count: int
    expected_count: int | None

    @property
    def expected_count_reached(self) -> bool:
        """Whether the series holds as many instances as its header announced."""
        return self.expected_count is not None and self.instance_count >= self.expected_count


def record_instance(session: Session, record: InstanceRecord, now: datetime) -> RecordOutcome:
    """Upsert the study and series of ``record`` and insert (or refresh) its instance.

    A resend of a SOP Instance UID already recorded refreshes the row (path,
    size, transfer syntax, calling AE) and counts nothing.  A new instance for
    a series no longer RECEIVING raises the series revision by one and puts it
    back to RECEIVING, so its results are redone and reference the earlier ones.

    Safe against concurrent associations recording the same new study or
    series: rows are inserted with ``ON CONFLICT DO NOTHING`` and the series
    row is then locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite holds
    its single write lock from the first insert).
    """
    return record_instances(session, [record], now)[0]


def record_instances(
    session: Session, records: Sequence[InstanceRecord], now: datetime
) -> list[RecordOutcome]:
    """:func:`record_instance` for each of ``records``, in order, in ``session``'s transaction.

    Each study is inserted and each series locked once for the whole batch, and
    the series rows are written once at the end (ingest profile: one series
    UPDATE per instance was a third of the journal's time with concurrent senders).
    """
    studies: set[str] = set()
    series_rows: dict[str, Series] = {}
    with session.no_autoflush:
        outcomes = [_record(session, record, now, studies, series_rows) for record in records]
    session.flush()
    return outcomes


def _record(
    session: Session,
    record: InstanceRecord,
    now: datetime,
    studies: set[str],
    series_rows: dict[str, Series],
) -> RecordOutcome:
    # The study insert comes first because it takes SQLite's write lock: a
    # transaction that read first could not upgrade once another writer committed.
    if record.study_instance_uid not in studies:
        study_row = {"study_instance_uid": record.study_instance_uid, "created_at": now}
        _insert_if_absent(session, Study, study_row)
        studies.add(record.study_instance_uid)
    series = series_rows.get(record.series_instance_uid)
    if series is None:
        series = _lock_series(session, record.series_instance_uid) or _insert_series(
            session, record, now
        )
        series_rows[record.series_instance_uid] = series
    late = series.state != SeriesState.RECEIVING
    revision = series.revision + 1 if late else series.revision
    is_new = _insert_if_absent(session, Instance, _instance_row(record, revision, now))
    if is_new:
        _count_new_instance(series, record, revision, now)
    else:
        _refresh_resent_instance(session, series, record, now)
    return RecordOutcome(
        sop_instance_uid=record.sop_instance_uid,
        series_instance_uid=record.series_instance_uid,
        study_instance_uid=record.study_instance_uid,
        is_new=is_new,
        series_revision=series.revision,
        revision_raised=is_new and late,
        instance_count=series.instance_count,
        expected_count=series.expected_count,
    )


def _insert_series(session: Session, record: InstanceRecord, now: datetime) -> Series:
    """Insert the series row for its first instance, then lock it.

    A concurrent association may insert it first: the conflict is ignored and
    the row it made is locked instead.
    """
    _insert_if_absent(session, Series, _new_series_row(record, now))
    series = _lock_series(session, record.series_instance_uid)
    if series is None:
        raise RuntimeError(f"series {record.series_instance_uid} vanished after its insert")
    return series


def _new_series_row(record: InstanceRecord, now: datetime) -> dict[str, Any]:
    return {
        "series_instance_uid": record.series_instance_uid,
        "study_instance_uid": record.study_instance_uid,
        "modality": record.modality,
        "state": SeriesState.RECEIVING,
        "revision": 1,
        "instance_count": 0,
        "expected_count": record.expected_count,
        "calling_ae_title": record.calling_ae_title,
        "attributes": dict(record.attributes),
        "first_received_at": now,
        "last_received_at": now,
    }


def _instance_row(record: InstanceRecord, series_revision: int, now: datetime) -> dict[str, Any]:
    return {
        "sop_instance_uid": record.sop_instance_uid,
        "series_instance_uid": record.series_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "instance_number": record.instance_number,
        "path": record.path,
        "size_bytes": record.size_bytes,
        "calling_ae_title": record.calling_ae_title,
        "series_revision": series_revision,
        "received_at": now,
        "image_laterality": record.image_laterality,
        "view_position": record.view_position,
    }


def _insert_if_absent(session: Session, table: type[Base], row: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when the row was inserted.

    RETURNING tells an insert from a conflict (psycopg reports no rowcount here).
    """
    dialect = session.get_bind().dialect.name
    if dialect not in {"postgresql", "sqlite"}:
        return _insert_in_savepoint(session, table, row)
    return session.execute(_insert_ignoring_conflict(dialect, table), row).first() is not None


@functools.cache
def _insert_ignoring_conflict(dialect: str, table: type[Base]) -> ReturningInsert[Any]:
    """One statement per (dialect, table), values bound at execution: SQLAlchemy compiles it once.

    A statement with ``.values(row)`` has a new cache key for every row, and
    compiling it cost more than executing it (ingest profile, docs/benchmarks.md).
    """
    insert_for = postgresql.insert if dialect == "postgresql" else sqlite.insert
    primary_key = table.__mapper__.primary_key
    return insert_for(table).on_conflict_do_nothing().returning(*primary_key)


def _insert_in_savepoint(session: Session, table: type[Base], row: dict[str, Any]) -> bool:
    """The portable fallback: a savepoint absorbs the duplicate key of a concurrent insert."""
    try:
        with session.begin_nested():
            session.execute(insert(table).values(row))
    except IntegrityError:
        return False
    return True


def _lock_series(session: Session, series_instance_uid: str) -> Series | None:
    """The series row, locked for this transaction; None when it does not exist yet."""
    statement = (
        select(Series)
        .where(Series.series_instance_uid == series_instance_uid)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.execute(statement).scalar_one_or_none()


def _count_new_instance(
    series: Series, record: InstanceRecord, revision: int, now: datetime
) -> None:
    if series.state != SeriesState.RECEIVING:
        series.state = SeriesState.RECEIVING
        series.completed_at = None
    series.revision = revision
    series.instance_count += 1
    series.last_received_at = max(series.last_received_at, now)
    if series.expected_count is None and record.expected_count is not None:
        series.expected_count = record.expected_count
    merged = merge_missing(series.attributes, record.attributes)
    if merged != series.attributes:
        series.attributes = merged


def _refresh_resent_instance(
    session: Session, series: Series, record: InstanceRecord, now: datetime
) -> None:
    instance = session.get_one(Instance, record.sop_instance_uid, populate_existing=True)
    instance.path = record.path
    instance.size_bytes = record.size_bytes
    instance.transfer_syntax_uid = record.transfer_syntax_uid
    instance.calling_ae_title = record.calling_ae_title
    instance.received_at = now
    instance.image_laterality = record.image_laterality
    instance.view_position = record.view_position
    if series.state == SeriesState.RECEIVING:
        series.last_received_at = max(series.last_received_at, now)

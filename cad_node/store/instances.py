"""Recording received instances in the journal: studies, series and instances rows.

Every function works in the caller's transaction; the caller commits, and only
then acknowledges the instance to its sender.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Protocol, cast

from sqlalchemy import (
    Connection,
    Dialect,
    Select,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.types import TypeEngine

from cad_node.domain.stacks import StackRank
from cad_node.domain.states import SeriesState
from cad_node.routing.attributes import JsonValue, attributes_rank, series_attributes
from cad_node.store.schema import Instance, Series, Study

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
    study: "StudyDescriptors | None" = None
    """What an admin recognises the study by (shown to the admin role only, never logged)."""

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


@dataclass(frozen=True, slots=True)
class StudyDescriptors:
    """Study-level values an admin recognises a study by, as the journal keeps them.

    Each is None when absent or empty; the first non-empty value received for a study wins
    (a later instance fills only what is still missing). Patient data: shown to the admin
    role only, never logged.

    Raises
    ------
    ValueError
        If a value is longer than its column (SH 16, DA 8, LO 64).
    """

    accession_number: str | None = None
    """AccessionNumber (0008,0050) SH."""
    study_date: str | None = None
    """StudyDate (0008,0020) DA, YYYYMMDD."""
    study_description: str | None = None
    """StudyDescription (0008,1030) LO."""

    def __post_init__(self) -> None:
        for name, longest in _STUDY_COLUMN_LENGTHS.items():
            value = getattr(self, name)
            if value is not None and not 0 < len(value) <= longest:
                raise ValueError(f"{name} must be 1 to {longest} characters, got {len(value)}")

    def columns(self) -> dict[str, str]:
        """The non-empty values, by study column name."""
        return {name: value for name in _STUDY_COLUMN_LENGTHS if (value := getattr(self, name))}


_STUDY_COLUMN_LENGTHS = {"accession_number": 16, "study_date": 8, "study_description": 64}
"""The study columns :class:`StudyDescriptors` fills, and their longest value (SH, DA, LO)."""


def _check_uid(name: str, value: str) -> None:
    if not value or len(value) > _UID_MAX_LENGTH:
        raise ValueError(f"{name} must be 1 to 64 characters (VR UI), got {value!r}")


@dataclass(frozen=True, slots=True)
class RecordedIdentity:
    """The series and study the journal records a SOP Instance under."""

    series_instance_uid: str
    study_instance_uid: str

    def holds(self, record: InstanceRecord) -> bool:
        """Whether ``record`` names this same series and study."""
        return (
            record.series_instance_uid == self.series_instance_uid
            and record.study_instance_uid == self.study_instance_uid
        )


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What recording one instance did to its series (or, when ``conflict`` is set, why
    nothing was recorded)."""

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
    conflict: RecordedIdentity | None = None
    """Where the journal already holds this SOP Instance UID, when that is another series
    or study: the record was refused and nothing written (its counts are zero).  A SOP
    Instance UID names one instance (PS3.3 C.12.1.1.1), so the sender's new file is not
    the stored one and must not be kept."""

    @property
    def refused(self) -> bool:
        """Whether the record was refused (its SOP Instance UID is recorded elsewhere)."""
        return self.conflict is not None

    @property
    def expected_count_reached(self) -> bool:
        """Whether the series holds as many instances as its header announced."""
        return self.expected_count is not None and self.instance_count >= self.expected_count


def record_instance(session: Session, record: InstanceRecord, now: datetime) -> RecordOutcome:
    """Upsert the study and series of ``record`` and insert (or refresh) its instance.

    A resend of a SOP Instance UID already recorded in the same series and
    study refreshes the row (path, size, transfer syntax, calling AE) and counts
    nothing.  One recorded under another series or study is refused: nothing is
    written and the outcome's ``conflict`` names where it is recorded (its
    study's row may remain, with no series; nothing reads it).  A new instance for
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

    Written with Core statements compiled once, not ORM objects: per batch, one
    insert per new study, one lock per series (in UID order, so two writers
    never wait on each other's locks), one query for the instances already
    recorded, then the inserts and updates as ``executemany``.  The ORM unit of
    work for the same rows cost three times the SQL it emitted (ingest profile,
    docs/benchmarks.md).
    """
    if not records:
        return []
    session.flush()
    connection = session.connection()
    rows = _CoreRows(connection, _statements(connection.dialect.name))
    return _record(rows, records, now)


def _record(
    rows: "_JournalRows", records: Sequence[InstanceRecord], now: datetime
) -> list[RecordOutcome]:
    """The recording itself, over either way of running its statements.

    Series already in the journal are locked before the instances are read, so an
    instance a concurrent writer committed in one is seen.  A missing series is inserted
    after that read, and only for a record not refused; two writers storing one new
    instance of a new series at once then fail a batch on the instance's key, and the
    journal writer retries it record by record.
    """
    studies = _study_rows(records, now)
    rows.insert_studies(studies)
    rows.fill_studies([row for row in studies if len(row) > len(_NEW_STUDY_KEYS)])
    series_uids = sorted({record.series_instance_uid for record in records})
    series_rows = _series_rows(rows.select_series(series_uids))
    recorded = rows.recorded_instances(sorted({record.sop_instance_uid for record in records}))
    conflicts = _identity_conflicts(records, recorded)
    accepted = [
        record for record, conflict in zip(records, conflicts, strict=True) if conflict is None
    ]
    series_rows |= _insert_missing_series(rows, accepted, series_rows, now)
    batch = _Batch(now, series_rows, set(recorded))
    outcomes = [
        batch.add(record) if conflict is None else _refused(record, conflict)
        for record, conflict in zip(records, conflicts, strict=True)
    ]
    batch.write(rows)
    return outcomes


def _identity_conflicts(
    records: Sequence[InstanceRecord], recorded: Mapping[str, RecordedIdentity]
) -> list[RecordedIdentity | None]:
    """For each record, in order, where its SOP Instance UID is recorded when that is another
    series or study (the journal, or an earlier record of the batch); else None."""
    identities = dict(recorded)
    conflicts: list[RecordedIdentity | None] = []
    for record in records:
        identity = identities.setdefault(
            record.sop_instance_uid,
            RecordedIdentity(record.series_instance_uid, record.study_instance_uid),
        )
        conflicts.append(None if identity.holds(record) else identity)
    return conflicts


def _refused(record: InstanceRecord, conflict: RecordedIdentity) -> RecordOutcome:
    return RecordOutcome(
        sop_instance_uid=record.sop_instance_uid,
        series_instance_uid=record.series_instance_uid,
        study_instance_uid=record.study_instance_uid,
        is_new=False,
        series_revision=0,
        revision_raised=False,
        instance_count=0,
        expected_count=None,
        conflict=conflict,
    )


class _JournalRows(Protocol):
    """The statements recording runs, in the caller's transaction.  The study inserts come
    first because they take SQLite's write lock: a transaction that read first could not
    upgrade once another writer committed."""

    def insert_studies(self, rows: list[dict[str, Any]]) -> None:
        """Insert the study rows, skipping those already there."""

    def fill_studies(self, rows: list[dict[str, Any]]) -> None:
        """Set each study's descriptors still empty from ``rows`` (first non-empty wins)."""

    def select_series(self, uids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The series rows (``_SERIES_COLUMNS``) of ``uids`` that exist, locked, in UID order."""
        ...

    def insert_series(self, rows: list[dict[str, Any]]) -> None:
        """Insert the series rows, skipping those a concurrent writer inserted first."""

    def recorded_instances(self, uids: Sequence[str]) -> dict[str, RecordedIdentity]:
        """Which of the SOP Instance UIDs ``uids`` the journal holds, and under which series."""
        ...

    def write(
        self,
        inserts: list[dict[str, Any]],
        refreshes: list[dict[str, Any]],
        series_updates: list[dict[str, Any]],
    ) -> None:
        """New instance rows, then refreshed ones, then the series rows changed."""


@dataclass(slots=True)
class _SeriesRow:
    """The columns of a series row that recording instances changes."""

    series_instance_uid: str
    modality: str
    state: str
    revision: int
    instance_count: int
    expected_count: int | None
    attributes: dict[str, JsonValue]
    last_received_at: datetime
    completed_at: datetime | None
    changed: bool = False

    def count_new_instance(self, record: InstanceRecord, revision: int, now: datetime) -> None:
        if self.state != SeriesState.RECEIVING:
            self.state = SeriesState.RECEIVING
            self.completed_at = None
        self.revision = revision
        self.instance_count += 1
        self.last_received_at = max(self.last_received_at, now)
        self._take_attributes(record)
        self.changed = True

    def _take_attributes(self, record: InstanceRecord) -> None:
        """Let the stack's images speak for the series (:func:`series_attributes`).

        Only they set the expected count (:func:`_expected_count`), and ImagesInAcquisition
        counts them only: each other instance (scout, screen capture) adds one to it.
        """
        stored_rank = attributes_rank(self.attributes)
        record_rank = attributes_rank(record.attributes)
        if record_rank > stored_rank:
            expected = _expected_count(record)
            others = self.instance_count - 1  # every instance before ranked lower
            self.expected_count = None if expected is None else expected + others
            self.modality = record.modality or self.modality
        elif record_rank < stored_rank:
            if self.expected_count is not None:
                self.expected_count += 1
        elif self.expected_count is None:
            self.expected_count = _expected_count(record)
        attributes = series_attributes(self.attributes, record.attributes)
        if attributes != self.attributes:
            self.attributes = attributes

    def note_resend(self, now: datetime) -> None:
        if self.state == SeriesState.RECEIVING and now > self.last_received_at:
            self.last_received_at = now
            self.changed = True

    def update_parameters(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in _SERIES_COLUMNS[1:]}
        return {"b_series_instance_uid": self.series_instance_uid, **values}


_SERIES_COLUMNS = tuple(field.name for field in fields(_SeriesRow) if field.name != "changed")
"""The series columns read (in this order, as :class:`_SeriesRow` takes them) and written."""


class _Batch:
    """The rows one batch of records inserts and updates, worked out in record order."""

    def __init__(
        self, now: datetime, series_rows: dict[str, _SeriesRow], recorded: set[str]
    ) -> None:
        self._now = now
        self._series_rows = series_rows
        self._recorded = recorded
        self._inserts: list[dict[str, Any]] = []
        self._refreshes: list[dict[str, Any]] = []

    def add(self, record: InstanceRecord) -> RecordOutcome:
        series = self._series_rows[record.series_instance_uid]
        late = series.state != SeriesState.RECEIVING
        revision = series.revision + 1 if late else series.revision
        is_new = record.sop_instance_uid not in self._recorded
        row = _instance_row(record, revision, self._now)
        if is_new:
            self._recorded.add(record.sop_instance_uid)
            self._inserts.append(row)
            series.count_new_instance(record, revision, self._now)
        else:
            self._refreshes.append(_refresh_parameters(row))
            series.note_resend(self._now)
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

    def write(self, rows: _JournalRows) -> None:
        """New rows first: a SOP Instance sent twice in one batch is inserted, then refreshed."""
        changed = [row.update_parameters() for row in self._series_rows.values() if row.changed]
        rows.write(self._inserts, self._refreshes, changed)


@dataclass(frozen=True, slots=True)
class _Statements:
    """Every statement recording uses, built once per dialect so SQLAlchemy compiles each once."""

    insert_study: Executable
    fill_study: Executable
    insert_series: Executable
    lock_series: Select[Any]
    recorded_instances: Select[Any]
    insert_instance: Executable
    refresh_instance: Executable
    update_series: Executable
    ignores_conflicts: bool


@functools.cache
def _statements(dialect: str) -> _Statements:
    studies, series, instances = (
        cast(Table, model.__table__) for model in (Study, Series, Instance)
    )
    ignores_conflicts = dialect in {"postgresql", "sqlite"}
    insert_for = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    return _Statements(
        insert_study=_insert_ignoring_conflict(insert_for, studies),
        fill_study=_fill_study(studies),
        insert_series=_insert_ignoring_conflict(insert_for, series),
        lock_series=select(*(series.c[name] for name in _SERIES_COLUMNS))
        .where(series.c.series_instance_uid.in_(bindparam("uids", expanding=True)))
        .order_by(series.c.series_instance_uid)
        .with_for_update(),
        recorded_instances=_select_recorded(instances, series).where(
            instances.c.sop_instance_uid.in_(bindparam("uids", expanding=True))
        ),
        insert_instance=insert(instances),
        refresh_instance=update(instances)
        .where(instances.c.sop_instance_uid == bindparam("b_sop_instance_uid"))
        .values({name: bindparam(name) for name in _REFRESHED_COLUMNS}),
        update_series=update(series)
        .where(series.c.series_instance_uid == bindparam("b_series_instance_uid"))
        .values({name: bindparam(name) for name in _SERIES_COLUMNS[1:]}),
        ignores_conflicts=ignores_conflicts,
    )


_REFRESHED_COLUMNS = (
    "path",
    "size_bytes",
    "transfer_syntax_uid",
    "calling_ae_title",
    "received_at",
    "image_laterality",
    "view_position",
)


def _fill_study(studies: Table) -> Executable:
    """Set a study's empty descriptors from the parameters (``f_<column>``), keeping those set.

    One statement whatever the batch holds: a NULL parameter leaves its column as it is,
    and a study whose columns are all set already is not written at all.
    """
    given = {name: cast_(bindparam(f"f_{name}"), String()) for name in _STUDY_COLUMN_LENGTHS}
    fillable = or_(
        *(and_(studies.c[name].is_(None), value.is_not(None)) for name, value in given.items())
    )
    return (
        update(studies)
        .where(studies.c.study_instance_uid == bindparam("b_study_instance_uid"))
        .where(fillable)
        .values({name: func.coalesce(studies.c[name], value) for name, value in given.items()})
    )


def _study_rows(records: Sequence[InstanceRecord], now: datetime) -> list[dict[str, Any]]:
    """One row per study of ``records``, in UID order, with the first non-empty value of each
    descriptor the batch holds (a row without descriptors has only the insert's keys)."""
    descriptors: dict[str, dict[str, str]] = {}
    for record in records:
        found = descriptors.setdefault(record.study_instance_uid, {})
        if record.study is not None:
            for name, value in record.study.columns().items():
                found.setdefault(name, value)
    return [
        {"study_instance_uid": uid, "created_at": now, **descriptors[uid]}
        for uid in sorted(descriptors)
    ]


def _fill_parameters(row: Mapping[str, Any]) -> dict[str, Any]:
    values = {f"f_{name}": row.get(name) for name in _STUDY_COLUMN_LENGTHS}
    return {"b_study_instance_uid": row["study_instance_uid"], **values}


def _select_recorded(instances: Table, series: Table) -> Select[Any]:
    """SOP Instance UID, Series and Study Instance UID of recorded instances."""
    return select(
        instances.c.sop_instance_uid,
        instances.c.series_instance_uid,
        series.c.study_instance_uid,
    ).join_from(instances, series, instances.c.series_instance_uid == series.c.series_instance_uid)


def _insert_ignoring_conflict(insert_for: Callable[..., Any] | None, table: Table) -> Executable:
    """INSERT ... ON CONFLICT DO NOTHING where the dialect has it; a plain INSERT elsewhere."""
    if insert_for is None:
        return insert(table)
    return cast(Executable, insert_for(table).on_conflict_do_nothing())


def _insert_missing_series(
    rows: _JournalRows,
    records: Sequence[InstanceRecord],
    found: Mapping[str, _SeriesRow],
    now: datetime,
) -> dict[str, _SeriesRow]:
    """The series of ``records`` not in ``found``, inserted and locked for this transaction
    (a concurrent writer may insert one first: its row is locked instead)."""
    first_records: dict[str, InstanceRecord] = {}
    for record in records:
        if record.series_instance_uid not in found:
            first_records.setdefault(record.series_instance_uid, record)
    if not first_records:
        return {}
    uids = sorted(first_records)
    rows.insert_series([_new_series_row(first_records[uid], now) for uid in uids])
    inserted = _series_rows(rows.select_series(uids))
    if len(inserted) != len(first_records):
        raise RuntimeError("a series vanished after its insert")
    return inserted


def _series_rows(selected: list[tuple[Any, ...]]) -> dict[str, _SeriesRow]:
    series_rows = [_SeriesRow(*row) for row in selected]
    return {row.series_instance_uid: row for row in series_rows}


class _CoreRows:
    """The statements as SQLAlchemy Core statements on a connection (any dialect)."""

    def __init__(self, connection: Connection, statements: _Statements) -> None:
        self._connection = connection
        self._statements = statements

    def insert_studies(self, rows: list[dict[str, Any]]) -> None:
        self._insert_if_absent(self._statements.insert_study, [_new_study(row) for row in rows])

    def fill_studies(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            parameters = [_fill_parameters(row) for row in rows]
            self._connection.execute(self._statements.fill_study, parameters)

    def select_series(self, uids: Sequence[str]) -> list[tuple[Any, ...]]:
        result = self._connection.execute(self._statements.lock_series, {"uids": list(uids)})
        return [tuple(row) for row in result]

    def insert_series(self, rows: list[dict[str, Any]]) -> None:
        self._insert_if_absent(self._statements.insert_series, rows)

    def recorded_instances(self, uids: Sequence[str]) -> dict[str, RecordedIdentity]:
        result = self._connection.execute(self._statements.recorded_instances, {"uids": uids})
        return {row[0]: RecordedIdentity(row[1], row[2]) for row in result}

    def write(
        self,
        inserts: list[dict[str, Any]],
        refreshes: list[dict[str, Any]],
        series_updates: list[dict[str, Any]],
    ) -> None:
        for statement, rows in (
            (self._statements.insert_instance, inserts),
            (self._statements.refresh_instance, refreshes),
            (self._statements.update_series, series_updates),
        ):
            if rows:
                self._connection.execute(statement, rows)

    def _insert_if_absent(self, statement: Executable, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, skipping any a concurrent writer inserted first.

        PostgreSQL and SQLite skip them with ``ON CONFLICT DO NOTHING``; elsewhere
        each row goes in a savepoint that absorbs the duplicate key.
        """
        if self._statements.ignores_conflicts:
            self._connection.execute(statement, rows)
            return
        for row in rows:
            try:
                with self._connection.begin_nested():
                    self._connection.execute(statement, row)
            except IntegrityError:
                continue


DRIVER_DIALECTS = frozenset({"sqlite", "postgresql"})
"""Dialects whose journals :func:`record_instances_with_driver` writes."""


def record_instances_with_driver(
    connection: DBAPIConnection,
    dialect: Dialect,
    records: Sequence[InstanceRecord],
    now: datetime,
) -> list[RecordOutcome]:
    """:func:`record_instances` on a DBAPI connection (one of :data:`DRIVER_DIALECTS`), in its
    open transaction; the caller commits.

    The same statements, compiled once by SQLAlchemy for ``dialect`` and run
    through the driver with the columns' own bind and result processors.  Per
    batch that skips SQLAlchemy's execution contexts and result objects: in the
    ingest profile (docs/benchmarks.md) they cost more than twice the SQL they
    ran, inside the lock every receiving association waits for.
    """
    if not records:
        return []
    rows = _DriverRows(connection.cursor(), _driver_statements(dialect))
    return _record(rows, records, now)


@dataclass(frozen=True, slots=True)
class _DriverStatement:
    """A statement compiled for a dialect, and how its parameters reach the driver."""

    sql: str
    positions: tuple[str, ...] | None
    """Parameter names in order for a positional paramstyle; None for a named one."""
    bind_processors: Mapping[str, Callable[[Any], Any]]
    result_processors: tuple[Callable[[Any], Any] | None, ...] = ()

    @classmethod
    def compile(
        cls,
        statement: Executable,
        dialect: Dialect,
        parameters: Sequence[str],
        result_types: Sequence[TypeEngine[Any]] = (),
    ) -> "_DriverStatement":
        """Compile ``statement`` for the rows it will be given (keys ``parameters``).

        Raises
        ------
        ValueError
            If the statement needs a parameter the rows will not have (e.g. a
            Python-side column default, which only SQLAlchemy's execution fills).
        """
        compiled = cast(
            SQLCompiler,
            cast(ClauseElement, statement).compile(dialect=dialect, column_keys=list(parameters)),
        )
        unknown = set(compiled.binds) - set(parameters)
        if unknown:
            raise ValueError(f"statement needs parameters its rows lack: {sorted(unknown)}")
        processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        positions = tuple(compiled.positiontup or ()) if compiled.positional else None
        results = tuple(
            type_.dialect_impl(dialect).result_processor(dialect, None) for type_ in result_types
        )
        return cls(compiled.string, positions, processors, results)

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        processed = {
            name: processor(value) if (processor := self.bind_processors.get(name)) else value
            for name, value in values.items()
        }
        if self.positions is None:
            return processed
        return tuple(processed[name] for name in self.positions)

    def row(self, values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(
            processor(value) if processor is not None else value
            for processor, value in zip(self.result_processors, values, strict=True)
        )


@dataclass(frozen=True, slots=True)
class _DriverStatements:
    insert_study: _DriverStatement
    fill_study: _DriverStatement
    insert_series: _DriverStatement
    lock_series: _DriverStatement
    instance_recorded: _DriverStatement
    insert_instance: _DriverStatement
    refresh_instance: _DriverStatement
    update_series: _DriverStatement


@functools.cache
def _driver_statements_for(dialect_name: str, driver: str, dialect: Dialect) -> _DriverStatements:
    core = _statements(dialect_name)
    series, instances = (cast(Table, model.__table__) for model in (Series, Instance))
    series_columns = [series.c[name] for name in _SERIES_COLUMNS]
    return _DriverStatements(
        insert_study=_DriverStatement.compile(core.insert_study, dialect, list(_NEW_STUDY_KEYS)),
        fill_study=_DriverStatement.compile(
            core.fill_study,
            dialect,
            ["b_study_instance_uid", *(f"f_{name}" for name in _STUDY_COLUMN_LENGTHS)],
        ),
        insert_series=_DriverStatement.compile(core.insert_series, dialect, _NEW_SERIES_KEYS),
        lock_series=_DriverStatement.compile(
            select(*series_columns)
            .where(series.c.series_instance_uid == bindparam("uid"))
            .with_for_update(),
            dialect,
            ["uid"],
            [column.type for column in series_columns],
        ),
        instance_recorded=_DriverStatement.compile(
            _select_recorded(instances, series).where(
                instances.c.sop_instance_uid == bindparam("uid")
            ),
            dialect,
            ["uid"],
        ),
        insert_instance=_DriverStatement.compile(core.insert_instance, dialect, _INSTANCE_KEYS),
        refresh_instance=_DriverStatement.compile(
            core.refresh_instance, dialect, ["b_sop_instance_uid", *_REFRESHED_COLUMNS]
        ),
        update_series=_DriverStatement.compile(
            core.update_series, dialect, ["b_series_instance_uid", *_SERIES_COLUMNS[1:]]
        ),
    )


def _driver_statements(dialect: Dialect) -> _DriverStatements:
    if dialect.name not in DRIVER_DIALECTS:
        raise ValueError(f"no driver statements for {dialect.name}")
    return _driver_statements_for(dialect.name, dialect.driver, dialect)


class _DriverRows:
    """The statements through a DBAPI cursor (SQLite, PostgreSQL: both skip conflicts)."""

    def __init__(self, cursor: DBAPICursor, statements: _DriverStatements) -> None:
        self._cursor = cursor
        self._statements = statements

    def insert_studies(self, rows: list[dict[str, Any]]) -> None:
        self._executemany(self._statements.insert_study, [_new_study(row) for row in rows])

    def fill_studies(self, rows: list[dict[str, Any]]) -> None:
        self._executemany(self._statements.fill_study, [_fill_parameters(row) for row in rows])

    def select_series(self, uids: Sequence[str]) -> list[tuple[Any, ...]]:
        statement = self._statements.lock_series
        found: list[tuple[Any, ...]] = []
        for uid in uids:  # one at a time, in UID order: the locks are taken in that order
            self._cursor.execute(statement.sql, statement.parameters({"uid": uid}))
            found.extend(statement.row(row) for row in self._cursor.fetchall())
        return found

    def insert_series(self, rows: list[dict[str, Any]]) -> None:
        self._executemany(self._statements.insert_series, rows)

    def recorded_instances(self, uids: Sequence[str]) -> dict[str, RecordedIdentity]:
        statement = self._statements.instance_recorded
        recorded = {}
        for uid in uids:
            self._cursor.execute(statement.sql, statement.parameters({"uid": uid}))
            row = self._cursor.fetchone()
            if row is not None:
                recorded[uid] = RecordedIdentity(row[1], row[2])
        return recorded

    def write(
        self,
        inserts: list[dict[str, Any]],
        refreshes: list[dict[str, Any]],
        series_updates: list[dict[str, Any]],
    ) -> None:
        self._executemany(self._statements.insert_instance, inserts)
        self._executemany(self._statements.refresh_instance, refreshes)
        self._executemany(self._statements.update_series, series_updates)

    def _executemany(self, statement: _DriverStatement, rows: list[dict[str, Any]]) -> None:
        if rows:
            parameters = [statement.parameters(row) for row in rows]
            self._cursor.executemany(statement.sql, parameters)  # type: ignore[arg-type]  # all alike


_NEW_STUDY_KEYS = ("study_instance_uid", "created_at")
"""The columns a new study row is inserted with; its descriptors are then filled."""


def _new_study(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in _NEW_STUDY_KEYS}


def _new_series_row(record: InstanceRecord, now: datetime) -> dict[str, Any]:
    return {
        "series_instance_uid": record.series_instance_uid,
        "study_instance_uid": record.study_instance_uid,
        "modality": record.modality,
        "state": SeriesState.RECEIVING,
        "revision": 1,
        "instance_count": 0,
        "expected_count": _expected_count(record),
        "calling_ae_title": record.calling_ae_title,
        "attributes": dict(record.attributes),
        "first_received_at": now,
        "last_received_at": now,
    }


def _expected_count(record: InstanceRecord) -> int | None:
    """The series' expected count as ``record`` gives it: an image of the stack only (not a
    scout with ImagesInAcquisition 1, nor a multi-frame screen capture)."""
    if attributes_rank(record.attributes) != StackRank.IMAGE:
        return None
    return record.expected_count


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


_NEW_SERIES_KEYS = (
    "series_instance_uid",
    "study_instance_uid",
    "modality",
    "state",
    "revision",
    "instance_count",
    "expected_count",
    "calling_ae_title",
    "attributes",
    "first_received_at",
    "last_received_at",
)
"""The columns a new series row sets (the keys of :func:`_new_series_row`'s rows)."""
_INSTANCE_KEYS = (
    "sop_instance_uid",
    "series_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "instance_number",
    "path",
    "size_bytes",
    "calling_ae_title",
    "series_revision",
    "received_at",
    "image_laterality",
    "view_position",
)
"""The columns an instance row sets (the keys of :func:`_instance_row`'s rows)."""


def _refresh_parameters(row: dict[str, Any]) -> dict[str, Any]:
    """What a resend refreshes in its instance's row (the new row's values of those columns)."""
    values = {name: row[name] for name in _REFRESHED_COLUMNS}
    return {"b_sop_instance_uid": row["sop_instance_uid"], **values}

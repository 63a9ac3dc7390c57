"""The journal's schema migrations (Alembic) on real SQLite and PostgreSQL databases.

Each test starts from an empty database: a SQLite file in ``tmp_path``, or a
PostgreSQL schema of the test's own (``postgresql_url``), dropped afterwards.
"""

import logging
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom.uid import Comprehensive3DSRStorage, CTImageStorage
from sqlalchemy import Connection, Engine, event, func, inspect, select, text
from sqlalchemy.orm import Session

from cad_node.domain.states import JobState, ResultKind, SeriesState
from cad_node.errors import StorageError
from cad_node.store.db import create_schema, make_engine, sqlite_url
from cad_node.store.migrations import (
    MIGRATION_LOCK_KEY,
    RELEASE_REVISION,
    alembic_config,
    downgrade_journal,
    journal_revision,
)
from cad_node.store.migrations.runner import RELEASE_TABLES, migration_transaction
from cad_node.store.schema import Base, Instance, Job, Result, Series, Study

HEAD = "0007"
NEW_COLUMNS = {
    ("instances", "image_laterality"),
    ("instances", "view_position"),
    ("jobs", "series_group"),
    ("jobs", "warnings"),
    ("series", "quarantine_reason"),
    ("series", "purged_at"),
    ("results", "purged_at"),
    ("studies", "accession_number"),
    ("studies", "study_date"),
    ("studies", "study_description"),
    ("jobs", "on_out_of_domain"),
    ("jobs", "abstention"),
    ("jobs", "priority_class"),
    ("jobs", "priority_rank"),
    ("jobs", "promoted_at"),
    ("deliveries", "commitment_transaction_uid"),
    ("deliveries", "commitment_requested_at"),
    ("deliveries", "commitment_attempts"),
    ("deliveries", "committed_at"),
}
"""What revisions 0002 to 0007 add to the journal of 0.1.0 (revision 0001)."""
NEW_INDEXES = {"ix_deliveries_commitment_transaction_uid"}
"""The indexes they add (of the new columns)."""
NEW_TABLES = {"job_outputs", "finding_outputs", "feedback"}
"""The tables they add (0007: monitoring)."""

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STUDY_UID = "1.2.826.0.1.3680043.8.498.10"
SERIES_UID = "1.2.826.0.1.3680043.8.498.11"
SOP_INSTANCE_UID = "1.2.826.0.1.3680043.8.498.12"
RESULT_UID = "1.2.826.0.1.3680043.8.498.13"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JOB_WARNING = f"PatientOrientation derived for {SOP_INSTANCE_UID}"
LOCK_WAIT_SECONDS = 0.5
"""How long a blocked migration is watched before the lock is released."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database: SQLite, then PostgreSQL (a schema of its own)."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "journal.sqlite")
    else:
        url = request.getfixturevalue("postgresql_url")
    engine = make_engine(url)
    yield engine
    engine.dispose()


def upgrade_to(engine: Engine, revision: str) -> None:
    """Run Alembic's upgrade to ``revision`` as ``create_schema`` does, under the lock."""
    with migration_transaction(engine) as connection:
        command.upgrade(alembic_config(connection), revision)


def make_release_journal(engine: Engine) -> None:
    """A journal as cad-node 0.1.0 left it: revision 0001's tables, no ``alembic_version``."""
    upgrade_to(engine, RELEASE_REVISION)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))


def differences(engine: Engine) -> list[Any]:
    """Alembic's differences between the database and the models (``Base.metadata``)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def added_columns(diffs: list[Any]) -> set[tuple[str, str]]:
    """(table, column) of each ``add_column`` difference; raises on any other kind, and on
    an index other than those of the new columns."""
    new_tables = {diff[1].name for diff in diffs if diff[0] == "add_table"}
    assert new_tables == NEW_TABLES, diffs
    diffs = [
        diff
        for diff in diffs
        if diff[0] != "add_table"
        and not (diff[0] == "add_index" and diff[1].table.name in NEW_TABLES)
    ]
    kinds = {diff[0] for diff in diffs}
    assert kinds <= {"add_column", "add_index"}, diffs
    assert {diff[1].name for diff in diffs if diff[0] == "add_index"} <= NEW_INDEXES, diffs
    return {(diff[2], diff[3].name) for diff in diffs if diff[0] == "add_column"}


def column_names(engine: Engine, table: str) -> set[str]:
    with engine.connect() as connection:
        return {column["name"] for column in inspect(connection).get_columns(table)}


def insert_release_rows(engine: Engine) -> None:
    """A study, series, instance and job written with 0.1.0's columns only."""
    with engine.begin() as connection:
        tables = sa.MetaData()
        tables.reflect(connection, only=["studies", "series", "instances", "jobs"])
        for name, row in release_rows().items():
            connection.execute(tables.tables[name].insert(), row)


def release_rows() -> dict[str, dict[str, Any]]:
    return {
        "studies": {"study_instance_uid": STUDY_UID, "created_at": T0},
        "series": {
            "series_instance_uid": SERIES_UID,
            "study_instance_uid": STUDY_UID,
            "modality": "CT",
            "state": SeriesState.ROUTED.value,
            "revision": 1,
            "instance_count": 1,
            "calling_ae_title": "SCANNER",
            "attributes": {"Modality": "CT"},
            "first_received_at": T0,
            "last_received_at": T0,
        },
        "instances": {
            "sop_instance_uid": SOP_INSTANCE_UID,
            "series_instance_uid": SERIES_UID,
            "sop_class_uid": CTImageStorage,
            "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
            "instance_number": 1,
            "path": "spool/1.dcm",
            "size_bytes": 1024,
            "calling_ae_title": "SCANNER",
            "series_revision": 1,
            "received_at": T0,
        },
        "jobs": {
            "series_instance_uid": SERIES_UID,
            "series_revision": 1,
            "rule_name": "chest",
            "model_name": "lung_nodule_ct",
            "destinations": ["pacs"],
            "state": JobState.QUEUED.value,
            "attempts": 0,
            "created_at": T0,
        },
    }


def add_head_rows(session: Session) -> None:
    """A study, series, instance (with its view), job (with its group) and result."""
    session.add(Study(study_instance_uid=STUDY_UID, created_at=T0))
    session.flush()  # no relationship() orders these inserts: the tables only share keys
    series = {**release_rows()["series"], "state": SeriesState.ROUTED}
    session.add(Series(**series))
    session.flush()
    instance = release_rows()["instances"]
    session.add(Instance(**instance, image_laterality="L", view_position="CC"))
    job = {**release_rows()["jobs"], "state": JobState.DONE}
    session.add(Job(**job, id=1, series_group=[SERIES_UID], warnings=[JOB_WARNING]))
    session.flush()
    session.add(
        Result(
            job_id=1,
            kind=ResultKind.SR,
            sop_class_uid=Comprehensive3DSRStorage,
            sop_instance_uid=RESULT_UID,
            series_instance_uid="1.2.826.0.1.3680043.8.498.14",
            path="results/sr.dcm",
            created_at=T0,
        )
    )


def row_counts(engine: Engine, *tables: str) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: int(connection.scalar(select(func.count()).select_from(sa.table(table))) or 0)
            for table in tables
        }


def test_an_empty_database_is_upgraded_to_the_models(
    empty_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="cad_node.store.migrations"):
        create_schema(empty_engine)
    assert journal_revision(empty_engine) == HEAD
    assert differences(empty_engine) == []
    assert f"none before, {HEAD} after" in caplog.text


def test_revision_0001_lacks_only_the_columns_that_0002_adds(empty_engine: Engine) -> None:
    upgrade_to(empty_engine, RELEASE_REVISION)
    assert journal_revision(empty_engine) == RELEASE_REVISION
    with empty_engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
    assert tables == RELEASE_TABLES | {"alembic_version"}
    assert added_columns(differences(empty_engine)) == NEW_COLUMNS


def test_a_release_journal_is_stamped_then_upgraded_keeping_its_rows(
    empty_engine: Engine,
) -> None:
    make_release_journal(empty_engine)
    insert_release_rows(empty_engine)
    assert journal_revision(empty_engine) is None
    create_schema(empty_engine)
    assert journal_revision(empty_engine) == HEAD
    assert differences(empty_engine) == []
    counts = row_counts(empty_engine, "studies", "series", "instances", "jobs")
    assert counts == {"studies": 1, "series": 1, "instances": 1, "jobs": 1}
    with Session(empty_engine) as session:
        instance = session.get_one(Instance, SOP_INSTANCE_UID)
        job = session.scalars(select(Job)).one()
    assert (instance.path, instance.received_at) == ("spool/1.dcm", T0)
    assert (instance.image_laterality, instance.view_position) == (None, None)
    assert (job.destinations, job.state, job.series_group) == (["pacs"], JobState.QUEUED, None)


def test_create_schema_again_changes_nothing(empty_engine: Engine) -> None:
    create_schema(empty_engine)
    with Session(empty_engine) as session, session.begin():
        add_head_rows(session)
    statements: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.lstrip().split(maxsplit=1)[0].upper())

    event.listen(empty_engine, "before_cursor_execute", record)
    try:
        create_schema(empty_engine)
    finally:
        event.remove(empty_engine, "before_cursor_execute", record)
    assert journal_revision(empty_engine) == HEAD
    assert statements, "create_schema ran no statement at all"
    assert {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"}.isdisjoint(statements)
    assert row_counts(empty_engine, "instances", "jobs", "results") == {
        "instances": 1,
        "jobs": 1,
        "results": 1,
    }


def test_downgrade_to_0001_drops_the_new_columns_and_keeps_the_rows(
    empty_engine: Engine,
) -> None:
    create_schema(empty_engine)
    with Session(empty_engine) as session, session.begin():
        add_head_rows(session)
    downgrade_journal(empty_engine, RELEASE_REVISION)
    assert journal_revision(empty_engine) == RELEASE_REVISION
    assert added_columns(differences(empty_engine)) == NEW_COLUMNS
    assert row_counts(empty_engine, "instances", "jobs", "results") == {
        "instances": 1,
        "jobs": 1,
        "results": 1,
    }
    create_schema(empty_engine)
    assert journal_revision(empty_engine) == HEAD
    assert differences(empty_engine) == []


def test_0004_adds_job_warnings_and_its_downgrade_keeps_the_jobs(empty_engine: Engine) -> None:
    upgrade_to(empty_engine, "0003")
    insert_release_rows(empty_engine)
    upgrade_to(empty_engine, "0004")
    with Session(empty_engine) as session, session.begin():  # only 0004's columns exist
        assert session.scalars(select(Job.warnings)).one() is None  # 0003 recorded none
        session.execute(sa.update(Job).values(warnings=[JOB_WARNING]))
    with Session(empty_engine) as session:
        assert session.scalars(select(Job.warnings)).one() == [JOB_WARNING]

    downgrade_journal(empty_engine, "0003")
    assert "warnings" not in column_names(empty_engine, "jobs")
    assert row_counts(empty_engine, "jobs") == {"jobs": 1}


def test_0005_adds_study_identity_and_purge_times_and_its_downgrade_keeps_rows(
    empty_engine: Engine,
) -> None:
    upgrade_to(empty_engine, "0004")
    insert_release_rows(empty_engine)
    upgrade_to(empty_engine, "0005")
    with Session(empty_engine) as session, session.begin():
        study = session.scalars(select(Study)).one()
        assert (study.accession_number, study.study_date, study.study_description) == (
            None,
            None,
            None,
        )
        study.accession_number = "A-1"
        session.scalars(select(Series)).one().purged_at = T0
    with Session(empty_engine) as session:
        assert session.scalars(select(Series.purged_at)).one() == T0

    downgrade_journal(empty_engine, "0004")
    assert "purged_at" not in column_names(empty_engine, "series")
    assert "accession_number" not in column_names(empty_engine, "studies")
    assert row_counts(empty_engine, "series") == {"series": 1}


def test_0006_adds_abstentions_and_commitments_and_its_downgrade_keeps_rows(
    empty_engine: Engine,
) -> None:
    upgrade_to(empty_engine, "0005")
    insert_release_rows(empty_engine)
    upgrade_to(empty_engine, "0006")
    with Session(empty_engine) as session, session.begin():
        job = session.scalars(select(Job)).one()
        assert (job.on_out_of_domain, job.abstention) == (None, None)
        job.abstention = {"reason": "out_of_distribution", "details": ["score 9 > 3"]}
    with Session(empty_engine) as session:
        assert session.scalars(select(Job.abstention)).one()["reason"] == "out_of_distribution"
    assert {"commitment_transaction_uid", "committed_at"} <= column_names(
        empty_engine, "deliveries"
    )

    downgrade_journal(empty_engine, "0005")
    assert "abstention" not in column_names(empty_engine, "jobs")
    assert "committed_at" not in column_names(empty_engine, "deliveries")
    assert row_counts(empty_engine, "jobs") == {"jobs": 1}


def test_0007_adds_the_monitoring_tables_and_its_downgrade_drops_only_them(
    empty_engine: Engine,
) -> None:
    upgrade_to(empty_engine, "0006")
    insert_release_rows(empty_engine)
    upgrade_to(empty_engine, "0007")
    with empty_engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
    assert tables >= NEW_TABLES

    downgrade_journal(empty_engine, "0006")
    with empty_engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
    assert tables.isdisjoint(NEW_TABLES)
    assert row_counts(empty_engine, "jobs") == {"jobs": 1}


def test_sqlite_enforces_foreign_keys_again_after_a_migration(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "journal.sqlite"))
    create_schema(engine)
    downgrade_journal(engine, RELEASE_REVISION)  # copies the jobs table: keys off meanwhile
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_a_journal_with_only_some_release_tables_is_refused(empty_engine: Engine) -> None:
    make_release_journal(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(text("DROP TABLE deliveries"))
    with pytest.raises(StorageError, match="lacks the tables deliveries"):
        create_schema(empty_engine)
    assert journal_revision(empty_engine) is None


def test_nodes_starting_together_migrate_once(empty_engine: Engine) -> None:
    engines = [make_engine(empty_engine.url.render_as_string(False)) for _ in range(3)]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start_node(engine: Engine) -> None:
        start.wait()
        try:
            create_schema(engine)
        except BaseException as exc:  # any failure fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=start_node, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert journal_revision(empty_engine) == HEAD
    assert differences(empty_engine) == []


@pytest.mark.postgresql
def test_postgresql_migration_waits_for_the_advisory_lock(postgresql_url: str) -> None:
    engine = make_engine(postgresql_url)
    holder = make_engine(postgresql_url)
    with holder.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            migration = started_migration(engine)
            assert migration.is_alive(), "the migration did not wait for the lock"
            assert journal_revision(engine) is None
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        migration.join(timeout=60)
    assert journal_revision(engine) == HEAD
    engine.dispose()
    holder.dispose()


def test_sqlite_migration_waits_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    engine = make_engine(sqlite_url(path))
    assert journal_revision(engine) is None  # connects: the database is in WAL mode now
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        migration = started_migration(engine)
        assert migration.is_alive(), "the migration did not wait for the write lock"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    migration.join(timeout=60)
    assert journal_revision(engine) == HEAD
    engine.dispose()


def started_migration(engine: Engine) -> threading.Thread:
    """``create_schema`` started in a thread, watched for :data:`LOCK_WAIT_SECONDS`."""
    thread = threading.Thread(target=create_schema, args=(engine,), daemon=True)
    thread.start()
    thread.join(timeout=LOCK_WAIT_SECONDS)
    return thread

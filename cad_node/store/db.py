"""Engine and session factory: SQLite in WAL mode by default, PostgreSQL for many nodes."""

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from cad_node.store.migrations import upgrade_journal


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def make_engine(database_url: str) -> Engine:
    """An engine for ``database_url``; SQLite gets WAL, NORMAL sync and a busy timeout.

    WAL with ``synchronous=NORMAL`` makes a commit cheap (no fsync per commit) and
    survives a process crash; the spool's fsync'd files are the durable record of
    what was acknowledged, and start-up re-indexes any file the journal lacks.
    """
    if database_url.startswith("sqlite"):
        _create_private_file(make_url(database_url).database)
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False, "timeout": 30}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(database_url, pool_pre_ping=True)


JOURNAL_FILE_MODE = 0o600
"""The SQLite journal holds UIDs, routing attributes and the audit log: the node's user only.
SQLite gives its -wal and -shm files the mode of the database file."""


def _create_private_file(database: str | None) -> None:
    """Create the SQLite file ``database`` with :data:`JOURNAL_FILE_MODE` if it is missing."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        descriptor = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, JOURNAL_FILE_MODE)
    except OSError:  # there already, or not creatable: SQLite says why when it connects
        return
    os.close(descriptor)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_schema(engine: Engine) -> None:
    """Bring the journal on ``engine`` to the schema of this code (Alembic's head revision).

    An empty database gets every revision; a journal made by cad-node 0.1.0
    (tables made by ``create_all``, no ``alembic_version``) is stamped ``0001``,
    then upgraded; a journal at head is left as it is.  Safe when ``serve`` and
    workers start at once: the change runs under a PostgreSQL advisory lock, or
    SQLite's write lock (see :mod:`cad_node.store.migrations.runner`).
    """
    upgrade_journal(engine)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)

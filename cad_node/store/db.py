"""Engine and session factory: SQLite in WAL mode by default, PostgreSQL for many nodes."""

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from cad_node.errors import ConfigError
from cad_node.store.migrations import upgrade_journal

POSTGRESQL_EXTRA = "pip install 'cad-node[postgresql]'"
"""What installs the PostgreSQL driver (psycopg 3) that ``postgresql+psycopg://`` needs."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def make_engine(database_url: str) -> Engine:
    """An engine for ``database_url``; SQLite gets WAL, NORMAL sync and a busy timeout.

    WAL with ``synchronous=NORMAL`` makes a commit cheap (no fsync per commit) and
    survives a process crash; the spool's fsync'd files are the durable record of
    what was acknowledged, and start-up re-indexes any file the journal lacks.

    Raises
    ------
    ConfigError
        ``database_url`` is not a URL SQLAlchemy knows, or its driver is not installed
        (PostgreSQL: the message names the ``postgresql`` extra); one line, no password.
    """
    try:
        return _make_engine(database_url)
    except ImportError as exc:
        raise ConfigError(missing_driver_message(database_url, exc)) from exc
    except ArgumentError as exc:
        raise ConfigError(
            f"database_url ({_shown(database_url)}) is not a database URL cad-node can use: "
            f"{exc}; use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB "
            f"(with {POSTGRESQL_EXTRA})"
        ) from exc


def _make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        _create_private_file(make_url(database_url).database)
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False, "timeout": 30}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(database_url, pool_pre_ping=True)


def missing_driver_message(database_url: str, exc: ImportError) -> str:
    """One line for a ``database_url`` whose DB-API driver does not import: what to install.

    Only the URL's scheme is quoted (never its password).
    """
    scheme = database_url.split("://", 1)[0]
    first_line = next(iter(str(exc).splitlines()), "") or repr(exc)
    missing = (
        f"its driver module {exc.name!r} is not installed"
        if exc.name
        else f"its driver does not load ({first_line})"
    )
    if scheme in ("postgresql", "postgresql+psycopg"):
        advice = POSTGRESQL_EXTRA
    elif scheme.startswith("postgresql"):
        advice = f"install it, or use postgresql+psycopg:// with {POSTGRESQL_EXTRA}"
    else:
        advice = (
            "cad-node's journal is SQLite (database_url: null) or PostgreSQL "
            f"(postgresql+psycopg://, with {POSTGRESQL_EXTRA})"
        )
    return f"database_url ({_shown(database_url)}): {missing}: {advice}"


def _shown(database_url: str) -> str:
    """``database_url`` as an error message may quote it: the scheme only (no password)."""
    return f"{database_url.split('://', 1)[0]}://..." if "://" in database_url else "..."


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

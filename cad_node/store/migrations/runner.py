"""Bring the journal's schema to the head revision, also when processes start together.

Alembic is configured in code (:func:`alembic_config`): the revisions ship in
the package, next to this module, and no ``alembic.ini`` is read.  Every change
runs in one transaction that holds the migration lock first:

- PostgreSQL: ``pg_advisory_xact_lock`` (released at commit), so ``serve`` and
  ``cad-node worker`` processes starting at once migrate one after the other,
  and the later ones find the schema at head;
- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock at once (the
  busy timeout makes the others wait); foreign key enforcement is off while a
  revision copies tables (batch mode), and ``PRAGMA foreign_key_check`` must
  find nothing before the commit.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import OperationalError

from cad_node.errors import StorageError

MIGRATIONS_DIR = Path(__file__).parent
"""Alembic's script location: ``env.py`` and ``versions/``."""

RELEASE_REVISION = "0001"
"""The schema cad-node 0.1.0 made with ``create_all``, before the journal had revisions."""

RELEASE_TABLES = frozenset(
    {
        "studies",
        "series",
        "instances",
        "jobs",
        "results",
        "deliveries",
        "rule_set_versions",
        "audit_events",
        "model_settings",
        "destinations",
    }
)
"""The tables of revision 0001: all of them and no ``alembic_version`` is a 0.1.0 journal."""

MIGRATION_LOCK_KEY = int.from_bytes(b"cad_node", "big")
"""The PostgreSQL advisory lock key held while the schema changes (fits a signed bigint)."""

_log = logging.getLogger(__name__)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the journal, without an ``alembic.ini``.

    Parameters
    ----------
    connection
        The connection ``env.py`` migrates on, in its transaction; ``None``
        for commands that need no database (``history``, offline SQL with the
        ``sqlalchemy.url`` main option set).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # A new revision's file is a valid module name (v0003_...), as ruff and mypy want.
    config.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def upgrade_journal(engine: Engine) -> None:
    """Upgrade the journal on ``engine`` to the head revision.

    An empty database gets every revision; a journal made by cad-node 0.1.0
    (its tables, no ``alembic_version``) is stamped :data:`RELEASE_REVISION`
    first, then upgraded; a journal already at head is left as it is.

    Raises
    ------
    StorageError
        If the database holds only some of the 0.1.0 tables and no revision:
        not a journal this code can tell the revision of.
    """
    for attempt in range(1, SQLITE_BUSY_ATTEMPTS + 1):
        try:
            before, after = _upgrade(engine)
            break
        except OperationalError as exc:
            if not _sqlite_busy(engine, exc) or attempt == SQLITE_BUSY_ATTEMPTS:
                raise
            _log.info("journal busy at start-up (another process migrates it): retrying")
            time.sleep(0.2 * attempt)
    _log.info("journal schema revision: %s before, %s after", before or "none", after)


SQLITE_BUSY_ATTEMPTS = 5
"""Start-up tries when SQLite answers "database is locked" past its busy timeout.

Processes starting at once on a new SQLite journal race to switch it to WAL
mode, and SQLite may refuse that switch at once, without waiting.
"""


def _sqlite_busy(engine: Engine, exc: OperationalError) -> bool:
    return engine.dialect.name == "sqlite" and "database is locked" in str(exc.orig)


def _upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """One attempt: (revision before, revision after), in one migration transaction."""
    with migration_transaction(engine) as connection:
        before = current_revision(connection)
        config = alembic_config(connection)
        if before is None and _is_release_journal(connection):
            command.stamp(config, RELEASE_REVISION)
        command.upgrade(config, "head")
        return before, current_revision(connection)


def downgrade_journal(engine: Engine, revision: str) -> None:
    """Downgrade the journal on ``engine`` to ``revision`` (``"base"``: no tables).

    Run with every cad-node process stopped: the code of a release reads the
    schema of its own head revision only.
    """
    with migration_transaction(engine) as connection:
        before = current_revision(connection)
        command.downgrade(alembic_config(connection), revision)
        after = current_revision(connection)
    _log.info("journal schema revision: %s before, %s after", before or "none", after or "none")


def journal_revision(engine: Engine) -> str | None:
    """The revision the journal on ``engine`` is at; ``None`` without ``alembic_version``."""
    with engine.connect() as connection:
        return current_revision(connection)


def current_revision(connection: Connection) -> str | None:
    """The revision in ``alembic_version`` on ``connection``, ``None`` if there is none."""
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the journal's migration lock.

    Commits when the block ends without an exception, rolls back otherwise.
    """
    with engine.connect() as connection:
        is_sqlite = connection.dialect.name == "sqlite"
        if is_sqlite:
            _set_sqlite_foreign_keys(connection, enabled=False)
        try:
            with connection.begin():
                _take_migration_lock(connection)
                yield connection
                if is_sqlite:
                    _check_sqlite_foreign_keys(connection)
        finally:
            if is_sqlite:
                _set_sqlite_foreign_keys(connection, enabled=True)


def _take_migration_lock(connection: Connection) -> None:
    """PostgreSQL: the advisory lock until commit; SQLite: the write lock until commit."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        # pysqlite opens no transaction before DDL by itself; this opens one and locks.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _set_sqlite_foreign_keys(connection: Connection, *, enabled: bool) -> None:
    """Switch SQLite's foreign key enforcement; a no-op inside a transaction, so outside."""
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    connection.commit()


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        tables = sorted({str(row[0]) for row in violations})
        raise StorageError(f"the migration broke foreign keys in {', '.join(tables)}")


def _is_release_journal(connection: Connection) -> bool:
    """Whether the database holds the 0.1.0 tables (``False``: it holds none of them)."""
    present = RELEASE_TABLES & set(inspect(connection).get_table_names())
    if present and present != RELEASE_TABLES:
        missing = ", ".join(sorted(RELEASE_TABLES - present))
        raise StorageError(
            f"the journal has no alembic_version and lacks the tables {missing}: "
            "not a cad-node 0.1.0 journal; restore it from a backup or start empty"
        )
    return bool(present)

"""Alembic's environment for the journal.

Online, it migrates on the connection that
:func:`cad_node.store.migrations.runner.upgrade_journal` hands it in
``config.attributes["connection"]``, inside that caller's transaction (which
holds the migration lock).  Offline (``sql=True``) it writes the SQL script
for the dialect of the ``sqlalchemy.url`` option, for a DBA to review.

Batch mode (``render_as_batch``) lets the same revision ALTER a SQLite table,
which Alembic then copies and renames where SQLite's ALTER TABLE falls short.
"""

from alembic import context
from sqlalchemy import Connection

from cad_node.store.schema import Base


def run_migrations_online(connection: Connection) -> None:
    """Run the pending revisions on ``connection``, in its transaction."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline(url: str) -> None:
    """Write the SQL of the pending revisions for the dialect of ``url``."""
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run() -> None:
    config = context.config
    if context.is_offline_mode():
        run_migrations_offline(config.get_main_option("sqlalchemy.url", "sqlite://"))
        return
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "the journal's migrations run through cad_node.store.migrations, "
            "which passes the connection; there is no alembic.ini"
        )
    run_migrations_online(connection)


_run()

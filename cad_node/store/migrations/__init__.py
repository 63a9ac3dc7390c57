"""Schema migrations of the journal (Alembic), configured in code: no ``alembic.ini``.

``versions/`` holds one revision per schema change; revision ``0001`` is the
schema of cad-node 0.1.0, which made its tables with ``create_all``.
:func:`upgrade_journal` (called by ``create_schema``) brings any journal to
head.
"""

from cad_node.store.migrations.runner import (
    MIGRATION_LOCK_KEY,
    RELEASE_REVISION,
    alembic_config,
    downgrade_journal,
    journal_revision,
    upgrade_journal,
)

__all__ = [
    "MIGRATION_LOCK_KEY",
    "RELEASE_REVISION",
    "alembic_config",
    "downgrade_journal",
    "journal_revision",
    "upgrade_journal",
]

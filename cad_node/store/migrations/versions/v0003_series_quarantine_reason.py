"""A series records why it was quarantined.

A series whose decoding timed out, ran out of memory or crashed the decoder
process is QUARANTINED (cad_node/imaging/isolation.py); the reason is kept
beside it for the admin.  The column is nullable, so rows of 0002 stay valid
(no series of theirs is quarantined).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("series") as batch_op:
        batch_op.add_column(
            sa.Column(
                "quarantine_reason",
                sa.Text(),
                nullable=True,
                comment="why decoding was aborted; set while the series is quarantined",
            )
        )


def downgrade() -> None:
    # A quarantined series goes back to 0002's states: routed, its job stays failed.
    op.execute("UPDATE series SET state = 'routed' WHERE state = 'quarantined'")
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_column("quarantine_reason")

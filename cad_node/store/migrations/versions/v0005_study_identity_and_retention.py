"""Studies keep what an admin recognises them by; retention marks what it removed.

The study browser of the admin page (issue 24) shows a study's Accession Number,
Study Date and Study Description to admins, so the journal keeps them (never in
logs).  Retention removes spooled images and result files once their results are
delivered and the configured time has passed; the rows stay, and ``purged_at``
says when their files went.  All columns are nullable: rows of 0004 stay valid.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)
"""``UTCDateTime`` in the models: a timezone-aware timestamp (naive on SQLite)."""


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(
            sa.Column(
                "accession_number",
                sa.String(16),
                nullable=True,
                comment="(0008,0050) SH; shown to admins only, never logged",
            )
        )
        batch_op.add_column(
            sa.Column("study_date", sa.String(8), nullable=True, comment="(0008,0020) DA")
        )
        batch_op.add_column(
            sa.Column("study_description", sa.String(64), nullable=True, comment="(0008,1030) LO")
        )
    with op.batch_alter_table("series") as batch_op:
        batch_op.add_column(
            sa.Column(
                "purged_at",
                UTC,
                nullable=True,
                comment="when retention removed its spooled files; the rows stay",
            )
        )
    with op.batch_alter_table("results") as batch_op:
        batch_op.add_column(
            sa.Column(
                "purged_at",
                UTC,
                nullable=True,
                comment="when retention removed its file, after every delivery of it ended",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("results") as batch_op:
        batch_op.drop_column("purged_at")
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_column("purged_at")
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_column("study_description")
        batch_op.drop_column("study_date")
        batch_op.drop_column("accession_number")

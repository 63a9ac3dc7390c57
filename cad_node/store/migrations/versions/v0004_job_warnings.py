"""A job records the warnings of its run for the admin.

A job that ran on a series with missing or odd attributes (no PatientOrientation,
images left out of the main stack) still ends DONE; what its result objects
derived or left out is kept beside it as a JSON list of short notes, UIDs only,
never patient data (issue 18).  The column is nullable, so rows of 0003 stay
valid (their jobs recorded no warnings).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(
            sa.Column(
                "warnings",
                sa.JSON(),
                nullable=True,
                comment="what the run derived or left out, for the admin (UIDs only); null: none",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("warnings")

"""Instances record their laterality and view; a job records the series it reads.

Mammography (four standard views) and colour fundus photography (OD, OS) are
read per study: assembly groups the instances by ImageLaterality and
ViewPosition, and a job lists every series of the study it reads.  All three
columns are nullable, so rows of 0.1.0 stay valid (a null ``series_group``
means the job reads its own series only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CS = sa.String(16)


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(
            sa.Column(
                "image_laterality",
                CS,
                nullable=True,
                comment="ImageLaterality (0020,0062), else Laterality (0020,0060)",
            )
        )
        batch_op.add_column(sa.Column("view_position", CS, nullable=True, comment="(0018,5101) CS"))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(
            sa.Column(
                "series_group",
                sa.JSON(),
                nullable=True,
                comment="every series the job reads (a mammography or fundus study); null: its own",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("series_group")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.drop_column("view_position")
        batch_op.drop_column("image_laterality")

"""Jobs record an abstention and a clinical priority; deliveries await Storage Commitment.

A model may decline an input outside its validated domain (issue 17): the job keeps the
rule's ``on_out_of_domain`` choice from when it was queued, and why the model abstained.
Jobs carry a priority class (issue 21: stat, urgent, routine, screening) and its rank,
the order the queue takes them in, and when a long wait promoted them.
A destination that commits (issue 20) takes a delivery from ``sent`` to ``committed``:
the delivery keeps its Storage Commitment transaction, when it was asked, how often, and
when the destination answered.  All new columns are nullable or defaulted: rows of 0005
stay valid.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)
"""``UTCDateTime`` in the models: a timezone-aware timestamp (naive on SQLite)."""


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(
            sa.Column(
                "on_out_of_domain",
                sa.String(16),
                nullable=True,
                comment="the rule's choice when the input is outside the model's domain; "
                "null: report",
            )
        )
        batch_op.add_column(
            sa.Column(
                "abstention",
                sa.JSON(),
                nullable=True,
                comment="why the model did not assess the input (reason, details, OOD score); "
                "null: it did",
            )
        )
        batch_op.add_column(
            sa.Column(
                "priority_class",
                sa.String(16),
                nullable=True,
                comment="stat, urgent, routine or screening; null: routine",
            )
        )
        batch_op.add_column(
            sa.Column(
                "priority_rank",
                sa.Integer(),
                nullable=False,
                server_default="2",
                comment="the queue takes the lowest rank first: 0 stat ... 3 screening",
            )
        )
        batch_op.add_column(
            sa.Column(
                "promoted_at",
                UTC,
                nullable=True,
                comment="when the job waited past its class's age limit and was promoted",
            )
        )
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(
            sa.Column(
                "commitment_transaction_uid",
                sa.String(64),
                nullable=True,
                comment="(0008,1195) UI of the Storage Commitment request awaited",
            )
        )
        batch_op.add_column(sa.Column("commitment_requested_at", UTC, nullable=True))
        batch_op.add_column(
            sa.Column("commitment_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column(
                "committed_at",
                UTC,
                nullable=True,
                comment="when the destination reported the object committed (N-EVENT-REPORT)",
            )
        )
        batch_op.create_index(
            "ix_deliveries_commitment_transaction_uid", ["commitment_transaction_uid"]
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_index("ix_deliveries_commitment_transaction_uid")
        batch_op.drop_column("committed_at")
        batch_op.drop_column("commitment_attempts")
        batch_op.drop_column("commitment_requested_at")
        batch_op.drop_column("commitment_transaction_uid")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("promoted_at")
        batch_op.drop_column("priority_rank")
        batch_op.drop_column("priority_class")
        batch_op.drop_column("abstention")
        batch_op.drop_column("on_out_of_domain")

"""What each job said, and radiologists' feedback on it, for local performance and drift.

Issue 22: a finished job keeps its outputs (model version, study, a study-level score,
assessments) in ``job_outputs`` and its findings by Tracking UID in ``finding_outputs``;
verdicts from the review page, the API, CSV outcomes and SRs sent back land in
``feedback``, matched to a job and finding where they can be.  New tables only: rows of
0006 stay valid, and jobs finished before it simply have no outputs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)
"""``UTCDateTime`` in the models: a timezone-aware timestamp (naive on SQLite)."""
UI = sa.String(64)
CS = sa.String(16)


def upgrade() -> None:
    op.create_table(
        "job_outputs",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("mode", CS, nullable=False, comment="active | shadow"),
        sa.Column("study_instance_uid", UI, nullable=False, comment="(0020,000D) UI"),
        sa.Column(
            "sr_sop_instance_uid", UI, nullable=True, comment="(0008,0018) UI of the job's SR"
        ),
        sa.Column("recorded_at", UTC, nullable=False),
        sa.Column("score", sa.Float(), nullable=True, comment="the study-level score"),
        sa.Column("finding_count", sa.Integer(), nullable=False),
        sa.Column("abstained", sa.Boolean(), nullable=False),
        sa.Column("ood_score", sa.Float(), nullable=True),
        sa.Column(
            "assessments",
            sa.JSON(),
            nullable=True,
            comment="AssessmentOutput rows: kind, laterality, score, value",
        ),
    )
    op.create_index("ix_job_outputs_model_name", "job_outputs", ["model_name"])
    op.create_index("ix_job_outputs_study_instance_uid", "job_outputs", ["study_instance_uid"])
    op.create_index("ix_job_outputs_sr_sop_instance_uid", "job_outputs", ["sr_sop_instance_uid"])
    op.create_index("ix_job_outputs_recorded_at", "job_outputs", ["recorded_at"])
    op.create_table(
        "finding_outputs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("tracking_uid", UI, nullable=False, comment="(0062,0021) UI"),
        sa.Column("tracking_identifier", sa.String(64), nullable=False, comment="(0062,0020) UT"),
        sa.Column("finding_type", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("sop_instance_uid", UI, nullable=False, comment="the image it is drawn on"),
        sa.Column("frame_number", sa.Integer(), nullable=True),
        sa.Column("row", sa.Float(), nullable=False, comment="centre, pixels"),
        sa.Column("column", sa.Float(), nullable=False, comment="centre, pixels"),
        sa.Column("laterality", CS, nullable=True),
        sa.Column("diameter_mm", sa.Float(), nullable=True),
    )
    op.create_index("ix_finding_outputs_job_id", "finding_outputs", ["job_id"])
    op.create_index("ix_finding_outputs_tracking_uid", "finding_outputs", ["tracking_uid"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("received_at", UTC, nullable=False),
        sa.Column("source", CS, nullable=False, comment="review | api | csv | dicom"),
        sa.Column(
            "reviewer", sa.String(64), nullable=False, comment="token name or calling AE title"
        ),
        sa.Column("study_instance_uid", UI, nullable=False, comment="(0020,000D) UI"),
        sa.Column("verdict", CS, nullable=False, comment="agree | disagree | missed | outcome"),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=True),
        sa.Column("model_name", sa.String(64), nullable=True),
        sa.Column(
            "finding_output_id",
            sa.Integer(),
            sa.ForeignKey("finding_outputs.id"),
            nullable=True,
        ),
        sa.Column("tracking_uid", UI, nullable=True, comment="(0062,0021) UI"),
        sa.Column("laterality", CS, nullable=True),
        sa.Column("truth", sa.String(64), nullable=True),
        sa.Column(
            "location",
            sa.JSON(),
            nullable=True,
            comment="ImagePoint: sop_instance_uid, row, column, frame_number",
        ),
        sa.Column(
            "source_sop_instance_uid",
            UI,
            nullable=True,
            comment="(0008,0018) UI of the feedback SR",
        ),
        sa.Column("referenced_sr_uid", UI, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    for column in (
        "received_at",
        "study_instance_uid",
        "job_id",
        "model_name",
        "finding_output_id",
        "source_sop_instance_uid",
    ):
        op.create_index(f"ix_feedback_{column}", "feedback", [column])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("finding_outputs")
    op.drop_table("job_outputs")

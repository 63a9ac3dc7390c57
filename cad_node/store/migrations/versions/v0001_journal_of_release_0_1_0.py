"""The journal of cad-node 0.1.0, as its ``Base.metadata.create_all`` made it.

A journal made by 0.1.0 has exactly these tables and no ``alembic_version``:
``create_schema`` stamps it with this revision, then upgrades it.  This
revision is frozen: later schema changes are new revisions.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UI = sa.String(64)
AE = sa.String(16)
CS = sa.String(16)
NAME = sa.String(64)
UTC = sa.DateTime(timezone=True)
"""``UTCDateTime`` in the models: a timezone-aware timestamp (naive on SQLite)."""

TABLES = (
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
)
"""In creation order: a table follows those its foreign keys reference."""


def upgrade() -> None:
    _create_studies()
    _create_series()
    _create_instances()
    _create_jobs()
    _create_results()
    _create_deliveries()
    _create_rule_set_versions()
    _create_audit_events()
    _create_model_settings()
    _create_destinations()


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)


def _index(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def _create_studies() -> None:
    op.create_table(
        "studies",
        sa.Column("study_instance_uid", UI, nullable=False, comment="(0020,000D) UI"),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("study_instance_uid"),
    )


def _create_series() -> None:
    op.create_table(
        "series",
        sa.Column("series_instance_uid", UI, nullable=False, comment="(0020,000E) UI"),
        sa.Column("study_instance_uid", UI, nullable=False, comment="(0020,000D) UI"),
        sa.Column("modality", CS, nullable=False, comment="(0008,0060) CS"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column(
            "expected_count",
            sa.Integer(),
            nullable=True,
            comment="ImagesInAcquisition (0020,1002) or NumberOfFrames",
        ),
        sa.Column(
            "calling_ae_title",
            AE,
            nullable=False,
            comment="the AE title that sent the first instance",
        ),
        sa.Column(
            "attributes",
            sa.JSON(),
            nullable=False,
            comment="series-level header keywords used by routing",
        ),
        sa.Column("first_received_at", UTC, nullable=False),
        sa.Column("last_received_at", UTC, nullable=False),
        sa.Column("completed_at", UTC, nullable=True),
        sa.Column("rule_name", NAME, nullable=True),
        sa.Column("routing_explanation", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["study_instance_uid"], ["studies.study_instance_uid"]),
        sa.PrimaryKeyConstraint("series_instance_uid"),
    )
    _index("series", "last_received_at", "state", "study_instance_uid")


def _create_instances() -> None:
    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", UI, nullable=False, comment="(0008,0018) UI"),
        sa.Column("series_instance_uid", UI, nullable=False, comment="(0020,000E) UI"),
        sa.Column("sop_class_uid", UI, nullable=False, comment="(0008,0016) UI"),
        sa.Column("transfer_syntax_uid", UI, nullable=False, comment="(0002,0010) UI"),
        sa.Column("instance_number", sa.Integer(), nullable=True, comment="(0020,0013) IS"),
        sa.Column("path", sa.Text(), nullable=False, comment="relative to storage_dir"),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("calling_ae_title", AE, nullable=False),
        sa.Column("series_revision", sa.Integer(), nullable=False),
        sa.Column("received_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["series_instance_uid"], ["series.series_instance_uid"]),
        sa.PrimaryKeyConstraint("sop_instance_uid"),
    )
    _index("instances", "series_instance_uid")


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("series_instance_uid", UI, nullable=False),
        sa.Column("series_revision", sa.Integer(), nullable=False),
        sa.Column("rule_name", NAME, nullable=False),
        sa.Column("model_name", NAME, nullable=False),
        sa.Column("destinations", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("started_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("lease_expires_at", UTC, nullable=True),
        sa.Column("worker_id", NAME, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finding_count", sa.Integer(), nullable=True),
        sa.Column(
            "stage_seconds",
            sa.JSON(),
            nullable=True,
            comment="seconds per stage of the run: load, inference, seg, sr, write",
        ),
        sa.ForeignKeyConstraint(["series_instance_uid"], ["series.series_instance_uid"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_instance_uid", "series_revision", "model_name"),
    )
    _index("jobs", "series_instance_uid", "state")


def _create_results() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sop_class_uid", UI, nullable=False, comment="(0008,0016) UI"),
        sa.Column("sop_instance_uid", UI, nullable=False, comment="(0008,0018) UI"),
        sa.Column("series_instance_uid", UI, nullable=False, comment="(0020,000E) UI"),
        sa.Column("path", sa.Text(), nullable=False, comment="relative to storage_dir"),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    _index("results", "job_id")


def _create_deliveries() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("destination", NAME, nullable=False, comment="destination name in config"),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC, nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True, comment="C-STORE Status (0000,0900)"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("result_id", "destination"),
    )
    _index("deliveries", "next_attempt_at", "result_id", "state")


def _create_rule_set_versions() -> None:
    op.create_table(
        "rule_set_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False, comment="the rules, as in YAML"),
        sa.Column("author", NAME, nullable=False, comment="admin token name, or 'config'"),
        sa.Column("change", sa.Text(), nullable=False, comment="what changed, in words"),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )


def _create_audit_events() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("actor", NAME, nullable=False),
        sa.Column("action", NAME, nullable=False),
        sa.Column(
            "target",
            sa.String(128),
            nullable=False,
            comment="a rule name, job id, delivery id",
        ),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _index("audit_events", "at")


def _create_model_settings() -> None:
    op.create_table(
        "model_settings",
        sa.Column("model_name", NAME, nullable=False),
        sa.Column("mode", CS, nullable=False, comment="active | shadow | off"),
        sa.Column("changed_by", NAME, nullable=False),
        sa.Column("changed_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("model_name"),
    )


def _create_destinations() -> None:
    op.create_table(
        "destinations",
        sa.Column("name", NAME, nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False, comment="DestinationSettings, as in YAML"),
        sa.Column("changed_by", NAME, nullable=False),
        sa.Column("changed_at", UTC, nullable=False),
        sa.Column(
            "deleted_at",
            UTC,
            nullable=True,
            comment="set when deleted; the row stays so that a deleted seed is not seeded again",
        ),
        sa.PrimaryKeyConstraint("name"),
    )

"""Journal tables, named by DICOM keyword and sized by VR (UI = 64, AE = 16, CS = 16)."""

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from cad_node.domain.states import DeliveryState, JobState, ResultKind, SeriesState

UI = String(64)
AE = String(16)
CS = String(16)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the journal; use UTC-aware datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class Study(Base):
    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(UI, primary_key=True, comment="(0020,000D) UI")
    created_at: Mapped[datetime]
    accession_number: Mapped[str | None] = mapped_column(
        String(16), comment="(0008,0050) SH; shown to admins only, never logged"
    )
    study_date: Mapped[str | None] = mapped_column(String(8), comment="(0008,0020) DA")
    study_description: Mapped[str | None] = mapped_column(String(64), comment="(0008,1030) LO")


class Series(Base):
    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(UI, primary_key=True, comment="(0020,000E) UI")
    study_instance_uid: Mapped[str] = mapped_column(
        UI, ForeignKey("studies.study_instance_uid"), index=True, comment="(0020,000D) UI"
    )
    modality: Mapped[str] = mapped_column(CS, comment="(0008,0060) CS")
    state: Mapped[SeriesState] = mapped_column(String(16), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    """Raised by an instance arriving after completion; the re-run references the earlier."""
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_count: Mapped[int | None] = mapped_column(
        Integer, comment="ImagesInAcquisition (0020,1002) or NumberOfFrames"
    )
    calling_ae_title: Mapped[str] = mapped_column(
        AE, comment="the AE title that sent the first instance"
    )
    attributes: Mapped[dict[str, Any]] = mapped_column(
        comment="series-level header keywords used by routing"
    )
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime] = mapped_column(index=True)
    completed_at: Mapped[datetime | None]
    rule_name: Mapped[str | None] = mapped_column(String(64))
    routing_explanation: Mapped[str | None] = mapped_column(Text)
    quarantine_reason: Mapped[str | None] = mapped_column(
        Text, comment="why decoding was aborted; set while the series is quarantined"
    )
    purged_at: Mapped[datetime | None] = mapped_column(
        comment="when retention removed its spooled files; the rows stay"
    )


class Instance(Base):
    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(UI, primary_key=True, comment="(0008,0018) UI")
    series_instance_uid: Mapped[str] = mapped_column(
        UI, ForeignKey("series.series_instance_uid"), index=True, comment="(0020,000E) UI"
    )
    sop_class_uid: Mapped[str] = mapped_column(UI, comment="(0008,0016) UI")
    transfer_syntax_uid: Mapped[str] = mapped_column(UI, comment="(0002,0010) UI")
    instance_number: Mapped[int | None] = mapped_column(Integer, comment="(0020,0013) IS")
    path: Mapped[str] = mapped_column(Text, comment="relative to storage_dir")
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae_title: Mapped[str] = mapped_column(AE)
    series_revision: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[datetime]
    image_laterality: Mapped[str | None] = mapped_column(
        CS, comment="ImageLaterality (0020,0062), else Laterality (0020,0060)"
    )
    view_position: Mapped[str | None] = mapped_column(CS, comment="(0018,5101) CS")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_instance_uid", "series_revision", "model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_instance_uid: Mapped[str] = mapped_column(
        UI, ForeignKey("series.series_instance_uid"), index=True
    )
    series_revision: Mapped[int] = mapped_column(Integer)
    rule_name: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    destinations: Mapped[list[str]]
    state: Mapped[JobState] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    finding_count: Mapped[int | None] = mapped_column(Integer)
    series_group: Mapped[list[str] | None] = mapped_column(
        comment="every series the job reads (a mammography or fundus study); null: its own"
    )
    stage_seconds: Mapped[dict[str, Any] | None] = mapped_column(
        comment="seconds per stage of the run: load, inference, seg, sr, write"
    )
    warnings: Mapped[list[str] | None] = mapped_column(
        comment="what the run derived or left out, for the admin (UIDs only); null: none"
    )
    on_out_of_domain: Mapped[str | None] = mapped_column(
        String(16),
        comment="the rule's choice when the input is outside the model's domain; null: report",
    )
    abstention: Mapped[dict[str, Any] | None] = mapped_column(
        comment="why the model did not assess the input (reason, details, OOD score); null: it did"
    )
    priority_class: Mapped[str | None] = mapped_column(
        String(16), comment="stat, urgent, routine or screening; null: routine"
    )
    priority_rank: Mapped[int] = mapped_column(
        Integer, default=2, comment="the queue takes the lowest rank first: 0 stat ... 3 screening"
    )
    promoted_at: Mapped[datetime | None] = mapped_column(
        comment="when the job waited past its class's age limit and was promoted"
    )


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id"), index=True)
    kind: Mapped[ResultKind] = mapped_column(String(16))
    sop_class_uid: Mapped[str] = mapped_column(UI, comment="(0008,0016) UI")
    sop_instance_uid: Mapped[str] = mapped_column(UI, unique=True, comment="(0008,0018) UI")
    series_instance_uid: Mapped[str] = mapped_column(UI, comment="(0020,000E) UI")
    path: Mapped[str] = mapped_column(Text, comment="relative to storage_dir")
    created_at: Mapped[datetime]
    purged_at: Mapped[datetime | None] = mapped_column(
        comment="when retention removed its file, after every delivery of it ended"
    )


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("result_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(Integer, ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64), comment="destination name in config")
    state: Mapped[DeliveryState] = mapped_column(String(32), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_status: Mapped[int | None] = mapped_column(Integer, comment="C-STORE Status (0000,0900)")
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    commitment_transaction_uid: Mapped[str | None] = mapped_column(
        UI, index=True, comment="(0008,1195) UI of the Storage Commitment request awaited"
    )
    commitment_requested_at: Mapped[datetime | None]
    commitment_attempts: Mapped[int] = mapped_column(Integer, default=0)
    committed_at: Mapped[datetime | None] = mapped_column(
        comment="when the destination reported the object committed (N-EVENT-REPORT)"
    )


class RuleSetVersion(Base):
    """One version of the routing rules; the highest ``version`` is the one in force."""

    __tablename__ = "rule_set_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSON, comment="the rules, as in YAML")
    author: Mapped[str] = mapped_column(String(64), comment="admin token name, or 'config'")
    change: Mapped[str] = mapped_column(Text, comment="what changed, in words")
    created_at: Mapped[datetime]


class AuditEvent(Base):
    """An admin change: who, when, what (UIDs and names only, never patient data)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), comment="a rule name, job id, delivery id")
    detail: Mapped[dict[str, Any]]


class ModelSetting(Base):
    """The admin's switch for one model: active, shadow (run, record, send nothing) or off."""

    __tablename__ = "model_settings"

    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    mode: Mapped[str] = mapped_column(CS, comment="active | shadow | off")
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime]


class DestinationRow(Base):
    """A destination, seeded from the config on first start, then changed through the API."""

    __tablename__ = "destinations"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(comment="DestinationSettings, as in YAML")
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None] = mapped_column(
        comment="set when deleted; the row stays so that a deleted seed is not seeded again"
    )


class JobOutput(Base):
    """What a finished job said (:class:`~cad_node.domain.monitoring.JobOutputs`), kept for
    monitoring: no patient data, and not purged with the job's files."""

    __tablename__ = "job_outputs"

    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(CS, comment="active | shadow")
    study_instance_uid: Mapped[str] = mapped_column(UI, index=True, comment="(0020,000D) UI")
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(
        UI, index=True, comment="(0008,0018) UI of the job's SR"
    )
    recorded_at: Mapped[datetime] = mapped_column(index=True)
    score: Mapped[float | None] = mapped_column(Float, comment="the study-level score")
    finding_count: Mapped[int] = mapped_column(Integer, default=0)
    abstained: Mapped[bool] = mapped_column(Boolean, default=False)
    ood_score: Mapped[float | None] = mapped_column(Float)
    assessments: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON, comment="AssessmentOutput rows: kind, laterality, score, value"
    )


class FindingOutputRow(Base):
    """One finding of a job's SR (:class:`~cad_node.domain.monitoring.FindingOutput`)."""

    __tablename__ = "finding_outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id"), index=True)
    tracking_uid: Mapped[str] = mapped_column(UI, index=True, comment="(0062,0021) UI")
    tracking_identifier: Mapped[str] = mapped_column(String(64), comment="(0062,0020) UT")
    finding_type: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float | None] = mapped_column(Float)
    sop_instance_uid: Mapped[str] = mapped_column(UI, comment="the image it is drawn on")
    frame_number: Mapped[int | None] = mapped_column(Integer)
    row: Mapped[float] = mapped_column(Float, comment="centre, pixels")
    column: Mapped[float] = mapped_column(Float, comment="centre, pixels")
    laterality: Mapped[str | None] = mapped_column(CS)
    diameter_mm: Mapped[float | None] = mapped_column(Float)


class FeedbackRow(Base):
    """One verdict (:class:`~cad_node.domain.monitoring.FeedbackItem`), matched to a job."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    source: Mapped[str] = mapped_column(CS, comment="review | api | csv | dicom")
    reviewer: Mapped[str] = mapped_column(String(64), comment="token name or calling AE title")
    study_instance_uid: Mapped[str] = mapped_column(UI, index=True, comment="(0020,000D) UI")
    verdict: Mapped[str] = mapped_column(CS, comment="agree | disagree | missed | outcome")
    job_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("jobs.id"), index=True)
    model_name: Mapped[str | None] = mapped_column(String(64), index=True)
    finding_output_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("finding_outputs.id"), index=True
    )
    tracking_uid: Mapped[str | None] = mapped_column(UI, comment="(0062,0021) UI")
    laterality: Mapped[str | None] = mapped_column(CS)
    truth: Mapped[str | None] = mapped_column(String(64))
    location: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, comment="ImagePoint: sop_instance_uid, row, column, frame_number"
    )
    source_sop_instance_uid: Mapped[str | None] = mapped_column(
        UI, index=True, comment="(0008,0018) UI of the feedback SR"
    )
    referenced_sr_uid: Mapped[str | None] = mapped_column(UI)
    note: Mapped[str | None] = mapped_column(Text)

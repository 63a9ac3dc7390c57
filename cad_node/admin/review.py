"""Radiologists' feedback (issue 22): the review page's API, POST /api/feedback, CSV outcomes.

Reading (``read``, ``review`` and ``admin`` tokens): the studies the models read, each
with its models, finding and feedback counts; one study's job outputs (findings with their
centre, assessments) with the verdicts already given and the images they lie on (rendered
as PNG, no marks burned in: the page draws them); the feedback rows.  No patient name, ID
or accession number is answered: UIDs, counts and dates only.

Writing (``review`` and ``admin`` tokens): ``POST /api/feedback`` (JSON items) and
``POST /api/feedback/csv`` (a CSV of outcomes).  Every item is checked before any is
recorded (422 naming the item and why; 400 naming the CSV's lines), journaled with
:func:`~cad_node.store.feedback.record_feedback` and audited (actor: the token's name).
"""

import logging
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cad_node.admin.auth import Principal, Reader, Reviewer
from cad_node.admin.deps import MAX_PAGE, Context, Journal, Page, as_utc
from cad_node.admin.flow import Listing
from cad_node.admin.review_image import render_png
from cad_node.domain.monitoring import FeedbackItem, FeedbackSource, ImagePoint, Verdict
from cad_node.errors import InvalidSeriesError
from cad_node.monitoring.csv_outcomes import parse_outcomes_csv
from cad_node.store.feedback import RecordedFeedback, record_feedback
from cad_node.store.rulesets import record_audit
from cad_node.store.schema import (
    FeedbackRow,
    FindingOutputRow,
    Instance,
    Job,
    JobOutput,
    Series,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["feedback"])

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
Uid = Annotated[str, Field(min_length=1, max_length=64, pattern=UID_PATTERN)]
UidPath = Annotated[
    str, PathParam(min_length=1, max_length=64, pattern=UID_PATTERN, description="a UID")
]
MAX_ITEMS = 1000
"""The most feedback items one request may carry."""
ALL_IMAGES_UP_TO = 8
"""A series of at most this many images is shown whole (mammography, fundus); a larger
one (a CT) by the images its findings lie on."""


# -- posting feedback ---------------------------------------------------------------------


class PointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sop_instance_uid: Uid
    row: float = Field(ge=0, le=1e6)
    column: float = Field(ge=0, le=1e6)
    frame_number: int | None = Field(default=None, ge=1, le=1 << 20)


class FeedbackIn(BaseModel):
    """One verdict as the API takes it."""

    model_config = ConfigDict(extra="forbid")

    study_instance_uid: Uid
    verdict: Verdict
    tracking_uid: Uid | None = None
    location: PointIn | None = None
    laterality: Literal["R", "L"] | None = None
    truth: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    note: str | None = Field(default=None, max_length=1024, pattern=r"^[^\x00-\x08\x0b-\x1f]*$")


class FeedbackPost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS)
    source: Literal["api", "review"] = "api"
    """``review``: posted by the review page; ``api``: by anything else."""


class RecordedOut(BaseModel):
    recorded: int
    """Rows written (an outcome for a study two models read is one row per model)."""
    unmatched: list[str]
    """Why some items matched no job (kept all the same)."""
    replaced: int


def _item(raw: dict[str, Any], source: FeedbackSource, reviewer: str) -> FeedbackItem:
    given = FeedbackIn.model_validate(raw)
    location = None
    if given.location is not None:
        location = ImagePoint(**given.location.model_dump())
    return FeedbackItem(
        source=source,
        reviewer=reviewer,
        study_instance_uid=given.study_instance_uid,
        verdict=given.verdict,
        tracking_uid=given.tracking_uid,
        location=location,
        laterality=given.laterality,
        truth=given.truth,
        model_name=given.model,
        note=given.note,
    )


def _reasons(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'item'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
    return str(exc)


def feedback_items(
    raw_items: Sequence[dict[str, Any]], source: FeedbackSource, reviewer: str
) -> list[FeedbackItem]:
    """Every item checked; 422 naming each bad item's index and reason, nothing recorded."""
    items: list[FeedbackItem] = []
    problems: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_items):
        try:
            items.append(_item(raw, source, reviewer))
        except (ValidationError, ValueError) as exc:
            problems.append({"item": index, "reason": _reasons(exc)})
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=problems)
    return items


def journal_feedback(
    node: Context, caller: Principal, items: Sequence[FeedbackItem], action: str
) -> RecordedOut:
    """Record ``items`` and audit it in one transaction; UIDs and counts only."""
    with node.sessions.begin() as session:
        now = node.clock()
        outcome: RecordedFeedback = record_feedback(session, items, now)
        studies = sorted({item.study_instance_uid for item in items})
        verdicts: dict[str, int] = {}
        for item in items:
            verdicts[item.verdict.value] = verdicts.get(item.verdict.value, 0) + 1
        record_audit(
            session,
            actor=caller.name,
            action=action,
            target=f"study {studies[0]}" if len(studies) == 1 else f"{len(studies)} studies",
            now=now,
            detail={
                "source": items[0].source.value,
                "items": len(items),
                "verdicts": verdicts,
                "recorded": outcome.recorded,
                "unmatched": len(outcome.unmatched),
                "replaced": outcome.replaced,
                "studies": studies[:20],
            },
        )
    logger.info(
        "feedback: %d item(s) by %s recorded as %d row(s), %d unmatched",
        len(items),
        caller.name,
        outcome.recorded,
        len(outcome.unmatched),
    )
    return RecordedOut(
        recorded=outcome.recorded, unmatched=list(outcome.unmatched), replaced=outcome.replaced
    )


@router.post("/feedback", response_model=RecordedOut, status_code=status.HTTP_201_CREATED)
def post_feedback(post: FeedbackPost, node: Context, caller: Reviewer) -> RecordedOut:
    """Radiologists' verdicts (review or admin token): ``agree`` / ``disagree`` with a finding
    (its ``tracking_uid``), a ``missed`` lesion (``location`` and/or ``laterality``), an
    ``outcome`` (``truth``: malignant/benign/normal, positive/negative, an ICDR grade 0-4;
    ``laterality`` of the breast or eye; ``model``: one model, else every model that read
    the study). Every item is checked first: 422 names each bad item, nothing is recorded."""
    source = FeedbackSource.REVIEW if post.source == "review" else FeedbackSource.API
    items = feedback_items(post.items, source, caller.name)
    return journal_feedback(node, caller, items, "feedback.record")


@router.post(
    "/feedback/csv",
    response_model=RecordedOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}
    },
)
async def post_feedback_csv(request: Request, node: Context, caller: Reviewer) -> RecordedOut:
    """A CSV of outcomes (``text/csv``; the columns of ``cad-node feedback import``): 400
    naming the lines that are wrong, nothing recorded; else 201 as ``POST /api/feedback``."""
    body = await request.body()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="the CSV is not UTF-8") from exc
    try:
        items = parse_outcomes_csv(text, caller.name, FeedbackSource.CSV)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    return journal_feedback(node, caller, items, "feedback.import")


# -- reading feedback ---------------------------------------------------------------------


class FeedbackOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    received_at: datetime
    source: str
    reviewer: str
    study_instance_uid: str
    verdict: str
    job_id: int | None
    model_name: str | None
    tracking_uid: str | None
    laterality: str | None
    truth: str | None
    location: dict[str, Any] | None
    note: str | None
    source_sop_instance_uid: str | None


@router.get("/feedback", response_model=list[FeedbackOut])
def list_feedback(
    *,
    session: Journal,
    _caller: Reader,
    study: Annotated[str | None, Query(max_length=64, description="a Study Instance UID")] = None,
    model: Annotated[str | None, Query(max_length=64, description="a model's name")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> list[FeedbackOut]:
    """Feedback rows, newest first (``job_id`` null: matched no job of this node)."""
    query = select(FeedbackRow)
    if study:
        query = query.where(FeedbackRow.study_instance_uid == study)
    if model:
        query = query.where(FeedbackRow.model_name == model)
    rows = session.scalars(
        query.order_by(FeedbackRow.received_at.desc(), FeedbackRow.id.desc()).limit(limit)
    )
    return [FeedbackOut.model_validate(row) for row in rows]


# -- studies to review --------------------------------------------------------------------


class ReviewStudy(BaseModel):
    study_instance_uid: str
    models: list[str]
    modalities: list[str]
    finding_count: int
    """Findings of each model's newest job, summed."""
    feedback_count: int
    first_output_at: datetime
    last_output_at: datetime
    last_feedback_at: datetime | None


def _newest_outputs(session: Session, study_uid: str) -> list[JobOutput]:
    """Each model's newest job output on the study (a re-run replaces the earlier)."""
    newest: dict[str, JobOutput] = {}
    query = select(JobOutput).where(JobOutput.study_instance_uid == study_uid)
    for output in session.scalars(query.order_by(JobOutput.job_id)):
        newest[output.model_name] = output
    return sorted(newest.values(), key=lambda output: output.model_name)


def _review_study(session: Session, study_uid: str) -> ReviewStudy:
    outputs = _newest_outputs(session, study_uid)
    feedback = session.execute(
        select(func.count(), func.max(FeedbackRow.received_at)).where(
            FeedbackRow.study_instance_uid == study_uid
        )
    ).one()
    modalities = session.scalars(
        select(Series.modality).where(Series.study_instance_uid == study_uid).distinct()
    ).all()
    return ReviewStudy(
        study_instance_uid=study_uid,
        models=[output.model_name for output in outputs],
        modalities=sorted(modalities),
        finding_count=sum(output.finding_count for output in outputs),
        feedback_count=int(feedback[0]),
        first_output_at=min(output.recorded_at for output in outputs),
        last_output_at=max(output.recorded_at for output in outputs),
        last_feedback_at=feedback[1],
    )


@router.get("/review/studies", response_model=Listing[ReviewStudy])
def review_studies(
    *,
    session: Journal,
    _caller: Reader,
    page: Page,
    model: Annotated[str | None, Query(max_length=64, description="a model's name")] = None,
    since: Annotated[datetime | None, Query(description="outputs recorded since")] = None,
    unreviewed: Annotated[bool, Query(description="only studies with no feedback yet")] = False,
) -> Listing[ReviewStudy]:
    """Studies a model read, newest output first: models, finding and feedback counts, dates."""
    last = func.max(JobOutput.recorded_at)
    query = select(JobOutput.study_instance_uid, last.label("last")).group_by(
        JobOutput.study_instance_uid
    )
    if model:
        query = query.where(JobOutput.model_name == model)
    if since is not None:
        query = query.where(JobOutput.recorded_at >= as_utc(since))
    if unreviewed:
        reviewed = select(FeedbackRow.study_instance_uid)
        query = query.where(JobOutput.study_instance_uid.not_in(reviewed))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    uids = session.scalars(
        query.order_by(last.desc(), JobOutput.study_instance_uid)
        .limit(page.limit)
        .offset(page.offset)
    ).all()
    items = [_review_study(session, uid) for uid in uids]
    return Listing[ReviewStudy](items=items, total=int(total), **page.model_dump())


# -- one study ----------------------------------------------------------------------------


class VerdictOut(BaseModel):
    verdict: str
    reviewer: str
    source: str
    received_at: datetime


class FindingOut(BaseModel):
    tracking_uid: str
    tracking_identifier: str
    finding_type: str
    probability: float | None
    sop_instance_uid: str
    frame_number: int | None
    row: float
    column: float
    laterality: str | None
    diameter_mm: float | None
    verdict: VerdictOut | None
    """The newest agree / disagree on this finding, if any."""


def _json_number(value: float | None) -> float | None:
    """``value``, or None where JSON has no number for it (an infinite OOD score)."""
    return value if value is None or math.isfinite(value) else None


class JobOutputOut(BaseModel):
    job_id: int
    model_name: str
    model_version: str
    mode: str
    recorded_at: datetime
    score: float | None
    abstained: bool
    ood_score: float | None
    sr_sop_instance_uid: str | None
    assessments: list[dict[str, Any]]
    findings: list[FindingOut]


class ImageOut(BaseModel):
    """A source image the page shows: ``/api/review/images/{sop_instance_uid}.png``."""

    sop_instance_uid: str
    series_instance_uid: str
    frame_number: int | None
    laterality: str | None
    view_position: str | None
    rows: int | None
    columns: int | None
    available: bool
    """False when retention removed its file (the findings are listed all the same)."""


class ReviewStudyDetail(BaseModel):
    study_instance_uid: str
    jobs: list[JobOutputOut]
    images: list[ImageOut]
    feedback: list[FeedbackOut]


def _newest_verdicts(session: Session, tracking_uids: Sequence[str]) -> dict[str, FeedbackRow]:
    if not tracking_uids:
        return {}
    query = (
        select(FeedbackRow)
        .where(
            FeedbackRow.tracking_uid.in_(tracking_uids),
            FeedbackRow.verdict.in_((Verdict.AGREE.value, Verdict.DISAGREE.value)),
        )
        .order_by(FeedbackRow.received_at, FeedbackRow.id)
    )
    return {row.tracking_uid or "": row for row in session.scalars(query)}


def _job_output_out(
    output: JobOutput, findings: Sequence[FindingOutputRow], verdicts: dict[str, FeedbackRow]
) -> JobOutputOut:
    def finding_out(finding: FindingOutputRow) -> FindingOut:
        given = verdicts.get(finding.tracking_uid)
        verdict = None
        if given is not None:
            verdict = VerdictOut(
                verdict=given.verdict,
                reviewer=given.reviewer,
                source=given.source,
                received_at=given.received_at,
            )
        return FindingOut(
            tracking_uid=finding.tracking_uid,
            tracking_identifier=finding.tracking_identifier,
            finding_type=finding.finding_type,
            probability=finding.probability,
            sop_instance_uid=finding.sop_instance_uid,
            frame_number=finding.frame_number,
            row=finding.row,
            column=finding.column,
            laterality=finding.laterality,
            diameter_mm=finding.diameter_mm,
            verdict=verdict,
        )

    return JobOutputOut(
        job_id=output.job_id,
        model_name=output.model_name,
        model_version=output.model_version,
        mode=output.mode,
        recorded_at=output.recorded_at,
        score=output.score,
        abstained=output.abstained,
        ood_score=_json_number(output.ood_score),
        sr_sop_instance_uid=output.sr_sop_instance_uid,
        assessments=list(output.assessments or ()),
        findings=[finding_out(finding) for finding in findings],
    )


def _series_read(session: Session, job_ids: Sequence[int]) -> list[str]:
    """The series the jobs read (their own, or their study group's)."""
    read: list[str] = []
    for job in session.scalars(select(Job).where(Job.id.in_(job_ids)).order_by(Job.id)):
        for uid in job.series_group or [job.series_instance_uid]:
            if uid not in read:
                read.append(uid)
    return read


def _image_out(
    storage_dir: Path, instance: Instance, frame_number: int | None, purged: bool
) -> ImageOut:
    rows = columns = None
    available = False
    if not purged:
        try:
            header = dcmread(storage_dir / instance.path, stop_before_pixels=True)
            rows, columns = int(header.Rows), int(header.Columns)
            available = True
        except (InvalidDicomError, OSError, AttributeError, ValueError):
            available = False
    return ImageOut(
        sop_instance_uid=instance.sop_instance_uid,
        series_instance_uid=instance.series_instance_uid,
        frame_number=frame_number,
        laterality=instance.image_laterality,
        view_position=instance.view_position,
        rows=rows,
        columns=columns,
        available=available,
    )


def _images(
    session: Session,
    storage_dir: Path,
    job_ids: Sequence[int],
    findings: Sequence[FindingOutputRow],
) -> list[ImageOut]:
    """Every image of a small series the jobs read; of a large one, those with findings (else
    its middle image, where a missed lesion can be marked)."""
    marked: dict[str, list[int | None]] = {}
    for finding in findings:
        frames = marked.setdefault(finding.sop_instance_uid, [])
        if finding.frame_number not in frames:
            frames.append(finding.frame_number)
    shown: list[ImageOut] = []
    for series_uid in _series_read(session, job_ids):
        series = session.get(Series, series_uid)
        instances = session.scalars(
            select(Instance)
            .where(Instance.series_instance_uid == series_uid)
            .order_by(Instance.instance_number, Instance.sop_instance_uid)
        ).all()
        if series is None or not instances:
            continue
        chosen = list(instances)
        if len(instances) > ALL_IMAGES_UP_TO:
            chosen = [i for i in instances if i.sop_instance_uid in marked]
            chosen = chosen or [instances[len(instances) // 2]]
        purged = series.purged_at is not None
        for instance in chosen:
            for frame in marked.get(instance.sop_instance_uid) or [None]:
                shown.append(_image_out(storage_dir, instance, frame, purged))
    return shown


@router.get("/review/studies/{study_uid}", response_model=ReviewStudyDetail)
def review_study(
    study_uid: UidPath, node: Context, session: Journal, _caller: Reader
) -> ReviewStudyDetail:
    """One study: each model's newest job output (findings with their centre and the newest
    verdict, assessments), the images they lie on, and the feedback given (newest first)."""
    outputs = _newest_outputs(session, study_uid)
    if not outputs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no model read this study")
    job_ids = [output.job_id for output in outputs]
    findings = session.scalars(
        select(FindingOutputRow)
        .where(FindingOutputRow.job_id.in_(job_ids))
        .order_by(FindingOutputRow.job_id, FindingOutputRow.id)
    ).all()
    verdicts = _newest_verdicts(session, [finding.tracking_uid for finding in findings])
    jobs = [
        _job_output_out(output, [f for f in findings if f.job_id == output.job_id], verdicts)
        for output in outputs
    ]
    feedback = session.scalars(
        select(FeedbackRow)
        .where(FeedbackRow.study_instance_uid == study_uid)
        .order_by(FeedbackRow.received_at.desc(), FeedbackRow.id.desc())
        .limit(MAX_PAGE)
    )
    return ReviewStudyDetail(
        study_instance_uid=study_uid,
        jobs=jobs,
        images=_images(session, node.settings.storage_dir, job_ids, findings),
        feedback=[FeedbackOut.model_validate(row) for row in feedback],
    )


@router.get(
    "/review/images/{sop_instance_uid}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def review_image(
    sop_instance_uid: UidPath,
    node: Context,
    session: Journal,
    _caller: Reader,
    frame: Annotated[int | None, Query(ge=1, le=1 << 20, description="frame, from 1")] = None,
) -> Response:
    """One source image as PNG (windowed, at most 1024 pixels a side, no marks)."""
    instance = session.get(Instance, sop_instance_uid)
    if instance is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such image")
    series = session.get(Series, instance.series_instance_uid)
    path = node.settings.storage_dir / instance.path
    if (series is not None and series.purged_at is not None) or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="the image was removed by retention")
    try:
        png = render_png(path, frame)
    except InvalidSeriesError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

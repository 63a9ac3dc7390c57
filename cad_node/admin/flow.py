"""Series, jobs and deliveries: lists with filters and paging; retry and cancel."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, NamedTuple, TypeVar

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, case, func, select, update
from sqlalchemy.orm import Session

from cad_node.admin.auth import Principal, Reader, Writer
from cad_node.admin.context import AdminContext
from cad_node.admin.deps import MAX_ID, Context, Journal, Page, Paging, RowId, as_utc
from cad_node.domain.states import DeliveryState, JobState, SeriesState
from cad_node.store.abstentions import abstention_counts
from cad_node.store.rulesets import record_audit
from cad_node.store.schema import Delivery, Job, Result, Series
from cad_node.store.series import release_from_quarantine

router = APIRouter(prefix="/api", tags=["series, jobs, deliveries"])

Item = TypeVar("Item", bound=BaseModel)


class Listing(BaseModel, Generic[Item]):
    """One page of rows and the total matching the filters."""

    items: list[Item]
    total: int
    limit: int
    offset: int


class _Row(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class SeriesOut(_Row):
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    state: SeriesState
    revision: int
    instance_count: int
    expected_count: int | None
    calling_ae_title: str
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    rule_name: str | None
    quarantine_reason: str | None
    """Why decoding was aborted, while ``state`` is quarantined."""


class SeriesDetail(SeriesOut):
    routing_explanation: str | None


class JobOut(_Row):
    id: int
    series_instance_uid: str
    series_revision: int
    rule_name: str
    model_name: str
    destinations: list[str]
    state: JobState
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    finding_count: int | None
    warnings: list[str] | None
    """What the run derived or left out (UIDs only); null: none."""
    on_out_of_domain: str | None = None
    """The rule's choice when the input is outside the model's domain; null: report."""
    abstention: dict[str, Any] | None = None
    """Why the model did not assess the input: ``reason``, ``details``, ``ood`` (score,
    threshold, method); under run_anyway the caveat of the findings. Null: none."""
    priority_class: str | None = None
    """Its clinical priority as queued: stat, urgent, routine, screening; null: routine."""
    promoted_at: datetime | None = None
    """When it waited past its class's age limit and moved up the queue; null: never."""


class DeliveryOut(_Row):
    id: int
    result_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    sop_instance_uid: str | None = None
    job_id: int | None = None
    commitment_transaction_uid: str | None = None
    """Storage Commitment: the Transaction UID of the request awaited or answered."""
    commitment_requested_at: datetime | None = None
    commitment_attempts: int = 0
    """Commitment requests made since it was last stored."""
    committed_at: datetime | None = None
    """When the destination reported it committed (state ``committed``)."""


def _page(session: Session, query: Select[*tuple[Any, ...]], page: Paging) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = session.execute(query.limit(page.limit).offset(page.offset)).all()
    return [row[0] if len(row) == 1 else row for row in rows], int(total or 0)


@router.get("/series", response_model=Listing[SeriesOut])
def list_series(
    *,
    session: Journal,
    _caller: Reader,
    page: Page,
    state: SeriesState | None = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    rule_name: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
) -> Listing[SeriesOut]:
    """Received series, last received first."""
    query = select(Series).order_by(Series.last_received_at.desc())
    if state is not None:
        query = query.where(Series.state == state)
    if modality is not None:
        query = query.where(Series.modality == modality)
    if rule_name is not None:
        query = query.where(Series.rule_name == rule_name)
    if since is not None:
        query = query.where(Series.last_received_at >= as_utc(since))
    rows, total = _page(session, query, page)
    items = [SeriesOut.model_validate(row) for row in rows]
    return Listing[SeriesOut](items=items, total=total, **page.model_dump())


class StudyOut(BaseModel):
    study_instance_uid: str
    series_count: int
    instance_count: int
    modalities: list[str]
    first_received_at: datetime
    last_received_at: datetime


@router.get("/studies", response_model=Listing[StudyOut])
def list_studies(
    *,
    session: Journal,
    _caller: Reader,
    page: Page,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    since: datetime | None = None,
) -> Listing[StudyOut]:
    """Studies as their series arrived (one study may come over several associations)."""
    query = (
        select(
            Series.study_instance_uid,
            func.count(),
            func.sum(Series.instance_count),
            func.min(Series.first_received_at),
            func.max(Series.last_received_at),
        )
        .group_by(Series.study_instance_uid)
        .order_by(func.max(Series.last_received_at).desc())
    )
    if modality is not None:
        query = query.having(func.sum(case((Series.modality == modality, 1), else_=0)) > 0)
    if since is not None:
        query = query.having(func.max(Series.last_received_at) >= as_utc(since))
    rows, total = _page(session, query, page)
    items = [_study(session, StudyRow(*row)) for row in rows]
    return Listing[StudyOut](items=items, total=total, **page.model_dump())


class StudyRow(NamedTuple):
    study_instance_uid: str
    series_count: int
    instance_count: int | None
    first_received_at: datetime
    last_received_at: datetime


def _study(session: Session, row: StudyRow) -> StudyOut:
    modalities = session.scalars(
        select(Series.modality)
        .where(Series.study_instance_uid == row.study_instance_uid)
        .distinct()
        .order_by(Series.modality)
    )
    return StudyOut(
        study_instance_uid=row.study_instance_uid,
        series_count=row.series_count,
        instance_count=int(row.instance_count or 0),
        modalities=list(modalities),
        first_received_at=row.first_received_at,
        last_received_at=row.last_received_at,
    )


@router.get("/series/{series_instance_uid}", response_model=SeriesDetail)
def get_series(series_instance_uid: str, session: Journal, _caller: Reader) -> SeriesDetail:
    """One series with the stored explanation of its routing."""
    return SeriesDetail.model_validate(_series(session, series_instance_uid))


def _series(session: Session, series_instance_uid: str) -> Series:
    series = session.get(Series, series_instance_uid)
    if series is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such series")
    return series


@router.get("/jobs", response_model=Listing[JobOut])
def list_jobs(
    *,
    session: Journal,
    _caller: Reader,
    page: Page,
    state: JobState | None = None,
    model_name: Annotated[str | None, Query(max_length=64)] = None,
    series_instance_uid: Annotated[str | None, Query(max_length=64)] = None,
) -> Listing[JobOut]:
    """Jobs, newest first."""
    query = select(Job).order_by(Job.id.desc())
    if state is not None:
        query = query.where(Job.state == state)
    if model_name is not None:
        query = query.where(Job.model_name == model_name)
    if series_instance_uid is not None:
        query = query.where(Job.series_instance_uid == series_instance_uid)
    rows, total = _page(session, query, page)
    items = [JobOut.model_validate(row) for row in rows]
    return Listing[JobOut](items=items, total=total, **page.model_dump())


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: RowId, session: Journal, _caller: Reader) -> JobOut:
    return JobOut.model_validate(_job(session, job_id))


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such job")
    return job


def _conflict(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=detail)


def _transition(
    session: Session, job_id: int, allowed: tuple[JobState, ...], values: dict[str, Any]
) -> Job:
    """Change a job whose state is one of ``allowed``, in one conditional UPDATE, so that a
    worker claiming it at the same moment cannot be overwritten; 404 or 409 otherwise."""
    job = _job(session, job_id)
    changed = session.execute(
        update(Job).where(Job.id == job_id, Job.state.in_(allowed)).values(**values)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for an UPDATE
        wanted = " or ".join(allowed)
        raise _conflict(f"job {job_id} is {job.state}; this needs a {wanted} job")
    session.refresh(job)
    return job


@router.post("/jobs/{job_id}/retry", response_model=JobOut)
def retry_job(job_id: RowId, node: Context, caller: Writer) -> JobOut:
    """Queue a failed or cancelled job again (the worker takes it next); its quarantined
    series are released (back to routed)."""
    with node.sessions.begin() as session:
        job = _transition(
            session,
            job_id,
            (JobState.FAILED, JobState.CANCELLED),
            {
                "state": JobState.QUEUED,
                "error": None,
                "worker_id": None,
                "lease_expires_at": None,
                "started_at": None,
                "finished_at": None,
            },
        )
        release_from_quarantine(session, job.series_group or [job.series_instance_uid])
        _audit_job(session, node, caller, "job.retry", job)
        out = JobOut.model_validate(job)
    node.wake_worker()
    return out


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: RowId, node: Context, caller: Writer) -> JobOut:
    """Cancel a queued job: the worker never takes it (a running job cannot be cancelled)."""
    with node.sessions.begin() as session:
        values = {"state": JobState.CANCELLED, "finished_at": node.clock()}
        job = _transition(session, job_id, (JobState.QUEUED,), values)
        _audit_job(session, node, caller, "job.cancel", job)
        return JobOut.model_validate(job)


def _audit_job(
    session: Session, node: AdminContext, caller: Principal, action: str, job: Job
) -> None:
    record_audit(
        session,
        actor=caller.name,
        action=action,
        target=f"job {job.id}",
        now=node.clock(),
        detail={"series_instance_uid": job.series_instance_uid},
    )


def delivery_out(delivery: Delivery, result: Result) -> DeliveryOut:
    """A delivery row with the object it sends and the job that made it."""
    out = DeliveryOut.model_validate(delivery)
    return out.model_copy(
        update={"sop_instance_uid": result.sop_instance_uid, "job_id": result.job_id}
    )


@router.get("/deliveries", response_model=Listing[DeliveryOut])
def list_deliveries(
    *,
    session: Journal,
    _caller: Reader,
    page: Page,
    state: DeliveryState | None = None,
    destination: Annotated[str | None, Query(max_length=64)] = None,
    job_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Listing[DeliveryOut]:
    """Deliveries of result objects to destinations, newest first."""
    query = select(Delivery, Result).join(Result, Result.id == Delivery.result_id)
    query = query.order_by(Delivery.id.desc())
    if state is not None:
        query = query.where(Delivery.state == state)
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    if job_id is not None:
        query = query.where(Result.job_id == job_id)
    rows, total = _page(session, query, page)
    items = [delivery_out(delivery, result) for delivery, result in rows]
    return Listing[DeliveryOut](items=items, total=total, **page.model_dump())


@router.post("/deliveries/{delivery_id}/retry", response_model=DeliveryOut)
def retry_delivery(delivery_id: RowId, node: Context, caller: Writer) -> DeliveryOut:
    """Send a pending or failed delivery at the next export sweep, with a fresh attempt count."""
    with node.sessions.begin() as session:
        found = session.execute(
            select(Delivery, Result)
            .join(Result, Result.id == Delivery.result_id)
            .where(Delivery.id == delivery_id)
        ).first()
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such delivery")
        delivery, result = found
        if delivery.state not in (DeliveryState.PENDING, DeliveryState.FAILED):
            raise _conflict(f"delivery {delivery_id} is {delivery.state} already")
        delivery.state, delivery.attempts = DeliveryState.PENDING, 0
        delivery.next_attempt_at = node.clock()
        record_audit(
            session,
            actor=caller.name,
            action="delivery.retry",
            target=f"delivery {delivery_id}",
            now=node.clock(),
            detail={
                "sop_instance_uid": result.sop_instance_uid,
                "destination": delivery.destination,
            },
        )
        return delivery_out(delivery, result)


class AbstentionCountOut(_Row):
    """Done jobs of one model that abstained for one reason under one rule choice."""

    model_name: str
    reason: str
    on_out_of_domain: str
    count: int


class Summary(BaseModel):
    """The dashboard's figures: counts per state, the last jobs, the failures."""

    series: dict[str, int]
    jobs: dict[str, int]
    deliveries: dict[str, int]
    last_jobs: list[JobOut]
    failed_jobs: list[JobOut]
    failed_deliveries: list[DeliveryOut]
    abstentions: list[AbstentionCountOut] = []
    """Done jobs whose model abstained, per model, reason and the rule's choice."""


def _count_by(session: Session, column: Any, states: type[StrEnum]) -> dict[str, int]:
    counts = dict.fromkeys((state.value for state in states), 0)
    for state, count in session.execute(select(column, func.count()).group_by(column)).all():
        counts[str(state)] = int(count)
    return counts


@router.get("/summary", response_model=Summary)
def summary(session: Journal, _caller: Reader) -> Summary:
    """Counts per state, the 10 last jobs, the 10 last failed jobs and deliveries."""
    recent = select(Job).order_by(Job.id.desc()).limit(10)
    failed = select(Job).where(Job.state == JobState.FAILED).order_by(Job.id.desc()).limit(10)
    failed_deliveries = (
        select(Delivery, Result)
        .join(Result, Result.id == Delivery.result_id)
        .where(Delivery.state == DeliveryState.FAILED)
        .order_by(Delivery.id.desc())
        .limit(10)
    )
    return Summary(
        series=_count_by(session, Series.state, SeriesState),
        jobs=_count_by(session, Job.state, JobState),
        deliveries=_count_by(session, Delivery.state, DeliveryState),
        last_jobs=[JobOut.model_validate(job) for job in session.scalars(recent)],
        failed_jobs=[JobOut.model_validate(job) for job in session.scalars(failed)],
        failed_deliveries=[
            delivery_out(delivery, result)
            for delivery, result in session.execute(failed_deliveries).all()
        ],
        abstentions=[AbstentionCountOut.model_validate(c) for c in abstention_counts(session)],
    )

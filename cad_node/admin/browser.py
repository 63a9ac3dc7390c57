"""The study and series browser: search, a study's series, a series' timeline, and the
admin's actions on them (re-route, re-run, retry a destination's deliveries).

AccessionNumber, StudyDate and StudyDescription are patient data: they are answered to the
``admin`` role only (a read token gets them as null and cannot search by accession
number), and never logged. The timeline is built from the journal: the series row, its
jobs, their results and deliveries, and the audit events naming any of them.

Re-routing reuses the assembly sweep's own decision (:meth:`Assembler.reroute`): the rules
in force now, the model's switch, study groups, the node's own results.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.orm import Session

from cad_node.admin.auth import Principal, Reader, Writer
from cad_node.admin.context import AdminContext
from cad_node.admin.deps import Context, Journal, Page
from cad_node.admin.flow import (
    DeliveryOut,
    JobOut,
    Listing,
    SeriesDetail,
    SeriesOut,
    delivery_out,
)
from cad_node.domain.abstention import OutOfDomainAction
from cad_node.domain.states import DeliveryState, JobState, ResultKind, SeriesState
from cad_node.pipeline.assemble import Assembler, OwnEquipment
from cad_node.store.jobs import queue_job
from cad_node.store.rulesets import record_audit
from cad_node.store.schema import AuditEvent, Delivery, Job, Result, Series, Study

router = APIRouter(prefix="/api", tags=["study and series browser"])

UidPath = Annotated[str, PathParam(min_length=1, max_length=64, description="a UID (VR UI)")]
DestinationName = Annotated[
    str,
    PathParam(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="destination name"
    ),
]
ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
"""A series with a job in one of these states is neither re-routed nor re-run."""
RETRIED_DELIVERY_STATES = (DeliveryState.PENDING, DeliveryState.FAILED)
ROUTING_ACTIONS = ("series.routed", "series.reroute")
"""Audit actions of a routing: the series row holds the last one's outcome."""


# -- studies ------------------------------------------------------------------------------


class StudyDescriptorsOut(BaseModel):
    """What an admin recognises a study by; all null for a read token (patient data)."""

    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None


class StudySummary(StudyDescriptorsOut):
    study_instance_uid: str
    series_count: int
    instance_count: int
    modalities: list[str]
    series_states: dict[str, int]
    """How many of its series are in each state (receiving, routed, unrouted ...)."""
    first_received_at: datetime
    last_received_at: datetime


class StudyDetail(StudySummary):
    series: list[SeriesOut]


def _descriptors(study: Study | None, caller: Principal) -> dict[str, str | None]:
    if study is None or not caller.can_write:
        return {}
    return {
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_description": study.study_description,
    }


def _search(query: Select[Any], text: str, caller: Principal) -> Select[Any]:
    """Studies whose Study Instance UID, one of whose Series Instance UIDs, or (admin role
    only) whose AccessionNumber is ``text``; a UID also matches by its beginning."""
    series_of = select(Series.study_instance_uid).where(
        or_(
            Series.series_instance_uid == text,
            Series.series_instance_uid.startswith(text, autoescape=True),
        )
    )
    matches = [
        Study.study_instance_uid == text,
        Study.study_instance_uid.startswith(text, autoescape=True),
        Study.study_instance_uid.in_(series_of),
    ]
    if caller.can_write:
        matches.append(Study.accession_number == text[:16])
    return query.where(or_(*matches))


@router.get("/browse/studies", response_model=Listing[StudySummary])
def search_studies(
    *,
    session: Journal,
    caller: Reader,
    page: Page,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            description="an AccessionNumber (admin role), a Study or Series Instance UID "
            "(or its beginning)",
        ),
    ] = None,
) -> Listing[StudySummary]:
    """Studies, last received first, with what an admin recognises them by."""
    query = select(Study).where(Study.study_instance_uid.in_(select(Series.study_instance_uid)))
    if q is not None and q.strip():
        query = _search(query, q.strip(), caller)
    last = (
        select(func.max(Series.last_received_at))
        .where(Series.study_instance_uid == Study.study_instance_uid)
        .scalar_subquery()
    )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    studies = session.scalars(
        query.order_by(last.desc()).limit(page.limit).offset(page.offset)
    ).all()
    items = [_summary(session, study, caller) for study in studies]
    return Listing[StudySummary](items=items, total=int(total), **page.model_dump())


def _series_of_study(session: Session, study_instance_uid: str) -> Sequence[Series]:
    return session.scalars(
        select(Series)
        .where(Series.study_instance_uid == study_instance_uid)
        .order_by(Series.first_received_at, Series.series_instance_uid)
    ).all()


def _summary(
    session: Session, study: Study, caller: Principal, series: Sequence[Series] | None = None
) -> StudySummary:
    members = _series_of_study(session, study.study_instance_uid) if series is None else series
    states: dict[str, int] = {}
    for member in members:
        states[member.state] = states.get(member.state, 0) + 1
    return StudySummary(
        study_instance_uid=study.study_instance_uid,
        series_count=len(members),
        instance_count=sum(member.instance_count for member in members),
        modalities=sorted({member.modality for member in members}),
        series_states=states,
        first_received_at=min(member.first_received_at for member in members),
        last_received_at=max(member.last_received_at for member in members),
        **_descriptors(study, caller),
    )


@router.get("/browse/studies/{study_instance_uid}", response_model=StudyDetail)
def get_study(study_instance_uid: UidPath, session: Journal, caller: Reader) -> StudyDetail:
    """One study with its series."""
    study = session.get(Study, study_instance_uid)
    members = _series_of_study(session, study_instance_uid)
    if study is None or not members:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such study")
    summary = _summary(session, study, caller, members)
    series = [SeriesOut.model_validate(member) for member in members]
    return StudyDetail(**summary.model_dump(), series=series)


# -- a series' timeline ---------------------------------------------------------------------


class TimelineEvent(BaseModel):
    """One line of a series' timeline."""

    at: datetime | None
    """When; null for what has not happened yet (a pending delivery's next attempt is in
    ``details``)."""
    kind: str
    """received, complete, routing, job, result, delivery, audit, purged."""
    summary: str
    details: list[str] = []
    job_id: int | None = None
    delivery_id: int | None = None
    state: str | None = None


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    kind: ResultKind
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    created_at: datetime
    purged_at: datetime | None


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class SeriesTimeline(BaseModel):
    """A series and everything the journal holds about its way through the node."""

    series: SeriesDetail
    study: StudyDescriptorsOut
    purged_at: datetime | None
    jobs: list[JobOut]
    results: list[ResultOut]
    deliveries: list[DeliveryOut]
    audit: list[AuditOut]
    timeline: list[TimelineEvent]


@router.get("/series/{series_instance_uid}/timeline", response_model=SeriesTimeline)
def series_timeline(
    series_instance_uid: UidPath, session: Journal, caller: Reader
) -> SeriesTimeline:
    """Received, complete, routing (rule and why), jobs, results, deliveries and the audit
    events naming the series, its jobs or its deliveries, in time order."""
    series = _series(session, series_instance_uid)
    jobs = _jobs_reading(session, series)
    results = _results_of(session, [job.id for job in jobs])
    deliveries = _deliveries_of(session, [result.id for result in results])
    audit = _audit_naming(session, series, jobs, deliveries)
    study = session.get(Study, series.study_instance_uid)
    return SeriesTimeline(
        series=SeriesDetail.model_validate(series),
        study=StudyDescriptorsOut(**_descriptors(study, caller)),
        purged_at=series.purged_at,
        jobs=[JobOut.model_validate(job) for job in jobs],
        results=[ResultOut.model_validate(result) for result in results],
        deliveries=[delivery_out(delivery, result) for delivery, result in deliveries],
        audit=[_audit_out(event) for event in audit],
        timeline=_timeline(series, jobs, results, deliveries, audit),
    )


def _series(session: Session, series_instance_uid: str) -> Series:
    series = session.get(Series, series_instance_uid)
    if series is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such series")
    return series


def _jobs_reading(session: Session, series: Series) -> list[Job]:
    """The jobs on the series, and those of its study that read it as one of a group."""
    candidates = session.scalars(
        select(Job)
        .join(Series, Series.series_instance_uid == Job.series_instance_uid)
        .where(Series.study_instance_uid == series.study_instance_uid)
        .order_by(Job.id)
    ).all()
    uid = series.series_instance_uid
    return [
        job
        for job in candidates
        if job.series_instance_uid == uid or uid in (job.series_group or ())
    ]


def _results_of(session: Session, job_ids: Sequence[int]) -> list[Result]:
    if not job_ids:
        return []
    query = select(Result).where(Result.job_id.in_(job_ids)).order_by(Result.id)
    return list(session.scalars(query))


def _deliveries_of(session: Session, result_ids: Sequence[int]) -> list[tuple[Delivery, Result]]:
    if not result_ids:
        return []
    query = (
        select(Delivery, Result)
        .join(Result, Result.id == Delivery.result_id)
        .where(Delivery.result_id.in_(result_ids))
        .order_by(Delivery.id)
    )
    return [(delivery, result) for delivery, result in session.execute(query).all()]


def _audit_naming(
    session: Session,
    series: Series,
    jobs: Sequence[Job],
    deliveries: Sequence[tuple[Delivery, Result]],
) -> list[AuditEvent]:
    targets = [
        f"series {series.series_instance_uid}",
        *(f"job {job.id}" for job in jobs),
        *(f"delivery {delivery.id}" for delivery, _result in deliveries),
    ]
    query = select(AuditEvent).where(AuditEvent.target.in_(targets))
    return list(session.scalars(query.order_by(AuditEvent.at, AuditEvent.id)))


def _audit_out(event: AuditEvent) -> AuditOut:
    return AuditOut(
        id=event.id,
        at=event.at,
        actor=event.actor,
        action=event.action,
        target=event.target,
        detail=dict(event.detail),
    )


def _timeline(
    series: Series,
    jobs: Sequence[Job],
    results: Sequence[Result],
    deliveries: Sequence[tuple[Delivery, Result]],
    audit: Sequence[AuditEvent],
) -> list[TimelineEvent]:
    routings = [event.at for event in audit if event.action in ROUTING_ACTIONS]
    events = [*_series_events(series, max(routings, default=None))]
    for job in jobs:
        events += _job_events(job)
    events += [_result_event(result) for result in results]
    events += [_delivery_event(delivery, result) for delivery, result in deliveries]
    target = f"series {series.series_instance_uid}"
    events += [_audit_event(event, target) for event in audit]
    if series.purged_at is not None:
        events.append(
            TimelineEvent(
                at=series.purged_at,
                kind="purged",
                summary="spooled images removed by retention (the journal keeps the rows)",
            )
        )
    # Stable: events of one moment keep the order above (received before complete ...).
    return sorted(
        events, key=lambda event: (event.at is None, event.at or series.first_received_at)
    )


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _series_events(series: Series, routed_at: datetime | None) -> list[TimelineEvent]:
    """Received, complete, and the routing in force (at ``routed_at``, its last routing)."""
    expected = "" if series.expected_count is None else f" of {series.expected_count} expected"
    events = [
        TimelineEvent(
            at=series.first_received_at,
            kind="received",
            summary=f"received {series.instance_count} instance(s){expected} from "
            f"{series.calling_ae_title} ({series.modality}), revision {series.revision}",
            details=[f"last instance received at {_utc(series.last_received_at)}"],
            state=SeriesState.RECEIVING,
        )
    ]
    if series.completed_at is not None:
        events.append(
            TimelineEvent(at=series.completed_at, kind="complete", summary="series complete")
        )
    if series.state in (SeriesState.ROUTED, SeriesState.UNROUTED, SeriesState.QUARANTINED):
        verdict = (
            f"routed by rule {series.rule_name}"
            if series.state == SeriesState.ROUTED
            else f"no job: {series.state}"
        )
        details = (series.routing_explanation or "").splitlines()
        if series.quarantine_reason:
            details.append(f"quarantined: {series.quarantine_reason}")
        events.append(
            TimelineEvent(
                at=routed_at or series.completed_at,
                kind="routing",
                summary=verdict,
                details=details,
                state=series.state,
            )
        )
    return events


def _job_events(job: Job) -> list[TimelineEvent]:
    sends = ", ".join(job.destinations) or "no destination (shadow)"
    events = [
        TimelineEvent(
            at=job.created_at,
            kind="job",
            summary=f"job {job.id} queued: model {job.model_name}, rule {job.rule_name}, "
            f"revision {job.series_revision}",
            details=[f"sends to: {sends}"],
            job_id=job.id,
            state=JobState.QUEUED,
        )
    ]
    if job.started_at is not None:
        events.append(
            TimelineEvent(
                at=job.started_at,
                kind="job",
                summary=f"job {job.id} started (attempt {job.attempts})",
                job_id=job.id,
                state=JobState.RUNNING,
            )
        )
    if job.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
        details = [f"error: {job.error}"] if job.error else []
        if job.finding_count is not None:
            details.append(f"findings: {job.finding_count}")
        details += [f"warning: {warning}" for warning in job.warnings or ()]
        details += _abstention_details(job)
        events.append(
            TimelineEvent(
                at=job.finished_at,
                kind="job",
                summary=f"job {job.id} {job.state}{_abstention_note(job)}",
                details=details,
                job_id=job.id,
                state=job.state,
            )
        )
    return events


def _abstention_note(job: Job) -> str:
    """After "job N done": whether the model abstained, and what the rule chose."""
    reason = (job.abstention or {}).get("reason")
    if not reason:
        return ""
    choice = job.on_out_of_domain or OutOfDomainAction.REPORT.value
    if choice == OutOfDomainAction.RUN_ANYWAY.value:
        return f": assessed anyway, outside its domain ({reason}, rule said run_anyway)"
    sent = "nothing sent" if choice == OutOfDomainAction.SKIP.value else "SR sent saying so"
    return f": not assessed ({reason}, rule said {choice}: {sent})"


def _abstention_details(job: Job) -> list[str]:
    abstention = job.abstention or {}
    return [f"abstention: {detail}" for detail in abstention.get("details") or ()]


def _result_event(result: Result) -> TimelineEvent:
    purged = [] if result.purged_at is None else [f"file purged at {_utc(result.purged_at)}"]
    return TimelineEvent(
        at=result.created_at,
        kind="result",
        summary=f"{result.kind.upper()} written by job {result.job_id}",
        details=[f"SOP Instance UID {result.sop_instance_uid}", *purged],
        job_id=result.job_id,
    )


def _delivery_event(delivery: Delivery, result: Result) -> TimelineEvent:
    details = [f"attempts: {delivery.attempts}"]
    if delivery.state == DeliveryState.PENDING:
        details.append(f"next attempt at {_utc(delivery.next_attempt_at)}")
    if delivery.last_status is not None:
        details.append(f"last status: 0x{delivery.last_status:04X}")
    details += _commitment_details(delivery)
    if delivery.last_error:
        details.append(f"last error: {delivery.last_error}")
    return TimelineEvent(
        at=delivery.delivered_at,
        kind="delivery",
        summary=f"delivery {delivery.id}: {result.kind.upper()} to {delivery.destination}, "
        f"{delivery.state}",
        details=details,
        job_id=result.job_id,
        delivery_id=delivery.id,
        state=delivery.state,
    )


def _commitment_details(delivery: Delivery) -> list[str]:
    """Storage Commitment: when the destination committed it, or since when it is awaited."""
    if delivery.committed_at is not None:
        return [f"committed at {_utc(delivery.committed_at)}"]
    if delivery.state != DeliveryState.SENT:
        return []
    if delivery.commitment_requested_at is None:
        return [f"commitment to be asked at {_utc(delivery.next_attempt_at)}"]
    return [
        f"commitment awaited since {_utc(delivery.commitment_requested_at)} "
        f"(request {delivery.commitment_attempts}, transaction "
        f"{delivery.commitment_transaction_uid})"
    ]


def _audit_event(event: AuditEvent, series_target: str) -> TimelineEvent:
    """An audit event as one summary and one line of its detail ("key value · ...")."""
    about = "" if event.target == series_target else f" ({event.target})"
    detail = " · ".join(f"{key} {value}" for key, value in _flat(event.detail))
    return TimelineEvent(
        at=event.at,
        kind="audit",
        summary=f"{event.action} by {event.actor}{about}",
        details=[detail] if detail else [],
    )


def _flat(detail: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as dotted keys; a list as its comma-separated items."""
    pairs: list[tuple[str, Any]] = []
    for key, value in detail.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs += _flat(value, f"{name}.")
        elif isinstance(value, list):
            pairs.append((name, ", ".join(map(str, value))))
        else:
            pairs.append((name, value))
    return pairs


# -- actions -------------------------------------------------------------------------------


class RerouteOut(BaseModel):
    """What re-routing a series did."""

    series_instance_uid: str
    series_revision: int
    state: SeriesState
    rule_name: str | None
    job_id: int | None
    explanation: str
    message: str


def assembler_of(node: AdminContext) -> Assembler:
    """The assembly sweep's router, built from the node's settings as the node builds it."""
    results = node.settings.results
    return Assembler(
        sessions=node.sessions,
        rules=node.rule_book.current,
        quiet_seconds=node.settings.quiet_seconds,
        study_groups=node.settings.study_groups,
        clock=node.clock,
        calling_ae_classes=node.settings.queue.calling_ae_classes,
        own_equipment=OwnEquipment(
            manufacturer=results.manufacturer,
            manufacturer_model_name=results.manufacturer_model_name,
            device_serial_number=results.device_serial_number,
        ),
    )


def _conflict(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=detail)


def _check_idle(session: Session, series: Series, action: str) -> None:
    """409 while the series is still receiving or a job reading it is queued or running."""
    if series.state in (SeriesState.RECEIVING, SeriesState.COMPLETE):
        raise _conflict(
            f"series {series.series_instance_uid} is {series.state}: the assembly sweep routes "
            f"it; {action} it once it is routed"
        )
    busy = [job.id for job in _jobs_reading(session, series) if job.state in ACTIVE_JOB_STATES]
    if busy:
        raise _conflict(
            f"job(s) {', '.join(map(str, busy))} of this series are queued or running: wait "
            f"for them or cancel them first"
        )


@router.post("/series/{series_instance_uid}/reroute", response_model=RerouteOut)
def reroute_series(series_instance_uid: UidPath, node: Context, caller: Writer) -> RerouteOut:
    """Route a series again by the rules in force now (after a rule or model change): the
    job is queued as routing would queue it, on a new revision if the series' revision has
    a job of that model already. The answer says which rule matched and why."""
    with node.sessions.begin() as session:
        series = _series(session, series_instance_uid)
        _check_idle(session, series, "re-route")
        before = {"rule": series.rule_name, "state": series.state, "revision": series.revision}
        now = node.clock()
        outcome = assembler_of(node).reroute(session, series, now)
        record_audit(
            session,
            actor=caller.name,
            action="series.reroute",
            target=f"series {series_instance_uid}",
            now=now,
            detail={
                "from": before,
                "rule": outcome.rule_name,
                "state": series.state.value,
                "series_revision": outcome.series_revision,
                "job_id": outcome.job_id,
            },
        )
        answer = RerouteOut(
            series_instance_uid=series_instance_uid,
            series_revision=outcome.series_revision,
            state=series.state,
            rule_name=outcome.rule_name,
            job_id=outcome.job_id,
            explanation=series.routing_explanation or "",
            message=_reroute_message(series, outcome.rule_name, outcome.job_id),
        )
    if answer.job_id is not None:
        node.wake_worker()
    return answer


def _reroute_message(series: Series, rule_name: str | None, job_id: int | None) -> str:
    if rule_name is None:
        return "no rule matched: no job queued"
    if job_id is None:
        first = (series.routing_explanation or "").splitlines()[:1]
        return f"rule {rule_name} matched, no job queued: {' '.join(first)}"
    return f"rule {rule_name} matched: job {job_id} queued (revision {series.revision})"


class RerunOut(BaseModel):
    series_instance_uid: str
    jobs: list[JobOut]
    message: str


@router.post("/series/{series_instance_uid}/rerun", response_model=RerunOut)
def rerun_series(series_instance_uid: UidPath, node: Context, caller: Writer) -> RerunOut:
    """Run the series' last jobs again (same rule, model and destinations), on a new
    revision: their results are new objects that reference the earlier ones."""
    with node.sessions.begin() as session:
        series = _series(session, series_instance_uid)
        _check_idle(session, series, "re-run")
        last = _last_jobs(_jobs_reading(session, series))
        if not last:
            raise _conflict(
                f"series {series_instance_uid} has no job to run again: re-route it instead"
            )
        now = node.clock()
        queued = _queue_again(session, last, now)
        record_audit(
            session,
            actor=caller.name,
            action="series.rerun",
            target=f"series {series_instance_uid}",
            now=now,
            detail={
                "jobs": [job.id for job in last],
                "queued": [job.id for job in queued],
                "models": [job.model_name for job in queued],
            },
        )
        jobs = [JobOut.model_validate(job) for job in queued]
    node.wake_worker()
    ids = ", ".join(str(job.id) for job in jobs)
    return RerunOut(
        series_instance_uid=series_instance_uid, jobs=jobs, message=f"job(s) {ids} queued"
    )


def _last_jobs(jobs: Sequence[Job]) -> list[Job]:
    """The jobs of the highest revision each series carrying a job reached."""
    highest: dict[str, int] = {}
    for job in jobs:
        highest[job.series_instance_uid] = max(
            highest.get(job.series_instance_uid, 0), job.series_revision
        )
    return [job for job in jobs if job.series_revision == highest[job.series_instance_uid]]


def _queue_again(session: Session, jobs: Sequence[Job], now: datetime) -> list[Job]:
    """Queue each of ``jobs`` again on its series' next revision (one raise per series)."""
    raised: set[str] = set()
    queued = []
    for job in jobs:
        carrier = _series(session, job.series_instance_uid)
        if carrier.series_instance_uid not in raised:
            carrier.revision += 1
            raised.add(carrier.series_instance_uid)
        again = queue_job(
            session,
            series_instance_uid=carrier.series_instance_uid,
            series_revision=carrier.revision,
            rule_name=job.rule_name,
            model_name=job.model_name,
            destinations=list(job.destinations),
            now=now,
            series_group=job.series_group,
        )
        again.on_out_of_domain = job.on_out_of_domain  # the rule's choice, as first queued
        queued.append(again)
    return queued


class DestinationRetryOut(BaseModel):
    destination: str
    retried: int
    """Pending and failed deliveries to the destination, now due with a fresh attempt count."""


@router.post("/destinations/{name}/retry", response_model=DestinationRetryOut)
def retry_destination(name: DestinationName, node: Context, caller: Writer) -> DestinationRetryOut:
    """Send every pending or failed delivery to ``name`` at the next export sweep, with a
    fresh attempt count (after the destination came back)."""
    with node.sessions.begin() as session:
        now = node.clock()
        changed = session.execute(
            update(Delivery)
            .where(Delivery.destination == name, Delivery.state.in_(RETRIED_DELIVERY_STATES))
            .values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=now)
        )
        retried = int(changed.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        record_audit(
            session,
            actor=caller.name,
            action="destination.retry",
            target=f"destination {name}",
            now=now,
            detail={"deliveries": retried},
        )
    return DestinationRetryOut(destination=name, retried=retried)

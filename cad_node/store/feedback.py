"""Journal radiologists' feedback, matched to the jobs and findings it is about (issue 22).

Every source (the review page, the API, a CSV of outcomes, an SR received on the SCP) turns
what it got into :class:`~cad_node.domain.monitoring.FeedbackItem` and calls
:func:`record_feedback`.  A verdict on a finding is matched by Tracking UID to the newest
finding that carries it; an outcome or a missed lesion is matched to the newest job of
each model that read the study (or of the model it names).  Feedback that matches nothing
is kept all the same (a study read before monitoring began, a finding of another node) and
reported as unmatched: nothing acknowledged is dropped.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cad_node.domain.monitoring import FeedbackItem, Verdict
from cad_node.store.schema import FeedbackRow, FindingOutputRow, JobOutput


@dataclass(frozen=True, slots=True)
class RecordedFeedback:
    """What :func:`record_feedback` journaled."""

    recorded: int
    """Rows written (an outcome on a study two models read is one row per model)."""
    unmatched: tuple[str, ...] = field(default=())
    """Why some items matched no job: "tracking UID 1.2.3 is no finding of this node" ..."""
    replaced: int = 0
    """Rows of an earlier copy of the same feedback SR that were replaced."""


def record_feedback(
    session: Session, items: Sequence[FeedbackItem], now: datetime
) -> RecordedFeedback:
    """Journal ``items`` (in the caller's transaction), each matched where it can be.

    Items that name a feedback SR (``source_sop_instance_uid``) replace whatever an earlier
    copy of that SR left: a PACS that sends an SR twice does not count twice.
    """
    replaced = _replace_earlier_copies(session, items)
    recorded = 0
    unmatched: list[str] = []
    for item in items:
        rows, why = _matched_rows(session, item, now)
        session.add_all(rows)
        recorded += len(rows)
        if why is not None:
            unmatched.append(why)
    session.flush()
    return RecordedFeedback(recorded, tuple(unmatched), replaced)


def _replace_earlier_copies(session: Session, items: Sequence[FeedbackItem]) -> int:
    sops = {item.source_sop_instance_uid for item in items if item.source_sop_instance_uid}
    if not sops:
        return 0
    result = session.execute(
        delete(FeedbackRow).where(FeedbackRow.source_sop_instance_uid.in_(sops))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _matched_rows(
    session: Session, item: FeedbackItem, now: datetime
) -> tuple[list[FeedbackRow], str | None]:
    if item.verdict in (Verdict.AGREE, Verdict.DISAGREE):
        finding = _newest_finding(session, item.tracking_uid or "")
        if finding is None:
            why = f"tracking UID {item.tracking_uid} is no finding of this node"
            return [_row(item, now)], why
        model = session.get(JobOutput, finding.job_id)
        model_name = model.model_name if model is not None else item.model_name
        return [_row(item, now, finding.job_id, model_name, finding.id)], None
    jobs = _newest_jobs_of_study(session, item.study_instance_uid, item.model_name)
    if not jobs:
        why = f"study {item.study_instance_uid} was read by no model here"
        if item.model_name:
            why = f"study {item.study_instance_uid} was not read by {item.model_name}"
        return [_row(item, now)], why
    return [_row(item, now, job.job_id, job.model_name) for job in jobs], None


def _newest_finding(session: Session, tracking_uid: str) -> FindingOutputRow | None:
    return session.scalars(
        select(FindingOutputRow)
        .where(FindingOutputRow.tracking_uid == tracking_uid)
        .order_by(FindingOutputRow.job_id.desc())
        .limit(1)
    ).first()


def _newest_jobs_of_study(
    session: Session, study_instance_uid: str, model_name: str | None
) -> list[JobOutput]:
    query = select(JobOutput).where(JobOutput.study_instance_uid == study_instance_uid)
    if model_name:
        query = query.where(JobOutput.model_name == model_name)
    newest: dict[str, JobOutput] = {}
    for output in session.scalars(query.order_by(JobOutput.job_id)):
        newest[output.model_name] = output
    return list(newest.values())


def _row(
    item: FeedbackItem,
    now: datetime,
    job_id: int | None = None,
    model_name: str | None = None,
    finding_output_id: int | None = None,
) -> FeedbackRow:
    return FeedbackRow(
        received_at=now,
        source=item.source.value,
        reviewer=item.reviewer,
        study_instance_uid=item.study_instance_uid,
        verdict=item.verdict.value,
        job_id=job_id,
        model_name=model_name or item.model_name,
        finding_output_id=finding_output_id,
        tracking_uid=item.tracking_uid,
        laterality=item.laterality,
        truth=item.truth.strip().lower() if item.truth else None,
        location=asdict(item.location) if item.location is not None else None,
        source_sop_instance_uid=item.source_sop_instance_uid,
        referenced_sr_uid=item.referenced_sr_uid,
        note=item.note,
    )

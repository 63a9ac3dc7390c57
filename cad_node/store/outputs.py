"""Journal what each finished job said (issue 22): the monitoring's record of the model.

The rows hold UIDs, scores and pixel positions only, and stay when the job's files are
purged: local performance and drift are measured over months.
"""

from dataclasses import asdict
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from cad_node.domain.monitoring import JobOutputs
from cad_node.store.schema import FeedbackRow, FindingOutputRow, JobOutput


def record_outputs(session: Session, job_id: int, outputs: JobOutputs, now: datetime) -> None:
    """Journal ``outputs`` of job ``job_id`` (in the caller's transaction); a retried job's
    earlier record is replaced."""
    earlier = session.get(JobOutput, job_id)
    if earlier is not None:
        old_findings = select(FindingOutputRow.id).where(FindingOutputRow.job_id == job_id)
        session.execute(  # verdicts stay, matched by Tracking UID no longer to a row
            update(FeedbackRow)
            .where(FeedbackRow.finding_output_id.in_(old_findings))
            .values(finding_output_id=None)
        )
        session.execute(delete(FindingOutputRow).where(FindingOutputRow.job_id == job_id))
        session.delete(earlier)
        session.flush()
    session.add(
        JobOutput(
            job_id=job_id,
            model_name=outputs.model_name,
            model_version=outputs.model_version,
            weights_sha256=outputs.weights_sha256,
            mode=outputs.mode,
            study_instance_uid=outputs.study_instance_uid,
            sr_sop_instance_uid=outputs.sr_sop_instance_uid,
            recorded_at=now,
            score=outputs.score,
            finding_count=len(outputs.findings),
            abstained=outputs.abstained,
            ood_score=outputs.ood_score,
            assessments=[asdict(a) for a in outputs.assessments] or None,
        )
    )
    for finding in outputs.findings:
        session.add(
            FindingOutputRow(
                job_id=job_id,
                tracking_uid=finding.tracking_uid,
                tracking_identifier=finding.tracking_identifier,
                finding_type=finding.finding_type,
                probability=finding.probability,
                sop_instance_uid=finding.centre.sop_instance_uid,
                frame_number=finding.centre.frame_number,
                row=finding.centre.row,
                column=finding.centre.column,
                laterality=finding.laterality,
                diameter_mm=finding.diameter_mm,
            )
        )
    session.flush()

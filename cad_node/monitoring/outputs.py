"""What a finished job said, as the journal keeps it for monitoring (issue 22).

:func:`job_outputs` turns a model's :class:`~cad_node.domain.results.ModelReport` and the
Tracking UIDs its SR carries into :class:`~cad_node.domain.monitoring.JobOutputs`;
:func:`abstained_outputs` is the record of a job whose model did not assess its input.
Pure: no journal, no files.

The study-level score is the highest breast-suspicion score, else the highest finding
probability, else the highest class probability; None when there is none (or the model
abstained).
"""

from collections.abc import Sequence

from cad_node.domain.findings import ModelIdentity
from cad_node.domain.image_sets import Assessment, AssessmentKind
from cad_node.domain.monitoring import AssessmentOutput, FindingOutput, ImagePoint, JobOutputs
from cad_node.domain.results import (
    ClassScores,
    MeasurementKind,
    ModelReport,
    RegionFinding,
    ResultGrid,
)
from cad_node.results.tracking import Tracking

ACTIVE = "active"
SHADOW = "shadow"
SUSPICIOUS = "suspicious"
NOT_SUSPICIOUS = "not suspicious"
CLASSIFICATION = "classification"
DEFAULT_SUSPICION_THRESHOLD = 0.5
"""The operating threshold of a breast suspicion whose model names none."""

_DIAMETERS = (MeasurementKind.EQUIVALENT_SPHERE_DIAMETER, MeasurementKind.LARGEST_EXTENT)


def job_mode(destinations: Sequence[str]) -> str:
    """``shadow`` for a job queued with no destination (a shadow rule or model), else
    ``active``."""
    return ACTIVE if destinations else SHADOW


def job_outputs(
    report: ModelReport,
    tracking: Sequence[Tracking],
    *,
    sr_sop_instance_uid: str | None,
    study_instance_uid: str,
    mode: str,
) -> JobOutputs:
    """The outputs of a job that ran: ``tracking`` holds one entry per finding of
    ``report``, in its order (what the SR wrote).

    Raises
    ------
    ValueError
        When ``tracking`` does not hold one entry per finding.
    """
    if len(tracking) != len(report.findings):
        raise ValueError(f"{len(tracking)} tracking entries for {len(report.findings)} findings")
    findings = tuple(
        _finding_output(finding, track, report.grid)
        for finding, track in zip(report.findings, tracking, strict=True)
    )
    assessments = (
        *(_assessment_output(assessment) for assessment in report.assessments),
        *(_classification_output(scores, report.grid) for scores in report.classifications),
    )
    return JobOutputs(
        model_name=report.model.name,
        model_version=report.model.version,
        weights_sha256=report.model.weights_sha256,
        study_instance_uid=study_instance_uid,
        mode=mode,
        score=study_score(report),
        findings=findings,
        assessments=assessments,
        ood_score=report.ood.score if report.ood is not None else None,
        sr_sop_instance_uid=sr_sop_instance_uid,
    )


def abstained_outputs(
    model: ModelIdentity,
    *,
    study_instance_uid: str,
    mode: str,
    sr_sop_instance_uid: str | None = None,
    ood_score: float | None = None,
) -> JobOutputs:
    """The outputs of a job whose model did not assess its input: no score, no findings;
    the "not assessed" SR when one was written, the OOD score when it is known."""
    return JobOutputs(
        model_name=model.name,
        model_version=model.version,
        weights_sha256=model.weights_sha256,
        study_instance_uid=study_instance_uid,
        mode=mode,
        score=None,
        abstained=True,
        ood_score=ood_score,
        sr_sop_instance_uid=sr_sop_instance_uid,
    )


def study_score(report: ModelReport) -> float | None:
    """The highest breast-suspicion score, else finding probability, else class probability."""
    suspicion = [a.score for a in report.assessments if a.kind is AssessmentKind.BREAST_SUSPICION]
    probabilities = [f.probability for f in report.findings if f.probability is not None]
    classes = [scores.probabilities[scores.predicted] for scores in report.classifications]
    for scores in (suspicion, probabilities, classes):
        if scores:
            return float(max(scores))
    return None


def _finding_output(finding: RegionFinding, tracking: Tracking, grid: ResultGrid) -> FindingOutput:
    image = grid.images[finding.display_image]
    laterality = finding.laterality or image.laterality
    return FindingOutput(
        tracking_uid=tracking.uid,
        tracking_identifier=tracking.identifier,
        finding_type=finding.name,
        probability=finding.probability,
        centre=ImagePoint(
            sop_instance_uid=image.sop_instance_uid,
            row=float(finding.centre[1]),
            column=float(finding.centre[2]),
            frame_number=image.frame_number,
        ),
        laterality=laterality.value if laterality is not None else None,
        diameter_mm=_diameter(finding),
    )


def _diameter(finding: RegionFinding) -> float | None:
    for kind in _DIAMETERS:
        value = finding.measurement(kind)
        if value is not None:
            return float(value)
    return None


def _assessment_output(assessment: Assessment) -> AssessmentOutput:
    if assessment.kind is AssessmentKind.BREAST_SUSPICION:
        threshold = (
            assessment.threshold
            if assessment.threshold is not None
            else DEFAULT_SUSPICION_THRESHOLD
        )
        value = SUSPICIOUS if assessment.score >= threshold else NOT_SUSPICIOUS
    else:
        value = str(assessment.grade)
    return AssessmentOutput(
        kind=assessment.kind.value,
        laterality=assessment.laterality.value,
        score=float(assessment.score),
        value=value,
    )


def _classification_output(scores: ClassScores, grid: ResultGrid) -> AssessmentOutput:
    laterality = None
    if scores.image_index is not None:
        side = grid.images[scores.image_index].laterality
        laterality = side.value if side is not None else None
    return AssessmentOutput(
        kind=CLASSIFICATION,
        laterality=laterality,
        score=float(scores.probabilities[scores.predicted]),
        value=scores.classes[scores.predicted].label,
    )

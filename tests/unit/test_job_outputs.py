"""What a finished job leaves for monitoring (issue 22): findings by Tracking UID on their
display image, per-breast and per-eye assessments, classifications, the study-level score
(suspicion, else finding probability, else class probability) and the abstention record."""

import numpy as np
import pytest

from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import FindingType, ModelIdentity
from cad_node.domain.image_sets import Assessment, AssessmentKind, Laterality
from cad_node.domain.monitoring import AssessmentOutput, ImagePoint
from cad_node.domain.results import (
    ClassScores,
    Concept,
    ImageMask,
    LabelConcept,
    Measurement,
    MeasurementKind,
    ModelReport,
    Procedure,
    RegionFinding,
    ResultGrid,
    SourceImage,
)
from cad_node.monitoring.outputs import abstained_outputs, job_mode, job_outputs, study_score
from cad_node.results.tracking import Tracking

MODEL = ModelIdentity("mammo_screening", "1.2", "ab" * 32, "mammography")
STUDY = "1.2.826.0.1.3680043.10.1"
SR_UID = "1.2.826.0.1.3680043.10.9"
IMAGES = ("1.2.826.0.1.3680043.10.2", "1.2.826.0.1.3680043.10.3")


def grid() -> ResultGrid:
    """Two 32x32 views: the right breast's, then frame 2 of the left breast's."""
    pixels = np.zeros((32, 32), dtype=np.float32)
    return ResultGrid(
        STUDY,
        "MG",
        (
            SourceImage(IMAGES[0], "1.2.3", None, pixels, laterality=Laterality.RIGHT),
            SourceImage(IMAGES[1], "1.2.3", 2, pixels, laterality=Laterality.LEFT),
        ),
    )


def finding(
    image: int, probability: float | None, *, measurements: tuple[Measurement, ...] = ()
) -> RegionFinding:
    mask = np.ones((4, 4), dtype=np.bool_)
    return RegionFinding(
        finding_type=FindingType.MASS,
        masks=(ImageMask(image, (10, 12), mask),),
        centre=(float(image), 11.5, 13.5),
        probability=probability,
        measurements=measurements,
    )


def suspicion(side: Laterality, score: float, threshold: float | None = 0.4) -> Assessment:
    return Assessment(
        AssessmentKind.BREAST_SUSPICION, side, score, (IMAGES[0],), threshold=threshold
    )


def report(**fields: object) -> ModelReport:
    return ModelReport(
        model=MODEL,
        grid=grid(),
        findings=fields.pop("findings", ()),  # type: ignore[arg-type]
        region=None,
        procedure=Procedure.MAMMOGRAPHY,
        **fields,  # type: ignore[arg-type]
    )


def test_each_finding_keeps_its_tracking_uid_and_its_centre_on_its_display_image() -> None:
    findings = (
        finding(1, 0.8, measurements=(Measurement(MeasurementKind.LARGEST_EXTENT, 7.5),)),
        finding(0, None),
    )
    tracking = (Tracking("1.2.9.1", "Mass 1"), Tracking("1.2.9.2", "Mass 2"))
    outputs = job_outputs(
        report(findings=findings, ood=OodScore("m", 3.0, 9.0)),
        tracking,
        sr_sop_instance_uid=SR_UID,
        study_instance_uid=STUDY,
        mode="active",
    )
    first, second = outputs.findings
    assert (first.tracking_uid, first.tracking_identifier) == ("1.2.9.1", "Mass 1")
    assert first.finding_type == "Mass"
    assert first.probability == 0.8
    assert first.centre == ImagePoint(IMAGES[1], 11.5, 13.5, 2)
    assert first.laterality == "L"  # the image's, the finding naming none
    assert first.diameter_mm == 7.5
    assert second.centre == ImagePoint(IMAGES[0], 11.5, 13.5, None)
    assert (second.laterality, second.diameter_mm, second.probability) == ("R", None, None)
    assert (outputs.model_name, outputs.model_version) == ("mammo_screening", "1.2")
    assert outputs.weights_sha256 == "ab" * 32
    assert (outputs.sr_sop_instance_uid, outputs.study_instance_uid) == (SR_UID, STUDY)
    assert outputs.ood_score == 3.0
    assert outputs.score == 0.8  # no suspicion: the highest finding probability
    assert not outputs.abstained


def test_tracking_must_hold_one_entry_per_finding() -> None:
    with pytest.raises(ValueError, match="0 tracking entries for 1 findings"):
        job_outputs(
            report(findings=(finding(0, 0.5),)),
            (),
            sr_sop_instance_uid=None,
            study_instance_uid=STUDY,
            mode="active",
        )


def test_breast_suspicion_is_suspicious_at_or_over_its_threshold() -> None:
    assessments = (
        suspicion(Laterality.RIGHT, 0.4),
        suspicion(Laterality.LEFT, 0.39),
    )
    outputs = job_outputs(
        report(findings=(finding(0, 0.95),), assessments=assessments),
        (Tracking("1.2.9.1", "Mass 1"),),
        sr_sop_instance_uid=SR_UID,
        study_instance_uid=STUDY,
        mode="shadow",
    )
    assert outputs.assessments == (
        AssessmentOutput("breast_suspicion", "R", 0.4, "suspicious"),
        AssessmentOutput("breast_suspicion", "L", 0.39, "not suspicious"),
    )
    assert outputs.score == 0.4  # suspicion wins over a finding's probability
    assert outputs.mode == "shadow"


def test_a_suspicion_without_threshold_is_judged_at_one_half() -> None:
    outputs = job_outputs(
        report(assessments=(suspicion(Laterality.RIGHT, 0.5, threshold=None),)),
        (),
        sr_sop_instance_uid=None,
        study_instance_uid=STUDY,
        mode="active",
    )
    assert outputs.assessments[0].value == "suspicious"


def test_a_dr_grade_is_its_value_and_gives_no_study_score() -> None:
    grade = Assessment(
        AssessmentKind.DIABETIC_RETINOPATHY,
        Laterality.LEFT,
        2.6,
        (IMAGES[1],),
        grade=3,
        class_probabilities=(0.0, 0.1, 0.2, 0.6, 0.1),
    )
    outputs = job_outputs(
        report(assessments=(grade,)),
        (),
        sr_sop_instance_uid=SR_UID,
        study_instance_uid=STUDY,
        mode="active",
    )
    assert outputs.assessments == (AssessmentOutput("diabetic_retinopathy", "L", 2.6, "3"),)
    assert outputs.score is None
    assert outputs.findings == ()


def label(name: str) -> LabelConcept:
    concept = Concept(name.upper(), "99TEST", name)
    return LabelConcept(name, concept, concept)


def test_a_classification_is_its_predicted_class_and_probability() -> None:
    whole = ClassScores((label("normal"), label("abnormal")), (0.3, 0.7))
    of_left = ClassScores((label("normal"), label("abnormal")), (0.9, 0.1), image_index=1)
    outputs = job_outputs(
        report(classifications=(whole, of_left)),
        (),
        sr_sop_instance_uid=SR_UID,
        study_instance_uid=STUDY,
        mode="active",
    )
    assert outputs.assessments == (
        AssessmentOutput("classification", None, 0.7, "abnormal"),
        AssessmentOutput("classification", "L", 0.9, "normal"),
    )
    assert outputs.score == 0.9  # the highest class probability


def test_the_score_rule_falls_from_suspicion_to_findings_to_classes() -> None:
    classes = (ClassScores((label("a"), label("b")), (0.2, 0.8)),)
    assert study_score(report()) is None
    assert study_score(report(classifications=classes)) == 0.8
    with_findings = report(findings=(finding(0, 0.3), finding(1, 0.6)), classifications=classes)
    assert study_score(with_findings) == 0.6
    unscored = report(findings=(finding(0, None),), classifications=classes)
    assert study_score(unscored) == 0.8  # a finding without probability gives none
    suspicious = report(
        findings=(finding(0, 0.9),),
        assessments=(suspicion(Laterality.RIGHT, 0.1), suspicion(Laterality.LEFT, 0.2)),
    )
    assert study_score(suspicious) == 0.2


def test_an_abstention_has_no_score_and_no_findings() -> None:
    outputs = abstained_outputs(
        MODEL, study_instance_uid=STUDY, mode="active", sr_sop_instance_uid=SR_UID, ood_score=48.0
    )
    assert outputs.abstained
    assert (outputs.score, outputs.findings, outputs.assessments) == (None, (), ())
    assert (outputs.ood_score, outputs.sr_sop_instance_uid) == (48.0, SR_UID)
    skipped = abstained_outputs(MODEL, study_instance_uid=STUDY, mode="shadow")
    assert (skipped.ood_score, skipped.sr_sop_instance_uid, skipped.mode) == (None, None, "shadow")


def test_a_job_without_destinations_is_a_shadow_job() -> None:
    assert job_mode(()) == "shadow"
    assert job_mode(("pacs",)) == "active"

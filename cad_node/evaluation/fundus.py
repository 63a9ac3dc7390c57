"""Evaluates the fundus DR model on synthetic exams with truth (:mod:`cad_node.synth.fundus`).

Per eye: the predicted ICDR grade against the true one (5 x 5 confusion matrix,
quadratic weighted kappa), P(grade >= 2) against referable DR (ROC, AUC with
DeLong's 95% CI, sensitivity/specificity at the manifest's operating threshold,
and at "predicted grade >= 2"), and per lesion type the image-level Dice of the
model's mask against the true mask, on the images where that type is present.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import FindingType, ModelIdentity
from cad_node.domain.image_sets import (
    ICDR_GRADES,
    REFERABLE_ICDR_GRADE,
    ImageSet,
    PlanarFinding,
    PlanarResult,
)
from cad_node.evaluation import metrics
from cad_node.evaluation.honesty import add_abstentions, add_calibration
from cad_node.evaluation.report import Report, RocSummary
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.synth.fundus import LESION_MASKS, EyeTruth, load_truth, study_folders

FINDING_MASKS: dict[FindingType, str] = {
    FindingType.MICROANEURYSM: "microaneurysm",
    FindingType.HAEMORRHAGE: "haemorrhage",
    FindingType.HARD_EXUDATE: "hard_exudate",
    FindingType.SOFT_EXUDATE: "soft_exudate",
}
"""Each lesion finding type and the ground-truth mask it is scored against."""
GRADE_LABELS: tuple[str, ...] = tuple(
    f"{k} {name.split()[0]}" for k, name in enumerate(ICDR_GRADES)
)


class GradingModel(Protocol):
    """A loaded fundus model (FundusModel): identity, operating threshold, predict."""

    identity: ModelIdentity
    threshold: float

    def predict(self, images: ImageSet) -> PlanarResult: ...


@dataclass(frozen=True, slots=True)
class EyeOutcome:
    """One eye: true and predicted grade, P(referable), Dice per lesion type present."""

    study: str
    laterality: str
    true_grade: int
    predicted_grade: int
    referable_probability: float
    expected_grade: float
    lesion_dice: dict[str, float]
    grade_probabilities: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class FundusEvaluation:
    """The headline metrics of one evaluation (what the model card quotes)."""

    model: ModelIdentity
    eyes: tuple[EyeOutcome, ...]
    kappa: float
    confusion: npt.NDArray[np.int64]
    referable: RocSummary | None
    grade_rule_sensitivity: float
    grade_rule_specificity: float
    lesion_dice: dict[str, tuple[float, int]]
    """Per lesion type: mean image-level Dice and the number of images it is averaged over."""
    seconds_per_study: float
    report_path: Path
    abstention_rate: float = math.nan
    """Held-out exams over the OOD threshold (false abstentions); NaN: no OOD score fitted."""
    ece_uncalibrated: float = math.nan
    ece_calibrated: float = math.nan


def _dice_per_type(findings: list[PlanarFinding], eye: EyeTruth) -> dict[str, float]:
    """Image-level Dice per lesion type present in the truth (an absent finding scores 0)."""
    truth = eye.masks()
    shape = (eye.rows, eye.columns)
    scores = {}
    for finding_type, name in FINDING_MASKS.items():
        if not truth[name].any():
            continue
        predicted = np.zeros(shape, dtype=np.bool_)
        for finding in findings:
            if finding.finding_type is finding_type:
                predicted |= finding.mask.paste(shape)
        scores[name] = metrics.dice(predicted, truth[name])
    return scores


def _eye_outcomes(folder: Path, result: PlanarResult) -> list[EyeOutcome]:
    truth = load_truth(folder)
    outcomes = []
    for assessment in result.assessments:
        eye = truth.eye(assessment.laterality.value)
        findings = [f for f in result.findings if f.sop_instance_uid == eye.sop_instance_uid]
        probabilities = assessment.class_probabilities
        outcomes.append(
            EyeOutcome(
                study=folder.name,
                laterality=eye.laterality,
                true_grade=eye.grade,
                predicted_grade=int(assessment.grade or 0),
                referable_probability=float(sum(probabilities[REFERABLE_ICDR_GRADE:])),
                expected_grade=assessment.score,
                lesion_dice=_dice_per_type(findings, eye),
                grade_probabilities=tuple(probabilities),
            )
        )
    return outcomes


def _mean_dice(eyes: list[EyeOutcome]) -> dict[str, tuple[float, int]]:
    out = {}
    for name in LESION_MASKS:
        values = [e.lesion_dice[name] for e in eyes if name in e.lesion_dice]
        out[name] = (float(np.mean(values)) if values else math.nan, len(values))
    return out


def _report(
    model: GradingModel, eyes: list[EyeOutcome], studies: int, seconds: float
) -> tuple[Report, RocSummary | None, float]:
    truth = np.array([e.true_grade for e in eyes])
    predicted = np.array([e.predicted_grade for e in eyes])
    report = Report(f"Fundus DR model evaluation: {model.identity.name} {model.identity.version}")
    report.add_text(
        f"{NOT_FOR_CLINICAL_USE}: synthetic held-out data only.\n\n"
        f"- weights sha256: `{model.identity.weights_sha256}`\n"
        f"- exams: {studies}, eyes: {len(eyes)}; true grades 0-4: "
        f"{np.bincount(truth, minlength=5).tolist()}\n"
        f"- grade = argmax of the grade probabilities; referable score = P(grade >= 2); "
        f"operating threshold {model.threshold:.4f}\n"
        f"- inference: {seconds:.2f} s per exam (includes the Grad-CAM++ maps)"
    )
    kappa = report.add_kappa("ICDR grade (rows: truth)", truth, predicted, GRADE_LABELS)
    labels = truth >= REFERABLE_ICDR_GRADE
    roc = None
    if labels.any() and not labels.all():
        scores = np.array([e.referable_probability for e in eyes])
        roc = report.add_roc("Referable DR (grade >= 2)", labels, scores, model.threshold)
    else:
        report.add_text("Referable DR ROC: not computed, the set holds one class only.")
    return report, roc, kappa


def evaluate_fundus(model: GradingModel, data_dir: Path, report_dir: Path) -> FundusEvaluation:
    """Run ``model`` on every exam under ``data_dir``; write the report into ``report_dir``."""
    folders = study_folders(data_dir)
    if not folders:
        raise ValueError(f"{data_dir} holds no fundus exams with truth.json")
    eyes: list[EyeOutcome] = []
    ood: list[OodScore | None] = []
    started = time.perf_counter()
    for folder in folders:
        result = model.predict(load_image_set(sorted(folder.glob("*.dcm"))))
        eyes += _eye_outcomes(folder, result)
        ood.append(result.ood)
    seconds = (time.perf_counter() - started) / len(folders)
    report, roc, kappa = _report(model, eyes, len(folders), seconds)
    truth = np.array([e.true_grade for e in eyes])
    predicted = np.array([e.predicted_grade for e in eyes])
    rule = metrics.sensitivity_specificity(
        truth >= REFERABLE_ICDR_GRADE, predicted >= REFERABLE_ICDR_GRADE
    )
    report.add_table(
        "Referable DR by the predicted grade (grade >= 2)",
        ["Sensitivity", "Specificity"],
        [[rule.sensitivity, rule.specificity]],
    )
    dice = _mean_dice(eyes)
    report.add_table(
        "Lesion segmentation (image-level Dice, images where the type is present)",
        ["Lesion type", "Images", "Mean Dice"],
        [[name, count, value] for name, (value, count) in dice.items()],
    )
    abstention_rate = add_abstentions(report, ood, "exams")
    calibration = _add_calibration(report, eyes, float(getattr(model, "temperature", 1.0)))
    return FundusEvaluation(
        model=model.identity,
        eyes=tuple(eyes),
        kappa=kappa,
        confusion=metrics.confusion_matrix(truth, predicted, len(ICDR_GRADES)),
        referable=roc,
        grade_rule_sensitivity=rule.sensitivity,
        grade_rule_specificity=rule.specificity,
        lesion_dice=dice,
        seconds_per_study=seconds,
        report_path=report.write(report_dir),
        abstention_rate=abstention_rate,
        ece_uncalibrated=calibration[0],
        ece_calibrated=calibration[1],
    )


def _add_calibration(
    report: Report, eyes: list[EyeOutcome], temperature: float
) -> tuple[float, float]:
    """ECE of the top grade's probability, as reported (temperature-scaled) and raw (the
    network's softmax, recovered exactly: softmax(T * log p))."""
    calibrated = np.array([e.grade_probabilities for e in eyes], dtype=np.float64)
    if calibrated.size == 0:
        return math.nan, math.nan
    logits = temperature * np.log(np.clip(calibrated, 1e-300, 1.0))
    raw = np.exp(logits - logits.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    correct = calibrated.argmax(axis=1) == np.array([e.true_grade for e in eyes])
    summary = add_calibration(
        report,
        f"ICDR grade, top-label probability (T = {temperature:.3f})",
        calibrated.max(axis=1),
        raw.max(axis=1),
        correct,
    )
    return summary.ece_uncalibrated, summary.ece_calibrated


__all__ = ["EyeOutcome", "FundusEvaluation", "evaluate_fundus"]

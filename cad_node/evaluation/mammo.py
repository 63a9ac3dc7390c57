"""Evaluates the mammography model on synthetic screening studies with ground truth.

Two questions, on a folder of studies written by :func:`cad_node.synth.mammo.write_dataset`:

- **Per breast**: does the suspicion score separate malignant from normal
  breasts?  ROC AUC with its 95% DeLong interval, sensitivity at 90%
  specificity, and the confusion matrix at the model's operating threshold.
- **Per lesion**: are the lesions marked?  FROC per image: a mark is a hit when
  its centre lies within a lesion's radius (at least :data:`MIN_HIT_RADIUS_MM`)
  on that view, whatever the type, as LUNA16 counts hits; several hits on one
  lesion count once, a mark hitting nothing is a false positive.  Each lesion
  is counted once per view it shows in (twice per lesion).
"""

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import ModelIdentity
from cad_node.domain.image_sets import PlanarFinding
from cad_node.evaluation.froc import (
    Detection,
    FrocResult,
    ScanMatches,
    TruthNodule,
    froc,
    match_scan,
)
from cad_node.evaluation.honesty import add_abstentions, add_calibration
from cad_node.evaluation.report import Cell, ConfusionSummary, Report, RocSummary
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.models.calibration import calibrated_probability
from cad_node.models.mammo.model import MammoModel, ViewOutput
from cad_node.models.mammo.scoring import BREAST_COMBINATION
from cad_node.synth.mammo import MammoTruth, ViewTruth, load_truth, study_folders

FROC_THRESHOLD = 0.05
"""Lesion marks down to this probability feed the FROC curve."""
MIN_HIT_RADIUS_MM = 5.0
"""A mark within 5 mm of a small lesion's centre (e.g. a 4 mm calcification cluster) is a hit."""
CLASS_NAMES = ("normal", "malignant")


@dataclass(frozen=True, slots=True)
class LesionOutcome:
    """One ground-truth lesion on one view, at the lesion threshold."""

    lesion_type: str
    view_position: str
    diameter_mm: float
    found: bool


@dataclass(frozen=True, slots=True, eq=False)
class MammoEvaluation:
    """Everything the report states."""

    model: ModelIdentity
    operating_threshold: float
    lesion_threshold: float
    studies: int
    breast_labels: tuple[bool, ...]
    breast_scores: tuple[float, ...]
    roc: RocSummary
    confusion: ConfusionSummary
    froc: FrocResult
    lesions: tuple[LesionOutcome, ...]
    false_positives_at_threshold: int
    images: int
    seconds_per_study: float
    report_path: Path
    cam_distances_mm: tuple[float, ...] = ()
    """Per malignant breast: its Grad-CAM peak's distance to the nearest lesion centre."""
    abstention_rate: float = math.nan
    """Held-out studies over the OOD threshold (false abstentions); NaN: no OOD score."""
    ece_uncalibrated: float = math.nan
    ece_calibrated: float = math.nan

    @property
    def lesion_sensitivity(self) -> float:
        """Fraction of lesion views marked at the lesion threshold."""
        return float(np.mean([o.found for o in self.lesions])) if self.lesions else float("nan")

    @property
    def fp_per_image(self) -> float:
        return self.false_positives_at_threshold / max(self.images, 1)


def _mm(centre_rc: tuple[float, float], spacing: tuple[float, float]) -> tuple[float, float, float]:
    return (0.0, centre_rc[0] * spacing[0], centre_rc[1] * spacing[1])


def _truth_lesions(truth: MammoTruth, view: ViewTruth) -> list[tuple[TruthNodule, str, float]]:
    out = []
    for lesion in truth.breast(view.laterality).lesions:
        where = lesion.views[view.view_position]
        radius = max(lesion.diameter_mm / 2, MIN_HIT_RADIUS_MM)
        nodule = TruthNodule(_mm(where.centre_rc, truth.pixel_spacing_mm), radius)
        out.append((nodule, lesion.lesion_type, lesion.diameter_mm))
    return out


@dataclass
class _Tally:
    """Accumulates per-view matches while the studies are read."""

    matches: list[ScanMatches]
    outcomes: list[LesionOutcome]
    false_positives: int = 0
    cam_distances_mm: list[float] = field(default_factory=list)
    ood: list[OodScore | None] = field(default_factory=list)


def _cam_distances(model: MammoModel, outputs: list[ViewOutput], truth: MammoTruth) -> list[float]:
    """Per malignant breast: Grad-CAM peak to nearest lesion centre (mm), most suspicious view."""
    distances = []
    for breast in truth.breasts:
        views = [o for o in outputs if o.image.laterality is breast.laterality]
        if not breast.lesions or not views:
            continue
        output = max(views, key=lambda o: o.probability)
        explanation = model.explain(output)
        if explanation is None:
            continue
        heatmap = explanation.heatmap
        peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        spacing = np.array(truth.pixel_spacing_mm)
        distances.append(
            min(
                float(
                    np.linalg.norm(
                        (np.array(peak) - les.views[output.image.view_position].centre_rc) * spacing
                    )
                )
                for les in breast.lesions
            )
        )
    return distances


def _score_view(
    truth: MammoTruth,
    view: ViewTruth,
    findings: Sequence[PlanarFinding],
    lesion_threshold: float,
    tally: _Tally,
) -> None:
    lesions = _truth_lesions(truth, view)
    nodules = [n for n, _, _ in lesions]
    mine = [f for f in findings if f.sop_instance_uid == view.sop_instance_uid]
    detections = [Detection(_mm(f.centre_rc, truth.pixel_spacing_mm), f.probability) for f in mine]
    tally.matches.append(match_scan(detections, nodules))
    at_threshold = match_scan([d for d in detections if d.probability >= lesion_threshold], nodules)
    tally.false_positives += len(at_threshold.false_positive_scores)
    for (_, kind, diameter), best in zip(lesions, at_threshold.nodule_scores, strict=True):
        tally.outcomes.append(LesionOutcome(kind, view.view_position, diameter, best is not None))


def evaluate_mammo(model: MammoModel, data_dir: Path, report_dir: Path) -> MammoEvaluation:
    """Run the model on every study under ``data_dir``; write the report into ``report_dir``."""
    folders = study_folders(data_dir)
    if not folders:
        raise ValueError(f"{data_dir} holds no study with a truth.json")
    labels: list[bool] = []
    scores: list[float] = []
    tally = _Tally(matches=[], outcomes=[])
    seconds = 0.0
    for folder in folders:
        truth = load_truth(folder)
        images = load_image_set(sorted(folder.glob("*.dcm")))
        started = time.perf_counter()
        outputs = model.analyse(images)
        assessments = model.assessments(outputs)
        findings = model.lesions(outputs, FROC_THRESHOLD)
        seconds += time.perf_counter() - started
        for assessment in assessments:
            labels.append(truth.breast(assessment.laterality).malignant)
            scores.append(assessment.score)
        for view in truth.views:
            _score_view(truth, view, findings, model.lesion_threshold, tally)
        tally.cam_distances_mm.extend(_cam_distances(model, outputs, truth))
        tally.ood.append(model.ood_score(outputs))
    return _finish(
        model,
        folders,
        breasts=(labels, scores),
        tally=tally,
        seconds=seconds,
        report_dir=report_dir,
        data_dir=data_dir,
    )


def _finish(
    model: MammoModel,
    folders: list[Path],
    *,
    breasts: tuple[list[bool], list[float]],
    tally: _Tally,
    seconds: float,
    report_dir: Path,
    data_dir: Path,
) -> MammoEvaluation:
    labels, scores = breasts
    report = Report(f"Mammography model evaluation: {model.identity.name} {model.identity.version}")
    report.add_text(_intro(model, data_dir, len(folders), labels, seconds / len(folders)))
    roc = report.add_roc(
        "Per-breast suspicion", labels, scores, operating_threshold=model.threshold
    )
    predicted = [int(s >= model.threshold) for s in scores]
    confusion = report.add_confusion_matrix(
        "Per breast at the operating threshold", [int(x) for x in labels], predicted, CLASS_NAMES
    )
    lesion_froc = froc(tally.matches)
    report.add_froc("FROC: lesion marks per image", lesion_froc)
    result = MammoEvaluation(
        model=model.identity,
        operating_threshold=model.threshold,
        lesion_threshold=model.lesion_threshold,
        studies=len(folders),
        breast_labels=tuple(labels),
        breast_scores=tuple(scores),
        roc=roc,
        confusion=confusion,
        froc=lesion_froc,
        lesions=tuple(tally.outcomes),
        false_positives_at_threshold=tally.false_positives,
        images=len(tally.matches),
        seconds_per_study=seconds / len(folders),
        report_path=report_dir / "report.md",
        cam_distances_mm=tuple(tally.cam_distances_mm),
    )
    _lesion_tables(report, result)
    abstention_rate = add_abstentions(report, tally.ood, "studies")
    # the raw breast score from the reported one: its log-odds times the temperature
    raw = [calibrated_probability(s, 1.0 / model.temperature) for s in scores]
    calibration = add_calibration(
        report, f"breast suspicion score (T = {model.temperature:.3f})", scores, raw, labels
    )
    report.write(report_dir)
    return dataclasses.replace(
        result,
        abstention_rate=abstention_rate,
        ece_uncalibrated=calibration.ece_uncalibrated,
        ece_calibrated=calibration.ece_calibrated,
    )


def _intro(
    model: MammoModel, data_dir: Path, studies: int, labels: list[bool], seconds: float
) -> str:
    return "\n".join(
        [
            "Synthetic data only.",
            "",
            f"- Data: `{data_dir}`: {studies} studies, {len(labels)} breasts, "
            f"{sum(labels)} malignant",
            f"- Weights sha256: `{model.identity.weights_sha256}`",
            f"- Per-breast score: {BREAST_COMBINATION}; operating threshold {model.threshold:.4f}",
            f"- Lesion marks: mark probability (peak segmentation probability x view "
            f"suspicion) >= {model.lesion_threshold:g}; FROC from marks >= {FROC_THRESHOLD:g}; "
            f"hit = mark centre within the lesion's radius (at least {MIN_HIT_RADIUS_MM:g} mm), "
            "any type; marks on benign cysts are false positives",
            f"- Mean inference time per study (this machine, without Grad-CAM): {seconds:.2f} s",
        ]
    )


def _group_row(name: str, group: list[LesionOutcome]) -> list[Cell]:
    found = sum(o.found for o in group)
    return [name, len(group), found, found / len(group) if group else None]


def _lesion_tables(report: Report, result: MammoEvaluation) -> None:
    header = ["Lesions (per view)", "Count", "Marked", "Sensitivity"]
    rows = [_group_row("all", list(result.lesions))]
    for kind in sorted({o.lesion_type for o in result.lesions}):
        rows.append(_group_row(kind, [o for o in result.lesions if o.lesion_type == kind]))
    for view_position in ("CC", "MLO"):
        group = [o for o in result.lesions if o.view_position == view_position]
        rows.append(_group_row(f"{view_position} views", group))
    for low, high in ((0, 10), (10, 15), (15, 30)):
        group = [o for o in result.lesions if low <= o.diameter_mm < high]
        rows.append(_group_row(f"{low}-{high} mm", group))
    report.add_table(
        f"Lesion marks at the lesion threshold ({result.lesion_threshold:g})",
        header,
        [r for r in rows if r[1]],
    )
    report.add_text(
        f"False positive marks: {result.false_positives_at_threshold} on {result.images} "
        f"images ({result.fp_per_image:.2f} per image)."
    )
    _cam_table(report, result.cam_distances_mm)


def _cam_table(report: Report, distances: tuple[float, ...]) -> None:
    if not distances:
        return
    values = np.array(distances)
    report.add_table(
        "Grad-CAM localisation (malignant breasts, most suspicious view)",
        ["Breasts", "Median peak-to-lesion (mm)", "Within 10 mm", "Within 20 mm"],
        [
            [
                len(values),
                float(np.median(values)),
                float(np.mean(values <= 10)),
                float(np.mean(values <= 20)),
            ]
        ],
    )

"""Evaluates the lung nodule model on synthetic series with ground truth."""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import Finding, ModelIdentity
from cad_node.domain.imaging import ImageVolume
from cad_node.evaluation.froc import (
    Detection,
    FrocResult,
    ScanMatches,
    TruthNodule,
    froc,
    match_scan,
)
from cad_node.evaluation.honesty import add_abstentions, summarise_abstentions
from cad_node.evaluation.plot import froc_svg
from cad_node.evaluation.report import Cell, Report
from cad_node.imaging.volume import load_volume
from cad_node.models.lung.detector import LungNoduleModel
from cad_node.models.lung.train import series_folders
from cad_node.synth.ct import GroundTruth, NoduleTruth, load_ground_truth

FROC_THRESHOLD = 0.02
"""Detections down to this probability feed the FROC curve."""


class DetectingModel(Protocol):
    """A lung model that returns findings at a chosen threshold (LungNoduleModel)."""

    identity: ModelIdentity
    threshold: float

    def detect(self, volume: ImageVolume, threshold: float) -> list[Finding]: ...


@dataclass(frozen=True, slots=True)
class NoduleOutcome:
    """One ground-truth nodule at the operating threshold."""

    truth: NoduleTruth
    found: bool
    diameter_mm: float | None
    probability: float | None


@dataclass(frozen=True, slots=True)
class LungEvaluation:
    """Everything the report states."""

    model: ModelIdentity
    operating_threshold: float
    froc: FrocResult
    scans: int
    nodules: tuple[NoduleOutcome, ...]
    false_positives_at_threshold: int
    seconds_per_scan: float
    ood_scores: tuple[OodScore | None, ...] = ()
    """Each scan's OOD score (None: the model has none, or the scan no candidate)."""
    abstention_rate: float = math.nan
    """Held-out scans over the OOD threshold (false abstentions); NaN: no OOD score."""

    @property
    def sensitivity_at_threshold(self) -> float:
        return float(np.mean([n.found for n in self.nodules])) if self.nodules else math.nan

    @property
    def fp_per_scan_at_threshold(self) -> float:
        return self.false_positives_at_threshold / max(self.scans, 1)

    def diameter_errors(self) -> list[float]:
        """Found diameter minus the ground-truth mask's equal-volume diameter (mm)."""
        return [
            n.diameter_mm - n.truth.equivalent_diameter_mm
            for n in self.nodules
            if n.found and n.diameter_mm is not None
        ]


def _truths(truth: GroundTruth) -> list[TruthNodule]:
    return [
        TruthNodule(centre_mm=_mm(n.centre_index, truth.spacing_mm), radius_mm=n.diameter_mm / 2)
        for n in truth.nodules
    ]


def _mm(
    index: tuple[float, float, float], spacing: tuple[float, float, float]
) -> tuple[float, float, float]:
    return (index[0] * spacing[0], index[1] * spacing[1], index[2] * spacing[2])


def _outcomes(
    findings: Sequence[Finding], truth: GroundTruth, threshold: float
) -> tuple[list[NoduleOutcome], int]:
    kept = [f for f in findings if f.probability >= threshold]
    truths = _truths(truth)
    outcomes, hit_any = [], [False] * len(kept)
    for nodule, t in zip(truth.nodules, truths, strict=True):
        best: Finding | None = None
        for i, f in enumerate(kept):
            if (
                np.linalg.norm(np.array(_mm(f.centre_index, truth.spacing_mm)) - t.centre_mm)
                <= t.radius_mm
            ):
                hit_any[i] = True
                if best is None or f.probability > best.probability:
                    best = f
        outcomes.append(
            NoduleOutcome(
                truth=nodule,
                found=best is not None,
                diameter_mm=None if best is None else best.diameter_mm,
                probability=None if best is None else best.probability,
            )
        )
    return outcomes, hit_any.count(False)


def evaluate_lung(model: DetectingModel, data_dir: Path, report_dir: Path) -> LungEvaluation:
    """Run the model on every series under ``data_dir``; write the report (:func:`write_report`)."""
    folders = series_folders(data_dir)
    matches: list[ScanMatches] = []
    outcomes: list[NoduleOutcome] = []
    false_positives = 0
    seconds = 0.0
    ood: list[OodScore | None] = []
    for folder in folders:
        volume = load_volume(sorted(folder.glob("*.dcm")))
        truth = load_ground_truth(folder)
        started = time.perf_counter()
        findings, score = _detect(model, volume)
        seconds += time.perf_counter() - started
        ood.append(score)
        detections = [
            Detection(_mm(f.centre_index, truth.spacing_mm), f.probability) for f in findings
        ]
        matches.append(match_scan(detections, _truths(truth)))
        scan_outcomes, scan_fp = _outcomes(findings, truth, model.threshold)
        outcomes += scan_outcomes
        false_positives += scan_fp
    result = LungEvaluation(
        model=model.identity,
        operating_threshold=model.threshold,
        froc=froc(matches),
        scans=len(folders),
        nodules=tuple(outcomes),
        false_positives_at_threshold=false_positives,
        seconds_per_scan=seconds / max(len(folders), 1),
        ood_scores=tuple(ood),
        abstention_rate=summarise_abstentions(ood).rate,
    )
    write_report(result, data_dir, report_dir)
    return result


def _detect(model: DetectingModel, volume: ImageVolume) -> tuple[list[Finding], OodScore | None]:
    """Findings at the FROC threshold and, where the model computes one, the OOD score."""
    if isinstance(model, LungNoduleModel):
        scored = model.score(volume)
        return model.findings(scored, volume, FROC_THRESHOLD), model.ood_score(scored)
    return model.detect(volume, FROC_THRESHOLD), None


def _size_rows(result: LungEvaluation) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for lo, hi in ((4, 6), (6, 10), (10, 20), (20, 31)):
        group = [n for n in result.nodules if lo <= n.truth.diameter_mm < hi]
        if group:
            found = sum(n.found for n in group)
            rows.append([f"{lo}-{hi} mm", len(group), found, f"{found / len(group):.2f}"])
    return rows


def _type_rows(result: LungEvaluation) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for kind in sorted({n.truth.nodule_type.value for n in result.nodules}):
        group = [n for n in result.nodules if n.truth.nodule_type.value == kind]
        found = sum(n.found for n in group)
        rows.append([kind, len(group), found, f"{found / len(group):.2f}"])
    return rows


def _diameter_text(result: LungEvaluation) -> str:
    errors = result.diameter_errors()
    abs_err = np.abs(errors) if errors else np.array([math.nan])
    return (
        f"- Diameter error (found minus ground-truth equal-volume diameter): "
        f"mean {np.mean(errors) if errors else math.nan:+.2f} mm, "
        f"median |error| {np.median(abs_err):.2f} mm, 90th percentile |error| "
        f"{np.percentile(abs_err, 90):.2f} mm"
    )


def build_report(result: LungEvaluation, data_dir: Path) -> Report:
    """The lung evaluation as a :class:`Report`: FROC, operating point, per size and type."""
    report = Report(f"Lung nodule model evaluation: {result.model.name} {result.model.version}")
    report.add_text(
        "Synthetic data only.\n\n"
        f"- Data: `{data_dir}`: {result.scans} scans, {result.froc.nodules} nodules\n"
        f"- Weights sha256: `{result.model.weights_sha256}`\n"
        f"- Mean inference time per scan (this machine): {result.seconds_per_scan:.1f} s"
    )
    report.add_froc("FROC", result.froc)
    report.add_text("LUNA16 hit rule: a detection hits a nodule whose radius holds its centre.")
    report.add_heading(f"At the operating threshold ({result.operating_threshold:.3f})")
    report.add_text(
        f"- Sensitivity: {result.sensitivity_at_threshold:.3f}\n"
        f"- False positives per scan: {result.fp_per_scan_at_threshold:.2f}\n"
        + _diameter_text(result)
    )
    columns = ["Nodules", "Found", "Sensitivity"]
    report.add_table("Sensitivity by size", ["Size", *columns], _size_rows(result))
    report.add_table("Sensitivity by type", ["Type", *columns], _type_rows(result))
    if result.ood_scores:
        add_abstentions(report, result.ood_scores, "scans")
    return report


def write_report(result: LungEvaluation, data_dir: Path, report_dir: Path) -> Path:
    """Write report.md, index.html, froc.png and froc.svg (vector, for the model card).

    Returns the path of report.md.
    """
    path = build_report(result, data_dir).write(report_dir)
    (report_dir / "froc.svg").write_text(froc_svg(result.froc), encoding="utf-8")
    return path

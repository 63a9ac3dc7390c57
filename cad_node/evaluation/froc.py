"""FROC analysis as in LUNA16: sensitivity at 1/8 .. 8 false positives per scan, and CPM.

A detection is a hit when its centre lies within a ground-truth nodule's radius
(Setio et al. 2017, LUNA16).  Several hits on one nodule count once (its best
probability) and are not false positives; a detection hitting no nodule is a
false positive.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection: centre (mm, any fixed frame of the scan) and probability."""

    centre_mm: tuple[float, float, float]
    probability: float


@dataclass(frozen=True, slots=True)
class TruthNodule:
    """One ground-truth nodule: centre (mm, same frame) and radius (mm)."""

    centre_mm: tuple[float, float, float]
    radius_mm: float


@dataclass(frozen=True, slots=True)
class ScanMatches:
    """Per scan: best hit probability per nodule (None if missed) and false positive scores."""

    nodule_scores: tuple[float | None, ...]
    false_positive_scores: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class FrocResult:
    """Sensitivity at each false-positive rate, their mean (CPM) and the full curve."""

    fp_rates: tuple[float, ...]
    sensitivities: tuple[float, ...]
    cpm: float
    scans: int
    nodules: int
    curve_fp_per_scan: tuple[float, ...]
    curve_sensitivity: tuple[float, ...]


def match_scan(detections: Sequence[Detection], truths: Sequence[TruthNodule]) -> ScanMatches:
    """Hits and false positives of one scan (LUNA16 rule)."""
    best: list[float | None] = [None] * len(truths)
    false_positives = []
    for det in detections:
        point = np.array(det.centre_mm)
        hit = False
        for i, truth in enumerate(truths):
            if np.linalg.norm(point - np.array(truth.centre_mm)) <= truth.radius_mm:
                hit = True
                current = best[i]
                best[i] = det.probability if current is None else max(current, det.probability)
        if not hit:
            false_positives.append(det.probability)
    return ScanMatches(tuple(best), tuple(false_positives))


def _sensitivity_at(
    nodule_scores: npt.NDArray[np.float64], fp_sorted: npt.NDArray[np.float64], allowed: int
) -> float:
    """Fraction of nodules found at the loosest threshold with at most ``allowed`` FPs."""
    if len(nodule_scores) == 0:
        return float("nan")
    threshold = fp_sorted[allowed] if allowed < len(fp_sorted) else -np.inf
    return float(np.mean(nodule_scores > threshold))


def froc(matches: Sequence[ScanMatches], fp_rates: Sequence[float] = FP_RATES) -> FrocResult:
    """Sensitivity at each rate: the best with total FPs <= rate x scans (step curve)."""
    scans = len(matches)
    scores = np.array(
        [-np.inf if s is None else s for m in matches for s in m.nodule_scores], dtype=np.float64
    )
    fp_sorted = np.sort(np.array([s for m in matches for s in m.false_positive_scores]))[::-1]
    sens = tuple(_sensitivity_at(scores, fp_sorted, int(np.floor(r * scans))) for r in fp_rates)
    curve_fp = tuple(float(n / max(scans, 1)) for n in range(len(fp_sorted) + 1))
    curve_sens = tuple(_sensitivity_at(scores, fp_sorted, n) for n in range(len(fp_sorted) + 1))
    return FrocResult(
        fp_rates=tuple(fp_rates),
        sensitivities=sens,
        cpm=float(np.mean(sens)),
        scans=scans,
        nodules=len(scores),
        curve_fp_per_scan=curve_fp,
        curve_sensitivity=curve_sens,
    )

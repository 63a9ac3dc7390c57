"""What an evaluation says about a model's honesty: its abstentions and its calibration.

- Abstentions: on held-out synthetic data (the model's own domain) every input over
  the OOD threshold is a false abstention; the report gives their rate and the
  scores' spread against the threshold.
- Calibration: the expected calibration error (ECE) and a reliability diagram of the
  reported probabilities (calibrated: temperature-scaled) and of the network's raw
  ones, recovered exactly from the calibrated ones and the manifest's temperature.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cad_node.domain.abstention import OodScore
from cad_node.evaluation.plot import reliability_figure
from cad_node.evaluation.report import Report
from cad_node.models.calibration import DEFAULT_BINS, expected_calibration_error, reliability


@dataclass(frozen=True, slots=True)
class AbstentionSummary:
    """OOD scores of an evaluation's inputs against the threshold."""

    inputs: int
    scored: int
    over_threshold: int
    threshold: float | None
    max_score: float | None

    @property
    def rate(self) -> float:
        """False abstention rate: scored inputs over the threshold (NaN when none scored)."""
        return self.over_threshold / self.scored if self.scored else math.nan


def summarise_abstentions(scores: Sequence[OodScore | None]) -> AbstentionSummary:
    known = [s for s in scores if s is not None]
    return AbstentionSummary(
        inputs=len(scores),
        scored=len(known),
        over_threshold=sum(s.outside for s in known),
        threshold=known[0].threshold if known else None,
        max_score=max((s.score for s in known), default=None),
    )


def add_abstentions(report: Report, scores: Sequence[OodScore | None], units: str) -> float:
    """A table of the OOD scores on this (in-domain) data; returns the false abstention rate."""
    summary = summarise_abstentions(scores)
    if not summary.scored:
        report.add_text("Out-of-distribution score: none fitted for this model.")
        return math.nan
    values = np.array([s.score for s in scores if s is not None])
    report.add_table(
        f"Out-of-distribution score ({units} of held-out synthetic data)",
        [units, "threshold", "median score", "max score", "over threshold", "rate"],
        [
            [
                summary.scored,
                summary.threshold,
                float(np.median(values)),
                summary.max_score,
                summary.over_threshold,
                summary.rate,
            ]
        ],
    )
    return summary.rate


@dataclass(frozen=True, slots=True)
class CalibrationSummary:
    ece_uncalibrated: float
    ece_calibrated: float
    samples: int


def add_calibration(
    report: Report,
    name: str,
    calibrated: npt.ArrayLike,
    uncalibrated: npt.ArrayLike,
    outcomes: npt.ArrayLike,
    *,
    bins: int = DEFAULT_BINS,
) -> CalibrationSummary:
    """ECE before and after calibration and the reliability diagram (PNG in the report)."""
    after = np.asarray(calibrated, dtype=np.float64)
    before = np.asarray(uncalibrated, dtype=np.float64)
    y = np.asarray(outcomes, dtype=np.float64)
    summary = CalibrationSummary(
        expected_calibration_error(before, y, bins),
        expected_calibration_error(after, y, bins),
        len(y),
    )
    report.add_table(
        f"Calibration: {name}",
        ["samples", f"ECE uncalibrated ({bins} bins)", "ECE calibrated (temperature)"],
        [[summary.samples, summary.ece_uncalibrated, summary.ece_calibrated]],
    )
    report.add_figure(
        f"reliability {name}",
        reliability_figure(
            {
                f"uncalibrated (ECE {summary.ece_uncalibrated:.3f})": reliability(before, y, bins),
                f"calibrated (ECE {summary.ece_calibrated:.3f})": reliability(after, y, bins),
            },
            f"Reliability: {name}",
            colours=("#c60", "#06c"),
        ),
    )
    return summary


__all__ = [
    "AbstentionSummary",
    "CalibrationSummary",
    "add_abstentions",
    "add_calibration",
    "reliability_figure",
    "summarise_abstentions",
]

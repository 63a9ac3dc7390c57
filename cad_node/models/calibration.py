"""Calibrated probabilities: temperature scaling, expected calibration error, reliability.

Temperature scaling (C. Guo et al., "On calibration of modern neural networks", ICML
2017) divides a network's logits by one number ``T`` fitted on validation data by
minimising the negative log-likelihood.  ``T > 1`` softens over-confident
probabilities; the ranking of the inputs, the arg-max class and so a binary output's
ROC curve are unchanged.  A binary operating threshold ``t`` on the uncalibrated
probability is the threshold ``sigmoid(logit(t) / T)`` on the calibrated one
(:func:`calibrated_threshold`), so sensitivity and specificity do not move.

The expected calibration error (ECE) is the count-weighted mean, over equal-width
probability bins, of ``|observed frequency - mean predicted probability|``.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

METHOD = "temperature"
DEFAULT_BINS = 10
_LOG_T_RANGE = (-3.0, 3.0)
"""Search range of log(T): T from 0.05 to 20."""

Array = npt.NDArray[np.floating[Any]] | npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_]


def softmax(logits: Array, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """Row-wise softmax of ``logits / temperature``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)


def sigmoid(logits: Array, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def logit(probability: float) -> float:
    p = min(max(probability, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def calibrated_probability(probability: float, temperature: float) -> float:
    """``probability`` with its log-odds divided by ``temperature`` (1: unchanged)."""
    if temperature == 1.0:
        return probability
    return float(sigmoid(np.array(logit(probability)), temperature))


def calibrated_threshold(threshold: float, temperature: float) -> float:
    """A threshold on sigmoid(z) as the same decision on sigmoid(z / T)."""
    return calibrated_probability(threshold, temperature)


def negative_log_likelihood(logits: Array, labels: Array, temperature: float) -> float:
    """Mean NLL of integer ``labels`` under softmax (2D logits) or sigmoid (1D logits)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.ndim == 1:
        scaled = z / temperature
        # log(1 + exp(-s)) for positives, log(1 + exp(s)) for negatives, stably
        signed = np.where(y > 0.5, -scaled, scaled)
        return float(np.logaddexp(0.0, signed).mean())
    scaled = z / temperature
    log_norm = np.logaddexp.reduce(scaled, axis=1)
    picked = scaled[np.arange(len(y)), y.astype(np.int64)]
    return float((log_norm - picked).mean())


def fit_temperature(logits: Array, labels: Array) -> float:
    """The temperature minimising the validation NLL (golden-section search on log T).

    ``logits``: (n, classes) for a softmax output with integer labels, or (n,) for a
    sigmoid output with 0/1 labels.
    """
    if len(labels) == 0:
        raise ValueError("no validation samples to fit a temperature on")

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    low, high = _LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return math.exp((a + b) / 2)


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One bin of a reliability diagram."""

    lower: float
    upper: float
    count: int
    mean_probability: float | None
    observed_frequency: float | None


def reliability(
    probabilities: Array, outcomes: Array, bins: int = DEFAULT_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins of ``probabilities`` with the frequency of ``outcomes`` (0/1) in each."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(outcomes, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        out.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=count,
                mean_probability=float(p[inside].mean()) if count else None,
                observed_frequency=float(y[inside].mean()) if count else None,
            )
        )
    return out


def expected_calibration_error(
    probabilities: Array, outcomes: Array, bins: int = DEFAULT_BINS
) -> float:
    """Count-weighted mean |observed frequency - mean probability| over equal-width bins."""
    table = reliability(probabilities, outcomes, bins)
    total = sum(b.count for b in table)
    if total == 0:
        return math.nan
    return float(
        sum(
            b.count * abs(b.observed_frequency - b.mean_probability)
            for b in table
            if b.observed_frequency is not None and b.mean_probability is not None
        )
        / total
    )


def top_label(
    probabilities: Array, labels: Array
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Multi-class: the top class's probability and whether it was right (for ECE)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


@dataclass(frozen=True, slots=True)
class CalibrationFit:
    """A fitted temperature and the ECE before and after it on the fitting data."""

    temperature: float
    ece_before: float
    ece_after: float
    samples: int
    bins: int

    def entry(
        self, fitted_on: str, output: str, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The manifest's ``calibration`` entry."""
        return {
            "method": METHOD,
            "temperature": round(self.temperature, 4),
            "output": output,
            "fitted_on": fitted_on,
            "samples": self.samples,
            "ece_bins": self.bins,
            "validation_ece_before": round(self.ece_before, 4),
            "validation_ece_after": round(self.ece_after, 4),
            **(extra or {}),
        }


def _confidences(
    logits: Array, labels: Array, temperature: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        return sigmoid(z, temperature), np.asarray(labels, dtype=np.float64)
    return top_label(softmax(z, temperature), labels)


def calibrate(logits: Array, labels: Array, bins: int = DEFAULT_BINS) -> CalibrationFit:
    """Fit a temperature on validation ``logits`` and measure the ECE before and after.

    The ECE is of the sigmoid probability (1D logits) or of the top-label confidence
    (2D logits).
    """
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(*_confidences(logits, labels, 1.0), bins)
    after = expected_calibration_error(*_confidences(logits, labels, temperature), bins)
    return CalibrationFit(temperature, before, after, len(labels), bins)


def temperature_of(calibration: dict[str, Any]) -> float:
    """The manifest's fitted temperature; 1.0 (no change) when none was fitted."""
    if calibration.get("method") != METHOD:
        return 1.0
    return float(calibration.get("temperature", 1.0))


def reliability_table(table: Sequence[ReliabilityBin]) -> list[dict[str, Any]]:
    return [asdict(b) for b in table]


__all__ = [
    "DEFAULT_BINS",
    "METHOD",
    "CalibrationFit",
    "ReliabilityBin",
    "calibrate",
    "calibrated_probability",
    "calibrated_threshold",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability",
    "sigmoid",
    "softmax",
    "temperature_of",
    "top_label",
]

"""Classification and segmentation metrics shared by every model family's evaluation.

Thin, validated wrappers around scikit-learn (ROC curve, AUC) plus what
scikit-learn lacks: sensitivity at a fixed specificity and the Dice coefficient.
DeLong's confidence interval for the AUC, the confusion matrix and quadratic
weighted kappa are numpy's, in :mod:`cad_node.monitoring.stats` (the node's
monitoring uses them without the lab), and re-exported here.

Conventions
-----------
- ``labels`` are binary ground truth: ``True``/``1`` is the positive (diseased)
  class, ``False``/``0`` the negative one.
- ``scores`` are real numbers, higher meaning "more likely positive"; a case is
  called positive when ``score >= threshold`` (scikit-learn's convention).
- A metric that is undefined for the data given (an AUC with one class only)
  raises :class:`ValueError` naming the reason, rather than returning NaN
  silently; :func:`sensitivity_specificity` is the exception (see there).
"""

import math
from typing import NamedTuple

import numpy as np

# scikit-learn ships no type information: pyproject.toml lets mypy treat it as Any.
from sklearn import metrics as sk_metrics

# The numpy-only part lives where the node (without the lab) can import it (issue 22).
from cad_node.monitoring.stats import (
    ArrayLike,
    FloatArray,
    IntArray,
    RocCurve,
    auc_confidence_interval,
    binary_labels,
    both_classes,
    confusion_matrix,
    delong_variance,
    quadratic_weighted_kappa,
)

__all__ = [
    "ArrayLike",
    "FloatArray",
    "IntArray",
    "OperatingPoint",
    "RocCurve",
    "SensitivitySpecificity",
    "auc_confidence_interval",
    "binary_labels",
    "confusion_matrix",
    "delong_variance",
    "dice",
    "per_class_rates",
    "quadratic_weighted_kappa",
    "roc_auc",
    "roc_curve",
    "sensitivity_at_specificity",
    "sensitivity_specificity",
]

_TOLERANCE = 1e-12
"""Slack for float comparisons of rates (1 - 0.9 is 0.09999999999999998)."""


class SensitivitySpecificity(NamedTuple):
    """Sensitivity (true positive rate) and specificity (true negative rate)."""

    sensitivity: float
    specificity: float


class OperatingPoint(NamedTuple):
    """Sensitivity reached at a threshold (score >= threshold is positive)."""

    sensitivity: float
    threshold: float


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> RocCurve:
    """The empirical ROC curve (every threshold kept, so no operating point is lost)."""
    truth, values = both_classes(labels, scores)
    fpr, tpr, thresholds = sk_metrics.roc_curve(truth, values, drop_intermediate=False)
    return RocCurve(
        fpr=np.asarray(fpr, dtype=np.float64),
        tpr=np.asarray(tpr, dtype=np.float64),
        thresholds=np.asarray(thresholds, dtype=np.float64),
    )


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half."""
    truth, values = both_classes(labels, scores)
    return float(sk_metrics.roc_auc_score(truth, values))


def sensitivity_at_specificity(
    labels: ArrayLike, scores: ArrayLike, specificity: float = 0.9
) -> OperatingPoint:
    """The best sensitivity whose specificity is at least ``specificity``, and its threshold.

    Among the ROC curve's thresholds with ``1 - fpr >= specificity``, the one
    with the highest true positive rate (the highest threshold on a tie).
    ``threshold`` is ``inf`` when only "call nothing positive" qualifies.
    """
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"specificity must lie in [0, 1], got {specificity}")
    curve = roc_curve(labels, scores)
    allowed = np.flatnonzero(1.0 - curve.fpr >= specificity - _TOLERANCE)
    best = allowed[np.argmax(curve.tpr[allowed])]
    return OperatingPoint(float(curve.tpr[best]), float(curve.thresholds[best]))


def sensitivity_specificity(labels: ArrayLike, predicted: ArrayLike) -> SensitivitySpecificity:
    """Sensitivity and specificity of binary predictions against binary labels.

    Unlike the ROC functions this accepts one-class data, as a small
    evaluation set may have no positive case: the rate whose denominator is
    zero is NaN (sensitivity without positives, specificity without negatives).
    """
    truth = binary_labels(labels)
    calls = binary_labels(predicted)
    if calls.shape != truth.shape:
        raise ValueError(f"predicted has {calls.size} values, labels have {truth.size}")
    positives, negatives = int(truth.sum()), int((~truth).sum())
    sensitivity = float((calls & truth).sum() / positives) if positives else math.nan
    specificity = float((~calls & ~truth).sum() / negatives) if negatives else math.nan
    return SensitivitySpecificity(sensitivity, specificity)


def per_class_rates(matrix: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Per-class sensitivity (recall) and precision from a confusion matrix; NaN where 0/0."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {counts.shape}")
    hits = np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts.sum(axis=1), hits / counts.sum(axis=0)


def dice(predicted_mask: ArrayLike, true_mask: ArrayLike) -> float:
    """Dice similarity coefficient ``2|A and B| / (|A| + |B|)``; 1.0 when both masks are empty."""
    predicted = np.asarray(predicted_mask).astype(bool)
    truth = np.asarray(true_mask).astype(bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} and {truth.shape}")
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((predicted & truth).sum()) / total

"""Classification and segmentation metrics shared by every model family's evaluation.

Thin, validated wrappers around scikit-learn (ROC curve, AUC, confusion matrix,
Cohen's kappa) plus what scikit-learn lacks: DeLong's confidence interval for
the AUC, sensitivity at a fixed specificity and the Dice coefficient.

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
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

# scikit-learn ships no type information: pyproject.toml lets mypy treat it as Any.
from sklearn import metrics as sk_metrics

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_TOLERANCE = 1e-12
"""Slack for float comparisons of rates (1 - 0.9 is 0.09999999999999998)."""


@dataclass(frozen=True, slots=True, eq=False)
class RocCurve:
    """Receiver operating characteristic curve, as :func:`sklearn.metrics.roc_curve` returns it.

    ``thresholds[k]`` gives ``fpr[k]`` and ``tpr[k]`` when a case is called
    positive at ``score >= thresholds[k]``; ``thresholds[0]`` is ``inf`` (no
    case called positive).
    """

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


class SensitivitySpecificity(NamedTuple):
    """Sensitivity (true positive rate) and specificity (true negative rate)."""

    sensitivity: float
    specificity: float


class OperatingPoint(NamedTuple):
    """Sensitivity reached at a threshold (score >= threshold is positive)."""

    sensitivity: float
    threshold: float


def binary_labels(labels: ArrayLike) -> npt.NDArray[np.bool_]:
    """Labels as a boolean vector; raises ValueError unless every value is 0/1 or a bool."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError("labels must be binary (0/1 or False/True)")
    return array.astype(bool)


def _scores(scores: ArrayLike, count: int) -> FloatArray:
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (count,):
        raise ValueError(f"scores has shape {array.shape}, labels have {count} values")
    if not np.isfinite(array).all():
        raise ValueError("scores must be finite (no NaN or infinity)")
    return array


def _both_classes(labels: ArrayLike, scores: ArrayLike) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    """Validated labels and scores; raises ValueError unless both classes are present."""
    truth = binary_labels(labels)
    values = _scores(scores, truth.size)
    positives = int(truth.sum())
    if positives in (0, truth.size):
        kind = "negative" if positives == truth.size else "positive"
        raise ValueError(
            f"ROC analysis needs positive and negative cases: no {kind} case among {truth.size}"
        )
    return truth, values


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> RocCurve:
    """The empirical ROC curve (every threshold kept, so no operating point is lost)."""
    truth, values = _both_classes(labels, scores)
    fpr, tpr, thresholds = sk_metrics.roc_curve(truth, values, drop_intermediate=False)
    return RocCurve(
        fpr=np.asarray(fpr, dtype=np.float64),
        tpr=np.asarray(tpr, dtype=np.float64),
        thresholds=np.asarray(thresholds, dtype=np.float64),
    )


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half."""
    truth, values = _both_classes(labels, scores)
    return float(sk_metrics.roc_auc_score(truth, values))


def _midranks(values: FloatArray) -> FloatArray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def delong_variance(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """AUC and its variance by DeLong's method, vectorised with midranks.

    Follows DeLong, DeLong and Clarke-Pearson (Biometrics 1988;44:837-845) in
    the O(N log N) form of Sun and Xu (IEEE Signal Process. Lett. 2014;21:1389):
    the structural components are ``V10_i = (midrank of positive i among all -
    its midrank among the positives) / n`` and ``V01_j = 1 - (midrank of
    negative j among all - its midrank among the negatives) / m``, and
    ``var(AUC) = var(V10) / m + var(V01) / n`` (sample variances), for ``m``
    positives and ``n`` negatives.
    """
    truth, values = _both_classes(labels, scores)
    positives, negatives = values[truth], values[~truth]
    m, n = positives.size, negatives.size
    combined = _midranks(np.concatenate([positives, negatives]))
    v10 = (combined[:m] - _midranks(positives)) / n
    v01 = 1.0 - (combined[m:] - _midranks(negatives)) / m
    auc = float(v10.mean())
    s10 = float(v10.var(ddof=1)) if m > 1 else 0.0
    s01 = float(v01.var(ddof=1)) if n > 1 else 0.0
    return auc, s10 / m + s01 / n


def auc_confidence_interval(
    labels: ArrayLike, scores: ArrayLike, level: float = 0.95
) -> tuple[float, float]:
    """Two-sided confidence interval of the AUC by DeLong's method (normal approximation).

    DeLong's variance (see :func:`delong_variance`), computed in vectorised
    numpy; the interval ``AUC +/- z * sqrt(var)`` is clipped to [0, 1], as
    pROC's ``ci.auc(method="delong")`` does. With a single positive or a single
    negative case the variance of that class's component is taken as zero.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    auc, variance = delong_variance(labels, scores)
    half_width = NormalDist().inv_cdf(0.5 + level / 2.0) * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half_width), min(1.0, auc + half_width)


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


def _class_indices(values: ArrayLike, n_classes: int, name: str) -> IntArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class indices")
    integral = np.issubdtype(array.dtype, np.integer) or np.all(np.mod(array, 1) == 0)
    if not integral:
        raise ValueError(f"{name} must hold integer class indices")
    indices = array.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= n_classes):
        raise ValueError(f"{name} must hold class indices in 0..{n_classes - 1}")
    return indices


def _paired_classes(
    truth: ArrayLike, predicted: ArrayLike, n_classes: int
) -> tuple[IntArray, IntArray]:
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    true_idx = _class_indices(truth, n_classes, "truth")
    pred_idx = _class_indices(predicted, n_classes, "predicted")
    if true_idx.shape != pred_idx.shape or true_idx.size == 0:
        raise ValueError(
            f"truth and predicted must be non-empty and of equal length, "
            f"got {true_idx.size} and {pred_idx.size}"
        )
    return true_idx, pred_idx


def confusion_matrix(truth: ArrayLike, predicted: ArrayLike, n_classes: int) -> IntArray:
    """``n_classes x n_classes`` counts: row = true class, column = predicted class."""
    true_idx, pred_idx = _paired_classes(truth, predicted, n_classes)
    matrix = sk_metrics.confusion_matrix(true_idx, pred_idx, labels=list(range(n_classes)))
    return np.asarray(matrix, dtype=np.int64)


def quadratic_weighted_kappa(truth: ArrayLike, predicted: ArrayLike, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2 / (K - 1)^2`` (ordinal grades, e.g. ICDR).

    NaN when kappa is undefined: both truth and prediction name one and the
    same class, so chance agreement is already perfect.
    """
    true_idx, pred_idx = _paired_classes(truth, predicted, n_classes)
    if np.unique(np.concatenate([true_idx, pred_idx])).size == 1:
        return math.nan
    kappa = sk_metrics.cohen_kappa_score(
        true_idx, pred_idx, labels=list(range(n_classes)), weights="quadratic"
    )
    return float(kappa)


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

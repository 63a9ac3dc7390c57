"""Statistics of local performance in numpy and scipy only: the node imports this, and a
production install has no scikit-learn (the lab's :mod:`cad_node.evaluation.metrics`
re-exports what it shares with it).

DeLong's AUC interval, the confusion matrix, quadratic weighted kappa (with a bootstrap
interval), the empirical ROC curve, Wilson's interval of a proportion and the exact
(Garwood) interval of a Poisson rate.

Conventions: ``labels`` are binary ground truth (``True``/``1`` positive); ``scores`` are
real, higher meaning "more likely positive"; a case is called positive at
``score >= threshold``. A metric undefined for the data (an AUC with one class only)
raises :class:`ValueError` naming the reason.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
from scipy.stats import chi2

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, eq=False)
class RocCurve:
    """Receiver operating characteristic curve, as :func:`roc_points` (and
    scikit-learn's ``roc_curve``) return it.

    ``thresholds[k]`` gives ``fpr[k]`` and ``tpr[k]`` when a case is called
    positive at ``score >= thresholds[k]``; ``thresholds[0]`` is ``inf`` (no
    case called positive).
    """

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


def z_value(level: float) -> float:
    """The standard normal quantile of a two-sided ``level`` interval (1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def binary_labels(labels: ArrayLike) -> npt.NDArray[np.bool_]:
    """Labels as a boolean vector; raises ValueError unless every value is 0/1 or a bool."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError("labels must be binary (0/1 or False/True)")
    return array.astype(bool)


def finite_scores(scores: ArrayLike, count: int) -> FloatArray:
    """``scores`` as floats; raises ValueError unless ``count`` finite values."""
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (count,):
        raise ValueError(f"scores has shape {array.shape}, labels have {count} values")
    if not np.isfinite(array).all():
        raise ValueError("scores must be finite (no NaN or infinity)")
    return array


def both_classes(labels: ArrayLike, scores: ArrayLike) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    """Validated labels and scores; raises ValueError unless both classes are present."""
    truth = binary_labels(labels)
    values = finite_scores(scores, truth.size)
    positives = int(truth.sum())
    if positives in (0, truth.size):
        kind = "negative" if positives == truth.size else "positive"
        raise ValueError(
            f"ROC analysis needs positive and negative cases: no {kind} case among {truth.size}"
        )
    return truth, values


def roc_points(labels: ArrayLike, scores: ArrayLike) -> RocCurve:
    """The empirical ROC curve, every distinct score a threshold,
    highest first after ``inf`` (nothing called positive), as scikit-learn's ``roc_curve``
    with ``drop_intermediate=False``."""
    truth, values = both_classes(labels, scores)
    thresholds = np.unique(values)[::-1]
    positives, negatives = values[truth], values[~truth]
    tpr = (positives[None, :] >= thresholds[:, None]).sum(axis=1) / positives.size
    fpr = (negatives[None, :] >= thresholds[:, None]).sum(axis=1) / negatives.size
    return RocCurve(
        fpr=np.concatenate([[0.0], fpr]).astype(np.float64),
        tpr=np.concatenate([[0.0], tpr]).astype(np.float64),
        thresholds=np.concatenate([[np.inf], thresholds]).astype(np.float64),
    )


def midranks(values: FloatArray) -> FloatArray:
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
    truth, values = both_classes(labels, scores)
    positives, negatives = values[truth], values[~truth]
    m, n = positives.size, negatives.size
    combined = midranks(np.concatenate([positives, negatives]))
    v10 = (combined[:m] - midranks(positives)) / n
    v01 = 1.0 - (combined[m:] - midranks(negatives)) / m
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
    z = z_value(level)
    auc, variance = delong_variance(labels, scores)
    half_width = z * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half_width), min(1.0, auc + half_width)


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


def paired_classes(
    truth: ArrayLike, predicted: ArrayLike, n_classes: int
) -> tuple[IntArray, IntArray]:
    """Validated class indices of truth and prediction, of equal non-zero length."""
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
    true_idx, pred_idx = paired_classes(truth, predicted, n_classes)
    counts = np.bincount(true_idx * n_classes + pred_idx, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def _kappa_of(true_idx: IntArray, pred_idx: IntArray, n_classes: int) -> float:
    observed = np.bincount(
        true_idx * n_classes + pred_idx, minlength=n_classes * n_classes
    ).reshape(n_classes, n_classes)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / true_idx.size
    grades = np.arange(n_classes)
    weights = (grades[:, None] - grades[None, :]) ** 2
    disagreement = float((weights * expected).sum())
    if disagreement == 0.0:
        return math.nan
    return 1.0 - float((weights * observed).sum()) / disagreement


def quadratic_weighted_kappa(truth: ArrayLike, predicted: ArrayLike, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2 / (K - 1)^2`` (ordinal grades, e.g. ICDR).

    NaN when kappa is undefined: both truth and prediction name one and the
    same class, so chance agreement is already perfect.
    """
    true_idx, pred_idx = paired_classes(truth, predicted, n_classes)
    if np.unique(np.concatenate([true_idx, pred_idx])).size == 1:
        return math.nan
    return _kappa_of(true_idx, pred_idx, n_classes)


def kappa_bootstrap_interval(
    truth: ArrayLike,
    predicted: ArrayLike,
    n_classes: int,
    *,
    resamples: int = 1000,
    seed: int = 22,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of :func:`quadratic_weighted_kappa`: ``resamples``
    resamplings of the cases with replacement (numpy's PCG64 seeded with ``seed``);
    resamples where kappa is undefined are left out. None when every one is."""
    z_value(level)
    true_idx, pred_idx = paired_classes(truth, predicted, n_classes)
    picks = np.random.default_rng(seed).integers(0, true_idx.size, (resamples, true_idx.size))
    kappas = np.array([_kappa_of(true_idx[p], pred_idx[p], n_classes) for p in picks])
    kappas = kappas[np.isfinite(kappas)]
    if kappas.size == 0:
        return None
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(kappas, [tail, 1.0 - tail])
    return float(low), float(high)


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of the proportion ``successes / trials`` (Wilson, JASA 1927)."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"a proportion needs 0 <= successes <= trials > 0: {successes}/{trials}")
    z = z_value(level)
    share = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def garwood_interval(count: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood 1936) interval of a Poisson mean from an observed ``count``:
    ``chi2(a/2, 2k) / 2`` to ``chi2(1 - a/2, 2k + 2) / 2``; the lower bound is 0 at k = 0."""
    if count < 0:
        raise ValueError(f"a count is 0 or more, got {count}")
    alpha = 1.0 - level
    z_value(level)
    low = 0.0 if count == 0 else float(chi2.ppf(alpha / 2, 2 * count)) / 2
    high = float(chi2.ppf(1 - alpha / 2, 2 * count + 2)) / 2
    return low, high

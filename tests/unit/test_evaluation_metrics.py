"""Evaluation metrics against cases worked out by hand and against a published example."""

import math

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import roc_auc_score

from cad_node.evaluation.metrics import (
    auc_confidence_interval,
    confusion_matrix,
    delong_variance,
    dice,
    per_class_rates,
    quadratic_weighted_kappa,
    roc_auc,
    roc_curve,
    sensitivity_at_specificity,
    sensitivity_specificity,
)

# 4 positives, 4 negatives. Ranked: 0.9P 0.8P 0.7N 0.6P 0.5N 0.3P 0.2N 0.1N.
POSITIVES = [0.9, 0.8, 0.6, 0.3]
NEGATIVES = [0.7, 0.5, 0.2, 0.1]
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]
SCORES = POSITIVES + NEGATIVES


def test_auc_counts_the_correctly_ordered_pairs() -> None:
    # pairs (positive > negative): 0.9 -> 4, 0.8 -> 4, 0.6 -> 3, 0.3 -> 2: 13 of 16
    assert roc_auc(LABELS, SCORES) == pytest.approx(13 / 16)


def test_auc_counts_a_tie_as_half_a_pair() -> None:
    # 0.9 beats both negatives, 0.5 ties 0.5 (1/2) and beats 0.1: 3.5 of 4
    assert roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(3.5 / 4)


def test_roc_curve_keeps_every_threshold() -> None:
    curve = roc_curve(LABELS, SCORES)
    assert curve.thresholds[0] == math.inf
    np.testing.assert_allclose(curve.thresholds[1:], [0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(curve.tpr, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1])
    np.testing.assert_allclose(curve.fpr, [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1])


def test_confusion_matrix_and_rates_at_a_threshold() -> None:
    # score >= 0.55 is positive: 0.9 0.8 0.6 true positives, 0.7 a false positive,
    # 0.3 a false negative, 0.5 0.2 0.1 true negatives
    predicted = np.array(SCORES) >= 0.55
    matrix = confusion_matrix(LABELS, predicted.astype(int), 2)
    np.testing.assert_array_equal(matrix, [[3, 1], [1, 3]])  # rows: truth 0, 1
    assert sensitivity_specificity(LABELS, predicted) == pytest.approx((0.75, 0.75))


def test_sensitivity_specificity_is_nan_where_a_class_is_missing() -> None:
    sensitivity, specificity = sensitivity_specificity([0, 0, 0], [0, 1, 0])
    assert math.isnan(sensitivity)
    assert specificity == pytest.approx(2 / 3)


def test_sensitivity_at_specificity_on_a_worked_case() -> None:
    negatives = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    positives = [0.95, 0.85, 0.75, 0.65, 0.25]
    labels = [0] * 10 + [1] * 5
    scores = negatives + positives
    # 90% specificity allows one false positive (1.0): the threshold must stay above 0.9,
    # so 0.95 is the loosest: 1 of 5 positives
    assert sensitivity_at_specificity(labels, scores, 0.9) == pytest.approx((0.2, 0.95))
    # 80% allows 1.0 and 0.9: threshold 0.85 finds 0.95 and 0.85
    assert sensitivity_at_specificity(labels, scores, 0.8) == pytest.approx((0.4, 0.85))
    # 60% allows four: threshold 0.65 finds four of five
    assert sensitivity_at_specificity(labels, scores, 0.6) == pytest.approx((0.8, 0.65))
    # 20% allows eight (0.3 .. 1.0): threshold 0.25 finds all five. In floats 1 - 8/10 is
    # 0.19999999999999996 < 0.2, which a comparison without tolerance would wrongly reject
    assert sensitivity_at_specificity(labels, scores, 0.2) == pytest.approx((1.0, 0.25))


def test_sensitivity_at_full_specificity_can_be_zero() -> None:
    sensitivity, threshold = sensitivity_at_specificity([0, 1], [0.9, 0.1], 1.0)
    assert sensitivity == 0.0
    assert threshold == math.inf


def test_quadratic_weighted_kappa_on_a_worked_3x3_case() -> None:
    truth = [0, 0, 1, 1, 2, 2]
    predicted = [0, 1, 1, 2, 2, 0]
    # weights (i-j)^2/4. Observed weighted disagreement: (0,1) 1/4 + (1,2) 1/4 + (2,0) 1
    # = 1.5 over 6 cases = 1/4. Marginals are 2,2,2 both ways: every cell expects 2*2/6 = 2/3
    # cases; the weights sum to 4 x 1/4 + 2 x 1 = 3, so expected = 3 x (2/3) / 6 = 1/3.
    # kappa = 1 - (1/4) / (1/3) = 1/4
    assert quadratic_weighted_kappa(truth, predicted, 3) == pytest.approx(0.25)
    np.testing.assert_array_equal(
        confusion_matrix(truth, predicted, 3), [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    )


def test_kappa_extremes() -> None:
    assert quadratic_weighted_kappa([0, 1, 2, 4], [0, 1, 2, 4], 5) == pytest.approx(1.0)
    assert math.isnan(quadratic_weighted_kappa([2, 2], [2, 2], 5))  # undefined: one class


def test_per_class_rates_from_the_matrix() -> None:
    sensitivity, precision = per_class_rates([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_allclose(sensitivity[:2], [0.5, 0.5])
    assert math.isnan(sensitivity[2])  # class 2 never occurs
    np.testing.assert_allclose(precision, [1.0, 0.5, 0.0])


def test_dice() -> None:
    predicted = np.zeros((4, 4), dtype=bool)
    truth = np.zeros((4, 4), dtype=bool)
    predicted[0, :4] = True  # 4 pixels
    truth[0, 1:4] = truth[1, 1:4] = True  # 6 pixels, 3 shared
    assert dice(predicted, truth) == pytest.approx(2 * 3 / 10)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert dice(predicted, np.zeros((4, 4))) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(predicted, np.zeros((4, 5)))


def test_delong_variance_on_the_worked_case() -> None:
    # Structural components: V10 (share of negatives below each positive) = 1, 1, 3/4, 1/2;
    # V01 (share of positives above each negative) = 1/2, 3/4, 1, 1. Both have sample
    # variance (11/64)/3 = 11/192, so var(AUC) = 11/192/4 + 11/192/4 = 11/384.
    auc, variance = delong_variance(LABELS, SCORES)
    assert auc == pytest.approx(13 / 16)
    assert variance == pytest.approx(11 / 384)
    low, high = auc_confidence_interval(LABELS, SCORES)
    assert low == pytest.approx(13 / 16 - 1.959964 * math.sqrt(11 / 384), abs=1e-6)
    assert high == 1.0  # clipped


def _delong_by_pairs(
    labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """DeLong 1988 straight from the definition: psi over every (positive, negative) pair."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size


def test_vectorised_delong_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 157)
    scores = np.round(labels * 0.7 + rng.normal(size=157), 1)  # rounding makes many ties
    expected_auc, expected_variance = _delong_by_pairs(labels, scores)
    auc, variance = delong_variance(labels, scores)
    assert auc == pytest.approx(expected_auc)
    assert auc == pytest.approx(roc_auc(labels, scores))
    assert variance == pytest.approx(expected_variance)


def test_delong_interval_agrees_with_a_stratified_bootstrap() -> None:
    rng = np.random.default_rng(2024)
    labels = np.r_[np.ones(120, dtype=int), np.zeros(180, dtype=int)]
    scores = np.r_[rng.normal(1.0, 1.0, 120), rng.normal(0.0, 1.0, 180)]
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    boot = np.empty(2000)
    for b in range(boot.size):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        boot[b] = roc_auc_score(labels[idx], scores[idx])
    _, variance = delong_variance(labels, scores)
    assert math.sqrt(variance) == pytest.approx(boot.std(ddof=1), rel=0.1)
    low, high = auc_confidence_interval(labels, scores)
    assert low == pytest.approx(np.percentile(boot, 2.5), abs=0.015)
    assert high == pytest.approx(np.percentile(boot, 97.5), abs=0.015)


def test_published_example_hanley_mcneil_1982() -> None:
    # Hanley & McNeil, Radiology 1982;143:29-36, Table 1: CT ratings (1 definitely normal
    # .. 5 definitely abnormal) of 58 normal and 51 abnormal patients; published area 0.893
    # and standard error 0.032 (their approximation; DeLong's exact one is close).
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    labels = np.r_[np.zeros(58), np.ones(51)]
    scores = np.r_[normal, abnormal]
    auc, variance = delong_variance(labels, scores)
    assert round(auc, 3) == 0.893
    assert math.sqrt(variance) == pytest.approx(0.032, abs=0.002)
    low, high = auc_confidence_interval(labels, scores, level=0.95)
    assert low < auc < high
    assert high - low == pytest.approx(2 * 1.959964 * math.sqrt(variance))


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "no negative case"),
        ([0, 0], [0.1, 0.2], "no positive case"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "binary"),
        ([0, 1], [0.1, 0.2, 0.3], "shape"),
        ([0, 1], [0.1, math.nan], "finite"),
        ([], [], "non-empty"),
    ],
)
def test_roc_functions_reject_unusable_data(
    labels: list[int], scores: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        roc_auc(labels, scores)
    with pytest.raises(ValueError, match=message):
        auc_confidence_interval(labels, scores)
    with pytest.raises(ValueError, match=message):
        sensitivity_at_specificity(labels, scores)


def test_class_index_checks() -> None:
    with pytest.raises(ValueError, match=r"0\.\.2"):
        confusion_matrix([0, 1, 3], [0, 1, 2], 3)
    with pytest.raises(ValueError, match="equal length"):
        quadratic_weighted_kappa([0, 1], [0, 1, 2], 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix([0, 1.5], [0, 1], 3)
    with pytest.raises(ValueError, match="confidence level"):
        auc_confidence_interval(LABELS, SCORES, level=95)

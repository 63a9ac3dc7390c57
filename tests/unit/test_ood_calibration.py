"""The OOD score's and the calibration's arithmetic (cad_node/models/ood.py, calibration.py)."""

import math
from pathlib import Path

import numpy as np
import pytest

from cad_node.errors import WeightsIntegrityError
from cad_node.models import calibration
from cad_node.models.manifest import Manifest
from cad_node.models.ood import (
    OOD_FILE,
    MahalanobisStats,
    abstention_rate,
    ledoit_wolf_shrinkage,
    load_ood_scorer,
    ood_entry,
    percentile_threshold,
)


def _gaussian(n: int, p: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(p, p)) / math.sqrt(p)
    return rng.normal(size=(n, p)) @ mixing + rng.normal(size=p) * 3


def test_ledoit_wolf_shrinkage_matches_scikit_learn() -> None:
    covariance = pytest.importorskip("sklearn.covariance")
    x = _gaussian(60, 20, seed=1)
    centred = x - x.mean(axis=0)
    expected = covariance.ledoit_wolf_shrinkage(centred, assume_centered=True)
    assert ledoit_wolf_shrinkage(centred) == pytest.approx(expected, rel=1e-9)


def test_mahalanobis_without_shrinkage_is_the_textbook_distance() -> None:
    x = _gaussian(5000, 3, seed=2)
    stats = MahalanobisStats.fit(x)
    assert stats.shrinkage < 0.01
    point = x[0] + 1.0
    inverse = np.linalg.inv(np.cov(x, rowvar=False, bias=True))
    centred = point - x.mean(axis=0)
    expected = math.sqrt(centred @ inverse @ centred)
    assert stats.distances(point)[0] == pytest.approx(expected, rel=0.02)


def test_far_inputs_score_high_and_the_percentile_sets_the_false_abstentions() -> None:
    train, validation, fresh = (_gaussian(400, 30, seed=3)[i::3] for i in range(3))
    stats = MahalanobisStats.fit(train)
    threshold = percentile_threshold(stats.distances(validation), 95.0)
    assert abstention_rate(stats.distances(fresh), threshold) < 0.2
    assert (stats.distances(fresh + 25.0) > threshold).all()
    assert stats.distances(np.full(30, np.nan))[0] == np.inf


def test_statistics_round_trip_and_are_checked_against_the_manifest(tmp_path: Path) -> None:
    stats = MahalanobisStats.fit(_gaussian(100, 8, seed=4))
    sha = stats.save(tmp_path / OOD_FILE)
    entry = ood_entry(
        sha256=sha, threshold=3.5, percentile=99.5, stats=stats, fitted_on="t", thresholded_on="v"
    )
    manifest = Manifest(
        name="m", version="1", family="f", modality="OT", weights_file="w", sha256="0",
        operating_threshold=0.5, intended_use="test", ood=entry,
    )  # fmt: skip
    scorer = load_ood_scorer(tmp_path, manifest)
    assert scorer is not None
    assert scorer.threshold == 3.5
    probe = _gaussian(3, 8, seed=5)
    assert scorer.stats.distances(probe) == pytest.approx(stats.distances(probe), rel=1e-4)
    assert scorer.score(probe).score == pytest.approx(stats.distances(probe).max(), rel=1e-4)
    (tmp_path / OOD_FILE).write_bytes((tmp_path / OOD_FILE).read_bytes() + b"x")
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        load_ood_scorer(tmp_path, manifest)


def test_temperature_recovers_the_softening_of_over_confident_logits() -> None:
    rng = np.random.default_rng(6)
    true_logits = rng.normal(size=(4000, 4)) * 2
    labels = np.array([rng.choice(4, p=p) for p in calibration.softmax(true_logits)])
    fit = calibration.calibrate(true_logits * 3.0, labels)  # three times too confident
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.ece_after < fit.ece_before
    assert fit.ece_after < 0.03


def test_binary_temperature_and_the_threshold_in_the_calibrated_scale() -> None:
    rng = np.random.default_rng(7)
    z = rng.normal(size=3000) * 2
    labels = (rng.random(3000) < calibration.sigmoid(z)).astype(float)
    temperature = calibration.fit_temperature(z * 0.5, labels)  # under-confident
    assert temperature == pytest.approx(0.5, rel=0.1)
    t = calibration.calibrated_threshold(0.7, temperature)
    raw, calibrated = calibration.sigmoid(z * 0.5), calibration.sigmoid(z * 0.5, temperature)
    assert ((raw >= 0.7) == (calibrated >= t)).all()


def test_expected_calibration_error_and_reliability_bins() -> None:
    probabilities = np.array([0.05, 0.15, 0.95, 0.95])
    outcomes = np.array([0, 0, 1, 0])
    table = calibration.reliability(probabilities, outcomes, bins=10)
    assert [b.count for b in table] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table[9].observed_frequency == 0.5
    expected = (0.05 + 0.15 + 2 * abs(0.5 - 0.95)) / 4
    assert calibration.expected_calibration_error(probabilities, outcomes) == pytest.approx(
        expected
    )


def test_an_input_scores_by_its_rows_and_the_threshold_comes_from_validation_inputs() -> None:
    from cad_node.models.post_training import fit_ood, input_scores

    train = _gaussian(300, 6, seed=8)
    validation = _gaussian(40, 6, seed=9)
    groups = [k // 4 for k in range(40)]  # ten inputs of four rows each
    fit = fit_ood(train, validation, groups, 100.0, "mean")
    means = input_scores(fit.stats, validation, groups, "mean")
    maxima = input_scores(fit.stats, validation, groups, "max")
    assert len(means) == 10
    assert (maxima >= means).all()
    assert fit.threshold == pytest.approx(means.max())
    assert fit.validation_abstention_rate == 0.0

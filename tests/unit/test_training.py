"""The training pieces the families share."""

import math

import numpy as np
import pytest

from cad_node.models.training import balanced_sample_weights, validation_auc


def test_weighted_sampling_draws_the_asked_share_of_positives() -> None:
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=np.float32)
    weights = balanced_sample_weights(labels, 1 / 3)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[labels > 0].sum() == pytest.approx(1 / 3)
    assert len(set(weights[labels == 0])) == 1  # every negative equally likely
    with pytest.raises(ValueError, match="within"):
        balanced_sample_weights(labels, 1.0)


def test_validation_auc_is_nan_with_one_class_only() -> None:
    scores = np.array([0.2, 0.8, 0.4], dtype=np.float32)
    assert math.isnan(validation_auc(np.zeros(3, dtype=np.float32), scores))
    labels = np.array([0, 1, 0], dtype=np.float32)
    assert validation_auc(labels, scores) == pytest.approx(1.0)

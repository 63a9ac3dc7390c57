"""Pieces every family's training command shares: imbalance-aware sampling, validation AUC."""

import math

import numpy as np
import numpy.typing as npt

from cad_node.evaluation.metrics import roc_auc


def balanced_sample_weights(
    labels: npt.NDArray[np.float32], positive_fraction: float
) -> npt.NDArray[np.float64]:
    """Sampling probabilities that draw ``positive_fraction`` positives per epoch on average.

    The answer to class imbalance by weighted sampling: each positive is drawn with
    probability ``positive_fraction / positives``, each negative with the rest.
    """
    if not 0.0 < positive_fraction < 1.0:
        raise ValueError(f"positive_fraction must be within (0, 1), got {positive_fraction}")
    positives = max(1.0, float(labels.sum()))
    negatives = max(1.0, float(len(labels) - labels.sum()))
    weights = np.where(
        labels > 0.5, positive_fraction / positives, (1 - positive_fraction) / negatives
    )
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def validation_auc(labels: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]) -> float:
    """ROC AUC (ties count half); NaN when undefined (one class only in a small validation set)."""
    try:
        return roc_auc(labels > 0.5, scores)
    except ValueError:
        return math.nan

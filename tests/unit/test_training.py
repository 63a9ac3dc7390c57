"""The training pieces the families share."""

import math

import numpy as np
import pytest
import torch

from cad_node.models.training import (
    Schedule,
    Validation,
    balanced_sample_weights,
    finite_or_none,
    fit,
    validation_auc,
)


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


def _counting_net() -> torch.nn.Linear:
    return torch.nn.Linear(1, 1)


def test_fit_keeps_the_state_of_the_lowest_validation_loss_and_stops_on_patience() -> None:
    net = _counting_net()
    losses = iter([0.9, 0.5, 0.7, 0.8, 0.6, 0.1])
    epochs_run: list[int] = []

    def train_epoch(optimiser: torch.optim.Optimizer, epoch: int) -> None:
        epochs_run.append(epoch)
        with torch.no_grad():
            net.bias.fill_(float(epoch))

    def validate() -> Validation:
        loss = next(losses)
        return Validation(loss, {"val_loss": loss, "val_auc": finite_or_none(math.nan)})

    fitted = fit(net, Schedule(10, 2, 60.0, 1e-3), train_epoch, validate)
    assert epochs_run == [1, 2, 3, 4]  # epochs 3 and 4 brought no improvement on epoch 2
    assert fitted.best_epoch == 2
    assert float(fitted.state["bias"][0]) == 2.0
    assert [row["val_loss"] for row in fitted.history] == [0.9, 0.5, 0.7, 0.8]
    assert fitted.history[0]["val_auc"] is None  # JSON has no NaN


def test_fit_stops_at_the_time_budget() -> None:
    net = _counting_net()
    epochs_run: list[int] = []

    def train_epoch(optimiser: torch.optim.Optimizer, epoch: int) -> None:
        epochs_run.append(epoch)

    def validate() -> Validation:
        return Validation(1.0 / (len(epochs_run) + 1), {})

    fit(net, Schedule(10, 5, -1.0, 1e-3), train_epoch, validate)
    assert epochs_run == [1]

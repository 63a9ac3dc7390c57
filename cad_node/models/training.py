"""Pieces every family's training command shares: imbalance-aware sampling, validation AUC,
and the fit loop (epochs, validation, early stopping, a time budget)."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from cad_node.evaluation.metrics import roc_auc

EpochRecord = dict[str, float | None]
"""One epoch's validation figures, as they go into the manifest's training history."""


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


def finite_or_none(value: float) -> float | None:
    """``value``, or None where it is NaN or infinite (JSON has no NaN)."""
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Schedule:
    """How long to train: at most ``epochs``, stopping after ``patience`` epochs without a
    better validation loss, or once ``max_minutes`` have passed."""

    epochs: int
    patience: int
    max_minutes: float
    learning_rate: float


@dataclass(frozen=True, slots=True)
class Validation:
    """One epoch's validation loss (which picks the best state) and its figures for the log."""

    loss: float
    record: EpochRecord


@dataclass(frozen=True, slots=True, eq=False)
class Fitted:
    """The best state (lowest validation loss) and the per-epoch history."""

    state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[EpochRecord]


TrainEpoch = Callable[[torch.optim.Optimizer, int], None]
"""Runs one epoch of optimiser steps; gets the optimiser and the epoch number (from 1)."""

Validate = Callable[[], Validation]


def fit(net: nn.Module, schedule: Schedule, train_epoch: TrainEpoch, validate: Validate) -> Fitted:
    """AdamW with a cosine learning rate, validating after each epoch and keeping the best state."""
    optimiser = torch.optim.AdamW(net.parameters(), lr=schedule.learning_rate, weight_decay=1e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=schedule.epochs)
    best_loss, best_epoch, history = math.inf, 0, []
    best_state = _state(net)
    started = time.monotonic()
    for epoch in range(1, schedule.epochs + 1):
        train_epoch(optimiser, epoch)
        cosine.step()
        validation = validate()
        minutes = (time.monotonic() - started) / 60
        history.append({"epoch": epoch, **validation.record, "minutes": round(minutes, 2)})
        tqdm.write(f"epoch {epoch}: {_describe(validation.record)}")
        if validation.loss < best_loss:
            best_loss, best_epoch = validation.loss, epoch
            best_state = _state(net)
        elif epoch - best_epoch >= schedule.patience:
            tqdm.write(f"early stop: no improvement for {schedule.patience} epochs")
            break
        if minutes > schedule.max_minutes:
            tqdm.write(f"stop: time budget of {schedule.max_minutes} min reached")
            break
    return Fitted(best_state, best_epoch, history)


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous copy of the weights (the saved file does not depend on memory format)."""
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def _describe(record: EpochRecord) -> str:
    return ", ".join(
        f"{name} {'n/a' if value is None else f'{value:.4f}'}" for name, value in record.items()
    )

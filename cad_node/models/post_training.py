"""What every family's ``train`` does once the network is trained: the OOD score and the
calibration, fitted on the training and validation data and written beside the weights.

``cad-node train FAMILY --refit-only`` runs just this on the weights already in ``--out``
(their sha256 unchanged): see each family's ``refit``.
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cad_node.models.manifest import MANIFEST_NAME, Manifest, verified_weights
from cad_node.models.ood import (
    OOD_FILE,
    OOD_METHOD,
    MahalanobisStats,
    abstention_rate,
    aggregate_distances,
    ood_entry,
    percentile_threshold,
)

Network = TypeVar("Network", bound=nn.Module)


def trained_network(
    out_dir: Path, build: Callable[[Manifest], Network]
) -> tuple[Network, Manifest]:
    """For ``refit``: the network ``build`` makes from the manifest in ``out_dir``, with the
    folder's weights (their sha256 checked), and the manifest with its operating threshold
    back on the uncalibrated scale the post-training fit starts from."""
    manifest = Manifest.read(out_dir)
    weights = verified_weights(out_dir, manifest)
    net = build(manifest)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    uncalibrated = float(
        manifest.calibration.get("uncalibrated_operating_threshold", manifest.operating_threshold)
    )
    return net, dataclasses.replace(manifest, operating_threshold=uncalibrated)


@dataclass(frozen=True, slots=True, eq=False)
class OodFit:
    """Statistics fitted on training features, thresholded on validation inputs."""

    stats: MahalanobisStats
    threshold: float
    percentile: float
    validation_scores: npt.NDArray[np.float64]
    """One score per validation input (its rows' distances aggregated)."""
    aggregate: str = "max"

    @property
    def validation_abstention_rate(self) -> float:
        return abstention_rate(self.validation_scores, self.threshold)


def input_scores(
    stats: MahalanobisStats,
    features: npt.NDArray[np.floating[Any]],
    groups: Sequence[int],
    aggregate: str = "max",
) -> npt.NDArray[np.float64]:
    """One score per input from its rows' distances (``groups``: the input of each row), as
    the model scores an input at inference (:meth:`OodScorer.score`)."""
    distances = stats.distances(features)
    keys = np.asarray(groups)
    return np.array(
        [aggregate_distances(distances[keys == key], aggregate) for key in np.unique(keys)]
    )


def fit_ood(
    train_features: npt.NDArray[np.floating[Any]],
    validation_features: npt.NDArray[np.floating[Any]],
    validation_groups: Sequence[int],
    percentile: float,
    aggregate: str = "max",
) -> OodFit:
    """Fit on the training rows; threshold at ``percentile`` of the validation inputs' scores."""
    stats = MahalanobisStats.fit(train_features)
    scores = input_scores(stats, validation_features, validation_groups, aggregate)
    threshold = percentile_threshold(scores, percentile)
    return OodFit(stats, threshold, percentile, scores, aggregate)


def write_post_training(
    out_dir: Path,
    manifest: Manifest,
    ood: OodFit,
    ood_described: tuple[str, str],
    calibration: dict[str, Any],
    *,
    method: str = OOD_METHOD,
    **changes: Any,
) -> Manifest:
    """Save the OOD statistics in ``out_dir`` and the manifest with its ``ood`` and
    ``calibration`` entries (and ``changes``, e.g. a threshold in the calibrated scale);
    ``method`` names what the statistics were fitted on."""
    sha = ood.stats.save(out_dir / OOD_FILE)
    fitted_on, thresholded_on = ood_described
    entry = ood_entry(
        sha256=sha,
        threshold=ood.threshold,
        percentile=ood.percentile,
        stats=ood.stats,
        fitted_on=fitted_on,
        thresholded_on=thresholded_on,
        extra={
            "method": method,
            "aggregate": ood.aggregate,
            "validation_abstention_rate": round(ood.validation_abstention_rate, 4),
        },
    )
    updated = dataclasses.replace(manifest, ood=entry, calibration=calibration, **changes)
    (out_dir / MANIFEST_NAME).write_text(updated.to_json())
    return updated


__all__ = ["OodFit", "fit_ood", "input_scores", "write_post_training"]

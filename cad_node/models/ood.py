"""A learned out-of-distribution score: the Mahalanobis distance of a model's features.

After training, the family's ``train`` module runs the network on its training data
and keeps one feature vector per input (its penultimate features: what the last layer
reads).  Their mean and a shrunk covariance define the score of a new input:

    d(x) = sqrt((z - mu)^T Sigma^-1 (z - mu)),   z = x / scale

where ``scale`` is the per-feature standard deviation on the training data (so the
shrinkage target, the identity, treats every feature alike) and ``Sigma`` is the
Ledoit-Wolf shrunk covariance of the standardised features, written out here in
numpy (O. Ledoit, M. Wolf, "A well-conditioned estimator for large-dimensional
covariance matrices", J. Multivariate Anal. 88 (2004)): with more features than a
training set can estimate, the empirical covariance is singular or nearly so.

The threshold is a high percentile (e.g. 99.5) of the scores of the *validation*
inputs (not seen by the fit), so about 0.5 % of in-distribution inputs are expected
over it; the measured false abstention rate on fresh held-out data goes into the
manifest and the model card.

The statistics are stored beside the weights (:data:`OOD_FILE`, a small ``.npz``) and
hashed in the manifest's ``ood`` entry; :func:`load_ood_scorer` checks the hash before
use, as the weights are checked (:func:`~cad_node.models.manifest.verified_weights`).
"""

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cad_node.domain.abstention import OodScore
from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.models.manifest import Manifest, sha256_of

OOD_METHOD = "mahalanobis-penultimate"
AGGREGATES = ("max", "mean")
"""How an input's rows (images, views, candidate patches) make its one score."""
OOD_FILE = "ood.npz"
DEFAULT_PERCENTILE = 99.5
_MIN_SCALE = 1e-6
"""Features (nearly) constant on the training data keep unit scale: a real input that
moves them then scores high, as it should, instead of dividing by zero."""

Features = npt.NDArray[np.floating[Any]]


def ledoit_wolf_shrinkage(centred: npt.NDArray[np.float64]) -> float:
    """The Ledoit-Wolf shrinkage intensity in [0, 1] of centred samples (n, p).

    The shrunk covariance is ``(1 - s) * S + s * mu * I`` with ``S`` the empirical
    covariance (divided by n) and ``mu = trace(S) / p``.
    """
    n, p = centred.shape
    if n < 2:
        return 1.0
    squared = centred**2
    empirical = centred.T @ centred / n
    mu = float(np.trace(empirical)) / p
    # delta: squared distance of S to mu * I; beta: the estimation error of S
    delta = float(((empirical - mu * np.eye(p)) ** 2).sum()) / p
    beta = float((squared.T @ squared).sum() / n - (empirical**2).sum()) / (p * n)
    if delta <= 0.0:
        return 1.0
    return float(min(beta, delta) / delta)


@dataclass(frozen=True, slots=True, eq=False)
class MahalanobisStats:
    """Mean, scale and precision (inverse shrunk covariance) of the training features."""

    mean: npt.NDArray[np.float64]
    """(p,) mean of the standardised features."""
    scale: npt.NDArray[np.float64]
    """(p,) per-feature standard deviation on the training data."""
    precision: npt.NDArray[np.float64]
    """(p, p) inverse of the shrunk covariance of the standardised features."""
    shrinkage: float
    samples: int

    @property
    def dimensions(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, features: Features) -> "MahalanobisStats":
        """Fit on training features (n, p), n >= 2."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"fit needs (n >= 2, p) features, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("training features hold NaN or infinite values")
        std = x.std(axis=0)
        scale = np.where(std > _MIN_SCALE, std, 1.0)
        z = x / scale
        mean = z.mean(axis=0)
        centred = z - mean
        shrinkage = ledoit_wolf_shrinkage(centred)
        empirical = centred.T @ centred / len(z)
        mu = float(np.trace(empirical)) / z.shape[1]
        covariance = (1 - shrinkage) * empirical + shrinkage * mu * np.eye(z.shape[1])
        precision = np.linalg.pinv(covariance, hermitian=True)
        return cls(mean, scale, precision, shrinkage, len(x))

    def distances(self, features: Features) -> npt.NDArray[np.float64]:
        """The Mahalanobis distance of each row of ``features`` (n, p), or of one vector (p,)."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.dimensions:
            raise ValueError(f"expected {self.dimensions} features per row, got {x.shape[1]}")
        centred = x / self.scale - self.mean
        squared = np.einsum("ij,jk,ik->i", centred, self.precision, centred)
        # a non-finite feature (a broken input) is as far from the training data as it gets
        return np.where(np.isfinite(squared), np.sqrt(np.maximum(squared, 0.0)), np.inf)

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's content (float32 arrays: small, precise enough for a score)."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            method=np.array(OOD_METHOD),
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            precision=self.precision.astype(np.float32),
            shrinkage=np.array(self.shrinkage),
            samples=np.array(self.samples),
        )
        return buffer.getvalue()

    def save(self, path: Path) -> str:
        """Write the statistics to ``path``; returns the file's sha256."""
        path.write_bytes(self.to_bytes())
        return sha256_of(path)

    @classmethod
    def load(cls, path: Path) -> "MahalanobisStats":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    mean=data["mean"].astype(np.float64),
                    scale=data["scale"].astype(np.float64),
                    precision=data["precision"].astype(np.float64),
                    shrinkage=float(data["shrinkage"]),
                    samples=int(data["samples"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read the OOD statistics {path}: {exc}") from exc


def percentile_threshold(validation_scores: Features, percentile: float) -> float:
    """The ``percentile`` (0-100) of the validation scores (linear interpolation)."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be within (0, 100], got {percentile}")
    scores = np.asarray(validation_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no validation scores to threshold")
    return float(np.percentile(scores, percentile))


def abstention_rate(scores: Features, threshold: float) -> float:
    """The fraction of ``scores`` over ``threshold`` (in-distribution: false abstentions)."""
    values = np.asarray(scores, dtype=np.float64)
    return float((values > threshold).mean()) if values.size else 0.0


@dataclass(frozen=True, slots=True, eq=False)
class OodScorer:
    """A fitted score and its threshold, as a model holds it after loading."""

    stats: MahalanobisStats
    threshold: float
    method: str = OOD_METHOD
    aggregate: str = "max"
    """"max" (images, views: one unlike image makes the input unlike the training data) or
    "mean" (many candidate patches of a volume, whose maximum is noisy)."""

    def score(self, features: Features) -> OodScore:
        """The score of one input from its feature rows."""
        distance = aggregate_distances(self.stats.distances(features), self.aggregate)
        return OodScore(method=self.method, score=distance, threshold=self.threshold)


def aggregate_distances(distances: npt.NDArray[np.float64], aggregate: str) -> float:
    """One input's score from its rows' distances (:data:`AGGREGATES`)."""
    if aggregate == "mean":
        return float(distances.mean())
    if aggregate == "max":
        return float(distances.max())
    raise ValueError(f"unknown OOD aggregate {aggregate!r} (known: {', '.join(AGGREGATES)})")


def ood_entry(
    *,
    sha256: str,
    threshold: float,
    percentile: float,
    stats: MahalanobisStats,
    fitted_on: str,
    thresholded_on: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's ``ood`` entry for statistics saved as :data:`OOD_FILE`."""
    return {
        "method": OOD_METHOD,
        "file": OOD_FILE,
        "sha256": sha256,
        "threshold": round(threshold, 4),
        "percentile": percentile,
        "features": stats.dimensions,
        "shrinkage": round(stats.shrinkage, 4),
        "fitted_on": fitted_on,
        "thresholded_on": thresholded_on,
        **(extra or {}),
    }


def load_ood_scorer(folder: Path, manifest: Manifest) -> OodScorer | None:
    """The model's fitted OOD score, its file checked against the manifest's sha256;
    None when the manifest declares none.

    Raises
    ------
    WeightsIntegrityError
        The statistics file is missing or altered.
    """
    entry = manifest.ood
    if not entry:
        return None
    path = folder / str(entry.get("file", OOD_FILE))
    if not path.is_file():
        raise WeightsIntegrityError(f"model {manifest.name}: OOD statistics {path} are missing")
    actual = sha256_of(path)
    if actual != entry.get("sha256"):
        raise WeightsIntegrityError(
            f"model {manifest.name}: OOD statistics {path.name} have sha256 {actual}, "
            f"the manifest says {entry.get('sha256')}; refusing altered statistics"
        )
    return OodScorer(
        MahalanobisStats.load(path),
        float(entry["threshold"]),
        str(entry.get("method", OOD_METHOD)),
        str(entry.get("aggregate", "max")),
    )


__all__ = [
    "AGGREGATES",
    "DEFAULT_PERCENTILE",
    "OOD_FILE",
    "OOD_METHOD",
    "MahalanobisStats",
    "OodScorer",
    "abstention_rate",
    "aggregate_distances",
    "ledoit_wolf_shrinkage",
    "load_ood_scorer",
    "ood_entry",
    "percentile_threshold",
]

"""A site model's out-of-distribution score, fitted on the site's own cases.

A site model (a MONAI bundle, an nnU-Net v2 folder) is a black box to the node: it has no
penultimate layer the node could read. So its score is generic: the Mahalanobis distance of
a **descriptor of the input and of the model's output** from those of the cases the site
calibrated it on (``cad-node models calibrate NAME --data DIR``):

- the input: percentiles and spread of its pixel values, its size (images, rows, columns)
  and spacing, whether it is colour;
- the output: per label, the fraction of the pixels its findings cover and its mean class
  probability; the number of findings, their mean probability, and the classifier's mean
  top probability.

Each feature is standardised by the calibration cases' mean and spread (a spread never
below :data:`RELATIVE_SCALE_FLOOR` of the mean's size, nor :data:`ABSOLUTE_SCALE_FLOOR`, so a
feature constant over the cases does not make every later difference infinite); the
covariance is shrunk towards a scaled identity (Ledoit-Wolf's formula), since sites calibrate
on tens of cases, not thousands. The threshold is the chosen percentile of the
**leave-one-out** scores (each case scored by the statistics of the others), so it is not
set on scores the statistics were fitted to.

The statistics are saved as an ``.npz`` in the model folder, hashed in the manifest's
``files`` and ``ood.sha256`` like every other file of a site model.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cad_node.domain.abstention import OodScore
from cad_node.domain.results import ModelReport, ResultGrid
from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.models.manifest import Manifest, sha256_of

METHOD = "mahalanobis-input-output-descriptor"
"""The ``method`` of a site model's OOD score: not the network's features (a site model's
network is not the node's to open), but a descriptor of what went in and what came out."""
OOD_FILE = "ood.npz"
"""The statistics' file in the model folder."""
DEFAULT_PERCENTILE = 99.0
MIN_CASES = 4
"""Fewest calibration cases: the leave-one-out threshold needs a few left in."""

PERCENTILES = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
"""Of the input's pixel values."""
MAX_SAMPLED_PIXELS = 1 << 20
"""Pixel values read for the percentiles (an even stride through the input)."""
RELATIVE_SCALE_FLOOR = 0.05
ABSOLUTE_SCALE_FLOOR = 1e-3

_INPUT_FEATURES = (
    *(f"input_p{p:g}" for p in PERCENTILES),
    "input_std",
    "log_images",
    "log_rows",
    "log_columns",
    "log_spacing_slice_mm",
    "log_spacing_row_mm",
    "log_spacing_column_mm",
    "colour",
)
_OUTPUT_FEATURES = ("log1p_findings", "mean_finding_probability", "mean_top_class_probability")

FloatArray = npt.NDArray[np.float64]


# --- the descriptor --------------------------------------------------------------------------


def feature_names(labels: Sequence[str]) -> tuple[str, ...]:
    """The descriptor's features, for a model whose output labels are ``labels``."""
    per_label = [f"{kind}_{label}" for label in labels for kind in ("fraction", "probability")]
    return (*_INPUT_FEATURES, *per_label, *_OUTPUT_FEATURES)


def label_keys(manifest: Manifest) -> tuple[str, ...]:
    """The manifest's output labels by value: the descriptor's per-label features, in order."""
    values = sorted(manifest.labels, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0))
    return tuple(str(manifest.labels[value].get("label", value)) for value in values)


def describe(report: ModelReport, labels: Sequence[str]) -> FloatArray:
    """The descriptor of ``report``'s input grid and of its findings and classifications."""
    return np.concatenate([_input_features(report.grid), _output_features(report, labels)])


def _sampled_pixels(grid: ResultGrid) -> FloatArray:
    total = sum(int(image.pixels.size) for image in grid.images)
    step = max(1, math.ceil(total / MAX_SAMPLED_PIXELS))
    if grid.volume is not None:
        values = grid.volume.voxels.ravel()[::step]
    else:
        values = np.concatenate([image.pixels.ravel() for image in grid.images])[::step]
    finite = values[np.isfinite(values)].astype(np.float64)
    return finite if finite.size else np.zeros(1)


def _spacing(grid: ResultGrid) -> tuple[float, float, float]:
    if grid.volume is not None:
        slices, rows, columns = grid.volume.spacing_mm
        return float(slices), float(rows), float(columns)
    spacings = [image.pixel_spacing_mm for image in grid.images if image.pixel_spacing_mm]
    if not spacings:
        return 1.0, 1.0, 1.0  # none given: every such input alike
    rows, columns = np.mean(np.array(spacings, dtype=np.float64), axis=0)
    return 1.0, float(rows), float(columns)


def _input_features(grid: ResultGrid) -> FloatArray:
    pixels = _sampled_pixels(grid)
    shapes = np.array([image.shape for image in grid.images], dtype=np.float64)
    spacing = _spacing(grid)
    return np.array(
        [
            *np.percentile(pixels, PERCENTILES),
            float(np.std(pixels)),
            math.log(len(grid.images)),
            math.log(float(np.mean(shapes[:, 0]))),
            math.log(float(np.mean(shapes[:, 1]))),
            *(math.log(max(s, 1e-6)) for s in spacing),
            1.0 if any(image.is_colour for image in grid.images) else 0.0,
        ],
        dtype=np.float64,
    )


def _output_features(report: ModelReport, labels: Sequence[str]) -> FloatArray:
    pixels = float(sum(image.shape[0] * image.shape[1] for image in report.grid.images))
    covered = dict.fromkeys(labels, 0.0)
    probabilities: dict[str, list[float]] = {label: [] for label in labels}
    finding_probabilities = []
    for finding in report.findings:
        name = finding.concept.label if finding.concept is not None else finding.label
        if name in covered:
            covered[name] += sum(float(mask.mask.sum()) for mask in finding.masks)
        if finding.probability is not None:
            finding_probabilities.append(finding.probability)
    top = []
    for scores in report.classifications:
        top.append(max(scores.probabilities))
        for concept, probability in zip(scores.classes, scores.probabilities, strict=True):
            if concept.label in probabilities:
                probabilities[concept.label].append(probability)
    per_label = [
        value
        for label in labels
        for value in (covered[label] / pixels, _mean(probabilities[label]))
    ]
    return np.array(
        [
            *per_label,
            math.log1p(len(report.findings)),
            _mean(finding_probabilities),
            _mean(top),
        ],
        dtype=np.float64,
    )


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


# --- the statistics ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class DescriptorStatistics:
    """What a score needs: the standardisation, and the shrunk covariance's inverse."""

    features: tuple[str, ...]
    mean: FloatArray
    scale: FloatArray
    precision: FloatArray
    shrinkage: float

    def score(self, descriptor: FloatArray) -> float:
        """The Mahalanobis distance of ``descriptor`` from the calibration cases."""
        if descriptor.shape != self.mean.shape:
            raise ValueError(
                f"a descriptor of {descriptor.size} features, the statistics have {self.mean.size}"
            )
        z = (descriptor - self.mean) / self.scale
        return float(math.sqrt(max(0.0, float(z @ self.precision @ z))))

    def save(self, path: Path) -> None:
        """Write the statistics as an ``.npz`` (no pickled objects)."""
        with path.open("wb") as handle:
            np.savez(
                handle,
                features=np.array(self.features, dtype=np.str_),
                mean=self.mean,
                scale=self.scale,
                precision=self.precision,
                shrinkage=np.array(self.shrinkage),
            )

    @classmethod
    def load(cls, path: Path) -> "DescriptorStatistics":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    features=tuple(str(name) for name in data["features"]),
                    mean=np.asarray(data["mean"], dtype=np.float64),
                    scale=np.asarray(data["scale"], dtype=np.float64),
                    precision=np.asarray(data["precision"], dtype=np.float64),
                    shrinkage=float(data["shrinkage"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read the OOD statistics {path}: {exc}") from exc


def fit_statistics(descriptors: FloatArray, features: Sequence[str]) -> DescriptorStatistics:
    """Standardise ``descriptors`` (one row per case) and fit a shrunk covariance."""
    count, width = descriptors.shape
    if count < 2 or width != len(features):
        raise ValueError(f"{count} cases of {width} features ({len(features)} named): too few")
    mean = descriptors.mean(axis=0)
    spread = descriptors.std(axis=0, ddof=1)
    scale = np.maximum.reduce(
        [
            spread,
            RELATIVE_SCALE_FLOOR * np.abs(mean),
            np.full(width, ABSOLUTE_SCALE_FLOOR),
        ]
    )
    z = (descriptors - mean) / scale
    covariance, shrinkage = ledoit_wolf(z)
    precision = np.asarray(np.linalg.inv(covariance), dtype=np.float64)
    return DescriptorStatistics(tuple(features), mean, scale, precision, shrinkage)


def ledoit_wolf(centred: FloatArray) -> tuple[FloatArray, float]:
    """The covariance of the (centred) rows shrunk towards ``mu * I`` and the shrinkage
    (Ledoit & Wolf 2004: the weight minimising the expected Frobenius loss)."""
    count, width = centred.shape
    sample = centred.T @ centred / count
    mu = float(np.trace(sample)) / width
    target = mu * np.eye(width) if mu > 0 else np.eye(width)
    delta = float(np.sum((sample - target) ** 2))
    norms = np.sum(centred**2, axis=1)
    beta = float(np.sum(norms**2) - count * np.sum(sample**2)) / count**2
    shrinkage = 1.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    return (1.0 - shrinkage) * sample + shrinkage * target, shrinkage


def leave_one_out_scores(descriptors: FloatArray, features: Sequence[str]) -> FloatArray:
    """Each case's score under the statistics of all the others."""
    count = descriptors.shape[0]
    scores = []
    for index in range(count):
        others = np.delete(descriptors, index, axis=0)
        scores.append(fit_statistics(others, features).score(descriptors[index]))
    return np.array(scores, dtype=np.float64)


@dataclass(frozen=True, slots=True, eq=False)
class Calibration:
    """A fitted site OOD score: its statistics, threshold and what was measured."""

    statistics: DescriptorStatistics
    threshold: float
    percentile: float
    leave_one_out: FloatArray

    @property
    def false_abstention_rate(self) -> float:
        """The share of calibration cases over the threshold when each is left out."""
        return float(np.mean(self.leave_one_out > self.threshold))

    def manifest_entry(self, sha256: str) -> dict[str, Any]:
        """The manifest's ``ood``, for the statistics file of ``sha256``."""
        return {
            "method": METHOD,
            "file": OOD_FILE,
            "sha256": sha256,
            "threshold": round(self.threshold, 6),
            "percentile": self.percentile,
            "cases": int(self.leave_one_out.size),
            "false_abstention_rate": round(self.false_abstention_rate, 4),
            "false_abstention_rate_measured_on": "the calibration cases, each left out in turn",
            "shrinkage": round(self.statistics.shrinkage, 4),
            "features": list(self.statistics.features),
        }


def calibrate(descriptors: FloatArray, features: Sequence[str], percentile: float) -> Calibration:
    """Fit the statistics on every case, the threshold at ``percentile`` of the leave-one-out
    scores.

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_CASES` cases, or a percentile outside (0, 100].
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"a percentile within (0, 100], got {percentile}")
    if descriptors.shape[0] < MIN_CASES:
        raise ValueError(f"{descriptors.shape[0]} cases: calibration needs {MIN_CASES} at least")
    scores = leave_one_out_scores(descriptors, features)
    threshold = float(np.percentile(scores, percentile))
    return Calibration(fit_statistics(descriptors, features), threshold, percentile, scores)


# --- at run time ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class SiteOodScorer:
    """Scores a site model's reports against its calibration (the manifest's ``ood``)."""

    statistics: DescriptorStatistics
    threshold: float
    labels: tuple[str, ...]

    def score(self, report: ModelReport) -> OodScore:
        value = self.statistics.score(describe(report, self.labels))
        return OodScore(METHOD, value, self.threshold)


def scorer_of(folder: Path, manifest: Manifest) -> SiteOodScorer | None:
    """The scorer of a calibrated site model; None where it has no (site) OOD score.

    Raises
    ------
    WeightsIntegrityError
        The statistics file is missing or its sha256 is not the manifest's.
    ModelError
        The file cannot be read or does not fit the model's labels.
    """
    entry: Mapping[str, Any] = manifest.ood
    if not entry or entry.get("method") != METHOD:
        return None
    path = folder / str(entry.get("file", OOD_FILE))
    if not path.is_file():
        raise WeightsIntegrityError(f"model {manifest.name}: OOD statistics {path} are missing")
    if sha256_of(path) != entry.get("sha256"):
        raise WeightsIntegrityError(
            f"model {manifest.name}: {path.name} has changed since calibration "
            "(sha256 differs from the manifest's); refusing to load altered statistics"
        )
    statistics = DescriptorStatistics.load(path)
    labels = label_keys(manifest)
    if statistics.features != feature_names(labels):
        raise ModelError(
            f"model {manifest.name}: {path.name} was fitted for other outputs; "
            "run `cad-node models calibrate` again"
        )
    return SiteOodScorer(statistics, float(entry["threshold"]), labels)


__all__ = [
    "DEFAULT_PERCENTILE",
    "METHOD",
    "MIN_CASES",
    "OOD_FILE",
    "Calibration",
    "DescriptorStatistics",
    "SiteOodScorer",
    "calibrate",
    "describe",
    "feature_names",
    "fit_statistics",
    "label_keys",
    "leave_one_out_scores",
    "ledoit_wolf",
    "scorer_of",
]

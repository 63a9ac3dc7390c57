"""Trains ``fundus_dr`` on synthetic exams (DICOM + truth.json, :mod:`cad_node.synth.fundus`).

Every photograph is prepared exactly as at inference (:mod:`.preprocess`: FOV crop,
left eyes mirrored, 256 x 256, colour normalisation) and its lesion masks are
mapped onto the same grid.  One loss trains both heads:

- grading: cross-entropy with class weights ``(1 / frequency) ** 0.5`` of the
  training grades (the class imbalance is handled by the weighted loss, no
  resampling);
- lesions: balanced binary cross-entropy (per channel, the mean over lesion
  pixels x 0.4 plus the mean over background pixels x 0.6) plus a soft Dice per
  channel computed over the batch (so that empty images do not dominate); the
  microaneurysm channel counts twice in the mean over channels.

Augmentations (on the prepared tensors, per sample): vertical flip (superior <->
inferior; no horizontal flip, which would break the disc-on-the-right
orientation), rotation +-15° with scale 0.92-1.08, per-channel gain 0.9-1.1 and
offset +-0.1, Gaussian noise sd <= 0.05.  Whole exams are held out for
validation; the epoch with the lowest validation loss is kept (early stopping
with ``patience``, and a time cap ``max_minutes``).  On validation, the
referable-DR threshold on P(grade >= 2) (Youden's J) and a probability threshold
per lesion channel (best Dice) are chosen and written to the manifest.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional
from tqdm import tqdm

from cad_node import NOT_FOR_CLINICAL_USE, __version__
from cad_node.domain.image_sets import REFERABLE_ICDR_GRADE, Laterality
from cad_node.evaluation import metrics
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.models import training
from cad_node.models.calibration import calibrate, softmax
from cad_node.models.fundus.network import GRADES, FundusNet, parameter_count
from cad_node.models.fundus.preprocess import (
    INPUT_CHANNELS,
    INPUT_SIZE,
    prepare,
    prepare_mask,
)
from cad_node.models.manifest import Manifest, sha256_of
from cad_node.models.ood import DEFAULT_PERCENTILE
from cad_node.models.post_training import fit_ood, trained_network, write_post_training
from cad_node.models.training import EpochRecord, Fitted, Schedule, Validation, finite_or_none
from cad_node.synth.fundus import ALL_MASKS, load_truth, study_folders

log = logging.getLogger(__name__)

MODEL_NAME = "fundus_dr"
FAMILY = "fundus"
WEIGHTS_FILE = "model.pt"
MODEL_CARD = "docs/model-cards/fundus-dr.md"
POSITIVE_SHARE = 0.4
MICROANEURYSM_WEIGHT = 2.0
"""Weight of the lesion pixels' mean BCE against the background's (balanced BCE)."""
AUGMENTATIONS = (
    "vertical flip (p=0.5); rotation +-15 deg with scale 0.92-1.08; per-channel gain 0.9-1.1 "
    "and offset +-0.1 (normalised units); Gaussian noise sd <= 0.05"
)
OOD_METHOD = "mahalanobis-encoder-statistics"
"""The fundus OOD score: Mahalanobis distance of the encoder statistics (network.py)."""
THRESHOLD_CHOICES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Training settings."""

    epochs: int = 6
    patience: int = 3
    max_minutes: float = 11.5
    seed: int = 0
    threads: int = 1
    batch_size: int = 8
    learning_rate: float = 2e-3
    width: int = 12
    validation_fraction: float = 0.15
    lesion_loss_weight: float = 1.0
    ood_percentile: float = DEFAULT_PERCENTILE
    validation_data: Path | None = None
    """More exams the network never saw (``synth fundus`` with other seeds), added to the
    held-out validation exams for the OOD threshold and the calibration only."""


@dataclass(frozen=True, slots=True, eq=False)
class EyeSet:
    """Prepared photographs with their targets (one row per eye)."""

    images: npt.NDArray[np.float16]
    """(N, 6, 256, 256)."""
    masks: npt.NDArray[np.uint8]
    """(N, 5, 256, 256): covered fraction x 255."""
    fov: npt.NDArray[np.bool_]
    grades: npt.NDArray[np.int64]
    study: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.grades)

    def subset(self, keep: npt.NDArray[np.bool_]) -> "EyeSet":
        return EyeSet(
            self.images[keep], self.masks[keep], self.fov[keep], self.grades[keep], self.study[keep]
        )

    def joined(self, other: "EyeSet") -> "EyeSet":
        """Both sets' eyes; ``other``'s exams numbered after this set's."""
        offset = int(self.study.max()) + 1 if len(self) else 0
        return EyeSet(
            np.concatenate([self.images, other.images]),
            np.concatenate([self.masks, other.masks]),
            np.concatenate([self.fov, other.fov]),
            np.concatenate([self.grades, other.grades]),
            np.concatenate([self.study, other.study + offset]),
        )


@dataclass(slots=True)
class _Rows:
    images: list[npt.NDArray[np.float16]] = field(default_factory=list)
    masks: list[npt.NDArray[np.uint8]] = field(default_factory=list)
    fov: list[npt.NDArray[np.bool_]] = field(default_factory=list)
    grades: list[int] = field(default_factory=list)
    study: list[int] = field(default_factory=list)


def _add_study(rows: _Rows, folder: Path, index: int) -> None:
    truth = load_truth(folder)
    images = load_image_set(sorted(folder.glob("*.dcm")))
    for eye in truth.eyes:
        image = images.image(eye.sop_instance_uid)
        prepared = prepare(image.pixels, mirror=image.laterality is Laterality.LEFT)
        masks = eye.masks()
        stacked = np.stack([prepare_mask(masks[name], prepared.geometry) for name in ALL_MASKS])
        rows.images.append(prepared.image.astype(np.float16))
        rows.masks.append(np.round(np.clip(stacked, 0, 1) * 255).astype(np.uint8))
        rows.fov.append(prepared.fov)
        rows.grades.append(eye.grade)
        rows.study.append(index)


def load_eyes(folders: list[Path]) -> EyeSet:
    """Prepare every eye of every exam folder (DICOM read with the node's loader)."""
    rows = _Rows()
    for index, folder in enumerate(tqdm(folders, desc="prepare", unit="exam")):
        _add_study(rows, folder, index)
    return EyeSet(
        np.stack(rows.images),
        np.stack(rows.masks),
        np.stack(rows.fov),
        np.array(rows.grades, dtype=np.int64),
        np.array(rows.study, dtype=np.int32),
    )


# ------------------------------------------------------------------- tensors, augmentation


def batch_tensors(eyes: EyeSet, idx: npt.NDArray[np.intp]) -> tuple[torch.Tensor, ...]:
    """(images, lesion masks in [0, 1], fov (B, 1, H, W), grades) of rows ``idx``."""
    images = torch.from_numpy(eyes.images[idx].astype(np.float32))
    masks = torch.from_numpy(eyes.masks[idx].astype(np.float32) / 255.0)
    fov = torch.from_numpy(eyes.fov[idx].astype(np.float32))[:, None]
    return images, masks, fov, torch.from_numpy(eyes.grades[idx])


def augment(
    images: torch.Tensor, masks: torch.Tensor, fov: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical flip, rotation/scale, per-channel gain/offset and noise (see the module doc)."""
    n = images.shape[0]
    flip = torch.from_numpy(np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32))
    angle = torch.from_numpy(np.radians(rng.uniform(-15, 15, n)).astype(np.float32))
    scale = torch.from_numpy(rng.uniform(0.92, 1.08, n).astype(np.float32))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale
    theta[:, 0, 1] = -torch.sin(angle) / scale * flip
    theta[:, 1, 0] = torch.sin(angle) / scale
    theta[:, 1, 1] = torch.cos(angle) / scale * flip
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    joined = torch.cat([images, masks, fov], dim=1)
    warped = functional.grid_sample(joined, grid, align_corners=False)
    c = images.shape[1]
    images, masks, fov = warped[:, :c], warped[:, c:-1], warped[:, -1:]
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, (n, c, 1, 1)).astype(np.float32))
    offset = torch.from_numpy(rng.uniform(-0.1, 0.1, (n, c, 1, 1)).astype(np.float32))
    noise = torch.randn_like(images) * float(rng.uniform(0.0, 0.05))
    return (images * gain + offset + noise) * (fov > 0.5), masks


# ----------------------------------------------------------------------------- loss


def balanced_bce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per channel, the mean BCE over lesion pixels and over background pixels, averaged.

    Lesions cover well under 1 % of the pixels: a plain mean lets "no lesion
    anywhere" win for hundreds of steps; this gives both sides equal say.
    """
    bce = functional.binary_cross_entropy_with_logits(logits, masks, reduction="none")
    positive = (masks * bce).sum(dim=(0, 2, 3)) / (masks.sum(dim=(0, 2, 3)) + 1.0)
    negative = ((1 - masks) * bce).sum(dim=(0, 2, 3)) / ((1 - masks).sum(dim=(0, 2, 3)) + 1.0)
    per_channel = POSITIVE_SHARE * positive + (1 - POSITIVE_SHARE) * negative
    return _channel_mean(per_channel)


def _channel_mean(per_channel: torch.Tensor) -> torch.Tensor:
    """Mean over lesion channels, microaneurysms counted twice (the smallest, hardest)."""
    weights = torch.ones_like(per_channel)
    weights[0] = MICROANEURYSM_WEIGHT
    return (per_channel * weights).sum() / weights.sum()


def lesion_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Balanced BCE + soft Dice per channel over the whole batch."""
    bce = balanced_bce(logits, masks)
    probs = torch.sigmoid(logits)
    inter = (probs * masks).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1) / (probs.sum(dim=(0, 2, 3)) + masks.sum(dim=(0, 2, 3)) + 1)
    return bce + _channel_mean(dice)


def grade_weights(grades: npt.NDArray[np.int64]) -> torch.Tensor:
    """Cross-entropy class weights (1 / frequency) ** 0.5, mean 1 over the classes present."""
    counts = np.bincount(grades, minlength=GRADES).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
    weights = weights / weights[counts > 0].mean()
    return torch.from_numpy(weights.astype(np.float32))


def total_loss(
    outputs: tuple[torch.Tensor, torch.Tensor],
    masks: torch.Tensor,
    grades: torch.Tensor,
    class_weights: torch.Tensor,
    lesion_weight: float,
) -> torch.Tensor:
    grade_logits, lesion_logits = outputs
    ce = functional.cross_entropy(grade_logits, grades, weight=class_weights)
    return ce + lesion_weight * lesion_loss(lesion_logits, masks)


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True, eq=False)
class Predictions:
    """Validation outputs: grade probabilities, lesion probabilities, mean loss."""

    grade_probs: npt.NDArray[np.float32]
    lesion_probs: npt.NDArray[np.float16]
    loss: float


def predict(
    net: FundusNet, eyes: EyeSet, class_weights: torch.Tensor, lesion_weight: float
) -> Predictions:
    net.eval()
    grade_probs, lesion_probs, total = [], [], 0.0
    with torch.inference_mode():
        for start in range(0, len(eyes), 16):
            idx = np.arange(start, min(start + 16, len(eyes)))
            images, masks, _, grades = batch_tensors(eyes, idx)
            outputs = net(images)
            loss = total_loss(outputs, masks, grades, class_weights, lesion_weight)
            total += float(loss) * len(idx)
            grade_probs.append(torch.softmax(outputs[0], dim=1).numpy())
            lesion_probs.append(torch.sigmoid(outputs[1]).numpy().astype(np.float16))
    return Predictions(
        np.concatenate(grade_probs), np.concatenate(lesion_probs), total / max(1, len(eyes))
    )


def referable_scores(grade_probs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """P(grade >= 2): the referable-DR score."""
    return np.asarray(grade_probs[:, REFERABLE_ICDR_GRADE:].sum(axis=1), dtype=np.float32)


def referable_auc(truth: npt.NDArray[np.int64], grade_probs: npt.NDArray[np.float32]) -> float:
    """AUC of P(grade >= 2) for referable DR; NaN when validation holds one class only."""
    labels = truth >= REFERABLE_ICDR_GRADE
    if labels.all() or not labels.any():
        return math.nan
    return metrics.roc_auc(labels, referable_scores(grade_probs))


def youden_threshold(truth: npt.NDArray[np.int64], grade_probs: npt.NDArray[np.float32]) -> float:
    """The P(grade >= 2) threshold with the highest sensitivity + specificity - 1."""
    scores = referable_scores(grade_probs).astype(np.float64)
    labels = truth >= REFERABLE_ICDR_GRADE
    if labels.all() or not labels.any():
        return 0.5
    values = np.unique(scores)
    candidates = np.concatenate([[0.0], (values[1:] + values[:-1]) / 2, [1.0]])
    youden = np.array(
        [(scores[labels] >= t).mean() + (scores[~labels] < t).mean() - 1 for t in candidates]
    )
    # the middle of the best thresholds: with separable validation scores any threshold
    # in the gap is "best", and its edges would sit on a validation eye's score
    return float(np.median(candidates[youden >= youden.max() - 1e-9]))


def channel_dice(
    probs: npt.NDArray[np.float16], masks: npt.NDArray[np.uint8], threshold: float
) -> npt.NDArray[np.float64]:
    """Mean image-level Dice per channel over the images where that channel is present."""
    out = np.full(probs.shape[1], np.nan)
    for c in range(probs.shape[1]):
        scores = []
        for predicted, truth in zip(probs[:, c] >= threshold, masks[:, c] >= 128, strict=True):
            if truth.any():
                inter = float((predicted & truth).sum())
                scores.append(2 * inter / (float(predicted.sum()) + float(truth.sum())))
        if scores:
            out[c] = float(np.mean(scores))
    return out


def lesion_thresholds(predictions: Predictions, eyes: EyeSet) -> list[float]:
    """Per channel, the probability threshold with the best validation Dice."""
    table = np.stack(
        [channel_dice(predictions.lesion_probs, eyes.masks, t) for t in THRESHOLD_CHOICES]
    )
    return [
        THRESHOLD_CHOICES[int(np.nanargmax(col))] if not np.isnan(col).all() else 0.5
        for col in table.T
    ]


# ----------------------------------------------------------------------------- loop


def _train_epoch(
    net: FundusNet,
    optimiser: torch.optim.Optimizer,
    train_set: EyeSet,
    *,
    config: TrainConfig,
    class_weights: torch.Tensor,
    rng: np.random.Generator,
    epoch: int,
) -> None:
    net.train()
    order = rng.permutation(len(train_set))
    bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch}", unit="batch")
    for start in bar:
        batch = order[start : start + config.batch_size]
        if len(batch) < 2:
            continue  # batch norm needs two samples
        images, masks, fov, grades = batch_tensors(train_set, batch)
        images, masks = augment(images, masks, fov, rng)
        images = images.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions
        loss = total_loss(net(images), masks, grades, class_weights, config.lesion_loss_weight)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
        optimiser.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def _record(predictions: Predictions, validation: EyeSet) -> EpochRecord:
    predicted = predictions.grade_probs.argmax(axis=1)
    dice = channel_dice(predictions.lesion_probs, validation.masks, 0.5)[:4]
    kappa = metrics.quadratic_weighted_kappa(validation.grades, predicted, GRADES)
    mean_dice = float(np.nanmean(dice)) if not np.isnan(dice).all() else math.nan
    return {
        "val_loss": round(predictions.loss, 5),
        "val_kappa": _rounded(kappa),
        "val_referable_auc": _rounded(referable_auc(validation.grades, predictions.grade_probs)),
        "val_lesion_dice": _rounded(mean_dice),
    }


def _rounded(value: float) -> float | None:
    return finite_or_none(round(value, 4))


def fit(net: FundusNet, train_set: EyeSet, validation: EyeSet, config: TrainConfig) -> Fitted:
    """Epochs with validation, early stopping on the validation loss and a time budget."""
    rng = np.random.default_rng(config.seed)
    class_weights = grade_weights(train_set.grades)
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload, unused-ignore]  # torch<2.14 stubs omit memory_format

    def train_epoch(optimiser: torch.optim.Optimizer, epoch: int) -> None:
        _train_epoch(
            net,
            optimiser,
            train_set,
            config=config,
            class_weights=class_weights,
            rng=rng,
            epoch=epoch,
        )

    def validate() -> Validation:
        predictions = predict(net, validation, class_weights, config.lesion_loss_weight)
        return Validation(predictions.loss, _record(predictions, validation))

    schedule = Schedule(config.epochs, config.patience, config.max_minutes, config.learning_rate)
    return training.fit(net, schedule, train_epoch, validate)


def split_by_study(eyes: EyeSet, config: TrainConfig) -> tuple[EyeSet, EyeSet]:
    """Hold out whole exams (both eyes) for validation."""
    studies = np.unique(eyes.study)
    rng = np.random.default_rng([config.seed, 1])
    count = max(1, round(len(studies) * config.validation_fraction))
    held_out = rng.permutation(studies)[:count]
    is_val = np.isin(eyes.study, held_out)
    return eyes.subset(~is_val), eyes.subset(is_val)


@dataclass(frozen=True, slots=True)
class _Chosen:
    referable_threshold: float
    lesion_thresholds: list[float]


def _manifest(
    weights_path: Path,
    chosen: _Chosen,
    *,
    config: TrainConfig,
    fitted: Fitted,
    counts: tuple[int, int, int],
    train_grades: npt.NDArray[np.int64],
) -> Manifest:
    studies, train_eyes, val_eyes = counts
    return Manifest(
        name=MODEL_NAME,
        version=__version__,
        family=FAMILY,
        modality="OP",
        weights_file=weights_path.name,
        sha256=sha256_of(weights_path),
        operating_threshold=round(chosen.referable_threshold, 4),
        intended_use=(
            "Research and demonstration: ICDR diabetic-retinopathy grade per eye and "
            "segmentation of microaneurysms, haemorrhages, hard and soft exudates on colour "
            "fundus photographs, trained on synthetic images only. " + NOT_FOR_CLINICAL_USE
        ),
        input_spec={
            "modality": ["OP", "XC", "OT"],
            "photometric_interpretation": "RGB (8-bit colour fundus photograph)",
            "field_of_view": "macula-centred, about 45 degrees",
            "input_size": INPUT_SIZE,
            "input_channels": INPUT_CHANNELS,
            "colour_normalisation": "per-channel standardisation inside the FOV + "
            "Graham local-average subtraction (sigma = input/30)",
            "lesion_channels": list(ALL_MASKS),
            "lesion_thresholds": chosen.lesion_thresholds,
            "grade_rule": "argmax of the softmax; score = expected grade",
            "operating_threshold_on": "P(grade >= 2) (referable DR)",
        },
        architecture={
            "network": "FundusNet (5-level 2D U-Net, 5 lesion channels + ICDR grading head)",
            "width": config.width,
            "in_channels": INPUT_CHANNELS,
            "parameters": sum(
                v.numel()
                for k, v in fitted.state.items()
                if v.dtype.is_floating_point and "running" not in k
            ),
        },
        training={
            "exams": studies,
            "train_eyes": train_eyes,
            "validation_eyes": val_eyes,
            "train_grade_counts": np.bincount(train_grades, minlength=GRADES).tolist(),
            "epochs_run": len(fitted.history),
            "best_epoch": fitted.best_epoch,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "seed": config.seed,
            "imbalance": "weighted loss: grading cross-entropy with class weights "
            "(1/frequency)^0.5; lesions: balanced BCE (lesion-pixel mean x 0.4 + background-"
            "pixel mean x 0.6) + batch soft Dice, microaneurysm channel weighted x 2",
            "augmentations": AUGMENTATIONS,
            "history": fitted.history,
        },
        model_card=MODEL_CARD,
    )


# ----------------------------------------------------------------------------- post-training


@dataclass(frozen=True, slots=True, eq=False)
class HeadOutputs:
    """Grade logits and the OOD features (encoder statistics), one row per eye."""

    grade_logits: npt.NDArray[np.float64]
    features: npt.NDArray[np.float32]


def head_outputs(net: FundusNet, eyes: EyeSet) -> HeadOutputs:
    net.eval()
    logits, features = [], []
    with torch.inference_mode():
        for start in range(0, len(eyes), 16):
            idx = np.arange(start, min(start + 16, len(eyes)))
            grade_logits, _, ood_features = net.forward_features(batch_tensors(eyes, idx)[0])
            logits.append(grade_logits.double().numpy())
            features.append(ood_features.float().numpy())
    return HeadOutputs(np.concatenate(logits), np.concatenate(features))


def post_training(
    net: FundusNet,
    train_set: EyeSet,
    validation: EyeSet,
    manifest: Manifest,
    *,
    out_dir: Path,
    percentile: float,
    more: EyeSet | None = None,
) -> Manifest:
    """Fit the OOD score (training eyes; threshold on validation exams) and the grade
    temperature (validation eyes, with ``more``: exams never trained on, from
    ``validation_data``); the referable threshold moves to the calibrated scale (Youden's J
    on the calibrated P(grade >= 2) of the split's validation eyes, the rule ``train`` uses
    for its uncalibrated threshold, so the operating point does not move with ``more``)."""
    trained, split = head_outputs(net, train_set), head_outputs(net, validation)
    everything = validation if more is None else validation.joined(more)
    held = split if more is None else head_outputs(net, everything)
    ood = fit_ood(trained.features, held.features, everything.study.tolist(), percentile)
    fit = calibrate(held.grade_logits, everything.grades)
    calibrated = softmax(split.grade_logits, fit.temperature).astype(np.float32)
    threshold = youden_threshold(validation.grades, calibrated)
    calibration = fit.entry(
        _validation_described(validation, more, "eyes"),
        "ICDR grade softmax (ECE of the top-label confidence)",
        {"uncalibrated_operating_threshold": manifest.operating_threshold},
    )
    return write_post_training(
        out_dir,
        manifest,
        ood,
        (
            f"{len(train_set)} training eyes: each channel's mean and standard deviation on "
            f"the four encoder levels ({ood.stats.dimensions} features)",
            f"{_validation_described(validation, more, 'exams')} (score of an exam: its "
            "highest-scoring photograph)",
        ),
        calibration,
        operating_threshold=round(threshold, 4),
        method=OOD_METHOD,
    )


def _validation_described(validation: EyeSet, more: EyeSet | None, unit: str) -> str:
    def count(eyes: EyeSet) -> int:
        return len(eyes) if unit == "eyes" else len(np.unique(eyes.study))

    if more is None:
        return f"{count(validation)} validation {unit}"
    return (
        f"{count(validation) + count(more)} validation {unit} ({count(validation)} held out "
        f"of the training data + {count(more)} from --validation-data)"
    )


def more_validation(config: TrainConfig) -> EyeSet | None:
    """The eyes of ``config.validation_data`` (exams never trained on), if given."""
    if config.validation_data is None:
        return None
    folders = study_folders(config.validation_data)
    if not folders:
        raise ValueError(f"{config.validation_data} holds no fundus exams with truth")
    return load_eyes(folders)


def refit(data_dir: Path, out_dir: Path, config: TrainConfig) -> Manifest:
    """The post-training fit alone, on the weights already in ``out_dir`` (unchanged):
    the same exams and split as ``train`` (same data and seed)."""
    torch.set_num_threads(config.threads)
    net, manifest = trained_network(
        out_dir,
        lambda m: FundusNet(
            in_channels=int(m.architecture.get("in_channels", INPUT_CHANNELS)),
            width=int(m.architecture.get("width", config.width)),
        ),
    )
    train_set, validation = split_by_study(load_eyes(study_folders(data_dir)), config)
    return post_training(
        net,
        train_set,
        validation,
        manifest,
        out_dir=out_dir,
        percentile=config.ood_percentile,
        more=more_validation(config),
    )


def train(data_dir: Path, out_dir: Path, config: TrainConfig) -> Manifest:
    """Train on every exam under ``data_dir``; write model.pt and manifest.json to ``out_dir``."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    folders = study_folders(data_dir)
    if len(folders) < 2:
        raise ValueError(f"{data_dir} holds {len(folders)} fundus exams with truth; need >= 2")
    train_set, validation = split_by_study(load_eyes(folders), config)
    log.info("eyes: %d train, %d validation", len(train_set), len(validation))
    net = FundusNet(in_channels=INPUT_CHANNELS, width=config.width)
    log.info("FundusNet width %d: %d parameters", config.width, parameter_count(net))
    fitted = fit(net, train_set, validation, config)
    net.load_state_dict(fitted.state)
    class_weights = grade_weights(train_set.grades)
    predictions = predict(net, validation, class_weights, config.lesion_loss_weight)
    chosen = _Chosen(
        youden_threshold(validation.grades, predictions.grade_probs),
        lesion_thresholds(predictions, validation),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_FILE
    torch.save(fitted.state, weights_path)
    manifest = _manifest(
        weights_path,
        chosen,
        config=config,
        fitted=fitted,
        counts=(len(folders), len(train_set), len(validation)),
        train_grades=train_set.grades,
    )
    (out_dir / "manifest.json").write_text(manifest.to_json())
    return post_training(
        net,
        train_set,
        validation,
        manifest,
        out_dir=out_dir,
        percentile=config.ood_percentile,
        more=more_validation(config),
    )


__all__ = ["FAMILY", "MODEL_NAME", "TrainConfig", "refit", "train"]

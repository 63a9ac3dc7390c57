"""Trains ``mammo_screening`` on synthetic studies (four DICOM views + truth.json each).

Every view is standardised as at inference (:mod:`cad_node.models.mammo.preprocess`)
and its lesion masks mapped onto the same grid: the segmentation targets (mass,
calcification cluster).  A view's suspicion label is its breast's label
(malignant: it holds a lesion, seen in both views).

- **Class imbalance**: weighted sampling, half of each epoch's views come from
  malignant breasts (about 30% of the breasts are).
- **Augmentations**: random affine (scale 0.9-1.1, shift up to 6% of the input,
  rotation up to 5 degrees), up-down flip of CC views (MLO views keep the
  pectoral muscle at the top), intensity scale/shift jitter, Gaussian noise.
- **Loss**: BCE (suspicion) + BCE (masks) + soft Dice (masks of the views that
  hold the lesion type).
- Validation after every epoch on whole held-out studies: loss and per-breast
  AUC; early stopping on the validation loss; a time budget.  The operating
  threshold is the per-breast score that gives 90% specificity on validation;
  the lesion threshold the lowest mark probability with at most 0.25 false
  marks per validation image (:func:`~cad_node.models.mammo.scoring.lesion_threshold`).
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from cad_node import NOT_FOR_CLINICAL_USE, __version__
from cad_node.domain.findings import FindingType
from cad_node.domain.image_sets import Laterality
from cad_node.evaluation.metrics import sensitivity_at_specificity
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.models import training
from cad_node.models.calibration import calibrate, calibrated_threshold, logit
from cad_node.models.mammo.network import SEGMENTATION_CLASSES, MammoNet
from cad_node.models.mammo.preprocess import INPUT_SHAPE, standardise
from cad_node.models.mammo.scoring import (
    BREAST_COMBINATION,
    FAMILY,
    MODEL_CARD,
    MODEL_NAME,
    SEGMENTATION_THRESHOLD,
    TARGET_FP_PER_IMAGE,
    breast_scores,
    lesion_threshold,
    regions,
)
from cad_node.models.manifest import Manifest, sha256_of
from cad_node.models.ood import DEFAULT_PERCENTILE
from cad_node.models.post_training import fit_ood, trained_network, write_post_training
from cad_node.models.training import (
    Fitted,
    Schedule,
    Validation,
    balanced_sample_weights,
    finite_or_none,
    validation_auc,
)
from cad_node.synth.mammo import MammoTruth, load_truth, study_folders

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.pt"
POSITIVE_FRACTION = 0.5
TARGET_SPECIFICITY = 0.9
_CHANNEL: dict[FindingType, int] = {FindingType.MASS: 0, FindingType.CALCIFICATION_CLUSTER: 1}
AUGMENTATIONS = (
    "random affine (scale 0.9-1.1, shift <= 6%, rotation <= 5 degrees), up-down flip of CC "
    "views, intensity x0.9-1.1 and shift +-0.1 (normalised), Gaussian noise sd <= 0.05"
)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Training settings."""

    epochs: int = 18
    samples_per_epoch: int = 512
    batch_size: int = 8
    learning_rate: float = 2e-3
    patience: int = 4
    validation_fraction: float = 0.15
    max_minutes: float = 12.0
    width: int = 12
    seed: int = 0
    threads: int = 1
    ood_percentile: float = DEFAULT_PERCENTILE


@dataclass(frozen=True, slots=True, eq=False)
class ViewSet:
    """Standardised views with their targets and where they come from."""

    images: npt.NDArray[np.float16]
    masks: npt.NDArray[np.bool_]
    """(n, 2, H, W): mass, calcification cluster."""
    labels: npt.NDArray[np.float32]
    study: npt.NDArray[np.int32]
    breast: npt.NDArray[np.int32]
    """Study index x 2 + (0 left, 1 right): the views of one breast share it."""
    is_cc: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: npt.NDArray[np.bool_]) -> "ViewSet":
        return ViewSet(
            images=self.images[keep],
            masks=self.masks[keep],
            labels=self.labels[keep],
            study=self.study[keep],
            breast=self.breast[keep],
            is_cc=self.is_cc[keep],
        )


def _targets(
    truth: MammoTruth, sop_instance_uid: str, source_shape: tuple[int, int]
) -> list[npt.NDArray[np.bool_]]:
    """Per segmentation channel, the union of the view's lesion masks (source grid)."""
    channels = [np.zeros(source_shape, dtype=np.bool_) for _ in SEGMENTATION_CLASSES]
    for lesion, mask in truth.lesion_masks(truth.view(sop_instance_uid)):
        channels[_CHANNEL[lesion.finding_type]] |= mask
    return channels


def load_views(folders: list[Path]) -> ViewSet:
    """Standardise every view of every study and map its lesion masks onto the input grid."""
    images, masks, labels, studies, breasts, is_cc = [], [], [], [], [], []
    for index, folder in enumerate(tqdm(folders, desc="views", unit="study")):
        truth = load_truth(folder)
        for image in load_image_set(sorted(folder.glob("*.dcm"))).images:
            view = standardise(image)
            truth_view = truth.view(image.sop_instance_uid)
            targets = _targets(truth, image.sop_instance_uid, image.shape)
            on_input = [view.geometry.to_input(t.astype(np.float32)) > 0.5 for t in targets]
            images.append(view.pixels.astype(np.float16))
            masks.append(np.stack(on_input))
            labels.append(float(truth.breast(truth_view.laterality).malignant))
            studies.append(index)
            breasts.append(index * 2 + (truth_view.laterality is Laterality.RIGHT))
            is_cc.append(truth_view.view_position == "CC")
    return ViewSet(
        images=np.stack(images),
        masks=np.stack(masks),
        labels=np.array(labels, dtype=np.float32),
        study=np.array(studies, dtype=np.int32),
        breast=np.array(breasts, dtype=np.int32),
        is_cc=np.array(is_cc, dtype=np.bool_),
    )


def _affine(n: int, rng: np.random.Generator) -> torch.Tensor:
    scale = rng.uniform(0.9, 1.1, n)
    angle = np.deg2rad(rng.uniform(-5.0, 5.0, n))
    shift = rng.uniform(-0.12, 0.12, (n, 2))  # of the half-extent: <= 6% of the input
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = scale * np.cos(angle)
    theta[:, 0, 1] = -scale * np.sin(angle)
    theta[:, 1, 0] = scale * np.sin(angle)
    theta[:, 1, 1] = scale * np.cos(angle)
    theta[:, :, 2] = shift
    return torch.from_numpy(theta)


def augment(
    images: torch.Tensor, masks: torch.Tensor, is_cc: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine, up-down flip of CC views, intensity jitter and noise."""
    n = images.shape[0]
    grid = nn.functional.affine_grid(_affine(n, rng), list(images.shape), align_corners=False)
    images = nn.functional.grid_sample(images, grid, padding_mode="border", align_corners=False)
    masks = nn.functional.grid_sample(masks, grid, align_corners=False).gt(0.5).float()
    flip = is_cc & torch.from_numpy(rng.random(n) < 0.5)
    images = torch.where(flip[:, None, None, None], images.flip(2), images)
    masks = torch.where(flip[:, None, None, None], masks.flip(2), masks)
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, (n, 1, 1, 1)).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-0.1, 0.1, (n, 1, 1, 1)).astype(np.float32))
    noise = torch.randn_like(images) * float(rng.uniform(0.0, 0.05))
    return images * scale + shift + noise, masks


def loss_terms(
    logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """BCE (suspicion) + BCE (masks) + soft Dice over the channels that hold a lesion."""
    bce = nn.functional.binary_cross_entropy_with_logits
    loss = bce(logits, labels) + bce(mask_logits, masks)
    present = masks.sum(dim=(2, 3)) > 0
    if present.any():
        prob = torch.sigmoid(mask_logits)
        inter = (prob * masks).sum(dim=(2, 3))
        total = prob.sum(dim=(2, 3)) + masks.sum(dim=(2, 3))
        dice = 1 - (2 * inter + 1) / (total + 1)
        loss = loss + dice[present].mean()
    return loss


def _tensors(views: ViewSet, idx: npt.NDArray[np.intp]) -> tuple[torch.Tensor, ...]:
    images = torch.from_numpy(views.images[idx].astype(np.float32))[:, None]
    masks = torch.from_numpy(views.masks[idx].astype(np.float32))
    labels = torch.from_numpy(views.labels[idx])
    is_cc = torch.from_numpy(views.is_cc[idx])
    return images, masks, labels, is_cc


def predict_views(net: MammoNet, views: ViewSet) -> tuple[npt.NDArray[np.float32], float]:
    """Suspicion probability of every view, and the mean loss."""
    net.eval()
    probs, total = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(views), 16):
            idx = np.arange(start, min(start + 16, len(views)))
            images, masks, labels, _ = _tensors(views, idx)
            logits, mask_logits = net(images)
            total += float(loss_terms(logits, mask_logits, labels, masks)) * len(idx)
            probs.append(torch.sigmoid(logits).numpy())
    return np.concatenate(probs).astype(np.float32), total / max(1, len(views))


def breast_level(
    views: ViewSet, probs: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-breast labels and scores (the views of each breast combined)."""
    ids = np.unique(views.breast)
    labels = np.array([views.labels[views.breast == b].max() for b in ids], dtype=np.float32)
    scores = np.array(
        [breast_scores(probs[views.breast == b].tolist()) for b in ids], dtype=np.float32
    )
    return labels, scores


def validation_marks(net: MammoNet, views: ViewSet) -> tuple[list[float], list[float]]:
    """Probabilities of the lesion regions that hit a target mask, and of those that do not."""
    net.eval()
    hits: list[float] = []
    false: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(views), 16):
            idx = np.arange(start, min(start + 16, len(views)))
            images, masks, _, _ = _tensors(views, idx)
            logits, mask_logits = net(images)
            view_probs = torch.sigmoid(logits).numpy()
            seg = torch.sigmoid(mask_logits).numpy()
            for k in range(len(idx)):
                target = masks[k].numpy().max(axis=0) > 0.5
                for region in regions(seg[k], float(view_probs[k])):
                    r, c = region.offset
                    dr, dc = region.mask.shape
                    overlap = (target[r : r + dr, c : c + dc] & region.mask).any()
                    (hits if overlap else false).append(region.probability)
    return hits, false


def operating_threshold(labels: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]) -> float:
    """The per-breast score giving :data:`TARGET_SPECIFICITY` on validation."""
    try:
        threshold = sensitivity_at_specificity(labels > 0.5, scores, TARGET_SPECIFICITY).threshold
    except ValueError:
        return 0.5
    return float(np.clip(threshold, 0.05, 0.95)) if math.isfinite(threshold) else 0.95


@dataclass(frozen=True, slots=True, eq=False)
class Split:
    """Training and validation views, split by study."""

    train: ViewSet
    validation: ViewSet
    validation_studies: int


def split_by_study(
    views: ViewSet, studies: int, config: TrainConfig, rng: np.random.Generator
) -> Split:
    """Hold out whole studies for validation."""
    held_out = rng.permutation(studies)[: max(1, round(studies * config.validation_fraction))]
    is_val = np.isin(views.study, held_out)
    return Split(views.subset(~is_val), views.subset(is_val), len(held_out))


def _train_epoch(
    net: MammoNet,
    optimiser: torch.optim.Optimizer,
    train_set: ViewSet,
    *,
    config: TrainConfig,
    rng: np.random.Generator,
    epoch: int,
) -> None:
    net.train()
    order = rng.choice(
        len(train_set),
        size=config.samples_per_epoch,
        p=balanced_sample_weights(train_set.labels, POSITIVE_FRACTION),
    )
    bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch}", unit="batch")
    for start in bar:
        images, masks, labels, is_cc = _tensors(train_set, order[start : start + config.batch_size])
        images, masks = augment(images, masks, is_cc, rng)
        logits, mask_logits = net(images)
        loss = loss_terms(logits, mask_logits, labels, masks)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
        optimiser.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def fit(net: MammoNet, split: Split, config: TrainConfig, rng: np.random.Generator) -> Fitted:
    """Epochs with validation, early stopping on the validation loss and a time budget."""

    def train_epoch(optimiser: torch.optim.Optimizer, epoch: int) -> None:
        _train_epoch(net, optimiser, split.train, config=config, rng=rng, epoch=epoch)

    def validate() -> Validation:
        probs, loss = predict_views(net, split.validation)
        auc = validation_auc(*breast_level(split.validation, probs))
        record = {"val_loss": round(loss, 5), "val_breast_auc": finite_or_none(round(auc, 5))}
        return Validation(loss, record)

    schedule = Schedule(config.epochs, config.patience, config.max_minutes, config.learning_rate)
    return training.fit(net, schedule, train_epoch, validate)


def _manifest(
    weights_path: Path,
    threshold: float,
    marks: float,
    *,
    config: TrainConfig,
    split: Split,
    fitted: Fitted,
    studies: int,
) -> Manifest:
    return Manifest(
        name=MODEL_NAME,
        version=__version__,
        family=FAMILY,
        modality="MG",
        weights_file=weights_path.name,
        sha256=sha256_of(weights_path),
        operating_threshold=round(threshold, 4),
        intended_use=(
            "Research and demonstration: per-breast suspicion and marks of masses and "
            "calcification clusters on four-view screening mammograms, trained on synthetic "
            "mammograms only. " + NOT_FOR_CLINICAL_USE
        ),
        input_spec={
            "modality": "MG",
            "sop_classes": ["Digital Mammography X-Ray Image Storage - For Presentation"],
            "views": ["L-CC", "L-MLO", "R-CC", "R-MLO"],
            "photometric_interpretation": "MONOCHROME2 (MONOCHROME1 is inverted on reading)",
            "pixel_spacing_mm": [0.2, 0.4],
            "network_input": list(INPUT_SHAPE),
            "lesion_threshold": round(marks, 4),
            "segmentation_threshold": SEGMENTATION_THRESHOLD,
            "breast_score": BREAST_COMBINATION,
        },
        architecture={
            "network": "MammoNet (stride-2 stem + 4-level 2D U-Net; segmentation head: mass + "
            "calcification cluster; suspicion head: a logit per bottleneck cell, "
            "log-sum-exp pooled)",
            "width": config.width,
            "parameters": sum(
                v.numel()
                for k, v in fitted.state.items()
                if v.dtype.is_floating_point and "running" not in k
            ),
        },
        training={
            "studies": studies,
            "validation_studies": split.validation_studies,
            "train_views": len(split.train),
            "train_malignant_views": int(split.train.labels.sum()),
            "samples_per_epoch": config.samples_per_epoch,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "epochs_run": len(fitted.history),
            "best_epoch": fitted.best_epoch,
            "imbalance": f"weighted sampling: {POSITIVE_FRACTION:.2f} of each epoch's views "
            "come from malignant breasts",
            "augmentations": AUGMENTATIONS,
            "operating_threshold": f"per-breast score at {TARGET_SPECIFICITY:.0%} specificity "
            "on the validation studies",
            "lesion_threshold": f"lowest mark probability with <= {TARGET_FP_PER_IMAGE:g} false "
            "marks per image on the validation studies",
            "seed": config.seed,
            "history": fitted.history,
        },
        model_card=MODEL_CARD,
    )


def view_features(net: MammoNet, views: ViewSet) -> npt.NDArray[np.float32]:
    """The pooled bottleneck of every view (what the OOD score reads)."""
    net.eval()
    features = []
    with torch.inference_mode():
        for start in range(0, len(views), 16):
            idx = np.arange(start, min(start + 16, len(views)))
            features.append(net.forward_features(_tensors(views, idx)[0])[2].float().numpy())
    return np.concatenate(features)


def post_training(
    net: MammoNet, split: Split, manifest: Manifest, *, out_dir: Path, percentile: float
) -> Manifest:
    """Fit the OOD score (training views; threshold on validation studies) and the breast
    score's temperature (validation breasts); the operating threshold moves to the
    calibrated scale (the same decisions: the map is monotonic)."""
    ood = fit_ood(
        view_features(net, split.train),
        view_features(net, split.validation),
        split.validation.study.tolist(),
        percentile,
    )
    labels, scores = breast_level(split.validation, predict_views(net, split.validation)[0])
    logits = np.array([logit(float(score)) for score in scores])
    fit = calibrate(logits, labels)
    calibration = fit.entry(
        f"{len(labels)} validation breasts",
        "breast suspicion score (log-odds / T); lesion mark probabilities are not rescaled",
        {"uncalibrated_operating_threshold": manifest.operating_threshold},
    )
    return write_post_training(
        out_dir,
        manifest,
        ood,
        (
            f"{len(split.train)} training views: the suspicion head's input pooled "
            f"({ood.stats.dimensions} features: mean and max of the bottleneck)",
            f"{split.validation_studies} validation studies (score of a study: its "
            "highest-scoring view)",
        ),
        calibration,
        operating_threshold=round(
            calibrated_threshold(manifest.operating_threshold, fit.temperature), 4
        ),
    )


def refit(data_dir: Path, out_dir: Path, config: TrainConfig) -> Manifest:
    """The post-training fit alone, on the weights already in ``out_dir`` (unchanged):
    the same studies and split as ``train`` (same data and seed)."""
    torch.set_num_threads(config.threads)
    net, manifest = trained_network(
        out_dir, lambda m: MammoNet(width=int(m.architecture.get("width", config.width)))
    )
    folders = study_folders(data_dir)
    rng = np.random.default_rng(config.seed)
    split = split_by_study(load_views(folders), len(folders), config, rng)
    return post_training(net, split, manifest, out_dir=out_dir, percentile=config.ood_percentile)


def train(data_dir: Path, out_dir: Path, config: TrainConfig) -> Manifest:
    """Train on every study under ``data_dir``; write model.pt and manifest.json."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    folders = study_folders(data_dir)
    if len(folders) < 2:
        raise ValueError(f"{data_dir} holds {len(folders)} studies with truth.json; need >= 2")
    split = split_by_study(load_views(folders), len(folders), config, rng)
    log.info(
        "views: %d train (%d malignant), %d validation",
        len(split.train),
        int(split.train.labels.sum()),
        len(split.validation),
    )
    net = MammoNet(width=config.width)
    fitted = fit(net, split, config, rng)
    net.load_state_dict(fitted.state)
    probs, _ = predict_views(net, split.validation)
    threshold = operating_threshold(*breast_level(split.validation, probs))
    hits, false = validation_marks(net, split.validation)
    marks = lesion_threshold(hits, false, len(split.validation))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_FILE
    torch.save(fitted.state, weights_path)
    manifest = _manifest(
        weights_path,
        threshold,
        marks,
        config=config,
        split=split,
        fitted=fitted,
        studies=len(folders),
    )
    (out_dir / "manifest.json").write_text(manifest.to_json())
    return post_training(net, split, manifest, out_dir=out_dir, percentile=config.ood_percentile)

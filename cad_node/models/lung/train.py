"""Trains ``lung_nodule_ct`` on synthetic series (DICOM + ground_truth.json).

Candidates come from the same generator the model uses at inference; a
candidate is positive when its centre lies within a ground-truth nodule's
radius (the LUNA16 hit rule).  Each nodule also gives a few jittered patches
centred on it.  Class imbalance: weighted sampling (a third of each epoch's
patches are positive).  Augmentations: flips on the three axes, 90° rotations
in the axial plane, intensity scale/shift jitter and Gaussian noise.
"""

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from cad_node import NOT_FOR_CLINICAL_USE, __version__
from cad_node.imaging.volume import load_volume
from cad_node.models import training
from cad_node.models.calibration import calibrate, calibrated_threshold
from cad_node.models.lung.candidates import find_candidates
from cad_node.models.lung.network import PATCH, NoduleNet
from cad_node.models.lung.patches import (
    PatchGeometry,
    candidate_geometry,
    sample_labels,
    sample_patch,
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
from cad_node.synth.ct import GROUND_TRUTH_NAME, GroundTruth, load_ground_truth

log = logging.getLogger(__name__)

MODEL_NAME = "lung_nodule_ct"
WEIGHTS_FILE = "model.pt"
JITTERED_PER_NODULE = 6
POSITIVE_FRACTION = 1.0 / 3.0


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Training settings."""

    epochs: int = 30
    samples_per_epoch: int = 1200
    batch_size: int = 24
    learning_rate: float = 2e-3
    patience: int = 5
    validation_fraction: float = 0.15
    max_minutes: float = 25.0
    width: int = 12
    seed: int = 0
    threads: int = 2
    ood_percentile: float = DEFAULT_PERCENTILE
    validation_data: Path | None = None
    """More series never trained on (``--validation-data``): the OOD threshold is placed on
    their scores too (eight held-out scans cannot place a 99.5th percentile)."""


@dataclass(frozen=True, slots=True, eq=False)
class PatchSet:
    """Patches with their class label, mask target, log voxel size and scan index."""

    images: npt.NDArray[np.float16]
    masks: npt.NDArray[np.bool_]
    log_voxel_mm: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    scan: npt.NDArray[np.int32]
    from_candidates: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.labels)


def series_folders(data_dir: Path) -> list[Path]:
    """Every folder under ``data_dir`` that holds a ground_truth.json, sorted."""
    return sorted(
        Path(root)
        for root, _, files in os.walk(data_dir, followlinks=True)
        if GROUND_TRUTH_NAME in files
    )


def _hit(
    centre_index: tuple[float, float, float],
    truth: GroundTruth,
    spacing: tuple[float, float, float],
) -> bool:
    point = np.array(centre_index) * spacing
    return any(
        np.linalg.norm(point - np.array(n.centre_index) * spacing) <= n.diameter_mm / 2
        for n in truth.nodules
    )


def _scan_geometries(
    voxels: npt.NDArray[np.float32],
    spacing: tuple[float, float, float],
    truth: GroundTruth,
    rng: np.random.Generator,
) -> list[tuple[PatchGeometry, float, bool]]:
    out = []
    for cand in find_candidates(voxels, spacing):
        geometry = candidate_geometry(cand.centre_index, cand.radius_mm, spacing)
        out.append((geometry, float(_hit(cand.centre_index, truth, spacing)), True))
    for nodule in truth.nodules:
        radius = nodule.diameter_mm / 2
        for _ in range(JITTERED_PER_NODULE):
            shift = rng.normal(0, 0.15 * radius, 3) / np.array(spacing)
            centre = tuple(float(c) for c in np.array(nodule.centre_index) + shift)
            estimate = radius * float(np.exp(rng.normal(0, 0.25)))
            geometry = candidate_geometry((centre[0], centre[1], centre[2]), estimate, spacing)
            out.append((geometry, 1.0, False))
    return out


def extract_patches(folders: list[Path], seed: int) -> PatchSet:
    """Candidates and jittered nodule patches of every series, with targets."""
    rng = np.random.default_rng(seed)
    images, masks, scales, labels, scans, from_cand = [], [], [], [], [], []
    for scan, folder in enumerate(tqdm(folders, desc="patches", unit="scan")):
        volume = load_volume(sorted(folder.glob("*.dcm")))
        truth = load_ground_truth(folder)
        label_volume = truth.labels()
        for geometry, label, is_cand in _scan_geometries(
            volume.voxels, volume.spacing_mm, truth, rng
        ):
            images.append(sample_patch(volume.voxels, geometry).astype(np.float16))
            masks.append(sample_labels(label_volume, geometry) > 0)
            scales.append(math.log(geometry.voxel_mm))
            labels.append(label)
            scans.append(scan)
            from_cand.append(is_cand)
    return PatchSet(
        images=np.stack(images),
        masks=np.stack(masks),
        log_voxel_mm=np.array(scales, dtype=np.float32),
        labels=np.array(labels, dtype=np.float32),
        scan=np.array(scans, dtype=np.int32),
        from_candidates=np.array(from_cand, dtype=np.bool_),
    )


def _joined(first: PatchSet, second: PatchSet) -> PatchSet:
    """Both sets' patches; ``second``'s scan indices follow ``first``'s."""
    offset = int(first.scan.max()) + 1 if len(first) else 0
    return PatchSet(
        images=np.concatenate([first.images, second.images]),
        masks=np.concatenate([first.masks, second.masks]),
        log_voxel_mm=np.concatenate([first.log_voxel_mm, second.log_voxel_mm]),
        labels=np.concatenate([first.labels, second.labels]),
        scan=np.concatenate([first.scan, second.scan + offset]),
        from_candidates=np.concatenate([first.from_candidates, second.from_candidates]),
    )


def _subset(patches: PatchSet, keep: npt.NDArray[np.bool_]) -> PatchSet:
    return PatchSet(
        images=patches.images[keep],
        masks=patches.masks[keep],
        log_voxel_mm=patches.log_voxel_mm[keep],
        labels=patches.labels[keep],
        scan=patches.scan[keep],
        from_candidates=patches.from_candidates[keep],
    )


def augment(
    images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, axial 90° rotations, intensity jitter and noise (the same per batch geometry)."""
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            images, masks = images.flip(axis), masks.flip(axis)
    turns = int(rng.integers(4))
    images, masks = images.rot90(turns, (3, 4)), masks.rot90(turns, (3, 4))
    n = images.shape[0]
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, (n, 1, 1, 1, 1)).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-0.08, 0.08, (n, 1, 1, 1, 1)).astype(np.float32))
    noise = torch.randn_like(images) * float(rng.uniform(0.0, 0.03))
    return images * scale + shift + noise, masks


def _loss(
    logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    bce = nn.functional.binary_cross_entropy_with_logits
    cls = bce(logits, labels)
    seg = bce(mask_logits, masks)
    positive = labels > 0.5
    if positive.any():
        prob = torch.sigmoid(mask_logits[positive])
        target = masks[positive]
        inter = (prob * target).sum(dim=(1, 2, 3, 4))
        dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3, 4)) + target.sum(dim=(1, 2, 3, 4)) + 1)
        seg = seg + dice.mean()
    return cls + seg


def _tensors(
    patches: PatchSet, idx: npt.NDArray[np.intp]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(patches.images[idx].astype(np.float32))[:, None]
    masks = torch.from_numpy(patches.masks[idx].astype(np.float32))[:, None]
    scales = torch.from_numpy(patches.log_voxel_mm[idx])[:, None]
    labels = torch.from_numpy(patches.labels[idx])
    return images, masks, scales, labels


def _predict(net: NoduleNet, patches: PatchSet) -> tuple[npt.NDArray[np.float32], float]:
    net.eval()
    probs, total = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(patches), 64):
            idx = np.arange(start, min(start + 64, len(patches)))
            images, masks, scales, labels = _tensors(patches, idx)
            logits, mask_logits = net(images, scales)
            total += float(_loss(logits, mask_logits, labels, masks)) * len(idx)
            probs.append(torch.sigmoid(logits).numpy())
    return np.concatenate(probs), total / max(1, len(patches))


def operating_threshold(val: PatchSet, probs: npt.NDArray[np.float32], scans: int) -> float:
    """The probability at which the validation candidates give one false positive per scan."""
    negatives = np.sort(probs[(val.labels <= 0.5) & val.from_candidates])[::-1]
    if len(negatives) <= scans:
        return 0.5
    return float(np.clip(negatives[scans - 1] + 1e-4, 0.3, 0.95))


@dataclass(frozen=True, slots=True, eq=False)
class Split:
    """Training and validation patches, split by scan."""

    train: PatchSet
    validation: PatchSet
    validation_scans: int


def split_by_scan(
    patches: PatchSet, scans: int, config: TrainConfig, rng: np.random.Generator
) -> Split:
    """Hold out whole scans for validation, so no scan leaks into both sets."""
    held_out = rng.permutation(scans)[: max(1, round(scans * config.validation_fraction))]
    is_val = np.isin(patches.scan, held_out.tolist())
    return Split(_subset(patches, ~is_val), _subset(patches, is_val), len(held_out))


def _train_epoch(
    net: NoduleNet,
    optimiser: torch.optim.Optimizer,
    train_set: PatchSet,
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
        batch = order[start : start + config.batch_size]
        images, masks, scales, labels = _tensors(train_set, batch)
        images, masks = augment(images, masks, rng)
        logits, mask_logits = net(images, scales)
        loss = _loss(logits, mask_logits, labels, masks)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
        optimiser.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def fit(net: NoduleNet, split: Split, config: TrainConfig, rng: np.random.Generator) -> Fitted:
    """Epochs with validation, early stopping on the validation loss and a time budget."""

    def train_epoch(optimiser: torch.optim.Optimizer, epoch: int) -> None:
        _train_epoch(net, optimiser, split.train, config=config, rng=rng, epoch=epoch)

    def validate() -> Validation:
        probs, loss = _predict(net, split.validation)
        auc = validation_auc(split.validation.labels, probs)
        return Validation(loss, {"val_loss": round(loss, 5), "val_auc": finite_or_none(auc)})

    schedule = Schedule(config.epochs, config.patience, config.max_minutes, config.learning_rate)
    return training.fit(net, schedule, train_epoch, validate)


def _manifest(
    weights_path: Path,
    threshold: float,
    *,
    config: TrainConfig,
    split: Split,
    fitted: Fitted,
    scans: int,
) -> Manifest:
    return Manifest(
        name=MODEL_NAME,
        version=__version__,
        family="lung_ct",
        modality="CT",
        weights_file=weights_path.name,
        sha256=sha256_of(weights_path),
        operating_threshold=round(threshold, 4),
        intended_use=(
            "Research and demonstration: detection and segmentation of lung nodules "
            "4-30 mm on chest CT, trained on synthetic phantoms only. " + NOT_FOR_CLINICAL_USE
        ),
        input_spec={
            "modality": "CT",
            "body_part": "CHEST",
            "pixel_spacing_mm": [0.6, 1.5],
            "slice_spacing_mm": [0.625, 2.5],
            "units": "HU",
            "patch_voxels": PATCH,
        },
        architecture={
            "network": "NoduleNet (3-level 3D U-Net + classification head)",
            "width": config.width,
            "parameters": sum(
                v.numel() for v in fitted.state.values() if v.dtype.is_floating_point
            ),
        },
        training={
            "series": scans,
            "validation_series": split.validation_scans,
            "train_patches": len(split.train),
            "train_positive_patches": int(split.train.labels.sum()),
            "epochs_run": len(fitted.history),
            "best_epoch": fitted.best_epoch,
            "imbalance": f"weighted sampling, {POSITIVE_FRACTION:.2f} positive per epoch",
            "augmentations": "flips (3 axes), axial 90-degree rotations, intensity x0.9-1.1 "
            "and shift +-0.08 (normalised), Gaussian noise sd <= 0.03",
            "history": fitted.history,
        },
        model_card="docs/model-cards/lung-nodule-ct.md",
    )


def head_outputs(
    net: NoduleNet, patches: PatchSet
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """Logits and classification-head inputs (the OOD features) of every patch."""
    net.eval()
    logits, features = [], []
    with torch.inference_mode():
        for start in range(0, len(patches), 64):
            idx = np.arange(start, min(start + 64, len(patches)))
            images, _, scales, _ = _tensors(patches, idx)
            logit, _, feature = net.forward_features(images, scales)
            logits.append(logit.double().numpy())
            features.append(feature.float().numpy())
    return np.concatenate(logits), np.concatenate(features)


def post_training(
    net: NoduleNet,
    split: Split,
    manifest: Manifest,
    *,
    out_dir: Path,
    percentile: float,
    more: PatchSet | None = None,
) -> Manifest:
    """Fit the OOD score on the training candidates (what inference sees; a scan's score is
    the mean over its candidates), threshold it on the validation scans (with ``more``: the
    candidates of scans never trained on, from ``validation_data``), and the patch
    temperature on the split's validation candidates; the operating threshold moves to the
    calibrated scale (the same decisions: the map is monotonic)."""
    train = _subset(split.train, split.train.from_candidates)
    validation = _subset(split.validation, split.validation.from_candidates)
    held = validation if more is None else _joined(validation, _subset(more, more.from_candidates))
    _, train_features = head_outputs(net, train)
    logits, features = head_outputs(net, validation)
    held_features = features if more is None else head_outputs(net, held)[1]
    ood = fit_ood(train_features, held_features, held.scan.tolist(), percentile, "mean")
    fit = calibrate(logits, validation.labels)
    calibration = fit.entry(
        f"{len(validation)} validation candidate patches",
        "nodule probability of a candidate (sigmoid of logit / T)",
        {"uncalibrated_operating_threshold": manifest.operating_threshold},
    )
    return write_post_training(
        out_dir,
        manifest,
        ood,
        (
            f"{len(train)} training candidate patches: the classification head's input "
            f"({ood.stats.dimensions} features)",
            f"{_scans_described(split, more)} (score of a scan: the mean over its candidates)",
        ),
        calibration,
        operating_threshold=round(
            calibrated_threshold(manifest.operating_threshold, fit.temperature), 4
        ),
    )


def _scans_described(split: Split, more: PatchSet | None) -> str:
    if more is None:
        return f"{split.validation_scans} validation scans"
    extra = len(np.unique(more.scan))
    return (
        f"{split.validation_scans + extra} validation scans ({split.validation_scans} held "
        f"out of the training data + {extra} from --validation-data)"
    )


def more_validation(config: TrainConfig) -> PatchSet | None:
    """The patches of ``config.validation_data`` (series never trained on), if given."""
    if config.validation_data is None:
        return None
    folders = series_folders(config.validation_data)
    if not folders:
        raise ValueError(f"{config.validation_data} holds no CT series with ground truth")
    return extract_patches(folders, config.seed)


def refit(data_dir: Path, out_dir: Path, config: TrainConfig) -> Manifest:
    """The post-training fit alone, on the weights already in ``out_dir`` (unchanged):
    the same series and split as ``train`` (same data and seed)."""
    torch.set_num_threads(config.threads)
    net, manifest = trained_network(
        out_dir, lambda m: NoduleNet(width=int(m.architecture.get("width", config.width)))
    )
    folders = series_folders(data_dir)
    rng = np.random.default_rng(config.seed)
    split = split_by_scan(extract_patches(folders, config.seed), len(folders), config, rng)
    return post_training(
        net,
        split,
        manifest,
        out_dir=out_dir,
        percentile=config.ood_percentile,
        more=more_validation(config),
    )


def train(data_dir: Path, out_dir: Path, config: TrainConfig) -> Manifest:
    """Train on every series under ``data_dir``; write model.pt and manifest.json."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    folders = series_folders(data_dir)
    if len(folders) < 2:
        raise ValueError(f"{data_dir} holds {len(folders)} series with ground truth; need >= 2")
    split = split_by_scan(extract_patches(folders, config.seed), len(folders), config, rng)
    log.info(
        "patches: %d train (%d positive), %d validation",
        len(split.train),
        int(split.train.labels.sum()),
        len(split.validation),
    )
    net = NoduleNet(width=config.width)
    fitted = fit(net, split, config, rng)
    net.load_state_dict(fitted.state)
    probs, _ = _predict(net, split.validation)
    threshold = operating_threshold(split.validation, probs, split.validation_scans)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_FILE
    torch.save(fitted.state, weights_path)
    manifest = _manifest(
        weights_path, threshold, config=config, split=split, fitted=fitted, scans=len(folders)
    )
    (out_dir / "manifest.json").write_text(manifest.to_json())
    return post_training(
        net,
        split,
        manifest,
        out_dir=out_dir,
        percentile=config.ood_percentile,
        more=more_validation(config),
    )

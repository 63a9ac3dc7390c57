"""Lung nodule detection on a chest CT volume: candidates -> 3D CNN -> findings."""

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import Finding, FindingType, MaskBox, ModelIdentity, ModelResult
from cad_node.domain.imaging import ImageVolume
from cad_node.errors import InvalidSeriesError, ModelError
from cad_node.models.base import InputKind
from cad_node.models.calibration import temperature_of
from cad_node.models.formats import load_network
from cad_node.models.lung.candidates import find_candidates
from cad_node.models.lung.network import NoduleNet
from cad_node.models.lung.patches import (
    PatchGeometry,
    candidate_geometry,
    mask_to_volume,
    sample_patch,
)
from cad_node.models.manifest import Manifest
from cad_node.models.ood import OodScorer, load_ood_scorer
from cad_node.models.runtime import inference, is_cuda

CPU_BATCH = 8
"""Patches per forward pass on the CPU: 32 patches keep ~400 MB of activations alive
(the 32³ levels of the U-Net) and run no faster on a CPU than 8 (~100 MB)."""
GPU_BATCH = 32
MIN_SLICES = 8


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate patch and the network's output for it."""

    geometry: PatchGeometry
    probability: float
    mask: npt.NDArray[np.float32]
    features: npt.NDArray[np.float32] | None = None
    """The classification head's input (the OOD features); None for a TorchScript network."""


def patch_batch(
    voxels: npt.NDArray[np.float32],
    geometries: list[PatchGeometry],
    pool: ThreadPoolExecutor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs for a list of patches: images and log voxel sizes.

    ``pool`` samples the patches in parallel (scipy's interpolation releases the GIL).
    """
    sample = partial(sample_patch, voxels)
    patches = list(pool.map(sample, geometries)) if pool else [sample(g) for g in geometries]
    images = np.stack(patches)[:, None]
    scale = np.array([[math.log(g.voxel_mm)] for g in geometries], dtype=np.float32)
    return torch.from_numpy(images), torch.from_numpy(scale)


def batch_size(device: str) -> int:
    """Patches per forward pass: larger on a GPU, where it pays, smaller on the CPU."""
    return GPU_BATCH if is_cuda(device) else CPU_BATCH


def _forward(
    net: nn.Module, images: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits, mask logits and (a native NoduleNet only) the OOD features."""
    if isinstance(net, NoduleNet):
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = net.forward_features(images, scale)
        return out
    logits, masks = net(images, scale)
    return logits, masks, None


def score_patches(
    net: nn.Module,
    voxels: npt.NDArray[np.float32],
    geometries: list[PatchGeometry],
    device: str,
    temperature: float = 1.0,
) -> list[Scored]:
    """Run the network (a NoduleNet, or its TorchScript) on every patch, in batches; the
    probabilities are ``sigmoid(logit / temperature)``."""
    out: list[Scored] = []
    batch = batch_size(device)
    with inference(device), ThreadPoolExecutor(torch.get_num_threads()) as pool:
        for start in range(0, len(geometries), batch):
            chunk = geometries[start : start + batch]
            images, scale = patch_batch(voxels, chunk, pool)
            logits, masks, features = _forward(net, images.to(device), scale.to(device))
            probs = torch.sigmoid(logits.float() / temperature).cpu().numpy()
            mask_probs = torch.sigmoid(masks[:, 0].float()).cpu().numpy()
            rows = [None] * len(chunk) if features is None else list(features.float().cpu().numpy())
            out += [
                Scored(g, float(p), m, f)
                for g, p, m, f in zip(chunk, probs, mask_probs, rows, strict=True)
            ]
    return out


def _suppress(scored: list[Scored], threshold: float) -> list[Scored]:
    """Non-maximum merging: drop a patch whose centre lies near a stronger one's."""
    kept: list[Scored] = []
    for item in sorted(scored, key=lambda s: -s.probability):
        if item.probability < threshold:
            break
        centre = np.array(item.geometry.centre_index) * item.geometry.spacing_mm
        if all(
            np.linalg.norm(centre - np.array(k.geometry.centre_index) * k.geometry.spacing_mm)
            > max(k.geometry.voxel_mm * 8.0, 5.0)
            for k in kept
        ):
            kept.append(item)
    return kept


def to_finding(volume: ImageVolume, item: Scored) -> Finding | None:
    """A Finding from a scored patch: mask on the volume grid, centre, size."""
    placed = mask_to_volume(item.mask, item.geometry, volume.shape)
    if placed is None:
        return None
    offset, mask = placed
    voxel_mm3 = float(np.prod(volume.spacing_mm))
    volume_mm3 = float(mask.sum()) * voxel_mm3
    centre_local = np.argwhere(mask).mean(axis=0)
    centre = tuple(float(offset[a] + centre_local[a]) for a in range(3))
    index = (centre[0], centre[1], centre[2])
    return Finding(
        finding_type=FindingType.NODULE,
        centre_index=index,
        centre_patient_mm=volume.index_to_patient(index),
        diameter_mm=float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)),
        volume_mm3=volume_mm3,
        probability=min(1.0, max(0.0, item.probability)),
        mask=MaskBox(offset=offset, mask=mask),
    )


class LungNoduleModel:
    """The ``lung_nodule_ct`` model: a :class:`cad_node.models.base.VolumeModel`."""

    modalities: tuple[str, ...] = ("CT",)
    input_kind = InputKind.VOLUME

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.identity: ModelIdentity = manifest.identity()
        self.threshold = manifest.operating_threshold
        self.temperature = temperature_of(manifest.calibration)
        """Patch logits are divided by it (temperature scaling fitted on validation patches)."""
        self._ood: OodScorer | None = None
        self._net: nn.Module | None = None
        self._device = "cpu"

    def load(self, device: str) -> None:
        """Check the weights' sha256, load the network (any format) and keep it on ``device``."""
        width = int(self.manifest.architecture.get("width", 12))
        self._net = load_network(
            self.folder, self.manifest, device, build=lambda: NoduleNet(width=width)
        )
        self._ood = load_ood_scorer(self.folder, self.manifest)
        self._device = device

    def score(self, volume: ImageVolume) -> list[Scored]:
        """Every candidate of the volume with its probability (no threshold)."""
        if self._net is None:
            raise ModelError(f"model {self.identity.name} is not loaded")
        if volume.shape[0] < MIN_SLICES:
            raise InvalidSeriesError(f"the lung model needs at least {MIN_SLICES} slices")
        candidates = find_candidates(
            volume.voxels, volume.spacing_mm, threads=torch.get_num_threads()
        )
        geometries = [
            candidate_geometry(c.centre_index, c.radius_mm, volume.spacing_mm) for c in candidates
        ]
        return score_patches(self._net, volume.voxels, geometries, self._device, self.temperature)

    def detect(self, volume: ImageVolume, threshold: float) -> list[Finding]:
        """Findings at or above ``threshold``, strongest first (for FROC: a low one)."""
        return self.findings(self.score(volume), volume, threshold)

    def findings(
        self, scored: list[Scored], volume: ImageVolume, threshold: float
    ) -> list[Finding]:
        """Findings of scored candidates at or above ``threshold``, strongest first."""
        kept = _suppress(scored, threshold)
        findings = [to_finding(volume, item) for item in kept]
        return [f for f in findings if f is not None]

    def ood_score(self, scored: list[Scored]) -> OodScore | None:
        """The volume's OOD score from its candidate patches; None without a fitted score
        (or a TorchScript network).  A volume without a single candidate is unlike every
        training scan (each had dozens): its score is infinite."""
        if self._ood is None:
            return None
        if not scored:
            return OodScore(self._ood.method, math.inf, self._ood.threshold)
        rows = [s.features for s in scored if s.features is not None]
        if len(rows) != len(scored):
            return None
        return self._ood.score(np.stack(rows))

    def predict(self, volume: ImageVolume) -> ModelResult:
        """Nodules above the manifest's operating threshold."""
        started = time.perf_counter()
        scored = self.score(volume)
        return ModelResult(
            model=self.identity,
            findings=tuple(self.findings(scored, volume, self.threshold)),
            series_instance_uid=volume.series_instance_uid,
            inference_seconds=time.perf_counter() - started,
            ood=self.ood_score(scored),
        )

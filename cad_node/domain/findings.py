"""What a model says about a series: findings with masks, and who said it."""

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.abstention import OodScore


class FindingType(StrEnum):
    """Kinds of finding; results/codes.py maps each to its SNOMED CT / DCM code."""

    NODULE = "nodule"
    MASS = "mass"
    CALCIFICATION_CLUSTER = "calcification_cluster"
    MICROANEURYSM = "microaneurysm"
    HAEMORRHAGE = "haemorrhage"
    HARD_EXUDATE = "hard_exudate"
    SOFT_EXUDATE = "soft_exudate"


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """Algorithm identification, written into every SEG and SR (PS3.16 TID 4019)."""

    name: str
    version: str
    weights_sha256: str
    family: str = "lung_ct"

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("a model needs a name and a version")
        if len(self.weights_sha256) != 64:
            raise ValueError(f"weights_sha256 must be 64 hex digits, got {self.weights_sha256!r}")

    @property
    def parameters(self) -> str:
        """The AlgorithmParameters text: the hash, and that it is not for clinical use."""
        return f"weights sha256={self.weights_sha256}; {NOT_FOR_CLINICAL_USE}"


@dataclass(frozen=True, slots=True, eq=False)
class MaskBox:
    """A binary mask cropped to its bounding box within a volume.

    ``mask[i, j, l]`` is voxel ``(offset[0] + i, offset[1] + j, offset[2] + l)``.
    """

    offset: tuple[int, int, int]
    mask: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        if self.mask.ndim != 3 or self.mask.dtype != np.bool_:
            raise ValueError("mask must be a 3D boolean array")
        if not self.mask.any():
            raise ValueError("mask is empty")
        if min(self.offset) < 0:
            raise ValueError(f"offset must not be negative, got {self.offset}")

    @property
    def voxel_count(self) -> int:
        return int(self.mask.sum())

    def paste(self, shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
        """The mask placed in a full volume of ``shape``."""
        full = np.zeros(shape, dtype=np.bool_)
        k, r, c = self.offset
        dk, dr, dc = self.mask.shape
        full[k : k + dk, r : r + dr, c : c + dc] = self.mask
        return full


@dataclass(frozen=True, slots=True, eq=False)
class Finding:
    """One lesion found by a model, in the index space of its ``ImageVolume``."""

    finding_type: FindingType
    centre_index: tuple[float, float, float]
    """Centre of mass as a continuous voxel index (k, r, c)."""
    centre_patient_mm: tuple[float, float, float]
    diameter_mm: float
    """Diameter of the sphere of equal volume."""
    volume_mm3: float
    probability: float
    mask: MaskBox

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {self.probability}")
        if not (self.diameter_mm > 0 and self.volume_mm3 > 0):
            raise ValueError("diameter and volume must be positive")
        if not all(math.isfinite(v) for v in (*self.centre_index, *self.centre_patient_mm)):
            raise ValueError("centre must be finite")


@dataclass(frozen=True, slots=True)
class ModelResult:
    """Everything one model run produced for one series."""

    model: ModelIdentity
    findings: tuple[Finding, ...]
    series_instance_uid: str
    inference_seconds: float = 0.0
    ood: OodScore | None = None
    """The model's out-of-distribution score of the input; None: the model has none."""

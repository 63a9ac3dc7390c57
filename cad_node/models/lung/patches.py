"""Isotropic patches around candidates, and patch masks mapped back to the volume."""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cad_node.models.lung.network import PATCH

FloatArray = npt.NDArray[np.float32]
HU_LOW, HU_HIGH = -1000.0, 400.0
MIN_FOV_MM, MAX_FOV_MM = 20.0, 72.0
FOV_PER_RADIUS = 5.0


def field_of_view_mm(radius_mm: float) -> float:
    """Patch edge (mm): wide enough that the whole blob and some context fit."""
    return float(np.clip(FOV_PER_RADIUS * radius_mm, MIN_FOV_MM, MAX_FOV_MM))


@dataclass(frozen=True, slots=True)
class PatchGeometry:
    """Where a patch lies: centre as volume index, voxel size (mm), volume spacing (mm)."""

    centre_index: tuple[float, float, float]
    voxel_mm: float
    spacing_mm: tuple[float, float, float]

    def volume_coords(self) -> npt.NDArray[np.float64]:
        """Continuous volume index of every patch voxel, shape (3, P, P, P)."""
        offsets = (np.arange(PATCH) - (PATCH - 1) / 2.0) * self.voxel_mm
        axes = [self.centre_index[a] + offsets / self.spacing_mm[a] for a in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"))

    def volume_box(self, shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
        """The volume voxels the patch covers, clipped to the volume."""
        half = (PATCH / 2.0) * self.voxel_mm
        out = []
        for a in range(3):
            lo = int(np.floor(self.centre_index[a] - half / self.spacing_mm[a]))
            hi = int(np.ceil(self.centre_index[a] + half / self.spacing_mm[a])) + 1
            out.append(slice(max(lo, 0), min(hi, shape[a])))
        return (out[0], out[1], out[2])

    def patch_coords(self, box: tuple[slice, slice, slice]) -> npt.NDArray[np.float64]:
        """Continuous patch index of every volume voxel in ``box``, shape (3, ...)."""
        axes = [
            (np.arange(box[a].start, box[a].stop) - self.centre_index[a])
            * self.spacing_mm[a]
            / self.voxel_mm
            + (PATCH - 1) / 2.0
            for a in range(3)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"))


def normalise(hu: FloatArray) -> FloatArray:
    """HU window [-1000, 400] to [-1, 1]."""
    out = (np.clip(hu, HU_LOW, HU_HIGH) - HU_LOW) / (HU_HIGH - HU_LOW) * 2.0 - 1.0
    return out.astype(np.float32)


def sample_patch(voxels: FloatArray, geometry: PatchGeometry) -> FloatArray:
    """Trilinear resampling of the volume into a normalised P³ patch (air outside)."""
    hu = ndimage.map_coordinates(
        voxels, geometry.volume_coords(), order=1, mode="constant", cval=HU_LOW, prefilter=False
    )
    return normalise(hu.astype(np.float32))


def sample_labels(labels: npt.NDArray[np.uint8], geometry: PatchGeometry) -> npt.NDArray[np.uint8]:
    """Nearest-neighbour resampling of a label volume into the patch."""
    out = ndimage.map_coordinates(
        labels, geometry.volume_coords(), order=0, mode="constant", cval=0, prefilter=False
    )
    return np.asarray(out, dtype=np.uint8)


def mask_to_volume(
    probability: FloatArray, geometry: PatchGeometry, shape: tuple[int, ...], threshold: float = 0.5
) -> tuple[tuple[int, int, int], npt.NDArray[np.bool_]] | None:
    """The patch mask resampled on the volume grid: (offset, cropped mask) or None."""
    box = geometry.volume_box(shape)
    if any(s.stop <= s.start for s in box):
        return None
    values = ndimage.map_coordinates(
        probability,
        geometry.patch_coords(box),
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    mask = values >= threshold
    if not mask.any():
        return None
    # keep the connected part nearest the centre: a neighbouring blob is another finding
    labels, count = ndimage.label(mask)
    if count > 1:
        centre = [
            int(np.clip(round(geometry.centre_index[a] - box[a].start), 0, mask.shape[a] - 1))
            for a in range(3)
        ]
        keep = labels[tuple(centre)]
        if keep == 0:
            keep = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
        mask = labels == keep
    found = ndimage.find_objects(mask.astype(np.uint8))[0]
    offset = (
        box[0].start + found[0].start,
        box[1].start + found[1].start,
        box[2].start + found[2].start,
    )
    return offset, mask[found]


def candidate_geometry(
    centre_index: tuple[float, float, float],
    radius_mm: float,
    spacing_mm: tuple[float, float, float],
) -> PatchGeometry:
    """The patch of a blob of ``radius_mm`` centred at ``centre_index``."""
    return PatchGeometry(
        centre_index=centre_index,
        voxel_mm=field_of_view_mm(radius_mm) / PATCH,
        spacing_mm=spacing_mm,
    )

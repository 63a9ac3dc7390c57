"""Between the node's volumes (DICOM patient space, LPS) and MONAI's arrays (world space, RAS).

An :class:`~cad_node.domain.imaging.ImageVolume` holds ``voxels[k, r, c]`` (slice, row, column)
and an affine from ``(k, r, c, 1)`` to LPS mm (PS3.3 C.7.6.2.1.1).  A MONAI reader gives the same
series as an array indexed ``(i, j, k)`` = (column, row, slice) with an affine to RAS mm (NIfTI
world space), so::

    data  = voxels.transpose(2, 1, 0)
    A_ras = diag(-1, -1, 1, 1) @ affine[:, [2, 1, 0, 3]]

Both affines place every voxel at the same point of the patient: this module is the one place
that converts, and everything a bundle returns (label maps, boxes) comes back through it.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import SourceImage

LPS_TO_RAS: npt.NDArray[np.float64] = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Patient LPS <-> RAS (its own inverse): x and y change sign, z stays."""

AFFINE_TOLERANCE_MM = 1e-3
"""Two grids whose affines differ by less than this (mm, per entry) are the same grid."""

FloatArray = npt.NDArray[np.float64]


def ras_affine(volume_affine: FloatArray) -> FloatArray:
    """The affine of the MONAI array ``(i, j, k) = (c, r, k)`` to RAS, from the volume's."""
    return LPS_TO_RAS @ volume_affine[:, [2, 1, 0, 3]]


def volume_affine(ras: FloatArray) -> FloatArray:
    """The inverse of :func:`ras_affine`: ``(k, r, c)`` to LPS from ``(i, j, k)`` to RAS."""
    return (LPS_TO_RAS @ ras)[:, [2, 1, 0, 3]]


def lps_to_ras(points: npt.ArrayLike) -> FloatArray:
    """Points (..., 3) in LPS mm as RAS mm (and back: the map is its own inverse)."""
    flipped: FloatArray = np.asarray(points, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])
    return flipped


ras_to_lps = lps_to_ras


def apply_affine(affine: FloatArray, points: npt.ArrayLike) -> FloatArray:
    """``affine`` applied to points (n, 3)."""
    array = np.atleast_2d(np.asarray(points, dtype=np.float64))
    return array @ affine[:3, :3].T + affine[:3, 3]


def patient_to_index(volume: ImageVolume, points_lps: npt.ArrayLike) -> FloatArray:
    """The continuous ``(k, r, c)`` indexes (n, 3) of LPS points on the volume's grid."""
    return apply_affine(np.asarray(np.linalg.inv(volume.affine), dtype=np.float64), points_lps)


def volume_reader_output(volume: ImageVolume) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    """The volume as a MONAI NIfTI reader's ``get_data`` gives a file of it: (array, metadata).

    The array is ``(i, j, k)``; the metadata holds what ``LoadImage`` and the spatial transforms
    read (affine, original affine, spatial shape, channel, space) and, as ``filename_or_obj``,
    the Series Instance UID (never anything that names the patient).
    """
    affine = ras_affine(volume.affine)
    data = np.ascontiguousarray(volume.voxels.transpose(2, 1, 0))
    meta: dict[str, Any] = {
        "affine": affine.copy(),
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(data.shape),
        "original_channel_dim": "no_channel",
        "space": "RAS",
        "filename_or_obj": volume.series_instance_uid,
    }
    return data, meta


def image_reader_output(
    image: SourceImage, channels: int | None
) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    """A 2D image as MONAI's ``PILReader`` gives a file of it: ``(columns, rows[, 3])``.

    ``channels`` is the bundle's declared input channel count: 3 makes a greyscale image RGB
    (its grey copied to each channel), as a bundle trained on RGB files of grey images expects.
    """
    pixels = image.pixels
    if pixels.ndim == 2 and channels == 3:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    data = np.ascontiguousarray(np.moveaxis(pixels, 0, 1))
    rows, columns = image.shape
    meta: dict[str, Any] = {
        "mode": "RGB" if data.ndim == 3 else "L",
        "width": columns,
        "height": rows,
        "spatial_shape": np.asarray((columns, rows)),
        "original_channel_dim": -1 if data.ndim == 3 else float("nan"),
        "filename_or_obj": image.sop_instance_uid,
    }
    return data, meta


def same_grid(
    affine_a: FloatArray, shape_a: tuple[int, ...], affine_b: FloatArray, shape_b: tuple[int, ...]
) -> bool:
    """Whether two (affine, shape) pairs are one grid of voxels."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(affine_a, affine_b, rtol=0.0, atol=AFFINE_TOLERANCE_MM)
    )


def labels_on_source(
    labels_ijk: npt.NDArray[Any], affine: FloatArray, volume: ImageVolume
) -> npt.NDArray[np.int64]:
    """A label array ``(i, j, k)`` with its RAS ``affine`` as ``(k, r, c)`` on the volume's grid.

    The same grid is a transpose; any other is resampled (nearest neighbour, in patient space;
    voxels of the volume outside the array are 0).
    """
    labels = np.asarray(labels_ijk).astype(np.int64, copy=False)
    if same_grid(affine, labels.shape, ras_affine(volume.affine), volume.shape[::-1]):
        return np.ascontiguousarray(labels.transpose(2, 1, 0))
    to_array = np.linalg.inv(affine) @ LPS_TO_RAS @ volume.affine
    out = np.zeros(volume.shape, dtype=np.int64)
    _, rows, columns = volume.shape
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    for k in range(volume.shape[0]):
        index = np.stack([np.full_like(r, k), r, c], axis=-1).reshape(-1, 3)
        out[k] = _nearest(labels, apply_affine(to_array, index)).reshape(rows, columns)
    return out


def _nearest(array: npt.NDArray[np.int64], points: FloatArray) -> npt.NDArray[np.int64]:
    """``array`` at the voxel nearest each continuous index (0 outside it)."""
    index = np.rint(points).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.array(array.shape)), axis=1)
    values = np.zeros(len(points), dtype=np.int64)
    i, j, k = index[inside].T
    values[inside] = array[i, j, k]
    return values


@dataclass(frozen=True, slots=True)
class PatientBox:
    """A detection box in patient space: centre and full extent along LPS x, y, z (mm)."""

    centre_lps: tuple[float, float, float]
    extent_mm: tuple[float, float, float]
    score: float
    label: int


def world_boxes(
    corners: FloatArray, space: str
) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """(centre LPS, extent) of each box given as ``xyzxyz`` corners (n, 6) in ``space`` mm.

    ``space`` is "RAS" or "LPS"; a RAS box's x and y bounds swap sides in LPS, so the
    extent is unchanged and the centre changes sign.
    """
    if space not in ("RAS", "LPS"):
        raise ValueError(f"unknown world space {space!r}")
    low, high = corners[:, :3], corners[:, 3:]
    centres = (low + high) / 2.0
    if space == "RAS":
        centres = ras_to_lps(centres)
    return [_pair(centre, hi - lo) for centre, lo, hi in zip(centres, low, high, strict=True)]


def index_boxes(
    corners: FloatArray, affine: FloatArray
) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """(centre LPS, extent) of ``xyzxyz`` boxes (n, 6) given in the indexes of an image whose
    ``affine`` maps them to RAS: the LPS bounding box of each box's eight corners."""
    out = []
    for box in corners:
        lo, hi = box[:3], box[3:]
        points = np.array([[(lo, hi)[b >> a & 1][a] for a in range(3)] for b in range(8)])
        lps = ras_to_lps(apply_affine(affine, points))
        out.append(_pair((lps.min(0) + lps.max(0)) / 2.0, lps.max(0) - lps.min(0)))
    return out


def _pair(
    centre: npt.ArrayLike, extent: npt.ArrayLike
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    x, y, z = (float(v) for v in np.asarray(centre))
    ex, ey, ez = (abs(float(v)) for v in np.asarray(extent))
    return (x, y, z), (ex, ey, ez)


def ellipsoid_mask(
    volume: ImageVolume, centre_lps: tuple[float, float, float], extent_mm: tuple[float, ...]
) -> tuple[tuple[int, int, int], npt.NDArray[np.bool_]] | None:
    """The box's axis-aligned (in patient space) ellipsoid on the volume's grid.

    Returns (offset (k, r, c), mask cropped to its bounding box), always holding at least the
    voxel nearest the centre; None when the centre's nearest voxel is off the volume.
    """
    centre_index = patient_to_index(volume, centre_lps)[0]
    nearest = np.rint(centre_index).astype(np.int64)
    shape = np.array(volume.shape)
    if np.any(nearest < 0) or np.any(nearest >= shape):
        return None
    half = np.asarray(extent_mm, dtype=np.float64) / 2.0
    low, high = _index_bounds(volume, np.asarray(centre_lps), half, nearest)
    k, r, c = np.meshgrid(
        *(np.arange(lo, hi + 1) for lo, hi in zip(low, high, strict=True)), indexing="ij"
    )
    points = apply_affine(volume.affine, np.stack([k, r, c], axis=-1).reshape(-1, 3))
    scaled = (points - np.asarray(centre_lps)) / np.maximum(half, 1e-6)
    mask = (np.sum(scaled**2, axis=1) <= 1.0).reshape(k.shape)
    mask[tuple(nearest - low)] = True
    return (int(low[0]), int(low[1]), int(low[2])), mask


def _index_bounds(
    volume: ImageVolume, centre: FloatArray, half: FloatArray, nearest: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The index bounding box (inclusive, clipped to the volume) of a patient-space box."""
    corners = np.array(
        [[centre[a] + (half[a] if b >> a & 1 else -half[a]) for a in range(3)] for b in range(8)]
    )
    index = patient_to_index(volume, corners)
    low = np.maximum(np.floor(index.min(0)).astype(np.int64), 0)
    high = np.minimum(np.ceil(index.max(0)).astype(np.int64), np.array(volume.shape) - 1)
    return np.minimum(low, nearest), np.maximum(high, nearest)


__all__ = [
    "LPS_TO_RAS",
    "PatientBox",
    "apply_affine",
    "ellipsoid_mask",
    "image_reader_output",
    "index_boxes",
    "labels_on_source",
    "lps_to_ras",
    "patient_to_index",
    "ras_affine",
    "ras_to_lps",
    "same_grid",
    "volume_affine",
    "volume_reader_output",
    "world_boxes",
]

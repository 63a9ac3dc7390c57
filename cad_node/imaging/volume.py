"""Builds an :class:`ImageVolume` from the slices of one series.

Slices are sorted by their position along the normal of the image plane
(PS3.3 C.7.6.2.1.1), not by InstanceNumber, and rescaled to Hounsfield units
with RescaleSlope/RescaleIntercept (PS3.3 C.11.1.1.2).  Compressed transfer
syntaxes are decoded by pydicom's pixel handlers (python-gdcm, pylibjpeg).
"""

import logging
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

from cad_node.domain.imaging import ImageVolume, slice_affine
from cad_node.errors import InvalidSeriesError
from cad_node.imaging.multiframe import has_functional_groups, volume_of_series
from cad_node.imaging.stacks import main_stack

MALFORMED_DATASET_ERRORS = (
    AttributeError,
    EOFError,
    IndexError,
    KeyError,
    NotImplementedError,
    OverflowError,
    RecursionError,
    TypeError,
    ValueError,
    struct.error,
    zlib.error,
    InvalidDicomError,
    BytesLengthException,
)
"""What pydicom raises, reading or converting a value, on a malformed file: a missing Type 1
attribute, a truncated element, a value its VR cannot hold or a length it cannot have, a charset
that does not exist, sequences nested deeper than the interpreter's recursion limit."""

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

_ORIENTATION_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 0.05  # relative; scanners write positions rounded to 0.01 mm


def _read(item: Dataset | Path | str) -> Dataset:
    if isinstance(item, Dataset):
        return item
    try:
        return pydicom.dcmread(item)
    except (InvalidDicomError, OSError) as exc:
        raise InvalidSeriesError(f"cannot read {Path(item).name}: {exc}") from exc


def _floats(ds: Dataset, keyword: str, count: int) -> npt.NDArray[np.float64]:
    value = ds.get(keyword)
    if value is None or len(value) != count:
        raise InvalidSeriesError(
            f"slice {ds.get('SOPInstanceUID', '?')} has no valid {keyword} (needs {count} values)"
        )
    return np.array([float(v) for v in value], dtype=np.float64)


def _orientation(datasets: Sequence[Dataset]) -> npt.NDArray[np.float64]:
    first = _floats(datasets[0], "ImageOrientationPatient", 6)
    for ds in datasets[1:]:
        if np.abs(_floats(ds, "ImageOrientationPatient", 6) - first).max() > _ORIENTATION_TOLERANCE:
            raise InvalidSeriesError("the slices have mixed ImageOrientationPatient values")
    return first


def _check_matrix(datasets: Sequence[Dataset]) -> tuple[int, int]:
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) != 1:
        raise InvalidSeriesError(f"the slices have different Rows/Columns: {sorted(sizes)}")
    return sizes.pop()


def _pixel_spacing(datasets: Sequence[Dataset]) -> tuple[float, float]:
    spacings = {tuple(_floats(ds, "PixelSpacing", 2)) for ds in datasets}
    if len(spacings) != 1:
        raise InvalidSeriesError(f"the slices have different PixelSpacing: {sorted(spacings)}")
    row_spacing, column_spacing = spacings.pop()
    if row_spacing <= 0 or column_spacing <= 0:
        raise InvalidSeriesError("PixelSpacing must be positive")
    return float(row_spacing), float(column_spacing)


def _slice_spacing(positions: npt.NDArray[np.float64]) -> float:
    """The spacing of the sorted ``positions`` along the normal, when they are regular.

    Raises
    ------
    InvalidSeriesError
        Two images at one position; slices missing (gaps of a whole multiple of the
        spacing); uneven gaps beyond :data:`_SPACING_TOLERANCE`.
    """
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        raise InvalidSeriesError(
            f"{int(np.sum(gaps < 1e-3)) + 1} or more slices share the same position along the "
            "normal, with other pixels, and no ConvolutionKernel, SliceThickness, "
            "ContrastBolusAgent or AcquisitionNumber tells them apart"
        )
    spacing = float(np.median(gaps))
    uneven = gaps[np.abs(gaps - spacing) > _SPACING_TOLERANCE * spacing]
    if uneven.size == 0:
        return spacing
    missing = np.rint(uneven / spacing)
    if np.all(missing >= 2) and np.all(
        np.abs(uneven - missing * spacing) <= _SPACING_TOLERANCE * spacing
    ):
        raise InvalidSeriesError(
            f"inconsistent slice spacing: {int(np.sum(missing - 1))} slice(s) missing in "
            f"{uneven.size} gap(s) of up to {uneven.max():.3f} mm, the spacing being "
            f"{spacing:.3f} mm"
        )
    raise InvalidSeriesError(
        f"inconsistent slice spacing: uneven gaps from {gaps.min():.3f} to {gaps.max():.3f} mm"
    )


def _check_tilt(
    points: npt.NDArray[np.float64], normal: npt.NDArray[np.float64], pixel_mm: float
) -> None:
    """Refuse a stack whose ImagePositionPatient values drift across the image plane.

    The volume's affine steps along the normal (PS3.3 C.7.6.2.1.1); slices of a
    gantry-tilted acquisition step obliquely, and reading them as a stack would shift
    slice ``k`` by ``k`` times the step across the plane.  Half a pixel is allowed.
    """
    offsets = points - points[0]
    across = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.linalg.norm(across, axis=1).max())
    if drift <= pixel_mm / 2:
        return
    extent = float(abs(offsets[-1] @ normal)) or 1.0
    angle = np.degrees(np.arctan2(float(np.linalg.norm(across[-1])), extent))
    raise InvalidSeriesError(
        f"gantry tilt or a sheared stack: the slice positions drift {drift:.2f} mm across the "
        f"image plane (about {angle:.1f} degrees from its normal); send the series "
        "resampled to slices along the normal"
    )


def _decoded_pixels(ds: Dataset) -> npt.NDArray[Any]:
    """The stored values of one slice, without leaving pydicom's decoded copy on ``ds``.

    ``Dataset.pixel_array`` keeps the decoded array on the dataset; for a
    300-slice 512² CT those copies add 150 MB beside the volume while it is built.
    """
    cached = ds._pixel_array is not None  # the caller's own decoded copy stays
    try:
        pixels = ds.pixel_array
    except (AttributeError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise InvalidSeriesError(
            f"cannot decode the pixels of {ds.get('SOPInstanceUID', '?')}: {exc}"
        ) from exc
    if not cached:
        ds._pixel_array = None
    return pixels


def _store_hu(ds: Dataset, pixels: npt.NDArray[Any], out: npt.NDArray[np.float32]) -> None:
    """Write the HU values (PS3.3 C.11.1.1.2) of the slice ``ds`` decodes to into ``out``."""
    if pixels.shape != out.shape:
        raise InvalidSeriesError(
            f"slice {ds.get('SOPInstanceUID', '?')} decodes to {pixels.shape}, not {out.shape}"
        )
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    out[...] = pixels
    if slope != 1.0:
        out *= slope
    out += intercept


def _stack_slices(datasets: Sequence[Dataset]) -> npt.NDArray[np.float32]:
    """The HU pixels of the sorted slices as one float32 array, filled slice by slice.

    The first slice is decoded before the volume is allocated: pydicom checks its
    Rows x Columns against the bytes of its Pixel Data, so forged Rows/Columns
    cannot make the allocation ask for gigabytes.
    """
    first = _decoded_pixels(datasets[0])
    voxels = np.empty((len(datasets), *first.shape), dtype=np.float32)
    _store_hu(datasets[0], first, voxels[0])
    for k, ds in enumerate(datasets[1:], start=1):
        _store_hu(ds, _decoded_pixels(ds), voxels[k])
    return voxels


def read_or_refuse(read: Callable[[], _T]) -> _T:
    """``read()``, with pydicom's errors on a malformed file turned into InvalidSeriesError.

    Values are converted lazily, so a file ``dcmread`` accepted may still fail
    where an attribute is first used; the reason names the error class only
    (a message may quote element values, which may be patient data).
    """
    try:
        return read()
    except MALFORMED_DATASET_ERRORS as exc:
        raise InvalidSeriesError(f"malformed data set ({type(exc).__name__})") from exc


def load_volume(items: Iterable[Dataset | Path | str]) -> ImageVolume:
    """Read the slices of one series into a HU volume sorted along the slice normal.

    Localizers, other objects, duplicates and the images of other stacks or
    reconstructions are left out (:func:`~cad_node.imaging.stacks.main_stack`).

    Raises
    ------
    InvalidSeriesError
        One slice only, several series, two stacks or reconstructions of one size,
        missing PixelSpacing, different Rows/Columns, two images at one position,
        missing slices, uneven slice spacing, a gantry tilt; a malformed file (see
        :data:`MALFORMED_DATASET_ERRORS`).
    """
    return read_or_refuse(lambda: _load_volume(items))


def _load_volume(items: Iterable[Dataset | Path | str]) -> ImageVolume:
    datasets = [_read(item) for item in items]
    if any(has_functional_groups(ds) for ds in datasets):  # Enhanced CT/MR, PS3.3 C.7.6.16
        return volume_of_series(datasets)
    datasets = main_stack(datasets)
    if len(datasets) < 2:
        raise InvalidSeriesError(f"a volume needs at least 2 slices, got {len(datasets)}")
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series_uids) != 1:
        raise InvalidSeriesError(f"the slices belong to {len(series_uids)} series")
    orientation = _orientation(datasets)
    _check_matrix(datasets)
    row_spacing, column_spacing = _pixel_spacing(datasets)
    normal = np.cross(orientation[:3], orientation[3:])
    points = np.array([_floats(ds, "ImagePositionPatient", 3) for ds in datasets])
    positions = points @ normal
    order = np.argsort(positions, kind="stable")
    datasets = [datasets[i] for i in order]
    slice_spacing = _slice_spacing(positions[order])
    _check_tilt(points[order], normal, min(row_spacing, column_spacing))
    voxels = _stack_slices(datasets)
    spacing = (slice_spacing, row_spacing, column_spacing)
    first = datasets[0]
    return ImageVolume(
        voxels=voxels,
        spacing_mm=spacing,
        affine=slice_affine(
            _floats(first, "ImagePositionPatient", 3), orientation, normal, spacing
        ),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
        series_instance_uid=series_uids.pop(),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "CT")),
        image_orientation_patient=tuple(float(v) for v in orientation),
    )

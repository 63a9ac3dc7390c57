"""Volumes from the frames of one multi-frame image: Enhanced CT and MR, Legacy Converted
Enhanced CT (PS3.3 A.38, A.36, A.70).

Such an image keeps each frame's geometry in functional groups (PS3.3 C.7.6.16), not at the
top level: Plane Position (ImagePositionPatient) per frame, Plane Orientation, Pixel
Measures and Pixel Value Transformation (RescaleSlope/Intercept) shared or per frame.  A
frame's own item is read before the shared one (PS3.3 C.7.6.16: a group is in one or the
other).  Frames are sorted along the normal of the image plane like single-frame slices,
and the volume remembers the frame number each slice came from, so that SEG and SR
reference frames (ReferencedFrameNumber, PS3.3 Table 10-3).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.pixels.utils import iter_pixels

from cad_node.domain.imaging import ImageVolume, slice_affine
from cad_node.errors import InvalidSeriesError

logger = logging.getLogger(__name__)

_ORIENTATION_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 0.05  # relative, as for single-frame slices (positions rounded to 0.01 mm)


def has_functional_groups(ds: Dataset) -> bool:
    """Whether ``ds`` describes its frames in functional groups (PS3.3 C.7.6.16)."""
    return "PerFrameFunctionalGroupsSequence" in ds


def functional_group(ds: Dataset, frame: Dataset | None, keyword: str) -> Dataset | None:
    """The one item of the functional group ``keyword`` (e.g. "PixelMeasuresSequence") that
    applies to a frame: the frame's own (``frame``: its Per-frame Functional Groups item),
    else the shared one; None when neither holds it."""
    for groups in (frame, _shared(ds)):
        if groups is not None:
            sequence = groups.get(keyword)
            if sequence:
                item: Dataset = sequence[0]
                return item
    return None


def _shared(ds: Dataset) -> Dataset | None:
    shared = ds.get("SharedFunctionalGroupsSequence")
    return shared[0] if shared else None


@dataclass(frozen=True, slots=True)
class FrameGeometry:
    """Where one frame lies and how its stored values become real-world values."""

    frame_number: int
    """From 1, in the order of the Per-frame Functional Groups Sequence (PS3.3 C.7.6.16)."""
    image_position_patient: npt.NDArray[np.float64]
    image_orientation_patient: npt.NDArray[np.float64]
    pixel_spacing: tuple[float, float]
    rescale_slope: float
    rescale_intercept: float


def _floats(
    item: Dataset | None, keyword: str, count: int, frame_number: int
) -> npt.NDArray[np.float64]:
    value = None if item is None else item.get(keyword)
    if value is None or len(value) != count:
        raise InvalidSeriesError(
            f"frame {frame_number} has no valid {keyword} in its functional groups "
            f"(needs {count} values)"
        )
    return np.array([float(v) for v in value], dtype=np.float64)


def _frame_geometry(ds: Dataset, frame: Dataset, frame_number: int) -> FrameGeometry:
    position = functional_group(ds, frame, "PlanePositionSequence")
    orientation = functional_group(ds, frame, "PlaneOrientationSequence")
    measures = functional_group(ds, frame, "PixelMeasuresSequence")
    transformation = functional_group(ds, frame, "PixelValueTransformationSequence") or Dataset()
    row_spacing, column_spacing = _floats(measures, "PixelSpacing", 2, frame_number)
    if row_spacing <= 0 or column_spacing <= 0:
        raise InvalidSeriesError("PixelSpacing must be positive")
    return FrameGeometry(
        frame_number=frame_number,
        image_position_patient=_floats(position, "ImagePositionPatient", 3, frame_number),
        image_orientation_patient=_floats(orientation, "ImageOrientationPatient", 6, frame_number),
        pixel_spacing=(float(row_spacing), float(column_spacing)),
        rescale_slope=float(transformation.get("RescaleSlope", 1.0)),
        rescale_intercept=float(transformation.get("RescaleIntercept", 0.0)),
    )


def frame_geometries(ds: Dataset) -> list[FrameGeometry]:
    """The geometry of every frame of ``ds``, in frame order.

    Raises
    ------
    InvalidSeriesError
        If NumberOfFrames differs from the Per-frame Functional Groups items, or a
        frame lacks its position, orientation or pixel spacing.
    """
    frames = ds.PerFrameFunctionalGroupsSequence
    if int(ds.get("NumberOfFrames") or 0) != len(frames):
        raise InvalidSeriesError(
            f"NumberOfFrames {ds.get('NumberOfFrames')} but {len(frames)} per-frame "
            "functional groups items"
        )
    return [_frame_geometry(ds, frame, number) for number, frame in enumerate(frames, start=1)]


def _common_orientation(frames: Sequence[FrameGeometry]) -> npt.NDArray[np.float64]:
    first = frames[0].image_orientation_patient
    for frame in frames[1:]:
        if np.abs(frame.image_orientation_patient - first).max() > _ORIENTATION_TOLERANCE:
            raise InvalidSeriesError("the frames have mixed ImageOrientationPatient values")
    return first


def _common_pixel_spacing(frames: Sequence[FrameGeometry]) -> tuple[float, float]:
    spacings = {frame.pixel_spacing for frame in frames}
    if len(spacings) != 1:
        raise InvalidSeriesError(f"the frames have different PixelSpacing: {sorted(spacings)}")
    return spacings.pop()


def _slice_spacing(positions: npt.NDArray[np.float64]) -> float:
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        raise InvalidSeriesError(
            "two or more frames share the same position along the normal (several stacks "
            "or time points in one image are not read)"
        )
    spacing = float(np.median(gaps))
    if np.abs(gaps - spacing).max() > _SPACING_TOLERANCE * spacing:
        raise InvalidSeriesError(
            f"inconsistent frame spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm"
        )
    return spacing


def _hounsfield_frames(ds: Dataset, frames: Sequence[FrameGeometry]) -> npt.NDArray[np.float32]:
    """The frames in the order of ``frames``, rescaled (PS3.3 C.7.6.16.2.9), decoded one at
    a time: the volume is allocated once the first frame has decoded to the size it claims."""
    order = {frame.frame_number - 1: k for k, frame in enumerate(frames)}
    voxels: npt.NDArray[np.float32] | None = None
    for index, pixels in enumerate(iter_pixels(ds)):
        if voxels is None:
            voxels = np.empty((len(frames), *pixels.shape), dtype=np.float32)
        if pixels.shape != voxels.shape[1:]:
            raise InvalidSeriesError(f"frame {index + 1} decodes to {pixels.shape}")
        k = order[index]
        voxels[k] = pixels
        voxels[k] *= frames[k].rescale_slope
        voxels[k] += frames[k].rescale_intercept
    if voxels is None or voxels.ndim != 3:
        raise InvalidSeriesError("the multi-frame image decodes to no greyscale frames")
    return voxels


def volume_from_frames(ds: Dataset) -> ImageVolume:
    """The HU volume of one multi-frame image, its frames sorted along the slice normal.

    Raises
    ------
    InvalidSeriesError
        Fewer than 2 frames, a frame without geometry, mixed orientation or pixel
        spacing, frames at one position (several stacks or time points) or
        inconsistent spacing, pixels that do not decode to the frames announced.
    """
    frames = frame_geometries(ds)
    if len(frames) < 2:
        raise InvalidSeriesError(f"a volume needs at least 2 frames, got {len(frames)}")
    orientation = _common_orientation(frames)
    row_spacing, column_spacing = _common_pixel_spacing(frames)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([frame.image_position_patient @ normal for frame in frames])
    order = np.argsort(positions, kind="stable")
    frames = [frames[i] for i in order]
    spacing = (_slice_spacing(positions[order]), row_spacing, column_spacing)
    return ImageVolume(
        voxels=_hounsfield_frames(ds, frames),
        spacing_mm=spacing,
        affine=slice_affine(frames[0].image_position_patient, orientation, normal, spacing),
        sop_instance_uids=(str(ds.SOPInstanceUID),) * len(frames),
        series_instance_uid=str(ds.SeriesInstanceUID),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        modality=str(ds.get("Modality", "CT")),
        image_orientation_patient=tuple(float(v) for v in orientation),
        frame_numbers=tuple(frame.frame_number for frame in frames),
    )


def volume_of_series(datasets: Sequence[Dataset]) -> ImageVolume:
    """The volume of a series that holds a multi-frame image with functional groups.

    Other instances beside it (a single-frame localizer) are left out, and logged.

    Raises
    ------
    InvalidSeriesError
        When the series holds several such images: which one to read is not clear.
    """
    multiframe = [ds for ds in datasets if has_functional_groups(ds)]
    if len(multiframe) != 1:
        raise InvalidSeriesError(
            f"the series holds {len(multiframe)} multi-frame images: send each as a series "
            "of its own"
        )
    if len(datasets) > 1:
        logger.info(
            "series %s: %d images beside the multi-frame image left out of the volume",
            multiframe[0].get("SeriesInstanceUID", "?"),
            len(datasets) - 1,
        )
    return volume_from_frames(multiframe[0])

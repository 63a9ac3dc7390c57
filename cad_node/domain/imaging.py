"""Image data handed to models, in DICOM patient coordinates."""

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True, eq=False)
class ImageVolume:
    """A 3D series volume: slices sorted along the normal of the image plane.

    ``voxels[k, r, c]`` is slice ``k``, row ``r``, column ``c``; for CT the values
    are Hounsfield units (RescaleSlope/Intercept applied).  ``affine`` maps the
    homogeneous index ``(k, r, c, 1)`` to patient coordinates in mm (PS3.3
    C.7.6.2.1.1), so findings computed on the volume can be written as SCOORD3D
    or per-slice SCOORD.
    """

    voxels: npt.NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    """(between slices, between rows, between columns) in mm."""
    affine: npt.NDArray[np.float64]
    sop_instance_uids: tuple[str, ...]
    """The SOP Instance UID of each slice ``k``."""
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str = "CT"
    image_orientation_patient: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    frame_numbers: tuple[int, ...] | None = None
    """The frame (from 1, PS3.3 C.7.6.6) of ``sop_instance_uids[k]`` that slice ``k`` is, for
    slices read from a multi-frame image; None when every slice is an instance of its own."""

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError(f"voxels must be 3D (slices, rows, columns), got {self.voxels.shape}")
        if len(self.sop_instance_uids) != self.voxels.shape[0]:
            raise ValueError(
                f"{len(self.sop_instance_uids)} SOP Instance UIDs for {self.voxels.shape[0]} slices"
            )
        if self.frame_numbers is not None:
            self._check_frame_numbers(self.frame_numbers)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing_mm}")

    def _check_frame_numbers(self, frame_numbers: tuple[int, ...]) -> None:
        if len(frame_numbers) != self.voxels.shape[0]:
            raise ValueError(
                f"{len(frame_numbers)} frame numbers for {self.voxels.shape[0]} slices"
            )
        if min(frame_numbers, default=1) < 1:
            raise ValueError("frame numbers start at 1")
        if len(set(zip(self.sop_instance_uids, frame_numbers, strict=True))) != len(frame_numbers):
            raise ValueError("two slices are the same frame of one instance")

    def source_frame(self, k: int) -> tuple[str, int | None]:
        """(SOP Instance UID, frame number or None) of the image slice ``k`` was read from."""
        frame = None if self.frame_numbers is None else self.frame_numbers[k]
        return self.sop_instance_uids[k], frame

    @property
    def shape(self) -> tuple[int, int, int]:
        k, r, c = self.voxels.shape
        return (int(k), int(r), int(c))

    def index_to_patient(self, index: tuple[float, float, float]) -> tuple[float, float, float]:
        """Patient coordinates (mm) of the continuous voxel index ``(k, r, c)``."""
        point = self.affine @ np.array([index[0], index[1], index[2], 1.0])
        return (float(point[0]), float(point[1]), float(point[2]))


def slice_affine(
    origin: npt.NDArray[np.float64],
    orientation: npt.NDArray[np.float64],
    normal: npt.NDArray[np.float64],
    spacing: tuple[float, float, float],
) -> npt.NDArray[np.float64]:
    """The 4x4 matrix from a (slice, row, column) index to patient mm (LPS).

    ``origin`` is the first slice's ImagePositionPatient, ``orientation`` the six
    ImageOrientationPatient cosines, ``normal`` their cross product, ``spacing``
    (slice, row, column) in mm. PS3.3 C.7.6.2.1.1: the column index moves along the
    row direction cosines.
    """
    affine = np.eye(4)
    affine[:3, 0] = normal * spacing[0]
    affine[:3, 1] = orientation[3:] * spacing[1]
    affine[:3, 2] = orientation[:3] * spacing[2]
    affine[:3, 3] = origin
    return affine

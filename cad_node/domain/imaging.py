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

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError(f"voxels must be 3D (slices, rows, columns), got {self.voxels.shape}")
        if len(self.sop_instance_uids) != self.voxels.shape[0]:
            raise ValueError(
                f"{len(self.sop_instance_uids)} SOP Instance UIDs for {self.voxels.shape[0]} slices"
            )
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing_mm}")

    @property
    def shape(self) -> tuple[int, int, int]:
        k, r, c = self.voxels.shape
        return (int(k), int(r), int(c))

    def index_to_patient(self, index: tuple[float, float, float]) -> tuple[float, float, float]:
        """Patient coordinates (mm) of the continuous voxel index ``(k, r, c)``."""
        point = self.affine @ np.array([index[0], index[1], index[2], 1.0])
        return (float(point[0]), float(point[1]), float(point[2]))

"""Writes a synthetic volume as a CT Image Storage series (PS3.3 A.3, CT Image IOD)."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from cad_node import NOT_FOR_CLINICAL_USE

if TYPE_CHECKING:
    from cad_node.synth.lesions import Grid

RESCALE_INTERCEPT = -1024.0


def _uid(seed: int, *parts: str) -> str:
    """A deterministic UID (2.25 form, PS3.5 B.2) from the seed and a purpose."""
    return str(generate_uid(prefix="2.25.", entropy_srcs=["cad-node-synth-ct", str(seed), *parts]))


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """Identifiers and descriptions shared by every slice of one series."""

    seed: int
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    series_description: str
    patient_id: str
    images_in_acquisition: bool

    @classmethod
    def from_seed(
        cls,
        seed: int,
        *,
        series_description: str,
        patient_id: str,
        images_in_acquisition: bool,
    ) -> "SeriesInfo":
        return cls(
            seed=seed,
            study_instance_uid=_uid(seed, "study"),
            series_instance_uid=_uid(seed, "series"),
            frame_of_reference_uid=_uid(seed, "frame"),
            series_description=series_description,
            patient_id=patient_id,
            images_in_acquisition=images_in_acquisition,
        )

    def sop_instance_uid(self, k: int) -> str:
        return _uid(self.seed, "instance", str(k))


def _patient_study(ds: Dataset, info: SeriesInfo) -> None:
    # Patient (PS3.3 C.7.1.1) and General Study (C.7.2.1): Type 2 present, some empty
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom, no patient"
    ds.StudyInstanceUID = info.study_instance_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = f"S{info.seed}"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic chest CT"


def _series_equipment(ds: Dataset, info: SeriesInfo) -> None:
    # General Series (C.7.3.1), Frame of Reference (C.7.4.1), General Equipment (C.7.5.1)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = info.series_instance_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = info.series_description
    ds.SeriesDate = "20240101"
    ds.SeriesTime = "120000"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "FFS"
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "cad-node synthetic phantom"
    ds.ManufacturerModelName = "synth ct"
    ds.SoftwareVersions = "cad-node"


def _ct_image(ds: Dataset, grid: "Grid") -> None:
    # CT Image (C.8.2.1), Image Pixel (C.7.6.3), Image Plane (C.7.6.2)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.ConvolutionKernel = "STANDARD"
    ds.PixelSpacing = [f"{grid.spacing[1]:.6g}", f"{grid.spacing[2]:.6g}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = f"{grid.spacing[0]:.6g}"
    ds.SpacingBetweenSlices = f"{grid.spacing[0]:.6g}"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = NOT_FOR_CLINICAL_USE


def _template(info: SeriesInfo, grid: "Grid") -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    _patient_study(ds, info)
    _series_equipment(ds, info)
    _ct_image(ds, grid)
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    ds.AcquisitionDate = "20240101"
    ds.AcquisitionTime = "120000"
    if info.images_in_acquisition:
        ds.ImagesInAcquisition = grid.shape[0]
    return ds


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def write_slices(
    hu: npt.NDArray[np.int16], grid: "Grid", info: SeriesInfo, out_dir: Path
) -> list[Path]:
    """One file per slice; InstanceNumber 1 is the most superior slice."""
    template = _template(info, grid)
    n_slices = hu.shape[0]
    x0, y0 = grid.origin[2], grid.origin[1]
    paths = []
    for k in range(n_slices):
        ds = template.copy()
        ds.SOPInstanceUID = info.sop_instance_uid(k)
        ds.InstanceNumber = n_slices - k
        z = grid.origin[0] + k * grid.spacing[0]
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        stored = (hu[k].astype(np.int32) - int(RESCALE_INTERCEPT)).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.file_meta = _file_meta(ds.SOPInstanceUID)
        path = out_dir / f"CT{n_slices - k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

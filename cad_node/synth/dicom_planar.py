"""Writes synthetic planar images as DICOM: mammograms (MG) and colour fundus photographs (OP).

Two IODs are built, each valid for ``dciodvfy`` once returned:

- Digital Mammography X-Ray Image, For Presentation or For Processing (PS3.3 A.26.1),
  12 bits stored in 16, MONOCHROME2;
- Ophthalmic Photography 8 Bit Image (PS3.3 A.39.1), RGB, one frame.

UIDs are deterministic (2.25 form, PS3.5 B.2) from a seed, so a generator run
twice writes the same study.  Every image says :data:`~cad_node.NOT_FOR_CLINICAL_USE`.

Orientation of mammograms
-------------------------
Pixel arrays are stored the way mammograms are hung for reading: both breasts
as if seen from the front of the patient, back to back, so the chest walls face
each other in the middle of the display (IHE Mammography Image profile,
PS3.17 "Mammography image orientation").  The right breast therefore has its
chest wall at the *right* edge (nipple pointing left), the left breast at the
*left* edge.  The axilla / lateral side is at the top of CC views and the
upper-outer quadrant at the top of MLO views.  :func:`chest_wall_on_left` says
which edge a generator must put the chest wall on; :func:`patient_orientation`
gives the matching PatientOrientation (0020,0020) (PS3.3 C.7.6.1.1.1).
"""

import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    OphthalmicPhotography8BitImageStorage,
    generate_uid,
)

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.image_sets import Laterality
from cad_node.pipeline.files import write_dataset_atomically

StudyKind = Literal["mammo", "fundus"]
LateralityValue = Laterality | str
"""A :class:`Laterality` or its DICOM string, "R" or "L"."""
MammographyView = str
"""ViewPosition (0018,5101) of a screening view: "CC" or "MLO"."""

MAMMOGRAPHY_BITS_STORED = 12
"""Bits stored of the mammograms (in 16 allocated); pixel values are 0 .. 4095."""

CRANIO_CAUDAL = Code("399162004", "SCT", "cranio-caudal")
MEDIO_LATERAL_OBLIQUE = Code("399368009", "SCT", "medio-lateral oblique")
BREAST = Code("76752008", "SCT", "Breast")
RETINA = Code("5665001", "SCT", "Retina")
FUNDUS_CAMERA = Code("409898007", "SCT", "Fundus Camera")

_VIEW_CODES: dict[str, Code] = {"CC": CRANIO_CAUDAL, "MLO": MEDIO_LATERAL_OBLIQUE}
_DATE, _TIME = "20240101", "120000"


def _uid(*parts: str) -> str:
    """A deterministic UID (2.25 form, PS3.5 B.2) from a seed and a purpose."""
    return str(generate_uid(prefix="2.25.", entropy_srcs=["cad-node-synth-planar", *parts]))


@dataclass(frozen=True, slots=True)
class StudyInfo:
    """Identifiers and descriptions shared by every image of one synthetic study."""

    seed: int
    kind: StudyKind
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_description: str

    @classmethod
    def from_seed(
        cls,
        seed: int,
        kind: StudyKind = "mammo",
        *,
        study_description: str | None = None,
    ) -> "StudyInfo":
        """The study of ``seed``: the same seed and kind always give the same UIDs and IDs."""
        if kind not in ("mammo", "fundus"):
            raise ValueError(f"kind must be 'mammo' or 'fundus', got {kind!r}")
        prefix = "MG" if kind == "mammo" else "OP"
        default = "Synthetic screening mammogram" if kind == "mammo" else "Synthetic fundus exam"
        return cls(
            seed=seed,
            kind=kind,
            study_instance_uid=_uid(kind, str(seed), "study"),
            patient_id=f"SYNTH-{prefix}-{seed:06d}",
            patient_name=f"SYNTH^{kind.upper()}{seed}",
            accession_number=f"SYN{prefix}{seed:07d}"[:16],
            study_description=study_description or default,
        )

    def series_instance_uid(self, series_number: int) -> str:
        return _uid(self.kind, str(self.seed), "series", str(series_number))

    def sop_instance_uid(self, series_number: int, index: int, variant: str = "") -> str:
        """The SOP Instance UID of image ``index`` of series ``series_number``.

        ``variant`` tells apart instances that share both numbers, e.g. the For
        Processing twin of a For Presentation mammogram.
        """
        parts = ("instance", str(series_number), str(index), *((variant,) if variant else ()))
        return _uid(self.kind, str(self.seed), *parts)


def chest_wall_on_left(laterality: LateralityValue) -> bool:
    """Whether a mammogram of this breast is stored with the chest wall at column 0.

    Left breast: yes (PatientOrientation ``A\\R`` / ``A\\FR``); right breast: no, its
    chest wall is at the last column (``P\\L`` / ``P\\FL``).
    """
    return Laterality(laterality) is Laterality.LEFT


def patient_orientation(laterality: LateralityValue, view: MammographyView) -> list[str]:
    """PatientOrientation (0020,0020) of a mammogram stored as :func:`chest_wall_on_left` says.

    The first value is the direction of increasing column index, the second of
    increasing row index (PS3.3 C.7.6.1.1.1); MLO rows run towards the feet and
    the opposite side (the projection is oblique).
    """
    left = Laterality(laterality) is Laterality.LEFT
    across = "A" if left else "P"
    if view == "CC":
        return [across, "R" if left else "L"]
    if view == "MLO":
        return [across, "FR" if left else "FL"]
    raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}")


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _patient_study(ds: Dataset, study: StudyInfo) -> None:
    # Patient (PS3.3 C.7.1.1), General Study (C.7.2.1), Patient Study (C.7.2.2)
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F" if study.kind == "mammo" else "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic image, no patient"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = _DATE
    ds.StudyTime = _TIME
    ds.StudyID = f"S{study.seed}"
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.study_description


def _series_equipment(
    ds: Dataset, study: StudyInfo, modality: str, series_number: int, description: str
) -> None:
    # General Series (C.7.3.1), General and Enhanced General Equipment (C.7.5.1, C.7.5.2)
    ds.Modality = modality
    ds.SeriesInstanceUID = study.series_instance_uid(series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{description} - {NOT_FOR_CLINICAL_USE}"
    ds.SeriesDate = _DATE
    ds.SeriesTime = _TIME
    ds.Manufacturer = "cad-node synthetic"
    ds.ManufacturerModelName = f"synth {modality.lower()}"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "cad-node"


def _image_common(
    ds: Dataset, study: StudyInfo, series_number: int, instance_number: int, variant: str = ""
) -> None:
    # SOP Common (C.12.1), General Image (C.7.6.1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPInstanceUID = study.sop_instance_uid(series_number, instance_number, variant)
    ds.InstanceNumber = instance_number
    ds.ContentDate = _DATE
    ds.ContentTime = _TIME
    ds.AcquisitionDate = _DATE
    ds.AcquisitionTime = _TIME
    ds.AcquisitionDateTime = _DATE + _TIME
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = NOT_FOR_CLINICAL_USE
    ds.AcquisitionContextSequence = DicomSequence()


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ds.SOPClassUID)
    meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


def _check_mammogram_pixels(pixels: npt.NDArray[np.uint16]) -> None:
    if pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise ValueError(f"a mammogram is a 2D uint16 array, got {pixels.dtype} {pixels.shape}")
    if pixels.size and int(pixels.max()) >= 1 << MAMMOGRAPHY_BITS_STORED:
        raise ValueError(f"mammogram pixels exceed {MAMMOGRAPHY_BITS_STORED} bits stored")


def _mammography_pixels(ds: Dataset, pixels: npt.NDArray[np.uint16]) -> None:
    # Image Pixel (C.7.6.3), DX Image (C.8.11.3): 12 bits stored in 16, linear to display
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = MAMMOGRAPHY_BITS_STORED
    ds.HighBit = MAMMOGRAPHY_BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1  # brighter = more attenuation
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _mammography_window(ds: Dataset, pixels: npt.NDArray[np.uint16]) -> None:
    # VOI LUT (C.11.2): the window spans the stored values actually used
    low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 4095)
    ds.WindowCenter = f"{(low + high + 1) / 2:g}"
    ds.WindowWidth = f"{max(high - low + 1, 2)}"
    ds.VOILUTFunction = "LINEAR"


def _mammography_acquisition(ds: Dataset, pixel_spacing_mm: float) -> None:
    # DX Detector (C.8.11.4), DX Positioning (C.8.11.5), Mammography Image (C.8.11.7)
    spacing = [f"{pixel_spacing_mm:.6g}"] * 2
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "synthetic: no magnification"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.BodyPartExamined = "BREAST"
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.KVP = "28"
    ds.AnatomicRegionSequence = DicomSequence([_code_item(BREAST)])


def _view(ds: Dataset, laterality: Laterality, view: MammographyView) -> None:
    # DX Anatomy Imaged (C.8.11.2), Mammography Image: ViewCodeSequence from CID 4014
    view_item = _code_item(_VIEW_CODES[view])
    view_item.ViewModifierCodeSequence = DicomSequence()
    ds.ImageLaterality = laterality.value
    ds.ViewPosition = view
    ds.ViewCodeSequence = DicomSequence([view_item])
    ds.PatientOrientation = patient_orientation(laterality, view)


def _variant(for_processing: bool) -> str:
    return "for-processing" if for_processing else ""


def mammogram_dataset(
    pixels: npt.NDArray[np.uint16],
    *,
    study: StudyInfo,
    laterality: LateralityValue,
    view: MammographyView,
    series_number: int,
    instance_number: int,
    pixel_spacing_mm: float,
    for_processing: bool = False,
) -> Dataset:
    """A Digital Mammography X-Ray Image (PS3.3 A.26.1) of one view of one breast.

    Parameters
    ----------
    pixels
        ``(rows, columns)`` uint16 values 0 .. 4095 (12 bits stored), MONOCHROME2,
        laid out as :func:`chest_wall_on_left` says.
    laterality, view
        ImageLaterality (0020,0062) and ViewPosition (0018,5101).
    for_processing
        Write the For Processing SOP class (raw detector data); otherwise For
        Presentation, which adds a VOI LUT window.

    Raises
    ------
    ValueError
        Pixels that are not 2D uint16 within 12 bits, an unknown view, a spacing <= 0.
    """
    _check_mammogram_pixels(pixels)
    if view not in _VIEW_CODES:
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}")
    if pixel_spacing_mm <= 0:
        raise ValueError(f"pixel spacing must be positive, got {pixel_spacing_mm}")
    side = Laterality(laterality)
    ds = Dataset()
    ds.SOPClassUID = (
        DigitalMammographyXRayImageStorageForProcessing
        if for_processing
        else DigitalMammographyXRayImageStorageForPresentation
    )
    _image_common(ds, study, series_number, instance_number, _variant(for_processing))
    _patient_study(ds, study)
    _series_equipment(ds, study, "MG", series_number, f"Synthetic mammogram {side}{view}")
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    _mammography_pixels(ds, pixels)
    if not for_processing:
        _mammography_window(ds, pixels)
    _mammography_acquisition(ds, pixel_spacing_mm)
    _view(ds, side, view)
    _file_meta(ds)
    return ds


def _check_fundus_pixels(pixels: npt.NDArray[np.uint8]) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(
            f"a fundus photograph is a (rows, columns, 3) uint8 array, got "
            f"{pixels.dtype} {pixels.shape}"
        )


def _fundus_pixels(ds: Dataset, pixels: npt.NDArray[np.uint8]) -> None:
    # Image Pixel (C.7.6.3), Multi-frame (C.7.6.6), Ophthalmic Photography Image (C.8.17.2)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = "0"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _synchronization(ds: Dataset, study: StudyInfo, series_number: int) -> None:
    # Synchronization (C.7.4.2): dciodvfy wants it for OP; the camera has no external clock
    ds.SynchronizationFrameOfReferenceUID = _uid(
        study.kind, str(study.seed), "synchronization", str(series_number)
    )
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"


def _ocular_region(ds: Dataset, laterality: Laterality) -> None:
    # Ocular Region Imaged (C.8.17.5): the retina, CID 4209
    ds.ImageLaterality = laterality.value
    ds.PatientOrientation = ""  # type 2C: no patient-relative axes for a fundus photograph
    ds.AnatomicRegionSequence = DicomSequence([_code_item(RETINA)])


def _fundus_acquisition(
    ds: Dataset, pixel_spacing_mm: float | None, field_of_view_deg: float
) -> None:
    # Ophthalmic Photography Acquisition Parameters (C.8.17.4), Photographic Parameters (C.8.17.3)
    ds.PatientEyeMovementCommanded = "NO"
    ds.HorizontalFieldOfView = float(field_of_view_deg)
    ds.PupilDilated = "NO"  # MydriaticAgentSequence (type 2C) only when dilated
    ds.RefractiveStateSequence = DicomSequence()
    ds.EmmetropicMagnification = 1.0
    ds.IntraOcularPressure = None
    ds.AcquisitionDeviceTypeCodeSequence = DicomSequence([_code_item(FUNDUS_CAMERA)])
    ds.IlluminationTypeCodeSequence = DicomSequence()
    ds.LightPathFilterTypeStackCodeSequence = DicomSequence()
    ds.ImagePathFilterTypeStackCodeSequence = DicomSequence()
    ds.LensesCodeSequence = DicomSequence()
    ds.DetectorType = "CMOS"
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = [f"{pixel_spacing_mm:.6g}"] * 2


def fundus_dataset(
    pixels: npt.NDArray[np.uint8],
    *,
    study: StudyInfo,
    laterality: LateralityValue,
    series_number: int,
    instance_number: int,
    pixel_spacing_mm: float | None,
    field_of_view_deg: float = 45.0,
) -> Dataset:
    """An Ophthalmic Photography 8 Bit Image (PS3.3 A.39.1): one colour fundus photograph.

    Parameters
    ----------
    pixels
        ``(rows, columns, 3)`` uint8 RGB, stored with PlanarConfiguration 0 (pixel-interleaved).
    laterality
        ImageLaterality (0020,0062): the eye, R (OD) or L (OS).
    pixel_spacing_mm
        PixelSpacing (0028,0030) at the retina, or None when unknown.
    field_of_view_deg
        HorizontalFieldOfView (0022,000C) of the camera.

    Raises
    ------
    ValueError
        Pixels that are not (rows, columns, 3) uint8, a spacing or field of view <= 0.
    """
    _check_fundus_pixels(pixels)
    if pixel_spacing_mm is not None and pixel_spacing_mm <= 0:
        raise ValueError(f"pixel spacing must be positive, got {pixel_spacing_mm}")
    if field_of_view_deg <= 0:
        raise ValueError(f"field of view must be positive, got {field_of_view_deg}")
    side = Laterality(laterality)
    ds = Dataset()
    ds.SOPClassUID = OphthalmicPhotography8BitImageStorage
    _image_common(ds, study, series_number, instance_number)
    _patient_study(ds, study)
    _series_equipment(ds, study, "OP", series_number, f"Synthetic fundus {side.eye}")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _fundus_pixels(ds, pixels)
    _synchronization(ds, study, series_number)
    _ocular_region(ds, side)
    _fundus_acquisition(ds, pixel_spacing_mm, field_of_view_deg)
    _file_meta(ds)
    return ds


def compress_jpeg_baseline(ds: Dataset, quality: int = 90) -> Dataset:
    """A copy of a one-frame RGB 8-bit image, JPEG baseline (PS3.5 A.4.1) as YBR_FULL_422.

    Many fundus cameras store photographs this way: Pillow encodes the RGB pixels
    as JFIF YCbCr with 4:2:2 chroma subsampling, which PS3.5 8.2.1 says to label
    YBR_FULL_422; the lossy compression is recorded (PS3.3 C.7.6.1.1.5).
    """
    if ds.PhotometricInterpretation != "RGB" or int(ds.BitsAllocated) != 8:
        raise ValueError("JPEG baseline compression needs an 8-bit RGB image")
    rgb = ds.pixel_array
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=quality, subsampling=1)
    compressed = copy.deepcopy(ds)
    compressed.PixelData = encapsulate([buffer.getvalue()])
    compressed["PixelData"].VR = "OB"
    compressed.PhotometricInterpretation = "YBR_FULL_422"
    compressed.LossyImageCompression = "01"
    compressed.LossyImageCompressionRatio = f"{rgb.nbytes / len(buffer.getvalue()):.4g}"
    compressed.LossyImageCompressionMethod = "ISO_10918_1"
    compressed.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return compressed


def write_instance(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (PS3.10) atomically and return ``path``."""
    write_dataset_atomically(ds, path)
    return path


def write_mammo_study(
    out_dir: Path,
    study: StudyInfo,
    views: Mapping[tuple[LateralityValue, MammographyView], npt.NDArray[np.uint16]],
    *,
    pixel_spacing_mm: float,
    for_processing: bool = False,
    series_number: int | None = None,
) -> list[Path]:
    """Write the views of one mammography study as one series, ``MG_<lat><view>.dcm`` each.

    ``views`` maps (laterality, view) to pixels, e.g. the four screening views
    ``("R", "CC")``, ``("L", "CC")``, ``("R", "MLO")``, ``("L", "MLO")``; instance
    numbers follow the mapping's order.  The series number defaults to 1 for
    presentation and 2 for processing images (``MG_<lat><view>_RAW.dcm``).
    """
    if series_number is None:
        series_number = 2 if for_processing else 1
    paths = []
    for number, ((laterality, view), pixels) in enumerate(views.items(), start=1):
        ds = mammogram_dataset(
            pixels,
            study=study,
            laterality=laterality,
            view=view,
            series_number=series_number,
            instance_number=number,
            pixel_spacing_mm=pixel_spacing_mm,
            for_processing=for_processing,
        )
        name = f"MG_{Laterality(laterality)}{view}{'_RAW' if for_processing else ''}.dcm"
        paths.append(write_instance(ds, out_dir / name))
    return paths


def write_fundus_study(
    out_dir: Path,
    study: StudyInfo,
    photographs: Sequence[tuple[LateralityValue, npt.NDArray[np.uint8]]],
    *,
    pixel_spacing_mm: float | None,
    field_of_view_deg: float = 45.0,
    series_number: int = 1,
) -> list[Path]:
    """Write the photographs of one fundus exam as one series, ``OP_<eye>_<n>.dcm`` each.

    ``photographs`` lists (laterality, RGB pixels); an eye may have several
    (e.g. macula- and disc-centred fields).
    """
    paths = []
    for number, (laterality, pixels) in enumerate(photographs, start=1):
        ds = fundus_dataset(
            pixels,
            study=study,
            laterality=laterality,
            series_number=series_number,
            instance_number=number,
            pixel_spacing_mm=pixel_spacing_mm,
            field_of_view_deg=field_of_view_deg,
        )
        name = f"OP_{Laterality(laterality).eye}_{number:02d}.dcm"
        paths.append(write_instance(ds, out_dir / name))
    return paths

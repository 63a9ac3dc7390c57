"""The inputs the result-builder tests share: synthetic exams, masks, heatmaps and findings.

One place for what the SR, SEG, Parametric Map, KOS, GSPS and overlay tests feed the
builders: the four-view mammogram and the fundus photographs (``cad_node.synth``), CT
slices, disks and Gaussian heatmaps, planar findings, and the sources as the worker holds
them (read back without Pixel Data).  Where the tests' data differ, the difference is a
parameter here, so each test still says which data its assertions are about.
"""

import copy
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cad_node.domain import FindingType, ImageVolume
from cad_node.domain.image_sets import (
    Assessment,
    AssessmentKind,
    ExplanationMap,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarMask,
    PlanarResult,
)
from cad_node.domain.results import ModelReport, planar_report, volume_report
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.results.options import ResultOptions
from cad_node.results.sources import prepared_headers
from cad_node.results.tracking import Tracking, finding_tracking
from cad_node.results.uids import ResultUids, result_uids
from cad_node.synth.dicom_planar import (
    StudyInfo,
    fundus_dataset,
    mammogram_dataset,
    write_instance,
)
from tests.dicom_validation import assert_valid_dicom

if TYPE_CHECKING:
    from tests.unit.test_results_objects import Nodule

MG_SHAPE = (96, 72)
MG_SPACING_MM = 0.2
OP_SHAPE = (80, 88)
OP_SPACING_MM = 0.012
VIEWS = (("R", "CC"), ("R", "MLO"), ("L", "CC"), ("L", "MLO"))
"""The four screening views in the order the tests index them: R CC, R MLO, L CC, L MLO."""

BRIGHT_FUNDUS = (120, 40, 20)
"""Red, green and blue of a photograph's top left corner at seed 0 (blue steps 10 a seed)."""
DIM_FUNDUS = (100, 30, 10)

CT_SHAPE = (64, 64)
CT_SPACING = (2.5, 0.8, 0.7)
"""(between slices, rows, columns) in mm: not square, to catch swapped axes."""
CT_ORIGIN = np.array([-22.4, -25.6, -30.0])


# --- encoding ----------------------------------------------------------------------------------


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def written(datasets: Sequence[Dataset], folder: Path) -> list[Dataset]:
    """Each dataset saved in ``folder``, checked with dciodvfy and read back."""
    read: list[Dataset] = []
    for number, dataset in enumerate(datasets):
        path = folder / f"object{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
        read.append(pydicom.dcmread(path))
    return read


def headers_only(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The source instances as the worker holds them: read back without Pixel Data."""
    return [pydicom.dcmread(io.BytesIO(encode(ds)), stop_before_pixels=True) for ds in datasets]


# --- masks and maps ----------------------------------------------------------------------------


def disk(
    shape: tuple[int, int], centre: tuple[float, float], radius: float
) -> npt.NDArray[np.bool_]:
    rows, columns = np.indices(shape)
    return np.asarray((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2)


def heatmap(
    shape: tuple[int, int], centre: tuple[float, float], row_scale: float = 1.0
) -> npt.NDArray[np.float32]:
    """A Gaussian blob in [0, 1]; ``row_scale`` stretches it along the rows."""
    rows, columns = np.indices(shape)
    distance2 = ((rows - centre[0]) / row_scale) ** 2 + (columns - centre[1]) ** 2
    return np.exp(-distance2 / (2 * 8.0**2)).astype(np.float32)


def planar_finding(
    finding_type: FindingType,
    image_uid: str,
    laterality: Laterality,
    full: npt.NDArray[np.bool_],
    probability: float = 0.8,
    *,
    spacing_mm: float | None = None,
    diameter: bool = False,
    frame_number: int | None = None,
) -> PlanarFinding:
    """A finding of ``full``'s mask; with ``spacing_mm`` its area (and diameter) measured."""
    mask = PlanarMask.from_full(full)
    measured = spacing_mm is not None
    return PlanarFinding(
        finding_type=finding_type,
        sop_instance_uid=image_uid,
        laterality=laterality,
        mask=mask,
        probability=probability,
        area_mm2=mask.pixel_count * spacing_mm**2 if spacing_mm is not None else None,
        diameter_mm=max(mask.mask.shape) * spacing_mm if measured and diameter else None,
        frame_number=frame_number,
    )


def breast_assessments(r_cc: str, r_mlo: str, l_cc: str, l_mlo: str) -> tuple[Assessment, ...]:
    """The right breast suspicious (0.82), the left not (0.07), at threshold 0.5."""
    return (
        Assessment(
            AssessmentKind.BREAST_SUSPICION, Laterality.RIGHT, 0.82, (r_cc, r_mlo), threshold=0.5
        ),
        Assessment(
            AssessmentKind.BREAST_SUSPICION, Laterality.LEFT, 0.07, (l_cc, l_mlo), threshold=0.5
        ),
    )


def dr_assessments(od: str, os_: str, os_frames: Sequence[int] = ()) -> tuple[Assessment, ...]:
    """ICDR grade 0 on OD; grade 3 on OS, graded on each of ``os_frames`` where given."""
    return (
        Assessment(
            AssessmentKind.DIABETIC_RETINOPATHY,
            Laterality.RIGHT,
            0.2,
            (od,),
            grade=0,
            class_probabilities=(0.85, 0.1, 0.03, 0.01, 0.01),
        ),
        Assessment(
            AssessmentKind.DIABETIC_RETINOPATHY,
            Laterality.LEFT,
            2.9,
            (os_,) * max(1, len(os_frames)),
            grade=3,
            class_probabilities=(0.01, 0.04, 0.15, 0.7, 0.1),
            frame_numbers=tuple(os_frames),
        ),
    )


def dr_explanations(od: str, os_: str, row_scale: float = 1.0) -> tuple[ExplanationMap, ...]:
    """A Grad-CAM map of each eye's grade: OD's centred at (40, 44), OS's at (30, 60)."""
    return (
        ExplanationMap(od, heatmap(OP_SHAPE, (40, 44), row_scale), "Grad-CAM", "ICDR grade 0"),
        ExplanationMap(os_, heatmap(OP_SHAPE, (30, 60), row_scale), "Grad-CAM", "ICDR grade 3"),
    )


def assert_blended_explanation(capture: Dataset, explanation: ExplanationMap) -> None:
    """An explanation image of ``explanation``: jet red at the map's peak, a caption band."""
    assert explanation.target in capture.ImageComments
    pixels = capture.pixel_array.astype(np.int64)
    hot = np.unravel_index(np.argmax(explanation.heatmap), explanation.heatmap.shape)
    red, _, blue = pixels[hot]
    assert red > blue  # jet: red where the map peaks
    caption = pixels[-max(10, pixels.shape[0] // 20) :]
    assert (caption.sum(axis=2) == 0).mean() > 0.5
    assert (caption > 128).any()


# --- planar exams ------------------------------------------------------------------------------


def mammogram_pixels(index: int, shape: tuple[int, int] = MG_SHAPE) -> npt.NDArray[np.uint16]:
    rows, columns = np.indices(shape)
    return (600 + 20 * rows + 10 * columns + 50 * index).astype(np.uint16)


def mammograms(
    seed: int = 15, shape: tuple[int, int] = MG_SHAPE, views: Sequence[tuple[str, str]] = VIEWS
) -> list[Dataset]:
    """One series of ``views``, instance i + 1 the i-th view, 0.2 mm pixels."""
    study = StudyInfo.from_seed(seed, "mammo")
    return [
        mammogram_dataset(
            mammogram_pixels(i, shape),
            study=study,
            laterality=side,
            view=view,
            series_number=1,
            instance_number=i + 1,
            pixel_spacing_mm=MG_SPACING_MM,
        )
        for i, (side, view) in enumerate(views)
    ]


def fundus_pixels(
    seed: int, base: tuple[int, int, int] = BRIGHT_FUNDUS, shape: tuple[int, int] = OP_SHAPE
) -> npt.NDArray[np.uint8]:
    rows, columns = np.indices(shape)
    red, green, blue = base
    rgb = np.stack([red + rows, green + columns // 2, np.full(shape, blue + 10 * seed)], axis=2)
    return rgb.astype(np.uint8)


def noisy_mammogram_pixels(seed: int = 0) -> npt.NDArray[np.uint16]:
    """40 x 32 pixels of 12-bit noise: what a loader keeps or loses shows in every pixel."""
    return np.random.default_rng(seed).integers(0, 4096, size=(40, 32)).astype(np.uint16)


def noisy_fundus_pixels(seed: int = 0) -> npt.NDArray[np.uint8]:
    """36 x 44 RGB pixels of 8-bit noise."""
    return np.random.default_rng(seed).integers(0, 256, size=(36, 44, 3)).astype(np.uint8)


def smooth_rgb_pixels() -> npt.NDArray[np.uint8]:
    """48 x 64 RGB ramps: what JPEG baseline keeps close."""
    rows, columns = np.mgrid[0:48, 0:64]
    return np.stack([rows * 4, columns * 3, 255 - rows * 2], axis=-1).astype(np.uint8)


def write_valid(ds: Dataset, path: Path) -> Path:
    """``ds`` written to ``path`` as a file dciodvfy finds valid."""
    write_instance(ds, path)
    assert_valid_dicom(path)
    return path


def fundus_photograph(
    seed: int,
    side: str,
    study: StudyInfo,
    series_number: int,
    *,
    instance_number: int = 1,
    base: tuple[int, int, int] = BRIGHT_FUNDUS,
) -> Dataset:
    return fundus_dataset(
        fundus_pixels(seed, base),
        study=study,
        laterality=side,
        series_number=series_number,
        instance_number=instance_number,
        pixel_spacing_mm=OP_SPACING_MM,
    )


def fundus_exam(seed: int = 15, base: tuple[int, int, int] = BRIGHT_FUNDUS) -> list[Dataset]:
    """OD and OS, one series per eye: the image set spans two series."""
    study = StudyInfo.from_seed(seed, "fundus")
    return [fundus_photograph(i, side, study, i + 1, base=base) for i, side in enumerate("RL")]


def stacked_frames(first: Dataset, *others: Dataset) -> Dataset:
    """A copy of ``first`` (native pixels) holding the frames of all, in order."""
    stacked = copy.deepcopy(first)
    stacked.NumberOfFrames = 1 + len(others)
    stacked.PixelData = b"".join(bytes(ds.PixelData) for ds in (first, *others))
    return stacked


def stereo_exam(seed: int = 15) -> list[Dataset]:
    """OD as one photograph, OS as a two-frame stereo pair in one instance (dim pixels)."""
    study = StudyInfo.from_seed(seed, "fundus")
    od, os_1, os_2 = (
        fundus_photograph(seed, side, study, 1, instance_number=number, base=DIM_FUNDUS)
        for seed, side, number in ((0, "R", 1), (1, "L", 2), (2, "L", 2))
    )
    return [od, stacked_frames(os_1, os_2)]


def stereo_pair(datasets: Sequence[Dataset]) -> list[Dataset]:
    """A fundus exam with its left eye's photograph as a two-frame instance (one frame twice)."""
    right, left = datasets
    return [right, stacked_frames(left, left)]


# --- CT ----------------------------------------------------------------------------------------


def ct_slice(k: int, uids: Mapping[str, str], pixel_step: int = 0) -> Dataset:
    """Axial slice ``k`` of a 64 x 64 CT series, pixel value 200 + k * ``pixel_step``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[uids["series"], str(k)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "Synthetic^Phantom",
        "SYNTH-0001",
        "",
        "O",
    )
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = (
        "CT",
        "cad-node tests",
        3,
        k + 1,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined, ds.KVP, ds.AcquisitionNumber = "CHEST", "120", 1
    ds.PositionReferenceIndicator, ds.PatientPosition = "", "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    z = float(CT_ORIGIN[2] + k * CT_SPACING[0])
    ds.ImagePositionPatient = [float(CT_ORIGIN[0]), float(CT_ORIGIN[1]), z]
    ds.SliceLocation = z
    ds.PixelSpacing = list(CT_SPACING[1:])
    ds.SliceThickness = CT_SPACING[0]
    ds.Rows, ds.Columns = CT_SHAPE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.PixelData = np.full(CT_SHAPE, 200 + pixel_step * k, dtype=np.uint16).tobytes()
    return ds


def ct_affine() -> npt.NDArray[np.float64]:
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, CT_SPACING[0])
    affine[:3, 1] = (0.0, CT_SPACING[1], 0.0)
    affine[:3, 2] = (CT_SPACING[2], 0.0, 0.0)
    affine[:3, 3] = CT_ORIGIN
    return affine


def ct_volume(series: Sequence[Dataset]) -> ImageVolume:
    """The volume of ``ct_slice`` slices (air everywhere), in the order of their position."""
    ordered = sorted(series, key=lambda ds: float(ds.ImagePositionPatient[2]))
    return ImageVolume(
        voxels=np.full((len(ordered), *CT_SHAPE), -824.0, dtype=np.float32),
        spacing_mm=CT_SPACING,
        affine=ct_affine(),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in ordered),
        series_instance_uid=str(ordered[0].SeriesInstanceUID),
        frame_of_reference_uid=str(ordered[0].FrameOfReferenceUID),
    )


def enhanced_ct(
    datasets: Sequence[Dataset],
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The slices as one Legacy Converted Enhanced CT image (series 4), written and read back."""
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        [copy.deepcopy(ds) for ds in datasets],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=4,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
    )
    return pydicom.dcmread(io.BytesIO(encode(image)))


# --- a report and what its builders need -------------------------------------------------------


@dataclass(frozen=True)
class ReportInputs:
    """A report with what its builders need, and the datasets it came from."""

    datasets: list[Dataset]
    report: ModelReport
    headers: list[Dataset]
    tracking: tuple[Tracking, ...]
    uids: ResultUids
    options: ResultOptions

    @classmethod
    def of(
        cls, datasets: list[Dataset], report: ModelReport, uids: ResultUids, options: ResultOptions
    ) -> Self:
        headers = prepared_headers(headers_only(datasets), report.grid)
        return cls(datasets, report, headers, finding_tracking(report, uids), uids, options)

    @classmethod
    def of_ct(cls, nodules: "Sequence[Nodule] | None" = None, job_key: str = "job-1") -> Self:
        """The lung case of ``test_results_objects`` (its nodules unless given)."""
        from tests.unit.test_results_objects import OPTIONS, make_case

        case = make_case(job_key=job_key) if nodules is None else make_case(nodules, job_key)
        report = volume_report(case.volume, case.result, str(case.series[0].StudyInstanceUID))
        return cls.of(case.series, report, case.uids, OPTIONS)

    @classmethod
    def of_planar(
        cls, datasets: list[Dataset], result_of: Callable[[ImageSet], PlanarResult], job_key: str
    ) -> Self:
        """A planar exam's report, at the time of ``test_planar_results``."""
        from tests.unit.test_planar_results import OPTIONS

        image_set = load_image_set(datasets)
        report = planar_report(image_set, result_of(image_set))
        return cls.of(datasets, report, result_uids(job_key), OPTIONS)

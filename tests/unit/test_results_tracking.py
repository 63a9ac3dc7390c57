"""Tracking UIDs carried from predecessor SRs to the same lesion of a re-run.

The predecessor SRs are built with highdicom directly (TID 1500 with TID 1410 groups as
cad-node writes them), written, validated with dciodvfy and read back, so the tests
depend neither on the SR builder nor on pydicom objects that never went through a file.
"""

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from cad_node.domain.findings import Finding, FindingType, MaskBox, ModelIdentity, ModelResult
from cad_node.domain.image_sets import (
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarImage,
    PlanarMask,
    PlanarResult,
)
from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import (
    ModelReport,
    Procedure,
    finding_label,
    planar_report,
    volume_report,
)
from cad_node.results import codes
from cad_node.results.tracking import Tracking, finding_tracking, tracked_regions
from cad_node.results.uids import ResultUids, result_uids
from cad_node.synth.dicom_planar import StudyInfo, mammogram_dataset
from tests.dicom_validation import assert_valid_dicom

SLICES = 12
ROWS = COLUMNS = 64
SPACING = (2.5, 0.8, 0.7)
"""(between slices, rows, columns) in mm: not square, to catch swapped axes."""
LATE_SLICE = 5
"""The slice that arrived late: the first run read the series without it."""
CT_MODEL = ModelIdentity("lung-test", "0.0.1", "ab" * 32)
MG_MODEL = ModelIdentity("mammo-test", "0.0.1", "cd" * 32, family="mammography")
MG_SHAPE = (96, 72)
MG_SPACING_MM = 0.2
OLD_UIDS = tuple(f"1.2.826.0.1.3680043.10.1011.{n}" for n in range(1, 5))
"""Tracking UIDs of the predecessors' groups."""


# --- CT inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtSeries:
    headers: list[Dataset]
    study_uid: str
    series_uid: str


def _ct_header(k: int, study: str, series: str, frame: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[series, str(k)])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synth^Track", "T1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, k + 1
    ds.Manufacturer = "cad-node tests"
    return ds


@pytest.fixture(scope="module")
def ct() -> CtSeries:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    return CtSeries([_ct_header(k, study, series, frame) for k in range(SLICES)], study, series)


def _volume(ct: CtSeries, headers: Sequence[Dataset]) -> ImageVolume:
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, SPACING[0])
    affine[:3, 1] = (0.0, SPACING[1], 0.0)
    affine[:3, 2] = (SPACING[2], 0.0, 0.0)
    return ImageVolume(
        voxels=np.full((len(headers), ROWS, COLUMNS), -800.0, dtype=np.float32),
        spacing_mm=SPACING,
        affine=affine,
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in headers),
        series_instance_uid=ct.series_uid,
        frame_of_reference_uid=str(headers[0].FrameOfReferenceUID),
    )


def _nodule(centre: tuple[float, float, float], finding_type: FindingType) -> Finding:
    """A 3x3x3 box finding whose centre of mass is ``centre`` (slice, row, column)."""
    k, r, c = (round(v) for v in centre)
    return Finding(
        finding_type=finding_type,
        centre_index=centre,
        centre_patient_mm=(0.0, 0.0, 0.0),
        diameter_mm=3.0,
        volume_mm3=27.0,
        probability=0.8,
        mask=MaskBox((k - 1, r - 1, c - 1), np.ones((3, 3, 3), dtype=np.bool_)),
    )


def _ct_report(
    ct: CtSeries,
    centres: Sequence[tuple[float, float, float]],
    finding_type: FindingType = FindingType.NODULE,
) -> ModelReport:
    """The re-run's report over every slice, the late one included."""
    volume = _volume(ct, ct.headers)
    findings = tuple(_nodule(centre, finding_type) for centre in centres)
    result = ModelResult(CT_MODEL, findings, ct.series_uid)
    return volume_report(volume, result, ct.study_uid)


# --- predecessor SRs ---------------------------------------------------------------------------

_Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class OldRegion:
    """A TID 1410 group of a predecessor: a SCOORD on ``image`` (a source dataset)."""

    uid: str
    image: Dataset
    graphic_type: hd.sr.GraphicTypeValues
    points: npt.NDArray[np.float64]
    finding_type: Code
    frame: int | None = None


def _circle(column: float, row: float, radius_px: float) -> npt.NDArray[np.float64]:
    x, y = column + 0.5, row + 0.5
    return np.array([[x, y], [x + radius_px, y]])


def _square(column: float, row: float, half_px: float) -> npt.NDArray[np.float64]:
    x, y, h = column + 0.5, row + 0.5, half_px
    return np.array(
        [[x - h, y - h], [x + h, y - h], [x + h, y + h], [x - h, y + h], [x - h, y - h]]
    )


def _group(region: OldRegion, index: int) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    frames = None if region.frame is None else [region.frame]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=region.uid, identifier=f"Old finding {index + 1}"
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=region.graphic_type,
            graphic_data=region.points,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=region.image.SOPClassUID,
                referenced_sop_instance_uid=region.image.SOPInstanceUID,
                referenced_frame_numbers=frames,
            ),
        ),
        finding_type=region.finding_type,
    )


def _predecessor(
    regions: Sequence[OldRegion],
    evidence: Sequence[Dataset],
    procedure: Procedure,
    tmp_path: Path,
) -> Dataset:
    """A TID 1500 Comprehensive 3D SR with one group per region: written, validated, read back."""
    groups = [_group(region, i) for i, region in enumerate(regions)]
    return _written_sr(groups, evidence, procedure, tmp_path)


def _written_sr(
    groups: Sequence[_Group],
    evidence: Sequence[Dataset],
    procedure: Procedure,
    tmp_path: Path,
) -> Dataset:
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=codes.procedure_code(procedure),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=90,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="cad-node tests",
    )
    path = tmp_path / f"predecessor-{sr.SOPInstanceUID}.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    return pydicom.dcmread(path)


def _nodule_circle(
    uid: str, image: Dataset, column: float, row: float, radius_px: float = 4.0
) -> OldRegion:
    return OldRegion(
        uid,
        image,
        hd.sr.GraphicTypeValues.CIRCLE,
        _circle(column, row, radius_px),
        codes.finding_type_code(FindingType.NODULE),
    )


def _uids_of(tracking: Sequence[Tracking]) -> list[str]:
    return [t.uid for t in tracking]


# --- CT: a re-run after a late slice -----------------------------------------------------------


def test_a_rerun_keeps_the_uid_of_a_lesion_moved_a_slice_and_two_pixels(
    ct: CtSeries, tmp_path: Path
) -> None:
    # First run without the late slice: the lesion was on the SOP instance of slice 8.
    old_headers = [ds for k, ds in enumerate(ct.headers) if k != LATE_SLICE]
    old = _predecessor(
        [_nodule_circle(OLD_UIDS[0], ct.headers[8], column=30.0, row=20.0)],
        old_headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    # The re-run's finding: one slice further (2.5 mm) and 2 rows (1.6 mm) down.
    report = _ct_report(ct, [(9.0, 22.0, 30.0)])
    uids = result_uids(f"{ct.series_uid}/2/lung-test")

    tracking = finding_tracking(report, uids, [old])

    assert tracking == (Tracking(OLD_UIDS[0], "Nodule 1"),)


def test_a_lesion_30_mm_away_gets_a_new_uid_of_the_job(ct: CtSeries, tmp_path: Path) -> None:
    old = _predecessor(
        [_nodule_circle(OLD_UIDS[0], ct.headers[8], column=50.0, row=20.0)],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    report = _ct_report(ct, [(8.0, 20.0, 50.0 - 30.0 / SPACING[2])])
    uids = result_uids("job-30mm")

    assert finding_tracking(report, uids, [old]) == (Tracking(uids.tracking_uid(0), "Nodule 1"),)


def test_the_old_radius_widens_the_tolerance(ct: CtSeries, tmp_path: Path) -> None:
    # 8 mm off: beyond 5 mm, within a 10 mm radius (about 14 columns).
    old = _predecessor(
        [_nodule_circle(OLD_UIDS[0], ct.headers[8], 30.0, 20.0, radius_px=10.0 / SPACING[2])],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    near = _ct_report(ct, [(8.0, 20.0 + 8.0 / SPACING[1], 30.0)])
    far = _ct_report(ct, [(8.0, 20.0 + 11.0 / SPACING[1], 30.0)])
    uids = result_uids("job-radius")

    assert _uids_of(finding_tracking(near, uids, [old])) == [OLD_UIDS[0]]
    assert _uids_of(finding_tracking(far, uids, [old])) == [uids.tracking_uid(0)]


def test_another_finding_type_at_the_same_place_is_another_lesion(
    ct: CtSeries, tmp_path: Path
) -> None:
    old = _predecessor(
        [_nodule_circle(OLD_UIDS[0], ct.headers[8], column=30.0, row=20.0)],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    report = _ct_report(ct, [(8.0, 20.0, 30.0)], FindingType.MASS)
    uids = result_uids("job-mass")

    assert finding_tracking(report, uids, [old]) == (Tracking(uids.tracking_uid(0), "Mass 1"),)


def test_a_region_on_an_image_outside_the_grid_is_ignored(ct: CtSeries, tmp_path: Path) -> None:
    other = _ct_header(0, ct.study_uid, generate_uid(), generate_uid())
    old = _predecessor(
        [_nodule_circle(OLD_UIDS[0], other, column=30.0, row=20.0)],
        [other],
        Procedure.CT_CHEST,
        tmp_path,
    )
    report = _ct_report(ct, [(1.0, 20.0, 30.0)])
    uids = result_uids("job-other-series")

    assert _uids_of(finding_tracking(report, uids, [old])) == [uids.tracking_uid(0)]


def test_a_frame_of_a_multi_frame_volume_is_matched_by_its_frame_number(
    ct: CtSeries, tmp_path: Path
) -> None:
    enhanced = copy.deepcopy(ct.headers[0])
    enhanced.SOPClassUID = EnhancedCTImageStorage
    volume = ImageVolume(
        voxels=np.full((SLICES, ROWS, COLUMNS), -800.0, dtype=np.float32),
        spacing_mm=SPACING,
        affine=np.diag([SPACING[0], SPACING[1], SPACING[2], 1.0])[[2, 1, 0, 3]],
        sop_instance_uids=(str(enhanced.SOPInstanceUID),) * SLICES,
        series_instance_uid=ct.series_uid,
        frame_of_reference_uid=str(enhanced.FrameOfReferenceUID),
        frame_numbers=tuple(range(1, SLICES + 1)),
    )
    result = ModelResult(CT_MODEL, (_nodule((4.0, 20.0, 30.0), FindingType.NODULE),), ct.series_uid)
    report = volume_report(volume, result, ct.study_uid)
    on_frame_5 = OldRegion(
        OLD_UIDS[0],
        enhanced,
        hd.sr.GraphicTypeValues.CIRCLE,
        _circle(30.0, 20.0, 4.0),
        codes.finding_type_code(FindingType.NODULE),
        frame=5,  # slice 4
    )
    on_frame_10 = OldRegion(
        OLD_UIDS[1],
        enhanced,
        hd.sr.GraphicTypeValues.CIRCLE,
        _circle(30.0, 20.0, 4.0),
        codes.finding_type_code(FindingType.NODULE),
        frame=10,  # slice 9: 12.5 mm away
    )
    uids = result_uids("job-frames")

    near = _predecessor([on_frame_5], [enhanced], Procedure.CT_CHEST, tmp_path)
    far = _predecessor([on_frame_10], [enhanced], Procedure.CT_CHEST, tmp_path)

    assert _uids_of(finding_tracking(report, uids, [near])) == [OLD_UIDS[0]]
    assert _uids_of(finding_tracking(report, uids, [far])) == [uids.tracking_uid(0)]


# --- one-to-one assignment ---------------------------------------------------------------------


def test_two_nearby_lesions_keep_one_uid_each_nearest_pairs_first(
    ct: CtSeries, tmp_path: Path
) -> None:
    # Old A at column 20, B at column 26 (4.2 mm apart).  The second finding is 1 column
    # from A, the first 2 from A and 4 from B: the second takes A, so the first takes B
    # though A is nearer to it.
    old = _predecessor(
        [
            _nodule_circle(OLD_UIDS[0], ct.headers[6], column=20.0, row=24.0, radius_px=2.0),
            _nodule_circle(OLD_UIDS[1], ct.headers[6], column=26.0, row=24.0, radius_px=2.0),
        ],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    report = _ct_report(ct, [(6.0, 24.0, 22.0), (6.0, 24.0, 21.0)])
    uids = result_uids("job-pair")

    assert finding_tracking(report, uids, [old]) == (
        Tracking(OLD_UIDS[1], "Nodule 1"),
        Tracking(OLD_UIDS[0], "Nodule 2"),
    )


def test_one_old_lesion_goes_to_one_new_finding_only(ct: CtSeries, tmp_path: Path) -> None:
    old = _predecessor(
        [_nodule_circle(OLD_UIDS[0], ct.headers[6], column=20.0, row=24.0)],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    # Equally near on both sides: the tie goes to the first finding.
    report = _ct_report(ct, [(6.0, 24.0, 18.0), (6.0, 24.0, 22.0)])
    uids = result_uids("job-tie")

    assert _uids_of(finding_tracking(report, uids, [old])) == [
        OLD_UIDS[0],
        uids.tracking_uid(1),
    ]


def test_a_uid_tracked_by_several_predecessors_is_carried_once(
    ct: CtSeries, tmp_path: Path
) -> None:
    # Run 1 and run 2 tracked the lesion with one UID; run 2 also found a second lesion.
    first = _predecessor(
        [_nodule_circle(OLD_UIDS[0], ct.headers[3], column=20.0, row=20.0)],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    second = _predecessor(
        [
            _nodule_circle(OLD_UIDS[0], ct.headers[3], column=21.0, row=20.0),
            _nodule_circle(OLD_UIDS[1], ct.headers[9], column=30.0, row=30.0),
        ],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    report = _ct_report(ct, [(9.0, 30.0, 31.0), (3.0, 20.0, 21.0), (3.0, 20.0, 23.0)])
    uids = result_uids("job-chain")

    assert _uids_of(finding_tracking(report, uids, [first, second])) == [
        OLD_UIDS[1],
        OLD_UIDS[0],
        uids.tracking_uid(2),
    ]


def test_a_new_uid_never_repeats_a_carried_one(ct: CtSeries, tmp_path: Path) -> None:
    # A predecessor of the same job key tracked its first finding with the UID this
    # job would give its second; the second finding here is a new lesion.
    uids = result_uids("job-same-key")
    old = _predecessor(
        [_nodule_circle(uids.tracking_uid(1), ct.headers[3], column=20.0, row=20.0)],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    report = _ct_report(ct, [(3.0, 20.0, 20.0), (9.0, 30.0, 30.0)])

    tracking = _uids_of(finding_tracking(report, uids, [old]))

    assert tracking == [uids.tracking_uid(1), uids.tracking_uid(1 + 2)]


# --- planar: a mammogram re-read ---------------------------------------------------------------


@dataclass(frozen=True)
class Mammogram:
    datasets: list[Dataset]
    image_set: ImageSet


@pytest.fixture(scope="module")
def mammogram() -> Mammogram:
    study = StudyInfo.from_seed(11, "mammo")
    datasets = [
        mammogram_dataset(
            np.full(MG_SHAPE, 800, dtype=np.uint16),
            study=study,
            laterality="R",
            view=view,
            series_number=1,
            instance_number=i + 1,
            pixel_spacing_mm=MG_SPACING_MM,
        )
        for i, view in enumerate(("CC", "MLO"))
    ]
    images = tuple(
        PlanarImage(
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            pixels=np.full(MG_SHAPE, 800.0, dtype=np.float32),
            pixel_spacing_mm=(MG_SPACING_MM, MG_SPACING_MM),
            laterality=Laterality.RIGHT,
            view_position=str(ds.ViewPosition),
        )
        for ds in datasets
    )
    return Mammogram(datasets, ImageSet(str(datasets[0].StudyInstanceUID), "MG", images))


def _mass(image: PlanarImage, centre: tuple[int, int], finding_type: FindingType) -> PlanarFinding:
    full = np.zeros(MG_SHAPE, dtype=np.bool_)
    r, c = centre
    full[r - 3 : r + 4, c - 3 : c + 4] = True
    return PlanarFinding(
        finding_type=finding_type,
        sop_instance_uid=image.sop_instance_uid,
        laterality=Laterality.RIGHT,
        mask=PlanarMask.from_full(full),
        probability=0.7,
    )


def _mammo_report(
    mammogram: Mammogram, findings: Sequence[tuple[int, tuple[int, int], FindingType]]
) -> ModelReport:
    images = mammogram.image_set.images
    result = PlanarResult(
        model=MG_MODEL,
        study_instance_uid=mammogram.image_set.study_instance_uid,
        findings=tuple(_mass(images[i], centre, kind) for i, centre, kind in findings),
        assessments=(),
    )
    return planar_report(mammogram.image_set, result)


def _mass_outline(uid: str, image: Dataset, column: float, row: float) -> OldRegion:
    return OldRegion(
        uid,
        image,
        hd.sr.GraphicTypeValues.POLYLINE,
        _square(column, row, 3.5),
        codes.finding_type_code(FindingType.MASS),
    )


def test_a_planar_rerun_keeps_the_uid_of_an_outlined_lesion_on_its_image(
    mammogram: Mammogram, tmp_path: Path
) -> None:
    cc = mammogram.datasets[0]
    old = _predecessor(
        [_mass_outline(OLD_UIDS[0], cc, column=50.0, row=40.0)],
        mammogram.datasets,
        Procedure.MAMMOGRAPHY,
        tmp_path,
    )
    report = _mammo_report(
        mammogram,
        [
            (1, (40, 50), FindingType.MASS),  # same place on the other view: another lesion
            (0, (45, 58), FindingType.MASS),  # 1.9 mm off on the old view
        ],
    )
    uids = result_uids("job-mammo")

    assert finding_tracking(report, uids, [old]) == (
        Tracking(uids.tracking_uid(0), "Mass 1"),
        Tracking(OLD_UIDS[0], "Mass 2"),
    )


def test_a_planar_lesion_beyond_the_tolerance_is_new(mammogram: Mammogram, tmp_path: Path) -> None:
    cc = mammogram.datasets[0]
    old = _predecessor(
        [_mass_outline(OLD_UIDS[0], cc, column=20.0, row=20.0)],
        mammogram.datasets,
        Procedure.MAMMOGRAPHY,
        tmp_path,
    )
    # 30 px = 6 mm away; the outline's radius is 1 mm.
    report = _mammo_report(mammogram, [(0, (20, 50), FindingType.MASS)])
    uids = result_uids("job-mammo-far")

    assert _uids_of(finding_tracking(report, uids, [old])) == [uids.tracking_uid(0)]


def test_a_closed_outline_is_centred_on_its_corners_not_its_repeated_first_point(
    mammogram: Mammogram, tmp_path: Path
) -> None:
    cc = mammogram.datasets[0]
    old = _predecessor(
        [_mass_outline(OLD_UIDS[0], cc, column=50.0, row=40.0)],
        mammogram.datasets,
        Procedure.MAMMOGRAPHY,
        tmp_path,
    )

    (region,) = tracked_regions([old])

    assert region.uid == OLD_UIDS[0]
    assert region.image == (str(cc.SOPInstanceUID), None)
    assert region.centre == pytest.approx((50.5, 40.5))
    assert region.finding_type == codes.finding_type_code(FindingType.MASS)


# --- foreign and malformed predecessors --------------------------------------------------------


def _text_item(value: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [_code_item("121106", "DCM", "Comment")]
    item.TextValue = value
    return item


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _foreign_sr() -> Dataset:
    """A Basic Text SR of another vendor: a comment, no measurement groups."""
    sr = Dataset()
    sr.SOPClassUID = BasicTextSRStorage
    sr.ValueType = "CONTAINER"
    sr.ConceptNameCodeSequence = [_code_item("18748-4", "LN", "Diagnostic imaging report")]
    sr.ContentSequence = [_text_item("No tracking here.")]
    return sr


def _malformed(old: Dataset) -> list[Dataset]:
    """Copies of ``old`` broken in the places the reader looks at."""
    broken: list[Dataset] = []

    def group(ds: Dataset) -> Dataset:
        (container,) = [i for i in ds.ContentSequence if _concept(i) == "126010"]
        first: Dataset = container.ContentSequence[0]
        return first

    def scoord(ds: Dataset) -> Dataset:
        items: list[Dataset] = [i for i in group(ds).ContentSequence if i.ValueType == "SCOORD"]
        return items[0]

    def uidref(ds: Dataset) -> Dataset:
        items: list[Dataset] = [i for i in group(ds).ContentSequence if i.ValueType == "UIDREF"]
        return items[0]

    mutations: list[Callable[[Dataset], None]] = [
        lambda ds: delattr(scoord(ds), "GraphicData"),
        lambda ds: setattr(scoord(ds), "GraphicData", [1.0, 2.0, 3.0]),
        lambda ds: setattr(scoord(ds), "GraphicData", [float("nan"), 2.0]),
        lambda ds: setattr(scoord(ds).ContentSequence[0], "ReferencedSOPSequence", []),
        lambda ds: setattr(
            scoord(ds).ContentSequence[0].ReferencedSOPSequence[0], "ReferencedFrameNumber", [1, 2]
        ),
        lambda ds: delattr(scoord(ds), "ContentSequence"),
        lambda ds: _raw(scoord(ds), GRAPHIC_DATA, "FL", b"\x00\x00\x80"),  # not 4n bytes
        lambda ds: _raw(scoord(ds).ContentSequence[0].ReferencedSOPSequence[0], FRAME, "IS", b"x"),
        lambda ds: setattr(uidref(ds), "UID", "not a uid"),
        lambda ds: setattr(uidref(ds), "ConceptNameCodeSequence", []),
        lambda ds: setattr(group(ds), "ContentSequence", []),
        lambda ds: delattr(ds, "ContentSequence"),
    ]
    for mutate in mutations:
        mutated = pydicom.dcmread(_bytes_of(old))
        mutate(mutated)
        broken.append(mutated)
    return broken


GRAPHIC_DATA = Tag(0x0070, 0x0022)
FRAME = Tag(0x0008, 0x1160)


def _raw(dataset: Dataset, tag: BaseTag, vr: str, value: bytes) -> None:
    """Store ``value`` as read from a file, converted only when accessed."""
    dataset._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _concept(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _bytes_of(ds: Dataset) -> DicomBytesIO:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_foreign_and_malformed_predecessors_are_ignored_without_failing(
    ct: CtSeries, tmp_path: Path
) -> None:
    old = _predecessor(
        [_nodule_circle(OLD_UIDS[0], ct.headers[8], column=30.0, row=20.0)],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    report = _ct_report(ct, [(8.0, 20.0, 30.0)])
    uids = result_uids("job-foreign")
    own = (Tracking(uids.tracking_uid(0), "Nodule 1"),)
    unreadable = [_foreign_sr(), Dataset(), *_malformed(old)]

    for predecessor in unreadable:
        assert finding_tracking(report, uids, [predecessor]) == own
    assert _uids_of(finding_tracking(report, uids, [*unreadable, old])) == [OLD_UIDS[0]]


def test_a_group_without_a_region_is_no_candidate(ct: CtSeries, tmp_path: Path) -> None:
    # A TID 1501 group (a "Nodule: Absent" summary) has a Tracking UID but no SCOORD.
    summary = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=OLD_UIDS[2], identifier="Summary"),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.FINDING, value=codes.ABSENT)
        ],
    )
    sr = _written_sr([summary], ct.headers, Procedure.CT_CHEST, tmp_path)

    assert tracked_regions([sr]) == []


# --- determinism -------------------------------------------------------------------------------


def test_a_retry_of_the_same_job_gives_identical_tracking(ct: CtSeries, tmp_path: Path) -> None:
    old = _predecessor(
        [
            _nodule_circle(OLD_UIDS[0], ct.headers[6], column=20.0, row=24.0),
            _nodule_circle(OLD_UIDS[1], ct.headers[6], column=26.0, row=24.0),
        ],
        ct.headers,
        Procedure.CT_CHEST,
        tmp_path,
    )
    centres = [(6.0, 24.0, 23.0), (2.0, 10.0, 10.0), (6.0, 24.0, 23.0)]
    job_key = f"{ct.series_uid}/2/lung-test"

    first = finding_tracking(_ct_report(ct, centres), result_uids(job_key), [old])
    again = finding_tracking(
        _ct_report(ct, centres), result_uids(job_key), [pydicom.dcmread(_bytes_of(old))]
    )

    assert first == again
    assert len(set(_uids_of(first))) == 3
    assert [t.identifier for t in first] == ["Nodule 1", "Nodule 2", "Nodule 3"]


def test_without_predecessors_every_finding_gets_its_job_uid_and_label(ct: CtSeries) -> None:
    report = _ct_report(ct, [(2.0, 10.0, 10.0), (8.0, 30.0, 30.0)])
    uids: ResultUids = result_uids("job-first")

    assert finding_tracking(report, uids) == tuple(
        Tracking(uids.tracking_uid(i), finding_label(finding, i))
        for i, finding in enumerate(report.findings)
    )

"""SEG and SR of a small synthetic CT with spherical nodules: written, read back, validated."""

import datetime
import io
import logging
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import Finding, FindingType, ImageVolume, MaskBox, ModelIdentity, ModelResult
from cad_node.errors import ResultBuildError
from cad_node.results import ResultOptions, build_seg, build_sr, result_uids
from cad_node.results.uids import ResultUids
from tests.dicom_validation import assert_valid_dicom

ROWS = COLUMNS = 64
SLICES = 24
PIXEL_SPACING = (0.8, 0.7)
"""(between rows, between columns) in mm: not square, to catch swapped axes."""
SLICE_SPACING = 2.5
ORIGIN = np.array([-22.4, -25.6, -30.0])
WHEN = datetime.datetime(2026, 11, 25, 14, 30, 15, 123456)
OPTIONS = ResultOptions().at(WHEN)
MODEL = ModelIdentity(name="lung-nodule-test", version="0.0.1", weights_sha256="ab" * 32)


@dataclass(frozen=True)
class Nodule:
    centre_mm: tuple[float, float, float]
    radius_mm: float
    probability: float


NODULES = (
    Nodule((-8.0, -6.0, -12.5), 4.0, 0.91),
    Nodule((6.5, 9.0, 5.0), 6.0, 0.62),
    Nodule((9.0, -12.0, 12.5), 3.0, 0.35),
)


def _ct_slice(k: int, uids: Mapping[str, str]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[uids["series"], str(k)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYNTH-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.Manufacturer = "cad-node tests"
    ds.SeriesNumber = 3
    ds.InstanceNumber = k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [
        float(ORIGIN[0]),
        float(ORIGIN[1]),
        float(ORIGIN[2] + k * SLICE_SPACING),
    ]
    ds.SliceLocation = float(ORIGIN[2] + k * SLICE_SPACING)
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.SliceThickness = SLICE_SPACING
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.PixelData = np.full((ROWS, COLUMNS), 200, dtype=np.uint16).tobytes()
    return ds


def make_ct_series() -> list[Dataset]:
    uids = {name: generate_uid() for name in ("study", "series", "frame")}
    return [_ct_slice(k, uids) for k in range(SLICES)]


def _affine() -> npt.NDArray[np.float64]:
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, SLICE_SPACING)
    affine[:3, 1] = (0.0, PIXEL_SPACING[0], 0.0)
    affine[:3, 2] = (PIXEL_SPACING[1], 0.0, 0.0)
    affine[:3, 3] = ORIGIN
    return affine


def make_volume(series: Sequence[Dataset]) -> ImageVolume:
    ordered = sorted(series, key=lambda ds: float(ds.ImagePositionPatient[2]))
    return ImageVolume(
        voxels=np.full((len(ordered), ROWS, COLUMNS), -824.0, dtype=np.float32),
        spacing_mm=(SLICE_SPACING, *PIXEL_SPACING),
        affine=_affine(),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in ordered),
        series_instance_uid=str(ordered[0].SeriesInstanceUID),
        frame_of_reference_uid=str(ordered[0].FrameOfReferenceUID),
    )


def make_finding(volume: ImageVolume, nodule: Nodule) -> Finding:
    grid = np.indices(volume.shape).reshape(3, -1).T.astype(np.float64)
    points = (volume.affine @ np.c_[grid, np.ones(len(grid))].T).T[:, :3]
    inside = np.linalg.norm(points - np.array(nodule.centre_mm), axis=1) <= nodule.radius_mm
    full = inside.reshape(volume.shape)
    index = np.argwhere(full)
    low, high = index.min(axis=0), index.max(axis=0) + 1
    box = full[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    centre_index = tuple(float(v) for v in index.mean(axis=0))
    voxel_mm3 = float(np.prod(volume.spacing_mm))
    volume_mm3 = box.sum() * voxel_mm3
    return Finding(
        finding_type=FindingType.NODULE,
        centre_index=centre_index,  # type: ignore[arg-type]  # a 3-tuple built from a 3-vector
        centre_patient_mm=volume.index_to_patient(centre_index),  # type: ignore[arg-type]
        diameter_mm=float((6.0 * volume_mm3 / np.pi) ** (1 / 3)),
        volume_mm3=float(volume_mm3),
        probability=nodule.probability,
        mask=MaskBox(offset=(int(low[0]), int(low[1]), int(low[2])), mask=box),
    )


@dataclass(frozen=True)
class Case:
    series: list[Dataset]
    volume: ImageVolume
    result: ModelResult
    uids: ResultUids


def make_case(nodules: Sequence[Nodule] = NODULES, job_key: str = "job-1") -> Case:
    series = make_ct_series()
    volume = make_volume(series)
    findings = tuple(make_finding(volume, nodule) for nodule in nodules)
    result = ModelResult(
        model=MODEL, findings=findings, series_instance_uid=volume.series_instance_uid
    )
    shuffled = list(series)
    random.Random(7).shuffle(shuffled)
    return Case(shuffled, volume, result, result_uids(job_key))


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_and_read(dataset: Dataset, path: Path) -> Dataset:
    dataset.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case()


@pytest.fixture(scope="module")
def seg(case: Case) -> hd.seg.Segmentation:
    return build_seg(
        case.series,
        case.volume,
        case.result,
        case.uids,
        OPTIONS,
    )


# --- SEG ---------------------------------------------------------------------------------------


def test_seg_has_one_tracked_segment_per_finding(case: Case, seg: Dataset, tmp_path: Path) -> None:
    read = hd.seg.Segmentation.from_dataset(write_and_read(seg, tmp_path / "seg.dcm"))

    assert read.SOPInstanceUID == case.uids.seg_sop_instance_uid
    assert read.SeriesInstanceUID == case.uids.seg_series_instance_uid
    assert read.StudyInstanceUID == case.series[0].StudyInstanceUID
    assert read.SegmentationType == "BINARY"
    assert read.number_of_segments == len(NODULES)
    for i, item in enumerate(read.SegmentSequence):
        assert item.SegmentLabel == f"Nodule {i + 1}"
        assert item.TrackingUID == case.uids.tracking_uid(i)
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
        assert item.AnatomicRegionSequence[0].CodeValue == "39607008"
        assert len(item.RecommendedDisplayCIELabValue) == 3
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == MODEL.name
        assert algorithm.AlgorithmVersion == MODEL.version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert MODEL.weights_sha256 in algorithm.AlgorithmParameters
        assert NOT_FOR_CLINICAL_USE in algorithm.AlgorithmParameters
    assert NOT_FOR_CLINICAL_USE in read.SeriesDescription
    assert NOT_FOR_CLINICAL_USE in read.ContentDescription


def test_seg_references_the_source_slices_it_segments(case: Case, seg: Dataset) -> None:
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == case.volume.series_instance_uid
    referenced = {
        item.ReferencedSOPInstanceUID for item in referenced_series.ReferencedInstanceSequence
    }
    with_mask = np.flatnonzero(
        np.any(
            [f.mask.paste(case.volume.shape).any(axis=(1, 2)) for f in case.result.findings], axis=0
        )
    )
    assert referenced == {case.volume.sop_instance_uids[k] for k in with_mask}
    derived_from = {
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert derived_from == referenced
    assert seg.FrameOfReferenceUID == case.volume.frame_of_reference_uid


def test_seg_frames_hold_exactly_the_masks_on_the_right_slices(case: Case, seg: Dataset) -> None:
    slices_with_mask = sum(int(f.mask.mask.any(axis=(1, 2)).sum()) for f in case.result.findings)
    assert seg.NumberOfFrames == slices_with_mask
    read = hd.seg.Segmentation.from_dataset(seg)
    for i, finding in enumerate(case.result.findings):
        expected = finding.mask.paste(case.volume.shape)
        for k in np.flatnonzero(expected.any(axis=(1, 2))):
            pixels = read.get_pixels_by_source_instance(
                source_sop_instance_uids=[case.volume.sop_instance_uids[k]],
                segment_numbers=[i + 1],
            )
            np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), expected[k])


def test_seg_mask_maps_back_to_the_nodule_centre(case: Case, seg: Dataset) -> None:
    points: dict[int, list[npt.NDArray[np.float64]]] = {}
    pixel_array = seg.pixel_array
    shared = seg.SharedFunctionalGroupsSequence[0]
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        origin = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        rows, columns = np.nonzero(pixel_array[frame])
        xyz = origin + np.c_[columns * column_spacing, rows * row_spacing, np.zeros(len(rows))]
        points.setdefault(segment, []).append(xyz)
    for i, nodule in enumerate(NODULES):
        centre = np.concatenate(points[i + 1]).mean(axis=0)
        np.testing.assert_allclose(centre, nodule.centre_mm, atol=1.0)


def test_seg_is_byte_identical_when_rebuilt_from_headers_only(case: Case, seg: Dataset) -> None:
    headers = [
        pydicom.dcmread(io.BytesIO(encode(ds)), stop_before_pixels=True) for ds in case.series
    ]
    assert all("PixelData" not in ds for ds in headers)

    again = build_seg(
        headers,
        case.volume,
        case.result,
        case.uids,
        OPTIONS,
    )

    assert encode(again) == encode(seg)


def test_seg_fills_missing_type_2_attributes_without_touching_the_sources(
    case: Case, tmp_path: Path
) -> None:
    missing = (
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    )
    sources = [pydicom.dcmread(io.BytesIO(encode(ds))) for ds in case.series]
    for ds in sources:
        for keyword in missing:
            delattr(ds, keyword)
    del sources[0].SliceThickness
    before = [encode(ds) for ds in sources]

    seg = build_seg(
        sources,
        case.volume,
        case.result,
        case.uids,
        OPTIONS,
    )

    assert [encode(ds) for ds in sources] == before
    write_and_read(seg, tmp_path / "seg.dcm")


def test_seg_of_another_job_gets_other_uids(case: Case, seg: Dataset) -> None:
    other = build_seg(
        case.series,
        case.volume,
        case.result,
        result_uids("job-2"),
        OPTIONS,
    )
    assert other.SOPInstanceUID != seg.SOPInstanceUID
    assert other.SeriesInstanceUID != seg.SeriesInstanceUID
    assert other.SegmentSequence[0].TrackingUID != seg.SegmentSequence[0].TrackingUID


def test_seg_without_findings_is_refused(case: Case) -> None:
    empty = ModelResult(
        model=MODEL, findings=(), series_instance_uid=case.volume.series_instance_uid
    )
    with pytest.raises(ResultBuildError, match="at least one finding"):
        build_seg(case.series, case.volume, empty, case.uids, ResultOptions())


def test_seg_needs_a_source_image_for_every_slice(case: Case) -> None:
    with pytest.raises(ResultBuildError, match="no source image for slice"):
        build_seg(case.series[1:], case.volume, case.result, case.uids, ResultOptions())


# --- SR ----------------------------------------------------------------------------------------


def _groups(sr: Dataset) -> list[Dataset]:
    (container,) = [
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    return list(container.ContentSequence)


def _item(group: Dataset, code_value: str) -> Dataset:
    items: list[Dataset] = [
        i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == code_value
    ]
    assert len(items) == 1, f"{len(items)} items named {code_value}"
    return items[0]


def _value_types(group: Dataset) -> list[str]:
    return [str(i.ValueType) for i in group.ContentSequence]


@pytest.fixture(scope="module")
def sr(case: Case, seg: Dataset) -> hd.sr.Comprehensive3DSR:
    return build_sr(
        case.series,
        case.volume,
        case.result,
        seg,
        case.uids,
        OPTIONS,
    )


def test_sr_is_a_tid_1500_report_with_a_device_observer(
    case: Case, sr: Dataset, tmp_path: Path
) -> None:
    read = write_and_read(sr, tmp_path / "sr.dcm")

    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert read.SOPInstanceUID == case.uids.sr_sop_instance_uid
    assert read.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert read.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert NOT_FOR_CLINICAL_USE in read.SeriesDescription
    concepts = {i.ConceptNameCodeSequence[0].CodeValue: i for i in read.ContentSequence}
    assert concepts["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # observer: device
    assert concepts["121013"].TextValue == "cad-node"
    assert concepts["121058"].ConceptCodeSequence[0].CodeValue == "24627-2"  # CT chest
    (library_group,) = concepts["111028"].ContentSequence  # Image Library: the drawn-on slices
    in_library = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in library_group.ContentSequence
    }
    drawn_on = {
        _item(g, "111030").ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for g in _groups(read)
        if "SCOORD" in _value_types(g)
    }
    assert in_library == drawn_on
    content = hd.sr.srread(tmp_path / "sr.dcm").content
    assert isinstance(content, hd.sr.MeasurementReport)
    assert len(content.get_planar_roi_measurement_groups()) == len(NODULES)
    assert len(content.get_volumetric_roi_measurement_groups()) == len(NODULES)


def test_sr_planar_groups_draw_a_circle_on_the_centre_slice(case: Case, sr: Dataset) -> None:
    planar = [g for g in _groups(sr) if "SCOORD" in _value_types(g)]
    assert len(planar) == len(NODULES)
    for i, (group, finding, nodule) in enumerate(
        zip(planar, case.result.findings, NODULES, strict=True)
    ):
        assert _item(group, "112039").TextValue == f"Nodule {i + 1}"
        assert case.uids.tracking_uid(i) == _item(group, "112040").UID
        assert _item(group, "121071").ConceptCodeSequence[0].CodeValue == "27925004"
        assert _item(group, "363698007").ConceptCodeSequence[0].CodeValue == "39607008"
        scoord = _item(group, "111030")
        assert scoord.GraphicType == "CIRCLE"
        sop_instance_uid = (
            scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        )
        k = case.volume.sop_instance_uids.index(sop_instance_uid)
        assert abs(k - finding.centre_index[0]) <= 0.5
        x, y, px, _ = (float(v) for v in scoord.GraphicData)
        centre = case.volume.index_to_patient((k, y - 0.5, x - 0.5))
        np.testing.assert_allclose(centre[:2], nodule.centre_mm[:2], atol=0.5)
        radius_mm = (px - x) * PIXEL_SPACING[1]
        assert nodule.radius_mm * 0.7 < radius_mm <= nodule.radius_mm * 1.1


def test_sr_planar_groups_carry_measurements_with_ucum_units(case: Case, sr: Dataset) -> None:
    planar = [g for g in _groups(sr) if "SCOORD" in _value_types(g)]
    for group, finding in zip(planar, case.result.findings, strict=True):
        measured = {
            i.ConceptNameCodeSequence[0].CodeValue: i.MeasuredValueSequence[0]
            for i in group.ContentSequence
            if i.ValueType == "NUM"
        }
        units = {code: value.MeasurementUnitsCodeSequence[0] for code, value in measured.items()}
        assert float(measured["81827009"].NumericValue) == pytest.approx(
            finding.diameter_mm, abs=0.01
        )
        assert float(measured["118565006"].NumericValue) == pytest.approx(
            finding.volume_mm3, abs=0.01
        )
        assert float(measured["111012"].NumericValue) == pytest.approx(100 * finding.probability)
        assert [(u.CodeValue, u.CodingSchemeDesignator) for u in units.values()] == [
            ("mm", "UCUM"),
            ("mm3", "UCUM"),
            ("%", "UCUM"),
        ]
        algorithm = {
            i.ConceptNameCodeSequence[0].CodeValue: i.TextValue
            for i in group.ContentSequence
            if i.ValueType == "TEXT"
        }
        assert algorithm["111001"] == MODEL.name
        assert algorithm["111003"] == MODEL.version
        assert MODEL.weights_sha256 in algorithm["111002"]
        assert NOT_FOR_CLINICAL_USE in algorithm["111002"]
        family = _item(group, "111000").ConceptCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")


def test_sr_volumetric_groups_reference_the_findings_segments(
    case: Case, sr: Dataset, seg: Dataset
) -> None:
    volumetric = [g for g in _groups(sr) if "SCOORD" not in _value_types(g)]
    assert len(volumetric) == len(NODULES)
    for i, group in enumerate(volumetric):
        assert case.uids.tracking_uid(i) == _item(group, "112040").UID
        reference = _item(group, "121191").ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert reference.ReferencedSegmentNumber == i + 1
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {*case.volume.sop_instance_uids, seg.SOPInstanceUID}


def test_sr_is_byte_identical_when_rebuilt_from_headers_only(
    case: Case, sr: Dataset, seg: Dataset
) -> None:
    headers = [
        pydicom.dcmread(io.BytesIO(encode(ds)), stop_before_pixels=True) for ds in case.series
    ]
    seg_read_back = pydicom.dcmread(io.BytesIO(encode(seg)))

    again = build_sr(
        headers,
        case.volume,
        case.result,
        seg_read_back,
        case.uids,
        OPTIONS,
    )

    assert encode(again) == encode(sr)


def test_sr_without_seg_has_only_planar_groups(case: Case, tmp_path: Path) -> None:
    sr = build_sr(
        case.series,
        case.volume,
        case.result,
        None,
        case.uids,
        OPTIONS,
    )
    write_and_read(sr, tmp_path / "sr.dcm")
    assert all("SCOORD" in _value_types(g) for g in _groups(sr))
    assert len(_groups(sr)) == len(NODULES)


def test_sr_without_findings_is_a_valid_report(case: Case, tmp_path: Path) -> None:
    empty = ModelResult(
        model=MODEL, findings=(), series_instance_uid=case.volume.series_instance_uid
    )

    sr = build_sr(
        case.series,
        case.volume,
        empty,
        None,
        case.uids,
        OPTIONS,
    )

    read = write_and_read(sr, tmp_path / "sr.dcm")
    assert read.ConceptNameCodeSequence[0].CodeValue == "126000"
    (group,) = _groups(read)
    assert case.uids.summary_tracking_uid == _item(group, "112040").UID
    evaluation = _item(group, "27925004")  # Nodule: Absent
    assert evaluation.ConceptCodeSequence[0].CodeValue == "272519000"
    library = _item(read, "111028")  # TID 1500 requires an Image Library with an entry
    (library_group,) = library.ContentSequence
    (entry,) = library_group.ContentSequence
    middle = case.volume.sop_instance_uids[SLICES // 2]
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == middle


def test_sr_rerun_lists_its_predecessor(case: Case, sr: Dataset, tmp_path: Path) -> None:
    earlier = pydicom.dcmread(io.BytesIO(encode(sr)))
    rerun_uids = result_uids("job-1-rerun")

    later = build_sr(
        case.series,
        case.volume,
        case.result,
        None,
        rerun_uids,
        OPTIONS,
        [earlier],
    )

    read = write_and_read(later, tmp_path / "sr.dcm")
    assert read.SOPInstanceUID == rerun_uids.sr_sop_instance_uid != earlier.SOPInstanceUID
    (study,) = read.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == earlier.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == earlier.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
        earlier.SOPInstanceUID
    ]


def test_sr_refuses_a_seg_without_the_findings_segments(case: Case, seg: Dataset) -> None:
    with pytest.raises(ResultBuildError, match="no segment with Tracking UID"):
        build_sr(case.series, case.volume, case.result, seg, result_uids("job-2"), ResultOptions())


def test_building_keeps_the_patient_name_out_of_warnings_and_logs(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    sources = [
        pydicom.dcmread(io.BytesIO(encode(ds)), stop_before_pixels=True) for ds in case.series
    ]
    for ds in sources:
        ds.PatientName = "Zyxwvut"  # one component: highdicom warns, quoting it
    caplog.set_level(logging.DEBUG)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = build_seg(sources, case.volume, case.result, case.uids, ResultOptions())
        build_sr(sources, case.volume, case.result, seg, case.uids, ResultOptions())

    assert not [w for w in caught if "Zyxwvut" in str(w.message)]
    assert "Zyxwvut" not in caplog.text


def test_objects_carry_the_options_date_and_time(seg: Dataset, sr: Dataset) -> None:
    for dataset in (seg, sr):
        for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
            assert str(dataset[keyword].value) == "20261125"
        for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
            assert str(dataset[keyword].value) == "143015.123456"

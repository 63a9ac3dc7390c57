"""Every result object of a small synthetic CT with nodules: written, read back, validated.

The objects come from :func:`~cad_node.results.build.build_volume_objects`, as the worker
builds them: one SEG of all nodules, the TID 1500 SR, the Key Object Selection, and (when
asked for) the burned-in images and the presentation states.  The per-object details are
in the builders' own tests (``test_results_seg.py``, ``test_results_sr.py`` ...); these
tests check what ties the objects together: UIDs, tracking, the display slice, dates.
"""

import datetime
import io
import logging
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    generate_uid,
)

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import Finding, FindingType, ImageVolume, MaskBox, ModelIdentity, ModelResult
from cad_node.domain.results import (
    AnatomicRegion,
    MeasurementKind,
    ModelReport,
    Procedure,
    finding_label,
    images_with_findings,
    volume_report,
)
from cad_node.errors import ResultBuildError
from cad_node.results import codes
from cad_node.results.build import ResultObjects, build_volume_objects
from cad_node.results.options import ResultOptions
from cad_node.results.seg import SEG_CONTENT_LABEL
from cad_node.results.tracking import Tracking, finding_tracking
from cad_node.results.uids import ResultUids, algorithm_device_uid, result_uids
from tests import sr_content as content
from tests.dicom_validation import assert_valid_dicom, assert_valid_sr
from tests.results_inputs import CT_SPACING, ct_slice, ct_volume, encode

SLICES = 24
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


def make_ct_series() -> list[Dataset]:
    uids = {name: generate_uid() for name in ("study", "series", "frame")}
    return [ct_slice(k, uids) for k in range(SLICES)]


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

    @property
    def study_instance_uid(self) -> str:
        return str(self.series[0].StudyInstanceUID)

    @property
    def report(self) -> ModelReport:
        """The report the builders read: the result on the volume's slices."""
        return volume_report(self.volume, self.result, self.study_instance_uid)


def make_case(nodules: Sequence[Nodule] = NODULES, job_key: str = "job-1") -> Case:
    series = make_ct_series()
    volume = ct_volume(series)
    findings = tuple(make_finding(volume, nodule) for nodule in nodules)
    result = ModelResult(
        model=MODEL, findings=findings, series_instance_uid=volume.series_instance_uid
    )
    shuffled = list(series)
    random.Random(7).shuffle(shuffled)
    return Case(shuffled, volume, result, result_uids(job_key))


def write_and_read(dataset: Dataset, path: Path, *, sr_templates: bool = False) -> Dataset:
    """``dataset`` written to ``path``, checked with dciodvfy, and read back.

    With ``sr_templates``, an SR is checked against its templates with PixelMed's
    DicomSRValidator too (some seconds per SR: the main cases only).
    """
    dataset.save_as(path, enforce_file_format=True)
    if sr_templates and dataset.SOPClassUID == Comprehensive3DSRStorage:
        assert_valid_sr(path)
    else:
        assert_valid_dicom(path)
    return pydicom.dcmread(path)


def every_object(objects: ResultObjects) -> list[Dataset]:
    """Every object of one run: SEGs, maps, images, states, the KOS and the SR."""
    kos = [objects.kos] if objects.kos is not None else []
    return [
        *objects.segs,
        *objects.parametric_maps,
        *objects.explanations,
        *objects.overlays,
        *objects.states,
        *kos,
        objects.sr,
    ]


def write_every_object(
    objects: ResultObjects, folder: Path, *, sr_templates: bool = False
) -> dict[str, Dataset]:
    """Every object written, validated (:func:`write_and_read`) and read back, by SOP
    Instance UID."""
    read: dict[str, Dataset] = {}
    for number, dataset in enumerate(every_object(objects)):
        path = folder / f"object{number}.dcm"
        read[str(dataset.SOPInstanceUID)] = write_and_read(dataset, path, sr_templates=sr_templates)
    return read


def build_all(
    case: Case,
    sources: Sequence[Dataset] | None = None,
    *,
    uids: ResultUids | None = None,
    predecessors: Sequence[Dataset] = (),
    options: ResultOptions = OPTIONS,
    result: ModelResult | None = None,
) -> ResultObjects:
    """Every object of the case's result, the burned-in images and presentation states too."""
    return build_volume_objects(
        case.series if sources is None else sources,
        case.volume,
        case.result if result is None else result,
        case.uids if uids is None else uids,
        options,
        predecessors,
        overlay=True,
        gsps=True,
    )


def outline_on_mask(points: npt.NDArray[np.float64], full: npt.NDArray[np.bool_]) -> bool:
    """Whether every (column, row) point lies on the border or inside of a mask pixel.

    Pixel (r, c) covers image coordinates [c, c + 1] x [r, r + 1] (PS3.3 C.10.5.1.2).
    """
    for x, y in points:
        rows = {int(np.floor(y)), int(np.ceil(y)) - 1}
        columns = {int(np.floor(x)), int(np.ceil(x)) - 1}
        if not any(
            0 <= r < full.shape[0] and 0 <= c < full.shape[1] and full[r, c]
            for r in rows
            for c in columns
        ):
            return False
    return True


def polygon_centre(points: npt.NDArray[np.float64]) -> tuple[float, float]:
    """The (column, row) centroid of the area a closed polygon encloses."""
    x, y = points[:-1, 0], points[:-1, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    return float(((x + x1) * cross).sum() / (6 * area)), float(
        ((y + y1) * cross).sum() / (6 * area)
    )


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case()


@pytest.fixture(scope="module")
def report(case: Case) -> ModelReport:
    return case.report


@pytest.fixture(scope="module")
def tracking(case: Case, report: ModelReport) -> tuple[Tracking, ...]:
    return finding_tracking(report, case.uids)


@pytest.fixture(scope="module")
def objects(case: Case) -> ResultObjects:
    return build_all(case)


@pytest.fixture(scope="module")
def written(objects: ResultObjects, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    return write_every_object(objects, tmp_path_factory.mktemp("ct"), sr_templates=True)


@pytest.fixture(scope="module")
def seg(objects: ResultObjects) -> Dataset:
    (seg,) = objects.segs  # a volume's findings share one SEG
    return seg


@pytest.fixture(scope="module")
def sr(objects: ResultObjects) -> Dataset:
    return objects.sr


def _slice_uid(case: Case, k: int) -> str:
    return case.volume.sop_instance_uids[k]


# --- every object ------------------------------------------------------------------------------


def test_every_object_is_valid_and_in_the_source_study(
    case: Case, report: ModelReport, objects: ResultObjects, written: dict[str, Dataset]
) -> None:
    assert len(written) == len(every_object(objects))  # distinct SOP Instance UIDs
    for dataset in written.values():
        assert dataset.StudyInstanceUID == case.study_instance_uid
        assert NOT_FOR_CLINICAL_USE in dataset.SeriesDescription
    assert len(objects.segs) == 1
    assert objects.parametric_maps == objects.explanations == []  # no explanation maps
    assert objects.kos is not None
    assert len(objects.overlays) == len(images_with_findings(report))
    assert objects.states
    assert objects.warnings == ()  # complete sources: nothing derived


def test_every_object_names_the_algorithm_as_contributing_equipment(
    objects: ResultObjects,
) -> None:
    device_uid = algorithm_device_uid(MODEL.name, MODEL.version, MODEL.weights_sha256)
    for dataset in every_object(objects):
        (item,) = [
            i
            for i in dataset.get("ContributingEquipmentSequence", [])
            if i.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_ALGORITHM.value
        ]
        assert item.DeviceUID == device_uid, dataset.Modality
        assert (item.ManufacturerModelName, item.SoftwareVersions) == (MODEL.name, MODEL.version)


def test_objects_carry_the_options_date_and_time(objects: ResultObjects) -> None:
    dates = ("InstanceCreationDate", "ContentDate", "PresentationCreationDate", "SeriesDate")
    times = ("InstanceCreationTime", "ContentTime", "PresentationCreationTime", "SeriesTime")
    for dataset in every_object(objects):
        assert "InstanceCreationDate" in dataset
        assert "ContentDate" in dataset or "PresentationCreationDate" in dataset
        for keyword in (k for k in dates if k in dataset):
            assert str(dataset[keyword].value) == "20261125", (dataset.Modality, keyword)
        for keyword in (k for k in times if k in dataset):
            assert str(dataset[keyword].value) == "143015.123456", (dataset.Modality, keyword)


def test_objects_are_byte_identical_when_rebuilt_from_headers_only(
    case: Case, objects: ResultObjects
) -> None:
    headers = [
        pydicom.dcmread(io.BytesIO(encode(ds)), stop_before_pixels=True) for ds in case.series
    ]
    assert all("PixelData" not in ds for ds in headers)

    again = build_all(case, headers)

    assert [encode(ds) for ds in every_object(again)] == [
        encode(ds) for ds in every_object(objects)
    ]


def test_objects_fill_missing_type_2_attributes_without_touching_the_sources(
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

    objects = build_all(case, sources)

    assert [encode(ds) for ds in sources] == before
    write_every_object(objects, tmp_path)


def test_objects_of_another_job_get_other_uids(
    case: Case, report: ModelReport, objects: ResultObjects
) -> None:
    uids = result_uids("job-2")
    other = build_all(case, uids=uids)

    pairs = list(zip(every_object(other), every_object(objects), strict=True))
    for again, first in pairs:
        assert again.SOPInstanceUID != first.SOPInstanceUID
        assert again.SeriesInstanceUID != first.SeriesInstanceUID
    assert [str(i.TrackingUID) for i in other.segs[0].SegmentSequence] == [
        t.uid for t in finding_tracking(report, uids)
    ]


def test_objects_need_a_source_image_for_every_slice(case: Case) -> None:
    with pytest.raises(ResultBuildError, match="no source image for slice"):
        build_all(case, case.series[1:])


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
        objects = build_all(case, sources, options=ResultOptions())

    assert not [w for w in caught if "Zyxwvut" in str(w.message)]
    assert "Zyxwvut" not in caplog.text
    assert not [w for w in objects.warnings if "Zyxwvut" in w]


# --- SEG ---------------------------------------------------------------------------------------


def test_seg_has_one_tracked_segment_per_finding(
    case: Case,
    report: ModelReport,
    tracking: tuple[Tracking, ...],
    seg: Dataset,
    written: dict[str, Dataset],
) -> None:
    read = hd.seg.Segmentation.from_dataset(written[str(seg.SOPInstanceUID)])

    assert read.SOPInstanceUID == case.uids.seg_sop_instance_uid(0)
    assert read.SeriesInstanceUID == case.uids.seg_series_instance_uid
    assert read.StudyInstanceUID == case.study_instance_uid
    assert read.SegmentationType == "BINARY"
    assert read.ContentLabel == SEG_CONTENT_LABEL  # one label for every model's SEG
    assert read.number_of_segments == len(NODULES)
    for i, item in enumerate(read.SegmentSequence):
        assert item.SegmentLabel == finding_label(report.findings[i], i) == f"Nodule {i + 1}"
        assert (item.TrackingUID, item.TrackingID) == (tracking[i].uid, tracking[i].identifier)
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.NODULE.value
        assert (
            item.AnatomicRegionSequence[0].CodeValue == codes.region_code(AnatomicRegion.LUNG).value
        )
        assert len(item.RecommendedDisplayCIELabValue) == 3
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == MODEL.name
        assert algorithm.AlgorithmVersion == MODEL.version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.ALGORITHM_FAMILY.value
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


def test_seg_mask_maps_back_to_the_nodule_centre(seg: Dataset) -> None:
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


# --- SR ----------------------------------------------------------------------------------------

IMAGE_REGION, REFERENCED_SEGMENT, IMAGE_LIBRARY = "111030", "121191", "111028"
TRACKING_IDENTIFIER, FINDING_TYPE = "112039", "121071"


def _region_groups(sr: Dataset) -> list[Dataset]:
    return [g for g in content.groups(sr) if content.items(g, IMAGE_REGION)]


def _segment_groups(sr: Dataset) -> list[Dataset]:
    return [g for g in content.groups(sr) if content.items(g, REFERENCED_SEGMENT)]


def _drawn_on(group: Dataset) -> str:
    scoord = content.item(group, IMAGE_REGION)
    return str(scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def test_sr_is_a_tid_1500_report_with_a_device_observer(
    case: Case, written: dict[str, Dataset]
) -> None:
    read = written[case.uids.sr_sop_instance_uid]

    assert read.SOPClassUID == Comprehensive3DSRStorage
    assert read.SeriesInstanceUID == case.uids.sr_series_instance_uid
    assert read.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert read.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert NOT_FOR_CLINICAL_USE in read.SeriesDescription
    concepts = {content.code(i): i for i in read.ContentSequence}
    assert concepts["121005"].ConceptCodeSequence[0].CodeValue == codes.DEVICE.value
    assert concepts["121013"].TextValue == codes.DEVICE_OBSERVER_NAME
    procedure = concepts["121058"].ConceptCodeSequence[0].CodeValue
    assert procedure == codes.procedure_code(Procedure.CT_CHEST).value
    (library_group,) = concepts[IMAGE_LIBRARY].ContentSequence
    in_library = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in library_group.ContentSequence
    }
    assert in_library == {_drawn_on(g) for g in _region_groups(read)}  # the display slices
    report = hd.sr.srread(io.BytesIO(encode(read))).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert len(report.get_planar_roi_measurement_groups()) == len(NODULES)
    assert len(report.get_volumetric_roi_measurement_groups()) == len(NODULES)


def test_sr_region_groups_outline_each_finding_on_its_display_slice(
    case: Case, report: ModelReport, tracking: tuple[Tracking, ...], sr: Dataset
) -> None:
    regions = _region_groups(sr)
    assert len(regions) == len(NODULES)
    for i, (group, finding, nodule) in enumerate(
        zip(regions, report.findings, NODULES, strict=True)
    ):
        assert content.item(group, TRACKING_IDENTIFIER).TextValue == tracking[i].identifier
        assert content.tracking_uid(group) == tracking[i].uid
        assert content.coded(group)[FINDING_TYPE] == codes.NODULE.value
        site = content.item(group, content.FINDING_SITE).ConceptCodeSequence[0].CodeValue
        assert site == codes.region_code(AnatomicRegion.LUNG).value
        k = case.volume.sop_instance_uids.index(_drawn_on(group))
        assert k == finding.display_image
        scoord = content.item(group, IMAGE_REGION)
        points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
        if scoord.GraphicType == "CIRCLE":
            (x, y), (px, _) = points
            radius_mm = (px - x) * CT_SPACING[2]
            assert nodule.radius_mm * 0.7 < radius_mm <= nodule.radius_mm * 1.1
        else:
            assert scoord.GraphicType == "POLYLINE"
            np.testing.assert_array_equal(points[0], points[-1])  # closed
            mask = finding.mask_on(k)
            assert mask is not None
            assert outline_on_mask(points, mask.paste(case.volume.shape[1:]))
            x, y = polygon_centre(points)
        centre = case.volume.index_to_patient((k, y - 0.5, x - 0.5))
        np.testing.assert_allclose(centre[:2], nodule.centre_mm[:2], atol=0.5)


def test_sr_region_groups_carry_measurements_with_ucum_units(
    case: Case, report: ModelReport, sr: Dataset
) -> None:
    for group, finding in zip(_region_groups(sr), case.result.findings, strict=True):
        measured = {content.code(i): i for i in group.ContentSequence if i.ValueType == "NUM"}
        expected = {
            MeasurementKind.EQUIVALENT_SPHERE_DIAMETER: finding.diameter_mm,
            MeasurementKind.VOLUME: finding.volume_mm3,
        }
        for kind, expected_value in expected.items():
            name, unit = codes.measurement_concept(kind)
            value = measured[name.value].MeasuredValueSequence[0]
            assert float(value.NumericValue) == pytest.approx(expected_value, abs=0.01)
            units = value.MeasurementUnitsCodeSequence[0]
            assert (units.CodeValue, units.CodingSchemeDesignator) == (
                unit.value,
                unit.scheme_designator,
            )
            method = codes.measurement_method(kind)
            if method is not None:  # what the diameter is: of the sphere of equal volume
                methods = [
                    str(i.ConceptCodeSequence[0].CodeValue)
                    for i in measured[name.value].get("ContentSequence", [])
                    if content.code(i) == "370129005"
                ]
                assert methods == [method.value]
        certainty = measured[codes.CERTAINTY_OF_FINDING.value].MeasuredValueSequence[0]
        assert float(certainty.NumericValue) == pytest.approx(100 * finding.probability)
        assert certainty.MeasurementUnitsCodeSequence[0].CodeValue == codes.PERCENT.value
        algorithm = {
            content.code(i): i.TextValue for i in group.ContentSequence if i.ValueType == "TEXT"
        }
        assert algorithm["111001"] == MODEL.name
        assert algorithm["111003"] == MODEL.version
        assert MODEL.weights_sha256 in algorithm["111002"]
        assert NOT_FOR_CLINICAL_USE in algorithm["111002"]
        family = content.item(group, "111000").ConceptCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == (
            codes.ALGORITHM_FAMILY.value,
            codes.ALGORITHM_FAMILY.scheme_designator,
        )
    assert len(report.findings) == len(NODULES)


def test_sr_segment_groups_reference_the_findings_segments(
    case: Case, tracking: tuple[Tracking, ...], sr: Dataset, seg: Dataset
) -> None:
    volumetric = _segment_groups(sr)
    assert len(volumetric) == len(NODULES)
    for i, group in enumerate(volumetric):
        assert content.tracking_uid(group) == tracking[i].uid
        reference = content.item(group, REFERENCED_SEGMENT).ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert reference.ReferencedSegmentNumber == i + 1
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {*case.volume.sop_instance_uids, seg.SOPInstanceUID}


def test_a_rerun_lists_its_predecessor_and_keeps_the_lesions_tracking_uids(
    case: Case, sr: Dataset, seg: Dataset, tmp_path: Path
) -> None:
    earlier = pydicom.dcmread(io.BytesIO(encode(sr)))
    rerun_uids = result_uids("job-1-rerun")

    later = build_all(case, uids=rerun_uids, predecessors=[earlier])

    read = write_every_object(later, tmp_path)[rerun_uids.sr_sop_instance_uid]
    assert read.SOPInstanceUID == rerun_uids.sr_sop_instance_uid != earlier.SOPInstanceUID
    (study,) = read.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == earlier.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == earlier.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
        earlier.SOPInstanceUID
    ]
    # IHE AIR: the same lesion keeps its identity across re-runs of the same series.
    kept = [content.tracking_uid(g) for g in _region_groups(earlier)]
    assert [content.tracking_uid(g) for g in _region_groups(read)] == kept
    assert [str(i.TrackingUID) for i in later.segs[0].SegmentSequence] == kept
    assert [str(i.TrackingUID) for i in seg.SegmentSequence] == kept


def test_without_findings_only_a_valid_sr_is_built(case: Case, tmp_path: Path) -> None:
    empty = ModelResult(
        model=MODEL, findings=(), series_instance_uid=case.volume.series_instance_uid
    )

    objects = build_all(case, result=empty)

    assert objects.segs == []
    assert objects.kos is None
    assert objects.overlays == objects.states == []
    read = write_every_object(objects, tmp_path)[case.uids.sr_sop_instance_uid]
    assert read.ConceptNameCodeSequence[0].CodeValue == "126000"
    (group,) = content.groups(read)
    assert content.tracking_uid(group) == case.uids.summary_tracking_uid
    assert codes.ABSENT.value in content.coded(group).values()  # "Finding: Absent"
    library = content.item(read, IMAGE_LIBRARY)  # TID 1500 requires an entry
    (library_group,) = library.ContentSequence
    (entry,) = library_group.ContentSequence
    middle = case.volume.sop_instance_uids[SLICES // 2]
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == middle


# --- one display rule ----------------------------------------------------------------------------


def test_kos_flags_the_slices_the_findings_are_shown_on(
    case: Case, report: ModelReport, objects: ResultObjects
) -> None:
    kos = objects.kos
    assert kos is not None
    assert kos.SOPInstanceUID == case.uids.kos_sop_instance_uid
    assert kos.SeriesInstanceUID == case.uids.kos_series_instance_uid
    flagged = {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in kos.ContentSequence
        if i.ValueType == "IMAGE"
    }
    assert flagged == {_slice_uid(case, k) for k in images_with_findings(report)}
    (document,) = [i for i in kos.ContentSequence if i.ValueType == "COMPOSITE"]
    assert document.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == objects.sr.SOPInstanceUID


def test_overlays_and_presentation_states_draw_each_finding_on_its_display_slice(
    case: Case, report: ModelReport, tracking: tuple[Tracking, ...], objects: ResultObjects
) -> None:
    shown = [_slice_uid(case, k) for k in images_with_findings(report)]
    assert [
        str(image.SourceImageSequence[0].ReferencedSOPInstanceUID) for image in objects.overlays
    ] == shown
    drawn: dict[str, set[str]] = {}
    for state in objects.states:
        for annotation in state.GraphicAnnotationSequence:
            images = {str(i.ReferencedSOPInstanceUID) for i in annotation.ReferencedImageSequence}
            for graphic in annotation.get("GraphicObjectSequence", []):
                if "TrackingUID" in graphic:
                    drawn.setdefault(str(graphic.TrackingUID), set()).update(images)
    for finding, marks in zip(report.findings, tracking, strict=True):
        assert drawn[marks.uid] == {_slice_uid(case, finding.display_image)}

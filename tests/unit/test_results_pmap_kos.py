"""Parametric Maps of explanation maps and the Key Object Selection of a job (IHE AIR).

Four synthetic inputs: a four-view mammogram (MG, no Frame of Reference), a fundus
exam (two single-frame OP photographs), a stereo fundus exam (an OP instance of two
frames, the map on frame 2) and a small CT (single-frame slices, and the same slices
as one Legacy Converted Enhanced CT image) with a heatmap on one slice.  Every object
is written, validated with dciodvfy, read back with highdicom and checked against the
heatmap, the source image it lies on and the job's UIDs and date/time.
"""

import dataclasses
import datetime
import io
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    KeyObjectSelectionDocumentStorage,
    ParametricMapStorage,
    generate_uid,
)

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import Finding, FindingType, ImageVolume, MaskBox, ModelIdentity, ModelResult
from cad_node.domain.image_sets import (
    ExplanationMap,
    ImageSet,
    Laterality,
    PlanarResult,
)
from cad_node.domain.results import ModelReport, planar_report, volume_report
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.multiframe import volume_from_frames
from cad_node.results import codes
from cad_node.results.kos import KOS_DESCRIPTION, build_kos
from cad_node.results.options import ResultOptions
from cad_node.results.pmap import (
    LUT_LABEL,
    PARAMETRIC_MAP_CONTENT_LABEL,
    build_parametric_maps,
    content_description,
    explanation_method_code,
    map_frame_of_reference_uid,
)
from cad_node.results.sources import prepared_headers
from cad_node.results.uids import ResultUids, algorithm_device_uid, result_uids
from tests.dicom_validation import assert_valid_dicom, assert_valid_sr
from tests.results_inputs import (
    CT_SHAPE,
    DIM_FUNDUS,
    MG_SHAPE,
    OP_SHAPE,
    ct_slice,
    ct_volume,
    disk,
    dr_explanations,
    encode,
    enhanced_ct,
    headers_only,
    heatmap,
    mammograms,
    planar_finding,
)
from tests.results_inputs import fundus_exam as shared_fundus_exam
from tests.results_inputs import stereo_exam as shared_stereo_exam

WHEN = datetime.datetime(2026, 11, 20, 8, 15, 30, 125000)
OPTIONS = ResultOptions().at(WHEN)
MAMMO_MODEL = ModelIdentity("mammo-test", "0.0.1", "cd" * 32, family="mammography")
FUNDUS_MODEL = ModelIdentity("fundus-test", "0.0.2", "ef" * 32, family="fundus")
CT_MODEL = ModelIdentity("lung-test", "0.0.3", "ab" * 32, family="lung_ct")
CT_SLICES = 12
HEATMAP_ROW_SCALE = 1.5
"""The heatmaps are not symmetric in rows' and columns' scale."""


# --- inputs ------------------------------------------------------------------------------------


def mammo_exam() -> list[Dataset]:
    return mammograms()


def mammo_result(image_set: ImageSet) -> PlanarResult:
    """A mass on R CC, explained there and on R MLO; nothing on the left breast."""
    r_cc, r_mlo = (image.sop_instance_uid for image in image_set.images[:2])
    return PlanarResult(
        model=MAMMO_MODEL,
        study_instance_uid=image_set.study_instance_uid,
        assessments=(),
        findings=(
            planar_finding(FindingType.MASS, r_cc, Laterality.RIGHT, disk(MG_SHAPE, (40, 50), 7.5)),
        ),
        explanations=(
            ExplanationMap(
                r_cc, heatmap(MG_SHAPE, (40, 50), HEATMAP_ROW_SCALE), "Grad-CAM", "breast suspicion"
            ),
            ExplanationMap(
                r_mlo,
                heatmap(MG_SHAPE, (60, 30), HEATMAP_ROW_SCALE),
                "Grad-CAM",
                "breast suspicion",
            ),
        ),
    )


def fundus_exam() -> list[Dataset]:
    return shared_fundus_exam(15, DIM_FUNDUS)


def fundus_result(image_set: ImageSet) -> PlanarResult:
    """A haemorrhage and a hard exudate on OS; both eyes explained."""
    od, os_ = (image.sop_instance_uid for image in image_set.images)
    left = Laterality.LEFT
    return PlanarResult(
        model=FUNDUS_MODEL,
        study_instance_uid=image_set.study_instance_uid,
        assessments=(),
        findings=(
            planar_finding(FindingType.HAEMORRHAGE, os_, left, disk(OP_SHAPE, (30, 60), 5.0)),
            planar_finding(FindingType.HARD_EXUDATE, os_, left, disk(OP_SHAPE, (45, 45), 3.0)),
        ),
        explanations=dr_explanations(od, os_, HEATMAP_ROW_SCALE),
    )


def stereo_exam() -> list[Dataset]:
    return shared_stereo_exam(16)


def stereo_result(image_set: ImageSet) -> PlanarResult:
    """A haemorrhage on OS frame 2 and a microaneurysm on frame 1; OS explained on frame 2."""
    os_ = image_set.images[1].sop_instance_uid
    left = Laterality.LEFT
    return PlanarResult(
        model=FUNDUS_MODEL,
        study_instance_uid=image_set.study_instance_uid,
        assessments=(),
        findings=(
            planar_finding(
                FindingType.HAEMORRHAGE, os_, left, disk(OP_SHAPE, (30, 60), 5.0), frame_number=2
            ),
            planar_finding(
                FindingType.MICROANEURYSM, os_, left, disk(OP_SHAPE, (50, 20), 2.0), frame_number=1
            ),
        ),
        explanations=(
            ExplanationMap(
                os_, heatmap(OP_SHAPE, (30, 60), HEATMAP_ROW_SCALE), "Grad-CAM", "ICDR grade 3", 2
            ),
        ),
    )


def ct_series() -> list[Dataset]:
    uids = {name: generate_uid(entropy_srcs=["pmap-kos", name]) for name in ("study", "series")}
    uids["frame"] = generate_uid(entropy_srcs=["pmap-kos", "frame"])
    return [ct_slice(k, uids, pixel_step=10) for k in range(CT_SLICES)]


def nodule(k0: int) -> Finding:
    """A 3-slice nodule from slice ``k0``."""
    box = np.ones((3, 6, 5), dtype=np.bool_)
    return Finding(
        finding_type=FindingType.NODULE,
        centre_index=(k0 + 1.0, 32.5, 22.0),
        centre_patient_mm=(0.0, 0.0, 0.0),
        diameter_mm=5.0,
        volume_mm3=60.0,
        probability=0.9,
        mask=MaskBox(offset=(k0, 30, 20), mask=box),
    )


def explained_volume_report(volume: ImageVolume, study_uid: str, k: int) -> ModelReport:
    """A CT report with one nodule and a heatmap on slice ``k``."""
    result = ModelResult(CT_MODEL, (nodule(k - 1),), volume.series_instance_uid)
    report = volume_report(volume, result, study_uid)
    uid, frame = volume.source_frame(k)
    explanation = ExplanationMap(
        uid, heatmap(CT_SHAPE, (32, 22), HEATMAP_ROW_SCALE), "Grad-CAM", "nodule", frame
    )
    return dataclasses.replace(report, explanations=(explanation,))


def legacy_converted(series: Sequence[Dataset]) -> Dataset:
    """The slices as one Legacy Converted Enhanced CT image."""
    return enhanced_ct(
        series,
        generate_uid(entropy_srcs=["pmap-kos", "enhanced"]),
        generate_uid(entropy_srcs=["pmap-kos", "enhanced", "1"]),
    )


# --- cases: every object built, written, validated and read back -------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    datasets: list[Dataset]
    report: ModelReport
    headers: list[Dataset]
    uids: ResultUids
    maps: list[Dataset]
    kos: Dataset | None
    sr: Dataset
    folder: Path

    def written(self, dataset: Dataset, name: str) -> Dataset:
        """``dataset`` written, validated (dciodvfy; DicomSRValidator too for a KOS) and read."""
        path = self.folder / f"{name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        if dataset.SOPClassUID == KeyObjectSelectionDocumentStorage:
            assert_valid_sr(path)
        else:
            assert_valid_dicom(path)
        return pydicom.dcmread(path)


def minimal_sr(report: ModelReport, headers: Sequence[Dataset], uids: ResultUids) -> Dataset:
    """A TID 1500 report naming the images with findings: what the KOS lists beside them."""
    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["pmap-kos", "device"])
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=dicom_codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=["pmap-kos", "group"]), identifier="Findings"
                ),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(codes.FINDING, dicom_codes.SCT.Present)
                ],
            )
        ],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list({id(h): h for h in headers}.values()),
        content=content,
        series_instance_uid=uids.sr_series_instance_uid,
        series_number=OPTIONS.sr_series_number,
        sop_instance_uid=uids.sr_sop_instance_uid,
        instance_number=1,
        manufacturer=OPTIONS.manufacturer,
    )
    return pydicom.dcmread(io.BytesIO(encode(sr)))


def make_case(name: str, datasets: list[Dataset], report: ModelReport, folder: Path) -> Case:
    headers = prepared_headers(headers_only(datasets), report.grid)
    uids = result_uids(f"{name}-job")
    sr = minimal_sr(report, headers, uids)
    maps = build_parametric_maps(report, headers, uids, OPTIONS)
    kos = build_kos(report, headers, sr, uids, OPTIONS)
    return Case(name, datasets, report, headers, uids, maps, kos, sr, folder)


def planar_case(name: str, folder: Path) -> Case:
    exams = {"mammo": (mammo_exam, mammo_result), "fundus": (fundus_exam, fundus_result)}
    exams["stereo"] = (stereo_exam, stereo_result)
    make_exam, make_result = exams[name]
    datasets = make_exam()
    image_set = load_image_set(datasets)
    return make_case(name, datasets, planar_report(image_set, make_result(image_set)), folder)


def ct_case(name: str, folder: Path) -> Case:
    series = ct_series()
    datasets = [legacy_converted(series)] if name == "enhanced-ct" else series
    volume = volume_from_frames(datasets[0]) if name == "enhanced-ct" else ct_volume(series)
    report = explained_volume_report(volume, str(series[0].StudyInstanceUID), k=5)
    return make_case(name, datasets, report, folder)


CASES = ("mammo", "fundus", "stereo", "ct", "enhanced-ct")


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    name: str = request.param
    folder = tmp_path_factory.mktemp(name)
    return ct_case(name, folder) if name.endswith("ct") else planar_case(name, folder)


def source_reference(item: Dataset) -> tuple[str, int | None]:
    frame = item.get("ReferencedFrameNumber")
    return str(item.ReferencedSOPInstanceUID), None if frame is None else int(frame)


# --- Parametric Maps ---------------------------------------------------------------------------


def test_one_float_map_per_explanation_holds_its_heatmap(case: Case) -> None:
    assert len(case.maps) == len(case.report.explanations)
    for i, (built, explanation) in enumerate(zip(case.maps, case.report.explanations, strict=True)):
        read = hd.pm.ParametricMap.from_dataset(case.written(built, f"pm{i}"))

        assert read.SOPClassUID == ParametricMapStorage
        assert read.SOPInstanceUID == case.uids.parametric_map_sop_instance_uid(i)
        assert read.SeriesInstanceUID == case.uids.parametric_map_series_instance_uid
        assert read.InstanceNumber == i + 1
        assert "FloatPixelData" in read
        assert "PixelData" not in read
        assert read.BitsAllocated == 32
        assert (read.Rows, read.Columns) == explanation.heatmap.shape
        assert read.NumberOfFrames == 1
        pixels = np.frombuffer(read.FloatPixelData, dtype="<f4").reshape(explanation.heatmap.shape)
        np.testing.assert_array_equal(pixels, explanation.heatmap)
        np.testing.assert_array_equal(read.pixel_array, explanation.heatmap)


def test_the_map_says_what_it_is_and_that_it_is_not_for_clinical_use(case: Case) -> None:
    for built in case.maps:
        assert built.ContentLabel == PARAMETRIC_MAP_CONTENT_LABEL
        assert NOT_FOR_CLINICAL_USE in built.ContentDescription
        assert NOT_FOR_CLINICAL_USE in built.SeriesDescription
        assert built.SeriesNumber == OPTIONS.parametric_map_series_number
        assert list(built.ImageType)[:2] == ["DERIVED", "PRIMARY"]
        assert built.StudyInstanceUID == case.report.grid.study_instance_uid


def test_the_real_world_value_mapping_names_the_grad_cam_quantity(case: Case) -> None:
    for built, explanation in zip(case.maps, case.report.explanations, strict=True):
        shared = built.SharedFunctionalGroupsSequence[0]
        (mapping,) = shared.RealWorldValueMappingSequence
        assert mapping.LUTLabel == LUT_LABEL
        assert explanation.method in mapping.LUTExplanation
        assert explanation.target in mapping.LUTExplanation
        assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
        assert mapping.DoubleFloatRealWorldValueFirstValueMapped == 0.0
        assert mapping.DoubleFloatRealWorldValueLastValueMapped == 1.0
        (unit,) = mapping.MeasurementUnitsCodeSequence
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == (codes.NO_UNITS.value, "UCUM")
        (quantity,) = mapping.QuantityDefinitionSequence
        (concept,) = quantity.ConceptCodeSequence
        assert (concept.CodeValue, concept.CodingSchemeDesignator) == (
            codes.GRAD_CAM.value,
            codes.GRAD_CAM.scheme_designator,
        )


def test_each_map_references_its_source_image_and_frame(case: Case) -> None:
    for built, explanation in zip(case.maps, case.report.explanations, strict=True):
        expected = explanation.image_reference
        assert [source_reference(item) for item in built.SourceImageSequence] == [expected]
        (frame,) = built.PerFrameFunctionalGroupsSequence
        (derivation,) = frame.DerivationImageSequence
        assert [source_reference(i) for i in derivation.SourceImageSequence] == [expected]


def test_a_map_lies_on_its_source_images_pixel_grid(case: Case) -> None:
    for built, explanation in zip(case.maps, case.report.explanations, strict=True):
        k = case.report.grid.index_of(explanation.image_reference)
        image = case.report.grid.images[k]
        measures = built.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert image.pixel_spacing_mm is not None
        np.testing.assert_allclose(
            [float(v) for v in measures.PixelSpacing], image.pixel_spacing_mm
        )
        position = built.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        volume = case.report.grid.volume
        if volume is not None:  # a CT slice: the map is where the slice is
            assert built.FrameOfReferenceUID == volume.frame_of_reference_uid
            expected = volume.index_to_patient((k, 0.0, 0.0))
            np.testing.assert_allclose([float(v) for v in position.ImagePositionPatient], expected)
        else:  # a projection or photograph: a frame of reference of its own, claiming nothing
            assert built.FrameOfReferenceUID == map_frame_of_reference_uid(built.SOPInstanceUID)
            assert built.FrameOfReferenceUID not in {
                ds.get("FrameOfReferenceUID") for ds in case.datasets
            }
            assert built.PatientOrientation == case.headers[k].get("PatientOrientation", "")


def test_a_map_of_a_breast_or_an_eye_says_its_side(case: Case) -> None:
    for built, explanation in zip(case.maps, case.report.explanations, strict=True):
        image = case.report.grid.images[case.report.grid.index_of(explanation.image_reference)]
        anatomy = built.SharedFunctionalGroupsSequence[0].get("FrameAnatomySequence")
        if image.laterality is None:
            assert anatomy is None
            continue
        assert anatomy[0].FrameLaterality == image.laterality.value
        region = codes.region_code(case.report.region)
        assert region is not None
        assert anatomy[0].AnatomicRegionSequence[0].CodeValue == region.value


def test_the_algorithm_is_contributing_equipment_of_every_object(case: Case) -> None:
    device_uid = algorithm_device_uid(
        case.report.model.name, case.report.model.version, case.report.model.weights_sha256
    )
    objects = [*case.maps, *([case.kos] if case.kos is not None else [])]
    for built in objects:
        items = [
            item
            for item in built.ContributingEquipmentSequence
            if item.get("DeviceUID") == device_uid
        ]
        assert len(items) == 1
        (item,) = items
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_ALGORITHM.value
        assert item.ManufacturerModelName == case.report.model.name
        assert item.SoftwareVersions == case.report.model.version
        assert item.ContributionDateTime == pydicom.valuerep.DT(WHEN)


def test_every_date_is_the_jobs_so_a_rebuild_is_byte_identical(case: Case) -> None:
    again = make_case(case.name, case.datasets, case.report, case.folder)
    objects = [*case.maps, *([case.kos] if case.kos is not None else [])]
    rebuilt = [*again.maps, *([again.kos] if again.kos is not None else [])]
    for first, second in zip(objects, rebuilt, strict=True):
        for keyword in ("InstanceCreationDate", "ContentDate", "SeriesDate"):
            assert str(first[keyword].value) == WHEN.strftime("%Y%m%d")
        assert encode(first) == encode(second)
    for built in case.maps:
        dimension_uids = {item.DimensionOrganizationUID for item in built.DimensionIndexSequence}
        assert dimension_uids == {
            case.uids.parametric_map_dimension_organization_uid(case.maps.index(built))
        }


def test_a_report_without_explanations_has_no_maps(case: Case) -> None:
    report = dataclasses.replace(case.report, explanations=())
    assert build_parametric_maps(report, case.headers, case.uids, OPTIONS) == []


# --- Key Object Selection ----------------------------------------------------------------------


def kos_image_references(kos: Dataset) -> dict[str, list[int] | None]:
    """SOP Instance UID -> referenced frames (None: the whole instance) of the KOS's images."""
    references: dict[str, list[int] | None] = {}
    for item in kos.ContentSequence:
        if item.ValueType != "IMAGE":
            continue
        (sop,) = item.ReferencedSOPSequence
        frames = sop.get("ReferencedFrameNumber")
        references[str(sop.ReferencedSOPInstanceUID)] = (
            None if frames is None else [int(f) for f in np.atleast_1d(frames)]
        )
    return references


def expected_references(report: ModelReport) -> dict[str, list[int] | None]:
    expected: dict[str, list[int] | None] = {}
    for index in sorted({finding.display_image for finding in report.findings}):
        uid, frame = report.grid.images[index].reference
        if frame is None:
            expected[uid] = None
        else:
            expected.setdefault(uid, [])
            expected[uid].append(frame)  # type: ignore[union-attr]  # set just above
    return expected


def test_the_kos_lists_each_image_with_a_finding_and_the_sr(case: Case) -> None:
    assert case.kos is not None
    read = hd.ko.KeyObjectSelectionDocument.from_dataset(case.written(case.kos, "kos"))

    assert read.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert read.SOPInstanceUID == case.uids.kos_sop_instance_uid
    assert read.SeriesInstanceUID == case.uids.kos_series_instance_uid
    assert read.SeriesNumber == OPTIONS.kos_series_number
    assert NOT_FOR_CLINICAL_USE in read.SeriesDescription
    assert read.StudyInstanceUID == case.report.grid.study_instance_uid
    assert kos_image_references(read) == expected_references(case.report)
    composites = [item for item in read.ContentSequence if item.ValueType == "COMPOSITE"]
    assert [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in composites] == [
        case.sr.SOPInstanceUID
    ]
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study in read.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {*expected_references(case.report), case.sr.SOPInstanceUID}


def test_the_kos_is_titled_of_interest_and_says_not_for_clinical_use(case: Case) -> None:
    assert case.kos is not None
    (title,) = case.kos.ConceptNameCodeSequence
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")
    texts = {
        item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
        for item in case.kos.ContentSequence
        if item.ValueType == "TEXT"
    }
    assert texts["113012"] == KOS_DESCRIPTION  # Key Object Description
    assert texts["121013"] == codes.DEVICE_OBSERVER_NAME  # Device Observer Name
    assert NOT_FOR_CLINICAL_USE in KOS_DESCRIPTION


def test_a_report_without_findings_has_no_kos(case: Case) -> None:
    report = dataclasses.replace(case.report, findings=())
    assert build_kos(report, case.headers, case.sr, case.uids, OPTIONS) is None


# --- inputs at the edges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("Grad-CAM", codes.GRAD_CAM),
        ("gradcam", codes.GRAD_CAM),
        ("CAM", dicom_codes.DCM.ClassActivation),
        ("integrated gradients", dicom_codes.DCM.Saliency),
    ],
)
def test_the_quantity_is_the_method_that_made_the_map(method: str, expected: Code) -> None:
    assert explanation_method_code(method) == expected


def test_a_long_target_is_cut_but_the_warning_kept() -> None:
    explanation = ExplanationMap("1.2.3", np.zeros((2, 2), np.float32), "Grad-CAM", "x" * 80)
    description = content_description(explanation)
    assert len(description) == 64
    assert description.endswith(NOT_FOR_CLINICAL_USE)


def _single_map(datasets: list[Dataset], folder: Path) -> tuple[Dataset, ModelReport]:
    image_set = load_image_set(datasets)
    report = planar_report(image_set, mammo_result(image_set))
    headers = prepared_headers(headers_only(datasets), report.grid)
    built = build_parametric_maps(report, headers, result_uids("edge-job"), OPTIONS)[0]
    path = folder / "pm.dcm"
    built.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
    return built, report


def test_a_mammograms_frame_of_reference_without_a_plane_is_not_the_maps(tmp_path: Path) -> None:
    datasets = mammo_exam()
    for dataset in datasets:  # Frame of Reference is a User module of the mammography IODs
        dataset.FrameOfReferenceUID = generate_uid(entropy_srcs=["pmap-kos", "mammo-frame"])
        dataset.PositionReferenceIndicator = ""

    built, _ = _single_map(datasets, tmp_path)

    assert built.FrameOfReferenceUID == map_frame_of_reference_uid(built.SOPInstanceUID)
    assert built.FrameOfReferenceUID != datasets[0].FrameOfReferenceUID


def test_a_photograph_without_pixel_spacing_gets_a_nominal_plane(tmp_path: Path) -> None:
    datasets = mammo_exam()
    for dataset in datasets:
        del dataset.PixelSpacing
        if "ImagerPixelSpacing" in dataset:
            del dataset.ImagerPixelSpacing

    built, _ = _single_map(datasets, tmp_path)

    measures = built.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [1.0, 1.0]

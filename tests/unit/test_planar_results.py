"""Every result object of planar results: written, read back, validated.

Two synthetic studies: a four-view screening mammogram (MG, 12-bit grayscale,
no Frame of Reference) with a mass and a calcification cluster on the right
breast, and a fundus exam (OP, RGB) with haemorrhage, microaneurysm and hard
exudate findings on the left eye.  Every object is written, read back and
checked with dciodvfy; the geometry checks tie SEG frames and SR outlines to
the finding masks on the right source images.  The objects come from
:func:`~cad_node.results.build.build_planar_objects`, as the worker builds them.
"""

import datetime
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.findings import FindingType, ModelIdentity
from cad_node.domain.image_sets import (
    ICDR_GRADES,
    ExplanationMap,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarMask,
    PlanarResult,
)
from cad_node.domain.results import (
    AnatomicRegion,
    MeasurementKind,
    ModelReport,
    finding_label,
    planar_report,
)
from cad_node.errors import ResultBuildError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.results import codes
from cad_node.results.build import ResultObjects, build_planar_objects
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import BANNER_COLOUR, CONTOUR_COLOURS
from cad_node.results.seg import SEG_CONTENT_LABEL
from cad_node.results.tracking import Tracking, finding_tracking
from cad_node.results.uids import ResultUids, algorithm_device_uid, result_uids
from cad_node.synth.dicom_planar import StudyInfo, fundus_dataset
from tests import sr_content as content
from tests.results_inputs import (
    MG_SHAPE,
    MG_SPACING_MM,
    OP_SHAPE,
    OP_SPACING_MM,
    assert_blended_explanation,
    breast_assessments,
    disk,
    dr_assessments,
    dr_explanations,
    encode,
    fundus_exam,
    fundus_pixels,
    headers_only,
    heatmap,
    mammograms,
    planar_finding,
)
from tests.unit.test_results_objects import every_object, outline_on_mask, write_every_object

WHEN = datetime.datetime(2026, 11, 25, 19, 30, 5, 250000)
OPTIONS = ResultOptions().at(WHEN)
MAMMO_MODEL = ModelIdentity("mammo-test", "0.0.1", "cd" * 32, family="mammography")
FUNDUS_MODEL = ModelIdentity("fundus-test", "0.0.1", "ef" * 32, family="fundus")
SEED = 5


# --- inputs ------------------------------------------------------------------------------------


def _spots(shape: tuple[int, int], centres: Sequence[tuple[int, int]]) -> npt.NDArray[np.bool_]:
    full = np.zeros(shape, dtype=np.bool_)
    for r, c in centres:
        full[r : r + 2, c : c + 2] = True
    return full


def _mammo_datasets() -> list[Dataset]:
    return mammograms(SEED)


def _fundus_datasets() -> list[Dataset]:
    return fundus_exam(SEED)


def _mammo_result(image_set: ImageSet) -> PlanarResult:
    r_cc, r_mlo, l_cc, l_mlo = (image.sop_instance_uid for image in image_set.images)
    right = Laterality.RIGHT
    mass = disk(MG_SHAPE, (40.0, 50.0), 7.5)
    cluster = _spots(MG_SHAPE, [(60, 20), (63, 25), (58, 27), (66, 22)])
    findings = (
        planar_finding(
            FindingType.MASS,
            r_cc,
            right,
            mass,
            probability=0.87,
            spacing_mm=MG_SPACING_MM,
            diameter=True,
        ),
        planar_finding(
            FindingType.CALCIFICATION_CLUSTER,
            r_mlo,
            right,
            cluster,
            probability=0.64,
            spacing_mm=MG_SPACING_MM,
            diameter=True,
        ),
    )
    assessments = breast_assessments(r_cc, r_mlo, l_cc, l_mlo)
    explanation = ExplanationMap(
        r_cc, heatmap(MG_SHAPE, (40.0, 50.0)), "Grad-CAM", "breast suspicion"
    )
    return PlanarResult(
        model=MAMMO_MODEL,
        study_instance_uid=image_set.study_instance_uid,
        findings=findings,
        assessments=assessments,
        explanations=(explanation,),
    )


def _fundus_result(image_set: ImageSet) -> PlanarResult:
    od, os_ = (image.sop_instance_uid for image in image_set.images)
    left = Laterality.LEFT
    findings = (
        planar_finding(
            FindingType.HAEMORRHAGE,
            os_,
            left,
            disk(OP_SHAPE, (30.0, 60.0), 5.0),
            probability=0.91,
            spacing_mm=OP_SPACING_MM,
            diameter=False,
        ),
        planar_finding(
            FindingType.MICROANEURYSM,
            os_,
            left,
            _spots(OP_SHAPE, [(50, 20), (55, 40), (20, 30), (62, 70)]),
            probability=0.58,
            spacing_mm=OP_SPACING_MM,
            diameter=False,
        ),
        planar_finding(
            FindingType.HARD_EXUDATE,
            os_,
            left,
            disk(OP_SHAPE, (45.0, 45.0), 3.0),
            probability=0.66,
            spacing_mm=OP_SPACING_MM,
            diameter=False,
        ),
    )
    assessments = dr_assessments(od, os_)
    explanations = dr_explanations(od, os_)
    return PlanarResult(
        model=FUNDUS_MODEL,
        study_instance_uid=image_set.study_instance_uid,
        findings=findings,
        assessments=assessments,
        explanations=explanations,
    )


@dataclass(frozen=True)
class Case:
    datasets: list[Dataset]
    image_set: ImageSet
    result: PlanarResult
    uids: ResultUids
    objects: ResultObjects
    read: dict[str, Dataset]
    """Every object written, validated and read back, by SOP Instance UID."""

    @property
    def report(self) -> ModelReport:
        return planar_report(self.image_set, self.result)

    @property
    def tracking(self) -> tuple[Tracking, ...]:
        return finding_tracking(self.report, self.uids)


def _written(
    objects: ResultObjects, folder: Path, *, sr_templates: bool = False
) -> dict[str, Dataset]:
    return write_every_object(objects, folder, sr_templates=sr_templates)


def _case(
    datasets: list[Dataset],
    make_result: Callable[[ImageSet], PlanarResult],
    job_key: str,
    folder: Path,
    *,
    sr_templates: bool = False,
) -> Case:
    image_set = load_image_set(datasets)
    result = make_result(image_set)
    uids = result_uids(job_key)
    objects = build_planar_objects(
        headers_only(datasets), image_set, result, uids, OPTIONS, overlay=True, gsps=True
    )
    read = _written(objects, folder, sr_templates=sr_templates)
    return Case(datasets, image_set, result, uids, objects, read)


@pytest.fixture(scope="module")
def mammo(tmp_path_factory: pytest.TempPathFactory) -> Case:
    folder = tmp_path_factory.mktemp("mg")
    return _case(_mammo_datasets(), _mammo_result, "mammo-job", folder, sr_templates=True)


@pytest.fixture(scope="module")
def fundus(tmp_path_factory: pytest.TempPathFactory) -> Case:
    folder = tmp_path_factory.mktemp("op")
    return _case(_fundus_datasets(), _fundus_result, "fundus-job", folder, sr_templates=True)


@pytest.fixture(params=["mammo", "fundus"])
def case(request: pytest.FixtureRequest) -> Case:
    value: Case = request.getfixturevalue(request.param)
    return value


# --- SR helpers --------------------------------------------------------------------------------


def _region_groups(sr: Dataset) -> list[Dataset]:
    return [g for g in content.groups(sr) if content.items(g, "111030")]


def _segment_groups(sr: Dataset) -> list[Dataset]:
    return [g for g in content.groups(sr) if content.items(g, "121214")]


def _sr(case: Case) -> Dataset:
    return case.read[case.uids.sr_sop_instance_uid]


# --- every object --------------------------------------------------------------------------------


def test_objects_are_valid_and_belong_to_the_source_study(case: Case) -> None:
    objects = case.objects
    assert len(case.read) == len(every_object(objects))  # distinct SOP Instance UIDs
    for dataset in case.read.values():
        assert dataset.StudyInstanceUID == case.image_set.study_instance_uid
        assert NOT_FOR_CLINICAL_USE in dataset.SeriesDescription
        assert str(dataset.InstanceCreationDate) == "20261125"
        assert str(dataset.InstanceCreationTime) == "193005.250000"
        if dataset.Modality != "PR":  # a presentation state has its own creation date
            assert (str(dataset.ContentDate), str(dataset.ContentTime)) == (
                "20261125",
                "193005.250000",
            )
    assert (
        len(objects.explanations) == len(objects.parametric_maps) == len(case.result.explanations)
    )
    assert (
        len(objects.segs)
        == len(objects.overlays)
        == len({f.image_reference for f in case.result.findings})
    )
    assert objects.kos is not None
    assert objects.states


def test_every_object_names_the_algorithm_as_contributing_equipment(case: Case) -> None:
    model = case.result.model
    device_uid = algorithm_device_uid(model.name, model.version, model.weights_sha256)
    for dataset in case.read.values():
        (item,) = [
            i
            for i in dataset.get("ContributingEquipmentSequence", [])
            if i.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_ALGORITHM.value
        ]
        assert item.DeviceUID == device_uid, dataset.Modality


def test_objects_are_byte_identical_when_rebuilt(case: Case) -> None:
    again = build_planar_objects(
        headers_only(case.datasets),
        case.image_set,
        case.result,
        case.uids,
        OPTIONS,
        overlay=True,
        gsps=True,
    )
    first = every_object(case.objects)
    assert [encode(ds) for ds in every_object(again)] == [encode(ds) for ds in first]


# --- SEG -----------------------------------------------------------------------------------------


def _segs(case: Case) -> list[Dataset]:
    return [case.read[str(seg.SOPInstanceUID)] for seg in case.objects.segs]


def test_seg_per_source_image_holds_its_findings_masks(case: Case) -> None:
    tracking = case.tracking
    for number, seg in enumerate(_segs(case), start=1):
        assert seg.SOPClassUID == SegmentationStorage
        assert seg.SOPInstanceUID == case.uids.seg_sop_instance_uid(number - 1)
        assert seg.ContentLabel == SEG_CONTENT_LABEL
        assert seg.SeriesInstanceUID == case.uids.seg_series_instance_uid
        assert seg.InstanceNumber == number
        (series,) = seg.ReferencedSeriesSequence
        (instance,) = series.ReferencedInstanceSequence
        source_uid = str(instance.ReferencedSOPInstanceUID)
        image = case.image_set.image(source_uid)
        assert series.SeriesInstanceUID == image.series_instance_uid
        on_image = [
            (i, f) for i, f in enumerate(case.result.findings) if f.sop_instance_uid == source_uid
        ]
        assert seg.NumberOfFrames == len(on_image) == len(seg.SegmentSequence)
        pixels = seg.pixel_array.reshape(len(on_image), *image.shape)
        for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            derived = item.DerivationImageSequence[0].SourceImageSequence[0]
            assert derived.ReferencedSOPInstanceUID == source_uid
            identification = item.get("SegmentIdentificationSequence") or (
                seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
            )
            segment = int(identification[0].ReferencedSegmentNumber)
            index, finding = on_image[segment - 1]
            np.testing.assert_array_equal(
                pixels[frame].astype(bool), finding.mask.paste(image.shape)
            )
            assert seg.SegmentSequence[segment - 1].TrackingUID == tracking[index].uid


def test_seg_reads_back_with_highdicom(case: Case) -> None:
    seg = hd.seg.Segmentation.from_dataset(_segs(case)[0])
    source_uid = str(
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    )
    first = next(f for f in case.result.findings if f.sop_instance_uid == source_uid)
    pixels = seg.get_pixels_by_source_instance([source_uid], segment_numbers=[1])
    np.testing.assert_array_equal(
        pixels[0, :, :, 0].astype(bool), first.mask.paste(case.image_set.image(source_uid).shape)
    )


def test_mammo_segments_say_type_site_algorithm_and_not_for_clinical_use(mammo: Case) -> None:
    items = [item for seg in _segs(mammo) for item in seg.SegmentSequence]
    labels = [finding_label(f, i) for i, f in enumerate(mammo.report.findings)]
    assert [str(i.SegmentLabel) for i in items] == labels == ["Mass 1", "Calcification Cluster 2"]
    assert [str(i.SegmentedPropertyTypeCodeSequence[0].CodeValue) for i in items] == [
        codes.MASS.value,
        codes.CALCIFICATION_CLUSTER.value,
    ]
    for item in items:
        assert item.AnatomicRegionSequence[0].CodeValue == codes.BREAST.value
        assert NOT_FOR_CLINICAL_USE in item.SegmentDescription
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == MAMMO_MODEL.name
        assert MAMMO_MODEL.weights_sha256 in algorithm.AlgorithmParameters
    for seg in _segs(mammo):
        assert "FrameOfReferenceUID" not in seg  # mammograms have none
        source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        (source,) = [
            ds for ds in mammo.datasets if ds.SOPInstanceUID == source_uid.ReferencedSOPInstanceUID
        ]
        assert list(seg.PatientOrientation) == list(source.PatientOrientation)


def _declared_schemes(dataset: Dataset) -> set[str]:
    return {
        str(i.CodingSchemeDesignator) for i in dataset.get("CodingSchemeIdentificationSequence", [])
    }


def _uses_private_codes(dataset: Dataset) -> bool:
    return any(
        element.keyword == "CodingSchemeDesignator"
        and element.value == codes.PRIVATE_SCHEME_DESIGNATOR
        for element in dataset.iterall()
    )


def test_fundus_segments_use_colour_sources_and_declare_a_private_scheme_they_use(
    fundus: Case,
) -> None:
    (seg,) = _segs(fundus)
    source = fundus.image_set.image(
        str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
    )
    assert source.is_colour
    types = [
        (str(c.CodingSchemeDesignator), str(c.CodeValue))
        for c in (i.SegmentedPropertyTypeCodeSequence[0] for i in seg.SegmentSequence)
    ]
    assert types == [
        (code.scheme_designator, code.value)
        for code in (
            codes.finding_type_code(FindingType.HAEMORRHAGE),
            codes.finding_type_code(FindingType.MICROANEURYSM),
            codes.finding_type_code(FindingType.HARD_EXUDATE),
        )
    ]
    private = _uses_private_codes(seg)
    assert (codes.PRIVATE_SCHEME_DESIGNATOR in _declared_schemes(seg)) == private
    retina = codes.region_code(AnatomicRegion.RETINA).value
    assert all(i.AnatomicRegionSequence[0].CodeValue == retina for i in seg.SegmentSequence)


# --- SR ------------------------------------------------------------------------------------------


def test_sr_is_a_tid_1500_report_over_the_whole_image_set(case: Case) -> None:
    sr = _sr(case)
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.SeriesInstanceUID == case.uids.sr_series_instance_uid
    (library,) = content.item(sr, "111028").ContentSequence
    in_library = [
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in library.ContentSequence
    ]
    assert in_library == [image.sop_instance_uid for image in case.image_set.images]
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    objects = case.objects
    expected = {image.sop_instance_uid for image in case.image_set.images} | {
        str(ds.SOPInstanceUID)
        for ds in (*objects.segs, *objects.parametric_maps, *objects.explanations)
    }
    assert evidence == expected
    private = _uses_private_codes(sr)
    assert (codes.PRIVATE_SCHEME_DESIGNATOR in _declared_schemes(sr)) == private
    report = hd.sr.srread(io.BytesIO(encode(sr))).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert len(report.get_planar_roi_measurement_groups()) == 2 * len(case.result.findings)


def test_sr_outlines_lie_on_the_masks_of_the_right_images(case: Case) -> None:
    regions = _region_groups(_sr(case))
    tracking = case.tracking
    assert len(regions) == len(case.result.findings)
    for index, (group, finding) in enumerate(zip(regions, case.result.findings, strict=True)):
        assert content.tracking_uid(group) == tracking[index].uid
        scoord = content.item(group, "111030")
        assert scoord.GraphicType == "POLYLINE"
        reference = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == finding.sop_instance_uid
        points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
        np.testing.assert_array_equal(points[0], points[-1])  # closed
        assert len(points) >= 4
        full = finding.mask.paste(case.image_set.image(finding.sop_instance_uid).shape)
        assert outline_on_mask(points, full)


def test_sr_outline_of_a_solid_lesion_encloses_its_area(mammo: Case) -> None:
    mass = mammo.result.findings[0]
    scoord = content.item(_region_groups(_sr(mammo))[0], "111030")
    x, y = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2).T
    shoelace = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert 0.85 * mass.mask.pixel_count < shoelace < 1.05 * mass.mask.pixel_count
    centre_row, centre_column = mass.centre_rc
    assert x.min() < centre_column + 0.5 < x.max()
    assert y.min() < centre_row + 0.5 < y.max()


def test_sr_finding_groups_carry_type_site_and_measurements(mammo: Case) -> None:
    area = codes.measurement_concept(MeasurementKind.AREA)[0].value
    extent = codes.measurement_concept(MeasurementKind.LARGEST_EXTENT)[0].value
    for group, finding in zip(_region_groups(_sr(mammo)), mammo.result.findings, strict=True):
        assert content.site(group) == (codes.BREAST.value, codes.RIGHT.value)
        numbers = content.numbers(group)
        assert numbers[area] == pytest.approx(finding.area_mm2, abs=1e-3)
        assert numbers[extent] == pytest.approx(finding.diameter_mm, abs=0.01)
        assert numbers[codes.CERTAINTY_OF_FINDING.value] == pytest.approx(100 * finding.probability)
        algorithm = {
            content.code(i): str(i.TextValue)
            for i in group.ContentSequence
            if i.ValueType == "TEXT"
        }
        assert algorithm["111001"] == MAMMO_MODEL.name
        assert NOT_FOR_CLINICAL_USE in algorithm["111002"]
    types = [content.coded(g)["121071"] for g in _region_groups(_sr(mammo))]
    assert types == [codes.MASS.value, codes.CALCIFICATION_CLUSTER.value]


def test_sr_segment_groups_reference_the_segment_frames(case: Case) -> None:
    segs = {str(seg.SOPInstanceUID): seg for seg in case.objects.segs}
    groups = _segment_groups(_sr(case))
    tracking = case.tracking
    assert len(groups) == len(case.result.findings)
    for index, group in enumerate(groups):
        assert content.tracking_uid(group) == tracking[index].uid
        reference = content.item(group, "121214").ReferencedSOPSequence[0]
        seg = segs[str(reference.ReferencedSOPInstanceUID)]
        assert "ReferencedSegmentNumber" not in reference  # the frame says which segment
        per_frame = seg.PerFrameFunctionalGroupsSequence[int(reference.ReferencedFrameNumber) - 1]
        identification = per_frame.get("SegmentIdentificationSequence") or (
            seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
        )
        segment = int(identification[0].ReferencedSegmentNumber)
        assert seg.SegmentSequence[segment - 1].TrackingUID == tracking[index].uid


def _assessment_groups(case: Case) -> list[Dataset]:
    return [
        g
        for g in content.groups(_sr(case))
        if content.tracking_uid(g) in {case.uids.assessment_tracking_uid(i) for i in range(2)}
    ]


def test_sr_breast_assessments_give_probability_threshold_and_verdict(mammo: Case) -> None:
    right, left = _assessment_groups(mammo)
    assert content.site(right) == (codes.BREAST.value, codes.RIGHT.value)
    assert content.site(left) == (codes.BREAST.value, codes.LEFT.value)
    probability, threshold = codes.PROBABILITY_OF_CANCER.value, codes.THRESHOLD_VALUE.value
    assert content.numbers(right) == {probability: 82.0, threshold: 50.0}
    assert content.numbers(left) == {probability: 7.0, threshold: 50.0}
    verdict = codes.BREAST_SUSPICION.value
    assert content.coded(right)[verdict] == codes.SUSPICIOUS.value
    assert content.coded(left)[verdict] == codes.NOT_SUSPICIOUS.value
    read = [
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in content.items(right, "121112")
    ]
    assert read == list(mammo.result.assessments[0].sop_instance_uids)


def test_sr_dr_assessments_give_grade_referral_and_grade_probabilities(fundus: Case) -> None:
    right, left = _assessment_groups(fundus)
    assert content.site(right) == (codes.RETINA.value, codes.RIGHT.value)
    assert content.site(left) == (codes.RETINA.value, codes.LEFT.value)
    grade, referable = codes.ICDR_GRADE.value, codes.REFERABLE_DR.value
    assert (content.coded(right)[grade], content.coded(right)[referable]) == (
        codes.icdr_grade_code(0, ICDR_GRADES[0]).value,
        codes.NO.value,
    )
    assert (content.coded(left)[grade], content.coded(left)[referable]) == (
        codes.icdr_grade_code(3, ICDR_GRADES[3]).value,
        codes.YES.value,
    )
    severe = next(i for i in left.ContentSequence if content.code(i) == grade)
    assert (
        severe.ConceptCodeSequence[0].CodeMeaning
        == codes.icdr_grade_code(3, ICDR_GRADES[3]).meaning
    )
    assert content.numbers(left) == {
        codes.icdr_probability_code(g, ICDR_GRADES[g]).value: pytest.approx(100 * p)
        for g, p in enumerate(fundus.result.assessments[1].class_probabilities)
    }


def test_sr_references_each_explanation_image_from_its_assessment(case: Case) -> None:
    groups = _assessment_groups(case)
    objects = case.objects
    for explanation, parametric_map, image in zip(
        case.result.explanations, objects.parametric_maps, objects.explanations, strict=True
    ):
        (holder,) = [
            g
            for g, a in zip(groups, case.result.assessments, strict=True)
            if explanation.sop_instance_uid in a.sop_instance_uids
        ]
        references = [
            str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for i in content.items(holder, codes.VISUAL_EXPLANATION.value)
        ]
        assert str(parametric_map.SOPInstanceUID) in references
        assert str(image.SOPInstanceUID) in references
        texts = [str(i.TextValue) for i in content.items(holder, codes.COMMENT.value)]
        assert f"Grad-CAM activation map: {explanation.target}" in texts


def test_fundus_sr_codes_lesions_on_the_left_retina(fundus: Case) -> None:
    regions = _region_groups(_sr(fundus))
    assert [content.coded(g)["121071"] for g in regions] == [
        codes.finding_type_code(f.finding_type).value for f in fundus.result.findings
    ]
    assert all(content.site(g) == (codes.RETINA.value, codes.LEFT.value) for g in regions)
    extent = codes.measurement_concept(MeasurementKind.LARGEST_EXTENT)[0].value
    assert all(extent not in content.numbers(g) for g in regions)  # no diameter given


# --- burned-in and explanation images ------------------------------------------------------------


def _source_of(case: Case, capture: Dataset) -> Dataset:
    uid = str(capture.SourceImageSequence[0].ReferencedSOPInstanceUID)
    (source,) = [ds for ds in case.datasets if ds.SOPInstanceUID == uid]
    return source


def test_overlays_show_contours_banner_and_reference_their_image(case: Case) -> None:
    for capture in (case.read[str(ds.SOPInstanceUID)] for ds in case.objects.overlays):
        assert capture.SOPClassUID == SecondaryCaptureImageStorage
        assert capture.SeriesInstanceUID == case.uids.overlay_series_instance_uid
        reference = capture.SourceImageSequence[0]
        image_index = case.report.grid.index_of(
            (str(reference.ReferencedSOPInstanceUID), reference.get("ReferencedFrameNumber"))
        )
        assert capture.SOPInstanceUID == case.uids.overlay_sop_instance_uid(image_index)
        assert capture.BurnedInAnnotation == "YES"
        source = _source_of(case, capture)
        assert capture.Laterality == source.ImageLaterality
        assert list(capture.PatientOrientation or []) == list(source.PatientOrientation or [])
        pixels = capture.pixel_array
        assert pixels.shape == (*case.image_set.image(source.SOPInstanceUID).shape, 3)
        banner = pixels[: max(10, pixels.shape[0] // 20) - 1]
        assert np.all(banner == BANNER_COLOUR, axis=2).mean() > 0.5
        for index, finding in enumerate(case.result.findings):
            if finding.sop_instance_uid != source.SOPInstanceUID:
                continue
            coloured = np.all(pixels == CONTOUR_COLOURS[index % len(CONTOUR_COLOURS)], axis=2)
            full = finding.mask.paste(coloured.shape)
            assert coloured[full].sum() >= 4  # the contour runs on the mask's border pixels


def test_explanations_blend_the_heatmap_and_say_what_they_explain(case: Case) -> None:
    for explanation, built in zip(case.result.explanations, case.objects.explanations, strict=True):
        capture = case.read[str(built.SOPInstanceUID)]
        assert capture.SeriesInstanceUID == case.uids.explanation_series_instance_uid
        assert capture.SeriesNumber == OPTIONS.explanation_series_number
        assert (
            capture.SourceImageSequence[0].ReferencedSOPInstanceUID == explanation.sop_instance_uid
        )
        assert_blended_explanation(capture, explanation)


# --- key images and presentation states ---------------------------------------------------------


def test_kos_flags_the_images_with_findings_and_names_the_sr(case: Case) -> None:
    kos = case.read[case.uids.kos_sop_instance_uid]
    assert kos.SeriesInstanceUID == case.uids.kos_series_instance_uid
    flagged = [
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in kos.ContentSequence
        if i.ValueType == "IMAGE"
    ]
    with_findings = [
        image.sop_instance_uid
        for image in case.image_set.images
        if any(f.sop_instance_uid == image.sop_instance_uid for f in case.result.findings)
    ]
    assert flagged == with_findings
    (document,) = [i for i in kos.ContentSequence if i.ValueType == "COMPOSITE"]
    sr = document.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert sr == case.uids.sr_sop_instance_uid


def test_presentation_states_mark_each_finding_on_its_image_with_its_tracking(
    case: Case,
) -> None:
    marked: dict[str, set[str]] = {}
    for state in case.objects.states:
        read = case.read[str(state.SOPInstanceUID)]
        for annotation in read.GraphicAnnotationSequence:
            images = {str(i.ReferencedSOPInstanceUID) for i in annotation.ReferencedImageSequence}
            for graphic in annotation.get("GraphicObjectSequence", []):
                if "TrackingUID" in graphic:
                    assert graphic.TrackingID in {t.identifier for t in case.tracking}
                    marked.setdefault(str(graphic.TrackingUID), set()).update(images)
    for finding, tracking in zip(case.result.findings, case.tracking, strict=True):
        assert marked[tracking.uid] == {finding.sop_instance_uid}


# --- other inputs --------------------------------------------------------------------------------


def test_without_findings_and_overlays_only_the_sr_and_the_explanations_are_built(
    mammo: Case, tmp_path: Path
) -> None:
    result = PlanarResult(
        model=MAMMO_MODEL,
        study_instance_uid=mammo.image_set.study_instance_uid,
        findings=(),
        assessments=mammo.result.assessments,
        explanations=mammo.result.explanations,
    )
    objects = build_planar_objects(
        headers_only(mammo.datasets),
        mammo.image_set,
        result,
        result_uids("empty"),
        OPTIONS,
        overlay=False,
    )
    assert objects.segs == []
    assert objects.overlays == objects.states == []
    assert objects.kos is None
    assert len(objects.parametric_maps) == len(objects.explanations) == 1
    read = _written(objects, tmp_path)
    assert len(_assessment_groups_of(read[str(objects.sr.SOPInstanceUID)])) == 2


def _assessment_groups_of(sr: Dataset) -> list[Dataset]:
    uids = result_uids("empty")
    return [
        g
        for g in content.groups(sr)
        if content.tracking_uid(g) in {uids.assessment_tracking_uid(i) for i in range(2)}
    ]


def test_nothing_to_say_still_makes_a_valid_report(fundus: Case, tmp_path: Path) -> None:
    result = PlanarResult(
        model=FUNDUS_MODEL,
        study_instance_uid=fundus.image_set.study_instance_uid,
        findings=(),
        assessments=(),
    )
    uids = result_uids("nothing")
    objects = build_planar_objects(
        headers_only(fundus.datasets),
        fundus.image_set,
        result,
        uids,
        OPTIONS,
        overlay=True,
        gsps=True,
    )
    assert objects.segs == objects.overlays == objects.states == []
    (group,) = content.groups(_written(objects, tmp_path)[uids.sr_sop_instance_uid])
    assert content.tracking_uid(group) == uids.summary_tracking_uid
    assert content.coded(group)[codes.FINDING.value] == codes.ABSENT.value


def test_rerun_lists_its_predecessor_and_keeps_the_lesions_tracking_uids(
    mammo: Case, tmp_path: Path
) -> None:
    earlier = pydicom.dcmread(io.BytesIO(encode(mammo.objects.sr)))
    uids = result_uids("mammo-job-rerun")
    objects = build_planar_objects(
        headers_only(mammo.datasets),
        mammo.image_set,
        mammo.result,
        uids,
        OPTIONS,
        [earlier],
        overlay=False,
    )
    read = _written(objects, tmp_path)[uids.sr_sop_instance_uid]
    (study,) = read.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
        earlier.SOPInstanceUID
    ]
    # IHE AIR: the same lesion keeps its identity across re-runs.
    kept = [t.uid for t in mammo.tracking]
    assert [content.tracking_uid(g) for g in _region_groups(read)] == kept
    assert [str(i.TrackingUID) for seg in objects.segs for i in seg.SegmentSequence] == kept


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("finding_elsewhere", "outside the image set"),
        ("heatmap_size", "heatmap is"),
        ("missing_dataset", "no source dataset"),
        ("other_study", "another study"),
    ],
)
def test_unusable_inputs_are_refused(mammo: Case, change: str, message: str) -> None:
    result, datasets = mammo.result, headers_only(mammo.datasets)
    if change == "finding_elsewhere":
        stray = PlanarFinding(
            FindingType.MASS, "2.25.1", Laterality.RIGHT, mammo.result.findings[0].mask, 0.5
        )
        result = PlanarResult(MAMMO_MODEL, result.study_instance_uid, (stray,), ())
    elif change == "heatmap_size":
        small = ExplanationMap(
            mammo.image_set.images[0].sop_instance_uid,
            np.zeros((4, 4), np.float32),
            "Grad-CAM",
            "x",
        )
        result = PlanarResult(MAMMO_MODEL, result.study_instance_uid, (), (), (small,))
    elif change == "missing_dataset":
        datasets = datasets[1:]
    else:
        result = PlanarResult(MAMMO_MODEL, "2.25.2", (), ())
    with pytest.raises(ResultBuildError, match=message):
        build_planar_objects(
            datasets, mammo.image_set, result, mammo.uids, OPTIONS, overlay=True, gsps=True
        )


def test_fundus_without_pixel_spacing_reports_no_mm(tmp_path: Path) -> None:
    study = StudyInfo.from_seed(9, "fundus")
    datasets = [
        fundus_dataset(
            fundus_pixels(0),
            study=study,
            laterality="R",
            series_number=1,
            instance_number=1,
            pixel_spacing_mm=None,
        )
    ]
    image_set = load_image_set(datasets)
    (image,) = image_set.images
    assert image.pixel_spacing_mm is None
    finding = PlanarFinding(
        FindingType.SOFT_EXUDATE,
        image.sop_instance_uid,
        Laterality.RIGHT,
        PlanarMask.from_full(disk(OP_SHAPE, (20.0, 20.0), 4.0)),
        0.7,
    )
    result = PlanarResult(FUNDUS_MODEL, image_set.study_instance_uid, (finding,), ())
    uids = result_uids("no-spacing")
    objects = build_planar_objects(
        headers_only(datasets), image_set, result, uids, OPTIONS, overlay=True, gsps=True
    )
    read = _written(objects, tmp_path)
    (region,) = _region_groups(read[uids.sr_sop_instance_uid])
    certainty_only = {codes.CERTAINTY_OF_FINDING.value: 70.0}
    assert content.numbers(region) == certainty_only  # no area, no diameter
    assert content.coded(region)["121071"] == codes.SOFT_EXUDATE.value


def test_building_keeps_the_patient_name_out_of_warnings(mammo: Case) -> None:
    sources = headers_only(mammo.datasets)
    for ds in sources:
        ds.PatientName = "Zyxwvut"  # one component: highdicom warns, quoting it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objects = build_planar_objects(
            sources, mammo.image_set, mammo.result, mammo.uids, OPTIONS, overlay=True, gsps=True
        )
    assert not [w for w in caught if "Zyxwvut" in str(w.message)]
    assert not [w for w in objects.warnings if "Zyxwvut" in w]


BACKSLASH = "\\"
"""The separator of a multi-valued element's values as DICOM writes them."""


def _without(datasets: list[Dataset], keyword: str) -> list[Dataset]:
    for ds in datasets:
        delattr(ds, keyword)
    return datasets


def test_mammograms_without_patient_orientation_get_it_from_laterality_and_view(
    mammo: Case, tmp_path: Path
) -> None:
    datasets = _without(_mammo_datasets(), "PatientOrientation")

    case = _case(datasets, _mammo_result, "mammo-job", tmp_path)  # written and validated

    # The synthetic views are stored in the standard display layout, and say so.
    stated = {str(ds.SOPInstanceUID): list(ds.PatientOrientation) for ds in mammo.datasets}
    for seg in _segs(case):
        source_uid = str(seg.SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert list(seg.PatientOrientation) == stated[source_uid]
    for overlay in (case.read[str(ds.SOPInstanceUID)] for ds in case.objects.overlays):
        source_uid = str(overlay.SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert list(overlay.PatientOrientation) == stated[source_uid]
    # The job records what was derived, one line per image, by UID only.
    assert sorted(case.objects.warnings) == sorted(
        f"image {uid}: PatientOrientation absent, {BACKSLASH.join(orientation)} derived"
        for uid, orientation in stated.items()
    )
    assert mammo.objects.warnings == ()


def test_a_one_frame_ophthalmic_photograph_without_number_of_frames_is_read_as_one_frame(
    tmp_path: Path,
) -> None:
    datasets = _without(_fundus_datasets(), "NumberOfFrames")

    case = _case(datasets, _fundus_result, "fundus-job", tmp_path)  # written and validated

    assert {str(seg.SOPClassUID) for seg in _segs(case)} == {SegmentationStorage}

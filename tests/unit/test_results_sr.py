"""The TID 1500 SR of every kind of report: written, read back and validated.

Four reports go through the one builder: a synthetic chest CT with nodules (and one
without), the same CT as one Enhanced CT multi-frame image, a four-view mammogram with
findings, per-breast assessments and an explanation map, and a fundus exam with lesions,
per-eye DR grades and explanation maps.  Each SR is written, read back with highdicom and
checked by dciodvfy and PixelMed's DicomSRValidator (0 errors).
"""

import copy
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset

from cad_node.domain import Finding, FindingType, ImageVolume, MaskBox, ModelIdentity, ModelResult
from cad_node.domain.image_sets import (
    ExplanationMap,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarResult,
)
from cad_node.domain.results import (
    MeasurementKind,
    ModelReport,
    finding_label,
    planar_report,
    volume_report,
)
from cad_node.errors import ResultBuildError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.multiframe import volume_from_frames
from cad_node.imaging.volume import load_volume
from cad_node.results import codes
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import build_explanation_images
from cad_node.results.pmap import build_parametric_maps
from cad_node.results.seg import build_segs
from cad_node.results.sources import prepared_headers
from cad_node.results.sr import Explanation, build_sr
from cad_node.results.tracking import Tracking, finding_tracking
from cad_node.results.uids import algorithm_device_uid, result_uids
from tests import sr_content as content
from tests.dicom_validation import assert_valid_sr, require_sr_validator, sr_validator_errors
from tests.results_inputs import (
    MG_SHAPE,
    OP_SHAPE,
    breast_assessments,
    disk,
    dr_assessments,
    dr_explanations,
    enhanced_ct,
    fundus_exam,
    headers_only,
    heatmap,
    mammograms,
    planar_finding,
)
from tests.synthetic import SyntheticSeries, write_ct_series

WHEN = datetime.datetime(2026, 12, 6, 9, 15, 30, 500000)
OPTIONS = ResultOptions().at(WHEN)
LUNG_MODEL = ModelIdentity("lung-sr-test", "0.0.1", "ab" * 32)
MAMMO_MODEL = ModelIdentity("mammo-sr-test", "0.0.1", "cd" * 32, family="mammography")
FUNDUS_MODEL = ModelIdentity("fundus-sr-test", "0.0.1", "ef" * 32, family="fundus")

# Concept names of the content items the tests look for (PS3.16 Annex D, DCM).
ALGORITHM_NAME = "111001"
FINDING = "121071"
IMAGE_REGION = "111030"
REFERENCED_SEGMENT = "121191"
REFERENCED_SEGMENTATION_FRAME = "121214"
TRACKING_IDENTIFIER = "112039"
MEASUREMENT_METHOD = "370129005"
PROCEDURE_REPORTED = "121058"
IMAGE_LIBRARY = "111028"


# --- inputs ------------------------------------------------------------------------------------


def _nodule_finding(
    volume: ImageVolume, full: npt.NDArray[np.bool_], probability: float
) -> Finding:
    index = np.argwhere(full)
    low, high = index.min(axis=0), index.max(axis=0) + 1
    centre = tuple(float(v) for v in index.mean(axis=0))
    volume_mm3 = float(full.sum() * np.prod(volume.spacing_mm))
    return Finding(
        finding_type=FindingType.NODULE,
        centre_index=centre,  # type: ignore[arg-type]  # a 3-tuple built from a 3-vector
        centre_patient_mm=volume.index_to_patient(centre),  # type: ignore[arg-type]  # as above
        diameter_mm=float((6.0 * volume_mm3 / np.pi) ** (1 / 3)),
        volume_mm3=volume_mm3,
        probability=probability,
        mask=MaskBox(
            offset=(int(low[0]), int(low[1]), int(low[2])),
            mask=full[low[0] : high[0], low[1] : high[1], low[2] : high[2]],
        ),
    )


def _nodules(series: SyntheticSeries, volume: ImageVolume) -> ModelResult:
    """The phantom's nodules as the model's findings (volume index k = phantom slice k)."""
    assert volume.sop_instance_uids[0] == series.sop_instance_uids[0] or (
        volume.frame_numbers is not None
    )
    findings = tuple(
        _nodule_finding(volume, series.labels == truth.label, 0.9 - 0.2 * i)
        for i, truth in enumerate(series.nodules)
    )
    return ModelResult(LUNG_MODEL, findings, volume.series_instance_uid)


def sized_finding(
    finding_type: FindingType,
    image_uid: str,
    laterality: Laterality,
    full: npt.NDArray[np.bool_],
    probability: float,
) -> PlanarFinding:
    """A finding with its area and diameter, at 0.2 mm pixels."""
    return planar_finding(
        finding_type, image_uid, laterality, full, probability, spacing_mm=0.2, diameter=True
    )


def _mammo_result(image_set: ImageSet) -> PlanarResult:
    r_cc, r_mlo, l_cc, l_mlo = (image.sop_instance_uid for image in image_set.images)
    right = Laterality.RIGHT
    return PlanarResult(
        model=MAMMO_MODEL,
        study_instance_uid=image_set.study_instance_uid,
        findings=(
            sized_finding(FindingType.MASS, r_cc, right, disk(MG_SHAPE, (40, 50), 7.5), 0.87),
            sized_finding(
                FindingType.CALCIFICATION_CLUSTER, r_mlo, right, disk(MG_SHAPE, (60, 22), 3), 0.64
            ),
        ),
        assessments=breast_assessments(r_cc, r_mlo, l_cc, l_mlo),
        explanations=(
            ExplanationMap(r_cc, heatmap(MG_SHAPE, (40, 50)), "Grad-CAM", "breast suspicion"),
        ),
    )


def _fundus_result(image_set: ImageSet) -> PlanarResult:
    od, os_ = (image.sop_instance_uid for image in image_set.images)
    left = Laterality.LEFT
    return PlanarResult(
        model=FUNDUS_MODEL,
        study_instance_uid=image_set.study_instance_uid,
        findings=(
            sized_finding(FindingType.HAEMORRHAGE, os_, left, disk(OP_SHAPE, (30, 60), 5), 0.91),
            sized_finding(FindingType.HARD_EXUDATE, os_, left, disk(OP_SHAPE, (50, 30), 3), 0.66),
        ),
        assessments=dr_assessments(od, os_),
        explanations=dr_explanations(od, os_),
    )


# --- building, writing, reading back -----------------------------------------------------------


@dataclass(frozen=True)
class Built:
    report: ModelReport
    headers: list[Dataset]
    tracking: tuple[Tracking, ...]
    segs: list[Dataset]
    explanations: list[Explanation]
    sr: Dataset
    """The SR as written and read back."""


def _build(
    datasets: Sequence[Dataset],
    report: ModelReport,
    folder: Path,
    *,
    with_captures: bool = True,
    predecessors: Sequence[Dataset] = (),
    job_key: str = "sr-job",
) -> Built:
    uids = result_uids(job_key)
    headers = prepared_headers(headers_only(datasets), report.grid)
    tracking = finding_tracking(report, uids, predecessors)
    segs = build_segs(report, headers, tracking, uids, OPTIONS)
    maps = build_parametric_maps(report, headers, uids, OPTIONS)
    captures: list[Dataset | None] = (
        list(build_explanation_images(report, headers, uids, OPTIONS))
        if with_captures
        else [None] * len(maps)
    )
    explanations = [
        Explanation(explanation, parametric_map, capture)
        for explanation, parametric_map, capture in zip(
            report.explanations, maps, captures, strict=True
        )
    ]
    sr = build_sr(report, headers, tracking, segs, explanations, uids, OPTIONS, predecessors)
    path = folder / f"{job_key}.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_valid_sr(path)
    assert isinstance(hd.sr.srread(path), hd.sr.Comprehensive3DSR)
    return Built(report, headers, tracking, list(segs), explanations, pydicom.dcmread(path))


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_ct_series(tmp_path_factory.mktemp("ct"), seed=15, slices=32, nodule_count=2)


@pytest.fixture(scope="module")
def ct(chest: SyntheticSeries, tmp_path_factory: pytest.TempPathFactory) -> Built:
    datasets = [pydicom.dcmread(path) for path in chest.paths]
    volume = load_volume(datasets)
    report = volume_report(volume, _nodules(chest, volume), chest.study_instance_uid)
    return _build(datasets, report, tmp_path_factory.mktemp("ct-sr"))


@pytest.fixture(scope="module")
def enhanced(chest: SyntheticSeries, tmp_path_factory: pytest.TempPathFactory) -> Built:
    image = enhanced_ct([pydicom.dcmread(path) for path in chest.paths])
    volume = volume_from_frames(image)
    report = volume_report(volume, _nodules(chest, volume), chest.study_instance_uid)
    return _build([image], report, tmp_path_factory.mktemp("ect-sr"))


@pytest.fixture(scope="module")
def mammo(tmp_path_factory: pytest.TempPathFactory) -> Built:
    datasets = mammograms()
    image_set = load_image_set(datasets)
    report = planar_report(image_set, _mammo_result(image_set))
    return _build(datasets, report, tmp_path_factory.mktemp("mg-sr"))


@pytest.fixture(scope="module")
def fundus(tmp_path_factory: pytest.TempPathFactory) -> Built:
    datasets = fundus_exam()
    image_set = load_image_set(datasets)
    report = planar_report(image_set, _fundus_result(image_set))
    return _build(datasets, report, tmp_path_factory.mktemp("op-sr"), with_captures=False)


@pytest.fixture(params=["ct", "enhanced", "mammo", "fundus"])
def built(request: pytest.FixtureRequest) -> Built:
    value: Built = request.getfixturevalue(request.param)
    return value


# --- reading the content tree ------------------------------------------------------------------


def _concept(code: object) -> str:
    return str(code.value)  # type: ignore[attr-defined]  # a pydicom Code


def _region_groups(sr: Dataset) -> list[Dataset]:
    return [g for g in content.groups(sr) if content.items(g, IMAGE_REGION)]


def _segment_groups(sr: Dataset) -> list[Dataset]:
    return [
        g
        for g in content.groups(sr)
        if content.items(g, REFERENCED_SEGMENT) or content.items(g, REFERENCED_SEGMENTATION_FRAME)
    ]


def _identifier(group: Dataset) -> str:
    return str(content.item(group, TRACKING_IDENTIFIER).TextValue)


def _site(group: Dataset) -> str:
    return str(content.item(group, content.FINDING_SITE).ConceptCodeSequence[0].CodeValue)


def _scoord(group: Dataset) -> Dataset:
    return content.item(group, IMAGE_REGION)


def _selected_from(scoord: Dataset) -> Dataset:
    (image,) = scoord.ContentSequence
    reference: Dataset = image.ReferencedSOPSequence[0]
    return reference


def _visual_explanations(group: Dataset) -> list[str]:
    return [
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in content.items(group, _concept(codes.VISUAL_EXPLANATION))
    ]


def _evidence_uids(sr: Dataset) -> set[str]:
    return {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }


def _library_entries(sr: Dataset) -> list[Dataset]:
    (library,) = [item for item in sr.ContentSequence if content.code(item) == IMAGE_LIBRARY]
    return [
        entry
        for group in library.ContentSequence
        for entry in group.ContentSequence
        if entry.ValueType == "IMAGE"
    ]


# --- every report ------------------------------------------------------------------------------


def test_every_group_names_the_algorithm(built: Built) -> None:
    groups = content.groups(built.sr)
    assert groups
    for group in groups:
        name = content.item(group, ALGORITHM_NAME)
        assert name.TextValue == built.report.model.name


def test_each_finding_has_its_tracking_in_every_group_of_it(built: Built) -> None:
    regions = _region_groups(built.sr)
    assert [content.tracking_uid(g) for g in regions] == [t.uid for t in built.tracking]
    assert [_identifier(g) for g in regions] == [t.identifier for t in built.tracking]
    assert [t.identifier for t in built.tracking] == [
        finding_label(f, i) for i, f in enumerate(built.report.findings)
    ]
    segments = _segment_groups(built.sr)
    assert [content.tracking_uid(g) for g in segments] == [t.uid for t in built.tracking]


def test_the_algorithm_is_contributing_equipment(built: Built) -> None:
    model = built.report.model
    device_uid = algorithm_device_uid(model.name, model.version, model.weights_sha256)
    (item,) = [
        item
        for item in built.sr.ContributingEquipmentSequence
        if item.get("DeviceUID") == device_uid
    ]
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_ALGORITHM.value
    assert item.ManufacturerModelName == model.name


def test_procedure_reported_and_private_scheme_only_when_used(built: Built) -> None:
    (procedure,) = [
        item for item in built.sr.ContentSequence if content.code(item) == PROCEDURE_REPORTED
    ]
    expected = codes.procedure_code(built.report.procedure)
    assert procedure.ConceptCodeSequence[0].CodeValue == expected.value
    used = {
        str(element.value)
        for element in built.sr.iterall()
        if element.keyword == "CodingSchemeDesignator"
    } - {""}
    declared = {
        str(item.CodingSchemeDesignator)
        for item in built.sr.get("CodingSchemeIdentificationSequence", [])
    }
    assert (codes.PRIVATE_SCHEME_DESIGNATOR in used) == (
        codes.PRIVATE_SCHEME_DESIGNATOR in declared
    )


def test_findings_are_drawn_on_their_display_image(built: Built) -> None:
    report = built.report
    for finding, group in zip(report.findings, _region_groups(built.sr), strict=True):
        image = report.grid.images[finding.display_image]
        reference = _selected_from(_scoord(group))
        assert reference.ReferencedSOPInstanceUID == image.sop_instance_uid
        frames = reference.get("ReferencedFrameNumber")
        assert (None if frames is None else int(frames)) == image.frame_number
        assert _site(group) == _region_value(report)


# --- CT ----------------------------------------------------------------------------------------


def test_a_nodule_is_a_circle_of_its_area_on_its_display_slice(ct: Built) -> None:
    for finding, group in zip(ct.report.findings, _region_groups(ct.sr), strict=True):
        scoord = _scoord(group)
        assert scoord.GraphicType == "CIRCLE"
        (cx, cy), (px, py) = np.reshape(scoord.GraphicData, (2, 2))
        assert (cy, cx) == pytest.approx((finding.centre[1] + 0.5, finding.centre[2] + 0.5))
        mask = finding.mask_on(finding.display_image)
        assert mask is not None
        row_mm, column_mm = ct.report.grid.images[finding.display_image].pixel_spacing_mm or (1, 1)
        radius_mm = (px - cx) * column_mm
        area_mm2 = mask.mask.sum() * row_mm * column_mm
        assert np.pi * radius_mm**2 == pytest.approx(area_mm2, rel=1e-5)  # GraphicData is FL
        assert py == cy


def test_the_ct_diameter_says_it_is_the_equivalent_sphere_diameter(ct: Built) -> None:
    kind = MeasurementKind.EQUIVALENT_SPHERE_DIAMETER
    name, unit = codes.measurement_concept(kind)
    method = codes.measurement_method(kind)
    assert method is not None, "codes.measurement_method gives the CT diameter no method"
    for finding, group in zip(ct.report.findings, _region_groups(ct.sr), strict=True):
        (diameter,) = [
            item
            for item in content.items(group, name.value)
            if item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == unit.value
        ]
        assert float(diameter.MeasuredValueSequence[0].NumericValue) == pytest.approx(
            finding.measurement(kind), rel=1e-5
        )
        (modifier,) = [m for m in diameter.ContentSequence if content.code(m) == MEASUREMENT_METHOD]
        assert modifier.RelationshipType == "HAS CONCEPT MOD"
        assert modifier.ConceptCodeSequence[0].CodeValue == method.value


def test_ct_findings_carry_volume_and_certainty(ct: Built) -> None:
    volume_name, _ = codes.measurement_concept(MeasurementKind.VOLUME)
    for finding, group in zip(ct.report.findings, _region_groups(ct.sr), strict=True):
        values = content.numbers(group)
        assert values[volume_name.value] == pytest.approx(
            finding.measurement(MeasurementKind.VOLUME), rel=1e-5
        )
        assert finding.probability is not None
        assert values[codes.CERTAINTY_OF_FINDING.value] == pytest.approx(100 * finding.probability)


def test_volumetric_groups_reference_the_segments_of_the_one_seg(ct: Built) -> None:
    (seg,) = ct.segs
    segments = {str(item.TrackingUID): int(item.SegmentNumber) for item in seg.SegmentSequence}
    for tracking, group in zip(ct.tracking, _segment_groups(ct.sr), strict=True):
        assert str(group.ConceptNameCodeSequence[0].CodeValue) == "125007"
        reference = content.item(group, REFERENCED_SEGMENT).ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert int(reference.ReferencedSegmentNumber) == segments[tracking.uid]
    assert str(seg.SOPInstanceUID) in _evidence_uids(ct.sr)


def test_the_ct_image_library_lists_the_display_slices(ct: Built) -> None:
    shown = sorted({f.display_image for f in ct.report.findings})
    entries = _library_entries(ct.sr)
    assert [str(e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for e in entries] == [
        ct.report.grid.images[k].sop_instance_uid for k in shown
    ]


def test_an_enhanced_ct_names_frames_and_lists_its_image_once(enhanced: Built) -> None:
    (entry,) = _library_entries(enhanced.sr)
    (image_uid,) = {image.sop_instance_uid for image in enhanced.report.grid.images}
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image_uid
    for group in _region_groups(enhanced.sr):
        assert int(_selected_from(_scoord(group)).ReferencedFrameNumber) >= 1


def test_a_ct_without_findings_says_finding_absent(chest: SyntheticSeries, tmp_path: Path) -> None:
    datasets = [pydicom.dcmread(path) for path in chest.paths]
    volume = load_volume(datasets)
    empty = ModelResult(LUNG_MODEL, (), volume.series_instance_uid)
    built = _build(
        datasets, volume_report(volume, empty, chest.study_instance_uid), tmp_path, job_key="none"
    )
    (group,) = content.groups(built.sr)
    assert content.coded(group)[codes.FINDING.value] == codes.ABSENT.value
    assert _site(group) == _region_value(built.report)
    assert not built.segs
    (entry,) = _library_entries(built.sr)
    middle = built.report.grid.images[len(built.report.grid.images) // 2]
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == middle.sop_instance_uid


def test_a_rerun_names_its_predecessor(ct: Built, chest: SyntheticSeries, tmp_path: Path) -> None:
    datasets = [pydicom.dcmread(path) for path in chest.paths]
    rerun = _build(datasets, ct.report, tmp_path, predecessors=[ct.sr], job_key="rerun")
    (study,) = rerun.sr.PredecessorDocumentsSequence
    (instance,) = study.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == ct.sr.SOPInstanceUID


def test_tracking_for_other_findings_is_refused(ct: Built) -> None:
    uids = result_uids("sr-job")
    with pytest.raises(ResultBuildError, match="tracking identities"):
        build_sr(ct.report, ct.headers, ct.tracking[:-1], ct.segs, [], uids, OPTIONS, [])


# --- mammography and fundus --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mammo", "fundus"])
def test_a_lesion_on_one_image_is_its_closed_outline(
    name: str, request: pytest.FixtureRequest
) -> None:
    built: Built = request.getfixturevalue(name)
    for finding, group in zip(built.report.findings, _region_groups(built.sr), strict=True):
        scoord = _scoord(group)
        assert scoord.GraphicType == "POLYLINE"
        points = np.reshape(scoord.GraphicData, (-1, 2))
        assert len(points) >= 4
        assert tuple(points[0]) == tuple(points[-1])
        (mask,) = finding.masks
        column, row = points.mean(axis=0) - 0.5
        assert mask.paste(built.report.grid.images[mask.image_index].shape)[
            round(row), round(column)
        ]
        laterality = codes.LEFT if finding.laterality is Laterality.LEFT else codes.RIGHT
        assert content.site(group) == (
            _region_value(built.report),
            laterality.value,
        )


@pytest.mark.parametrize("name", ["mammo", "fundus"])
def test_planar_segment_groups_reference_the_segment_frame(
    name: str, request: pytest.FixtureRequest
) -> None:
    built: Built = request.getfixturevalue(name)
    by_uid = {str(seg.SOPInstanceUID): seg for seg in built.segs}
    for tracking, group in zip(built.tracking, _segment_groups(built.sr), strict=True):
        reference = content.item(group, REFERENCED_SEGMENTATION_FRAME).ReferencedSOPSequence[0]
        seg = by_uid[str(reference.ReferencedSOPInstanceUID)]
        frame = seg.PerFrameFunctionalGroupsSequence[int(reference.ReferencedFrameNumber) - 1]
        identification = frame.get("SegmentIdentificationSequence") or (
            seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
        )
        number = int(identification[0].ReferencedSegmentNumber)
        (segment,) = [s for s in seg.SegmentSequence if int(s.SegmentNumber) == number]
        assert segment.TrackingUID == tracking.uid
    assert {str(seg.SOPInstanceUID) for seg in built.segs} <= _evidence_uids(built.sr)


def _assessment_groups(built: Built) -> list[Dataset]:
    findings = {t.uid for t in built.tracking}
    return [
        g
        for g in content.groups(built.sr)
        if content.tracking_uid(g) not in findings and content.items(g, content.FINDING_SITE)
    ]


def test_breast_assessments_give_probability_threshold_and_verdict(mammo: Built) -> None:
    right, left = _assessment_groups(mammo)
    for group, assessment, verdict in (
        (right, mammo.report.assessments[0], codes.SUSPICIOUS),
        (left, mammo.report.assessments[1], codes.NOT_SUSPICIOUS),
    ):
        values = content.numbers(group)
        assert values[codes.PROBABILITY_OF_CANCER.value] == pytest.approx(100 * assessment.score)
        assert values[codes.THRESHOLD_VALUE.value] == pytest.approx(50.0)
        assert content.coded(group)[codes.BREAST_SUSPICION.value] == verdict.value
    assert content.site(right) == (codes.BREAST.value, codes.RIGHT.value)


def test_dr_assessments_give_grade_referral_and_probabilities(fundus: Built) -> None:
    right, left = _assessment_groups(fundus)
    assert content.coded(left)[codes.REFERABLE_DR.value] == codes.YES.value
    assert content.coded(right)[codes.REFERABLE_DR.value] == codes.NO.value
    assert content.coded(left)[codes.ICDR_GRADE.value] == codes.icdr_grade_code(3).value
    assert len(content.numbers(left)) == len(fundus.report.assessments[1].class_probabilities)
    assert content.site(left) == (codes.RETINA.value, codes.LEFT.value)


@pytest.mark.parametrize("name", ["mammo", "fundus"])
def test_explanations_reference_their_parametric_map_from_the_assessment(
    name: str, request: pytest.FixtureRequest
) -> None:
    built: Built = request.getfixturevalue(name)
    groups = _assessment_groups(built)
    evidence = _evidence_uids(built.sr)
    for explanation in built.explanations:
        (holder,) = [
            group
            for group, assessment in zip(groups, built.report.assessments, strict=True)
            if explanation.explanation.image_reference in assessment.image_references
        ]
        expected = [str(explanation.parametric_map.SOPInstanceUID)]
        if explanation.image is not None:
            expected.append(str(explanation.image.SOPInstanceUID))
        assert set(expected) <= set(_visual_explanations(holder))
        assert set(expected) <= evidence
    assert {str(pm.SOPClassUID) for pm in (e.parametric_map for e in built.explanations)} == {
        pydicom.uid.ParametricMapStorage
    }


def test_the_planar_image_library_lists_every_image_once(mammo: Built) -> None:
    entries = _library_entries(mammo.sr)
    assert [str(e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for e in entries] == [
        image.sop_instance_uid for image in mammo.report.grid.images
    ]


def test_an_explanation_of_an_image_nothing_else_covers_gets_its_own_group(
    tmp_path: Path,
) -> None:
    datasets = fundus_exam()
    image_set = load_image_set(datasets)
    result = _fundus_result(image_set)
    bare = PlanarResult(
        model=result.model,
        study_instance_uid=result.study_instance_uid,
        findings=(),
        assessments=(),
        explanations=result.explanations[:1],
    )
    built = _build(datasets, planar_report(image_set, bare), tmp_path, job_key="bare")
    absent, own = content.groups(built.sr)
    assert content.coded(absent)[codes.FINDING.value] == codes.ABSENT.value
    (explanation,) = built.explanations
    assert _visual_explanations(own) == [
        str(explanation.parametric_map.SOPInstanceUID),
        str(explanation.image.SOPInstanceUID),  # type: ignore[union-attr]  # captures built
    ]


# --- the validator -----------------------------------------------------------------------------


def test_the_sr_validator_reports_a_code_outside_a_closed_context_group(
    mammo: Built, tmp_path: Path
) -> None:
    require_sr_validator()
    sr = copy.deepcopy(mammo.sr)
    site = content.item(_region_groups(sr)[0], content.FINDING_SITE)
    laterality = site.ContentSequence[0].ConceptCodeSequence[0]
    laterality.CodeValue, laterality.CodingSchemeDesignator = "99999", "DCM"
    sr.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    (error,) = sr_validator_errors(tmp_path / "broken.dcm")
    assert "not found in context group 244" in error  # CID 244 "Laterality" is not extensible


def _region_value(report: ModelReport) -> str:
    """The Code Value of the finding site of ``report``'s region (every report here has one)."""
    region = codes.region_code(report.region)
    assert region is not None
    return region.value

"""Result objects of site models (MONAI bundles, nnU-Net): written, read back, validated.

The reports are built by hand as the site runners make them (``region=None``, procedure
"imaging", coded concepts from LABELS.yaml) on a small axial CT (64 x 64 x 24, non-square
pixels) and a four-view mammogram:

- a segmentation with two labels (spleen, liver): one SEG segment per label, coded from its
  concept, and one SR group per label with its volume, referencing its segment;
- a detection with two boxes: the SR holds each box's centre and extent in patient
  coordinates (an ELLIPSOID volume surface) with its probability, the SEG their ellipsoids;
- classifications of the whole grid and of each image: TID 1501 groups with the predicted
  class and each class's probability; no SEG, no Key Object Selection.

Every object goes through dciodvfy (and the SRs through PixelMed's DicomSRValidator).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from pydicom import Dataset

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import FindingType, ImageVolume, ModelIdentity
from cad_node.domain.results import (
    ClassScores,
    Concept,
    ImageMask,
    LabelConcept,
    Measurement,
    MeasurementKind,
    ModelReport,
    Procedure,
    RegionFinding,
    ResultGrid,
    planar_grid,
    volume_grid,
)
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.results import codes
from cad_node.results.build import ResultObjects, build_result_objects
from cad_node.results.overlay import finding_caption
from cad_node.results.sr import classification_label
from cad_node.results.uids import result_uids
from tests import sr_content as content
from tests.results_inputs import ct_volume, encode, mammograms
from tests.unit.test_results_objects import OPTIONS, make_ct_series, write_every_object

MODEL = ModelIdentity("site-test", "1", "12" * 32, family="site")

ANATOMICAL_STRUCTURE = Concept("123037004", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = Concept("49755003", "SCT", "Morphologically Abnormal Structure")
SPLEEN = LabelConcept("spleen", Concept("78961009", "SCT", "Spleen"), ANATOMICAL_STRUCTURE)
LIVER = LabelConcept("liver", Concept("10200004", "SCT", "Liver"), ANATOMICAL_STRUCTURE)
NODULE = LabelConcept("Nodule", Concept("27925004", "SCT", "Nodule"), ABNORMAL_STRUCTURE, 0.5)
NORMAL = LabelConcept("normal", Concept("17621005", "SCT", "Normal"), ABNORMAL_STRUCTURE)
ABNORMAL = LabelConcept("abnormal", Concept("263654008", "SCT", "Abnormal"), ABNORMAL_STRUCTURE)
DENSITY = (
    LabelConcept(
        "B", Concept("129717001", "SCT", "Scattered fibroglandular densities"), ABNORMAL_STRUCTURE
    ),
    LabelConcept("C", Concept("129718006", "SCT", "Heterogeneously dense"), ABNORMAL_STRUCTURE),
    LabelConcept("D", Concept("129719003", "SCT", "Extremely dense"), ABNORMAL_STRUCTURE),
)

# Concept names of the content items the tests read (PS3.16 Annex D).
TRACKING_IDENTIFIER = "112039"
FINDING = "121071"
FINDING_CATEGORY = "276214006"
VOLUME_SURFACE = "121231"
REFERENCED_SEGMENT = "121191"
IMAGE_REGION = "111030"
CERTAINTY_OF_FINDING = "111012"
VOLUME = "118565006"
CLASSIFICATION = "278201002"
ABSENT = "272519000"


@dataclass(frozen=True)
class Organ:
    concept: LabelConcept
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Box:
    centre_mm: tuple[float, float, float]
    extent_mm: tuple[float, float, float]
    probability: float


ORGANS = (
    Organ(SPLEEN, (10.0, 5.0, 0.0), (6.0, 8.0, 10.0)),
    Organ(LIVER, (-10.0, -6.0, 6.0), (7.0, 7.0, 12.0)),
)
BOXES = (
    Box((-7.3, 4.1, -3.7), (9.0, 12.5, 7.5), 0.83),
    Box((8.05, -11.2, 12.6), (6.0, 6.0, 10.0), 0.61),
)
GRID_PROBABILITIES = (0.123456789, 0.876543211)
IMAGE_PROBABILITIES = (
    (0.7012345, 0.2087655, 0.09),
    (0.1, 0.3333333, 0.5666667),
    (0.25, 0.5, 0.25),
    (0.0, 0.0001, 0.9999),
)


# --- inputs ------------------------------------------------------------------------------------


def _patient_points(volume: ImageVolume) -> npt.NDArray[np.float64]:
    """``points[k, r, c]``: the patient position (mm) of each voxel."""
    index = np.indices(volume.shape).reshape(3, -1).T.astype(np.float64)
    points = (volume.affine @ np.c_[index, np.ones(len(index))].T).T[:, :3]
    return np.asarray(points.reshape(*volume.shape, 3), dtype=np.float64)


def _ellipsoid(
    volume: ImageVolume,
    centre_mm: Sequence[float],
    radii_mm: Sequence[float] | npt.NDArray[np.float64],
) -> npt.NDArray[np.bool_]:
    offsets = (_patient_points(volume) - np.array(centre_mm)) / np.array(radii_mm)
    return np.asarray((offsets**2).sum(axis=-1) <= 1.0)


def _slice_masks(full: npt.NDArray[np.bool_]) -> tuple[ImageMask, ...]:
    """One mask per slice ``full`` covers, cropped to its bounding box."""
    masks = []
    for k in range(full.shape[0]):
        rows, columns = np.nonzero(full[k])
        if rows.size:
            r0, c0 = int(rows.min()), int(columns.min())
            crop = full[k, r0 : rows.max() + 1, c0 : columns.max() + 1]
            masks.append(ImageMask(k, (r0, c0), crop))
    return tuple(masks)


def _index_of(volume: ImageVolume, point_mm: Sequence[float]) -> tuple[float, float, float]:
    k, r, c, _ = np.linalg.solve(volume.affine, np.array([*point_mm, 1.0]))
    return (float(k), float(r), float(c))


def _organ_finding(volume: ImageVolume, organ: Organ) -> RegionFinding:
    full = _ellipsoid(volume, organ.centre_mm, organ.radii_mm)
    centre = np.argwhere(full).mean(axis=0)
    return RegionFinding(
        finding_type=None,
        masks=_slice_masks(full),
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        probability=None,
        measurements=(
            Measurement(MeasurementKind.VOLUME, float(full.sum() * np.prod(volume.spacing_mm))),
        ),
        concept=organ.concept,
        label=organ.concept.label,
    )


def _box_finding(volume: ImageVolume, box: Box) -> RegionFinding:
    full = _ellipsoid(volume, box.centre_mm, np.array(box.extent_mm) / 2.0)
    return RegionFinding(
        finding_type=None,
        masks=_slice_masks(full),
        centre=_index_of(volume, box.centre_mm),
        probability=box.probability,
        concept=NODULE,
        extent_mm=box.extent_mm,
    )


def _report(
    grid: ResultGrid,
    findings: Sequence[RegionFinding] = (),
    classifications: Sequence[ClassScores] = (),
) -> ModelReport:
    return ModelReport(
        model=MODEL,
        grid=grid,
        findings=tuple(findings),
        region=None,
        procedure=Procedure.IMAGING,
        classifications=tuple(classifications),
    )


@dataclass(frozen=True)
class Ct:
    series: list[Dataset]
    volume: ImageVolume
    grid: ResultGrid


@pytest.fixture(scope="module")
def ct() -> Ct:
    series = make_ct_series()
    volume = ct_volume(series)
    return Ct(series, volume, volume_grid(volume, str(series[0].StudyInstanceUID)))


@dataclass(frozen=True)
class Built:
    objects: ResultObjects
    read: dict[str, Dataset]
    """Every object as written and read back, by SOP Instance UID."""

    @property
    def sr(self) -> Dataset:
        return self.read[str(self.objects.sr.SOPInstanceUID)]

    @property
    def segs(self) -> list[Dataset]:
        return [self.read[str(seg.SOPInstanceUID)] for seg in self.objects.segs]


def _build(
    datasets: Sequence[Dataset],
    report: ModelReport,
    folder: Path,
    job_key: str,
    predecessors: Sequence[Dataset] = (),
    *,
    thorough: bool = True,
) -> Built:
    """Every object of ``report``, written, validated and read back; ``thorough``: with the
    burned-in images and presentation states, and the SR checked against its templates
    (PixelMed takes seconds per SR)."""
    objects = build_result_objects(
        datasets,
        report,
        result_uids(job_key),
        OPTIONS,
        predecessors,
        overlay=thorough,
        gsps=thorough,
    )
    return Built(objects, write_every_object(objects, folder, sr_templates=thorough))


def _labelled(built: Built, identifier: str) -> list[Dataset]:
    """The SR groups whose Tracking Identifier is ``identifier``."""
    return [
        group
        for group in content.groups(built.sr)
        if str(content.item(group, TRACKING_IDENTIFIER).TextValue) == identifier
    ]


def _code_of(group: Dataset, concept: str) -> str:
    return str(content.item(group, concept).ConceptCodeSequence[0].CodeValue)


# --- codes -------------------------------------------------------------------------------------


def test_finding_codes_of_a_shipped_type_and_of_a_concept(ct: Ct) -> None:
    (mask,) = _slice_masks(_ellipsoid(ct.volume, (0.0, 0.0, 0.0), (3.0, 3.0, 1.0)))
    shipped = RegionFinding(FindingType.NODULE, (mask,), (12.0, 32.0, 32.0), 0.7)
    site = RegionFinding(None, (mask,), (12.0, 32.0, 32.0), None, concept=SPLEEN)
    both = RegionFinding(FindingType.MASS, (mask,), (12.0, 32.0, 32.0), 0.7, concept=SPLEEN)
    assert codes.finding_codes(shipped) == (codes.NODULE, codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE)
    spleen = (codes.concept_code(SPLEEN.property_type), codes.concept_code(ANATOMICAL_STRUCTURE))
    assert codes.finding_codes(site) == spleen
    assert codes.finding_codes(both) == spleen
    assert spleen[0].value == "78961009"
    assert spleen[1].meaning == "Anatomical Structure"


def test_captions_leave_out_a_missing_probability(ct: Ct) -> None:
    organ = _organ_finding(ct.volume, ORGANS[0])
    box = _box_finding(ct.volume, BOXES[0])
    assert finding_caption(organ, "spleen") == "spleen"
    assert finding_caption(box, "Nodule 1") == "Nodule 1: P(nodule) 83%"


# --- segmentation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmentation(ct: Ct, tmp_path_factory: pytest.TempPathFactory) -> Built:
    findings = [_organ_finding(ct.volume, organ) for organ in ORGANS]
    report = _report(ct.grid, findings)
    return _build(ct.series, report, tmp_path_factory.mktemp("segmentation"), "site-seg")


def test_segmentation_seg_has_one_coded_segment_per_label(segmentation: Built) -> None:
    (seg,) = segmentation.segs
    segments = list(seg.SegmentSequence)
    assert [str(s.SegmentLabel) for s in segments] == ["spleen", "liver"]
    for segment, organ in zip(segments, ORGANS, strict=True):
        property_type = segment.SegmentedPropertyTypeCodeSequence[0]
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        assert (property_type.CodeValue, property_type.CodingSchemeDesignator) == (
            organ.concept.property_type.value,
            "SCT",
        )
        assert str(property_type.CodeMeaning) == organ.concept.property_type.meaning
        assert str(category.CodeValue) == "123037004"
        assert str(segment.SegmentDescription) == f"{organ.concept.label}, {NOT_FOR_CLINICAL_USE}"
        assert "AnatomicRegionSequence" not in segment


def test_segmentation_seg_masks_are_the_labels_on_the_source_grid(
    ct: Ct, segmentation: Built
) -> None:
    (seg,) = segmentation.segs
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=list(ct.volume.sop_instance_uids),
        segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True,
    )
    for number, organ in enumerate(ORGANS):
        expected = _ellipsoid(ct.volume, organ.centre_mm, organ.radii_mm)
        np.testing.assert_array_equal(pixels[..., number].astype(bool), expected)


def test_segmentation_sr_has_one_group_per_label_with_its_volume(
    ct: Ct, segmentation: Built
) -> None:
    (seg,) = segmentation.segs
    for number, organ in enumerate(ORGANS, start=1):
        (group,) = _labelled(segmentation, organ.concept.label)
        assert _code_of(group, FINDING) == organ.concept.property_type.value
        assert _code_of(group, FINDING_CATEGORY) == "123037004"
        segment = content.item(group, REFERENCED_SEGMENT).ReferencedSOPSequence[0]
        assert str(segment.ReferencedSOPInstanceUID) == str(seg.SOPInstanceUID)
        assert int(segment.ReferencedSegmentNumber) == number
        expected = _ellipsoid(ct.volume, organ.centre_mm, organ.radii_mm).sum() * np.prod(
            ct.volume.spacing_mm
        )
        assert content.numbers(group) == {VOLUME: pytest.approx(expected, rel=1e-5)}
        assert not content.items(group, IMAGE_REGION)
        assert not content.items(group, CERTAINTY_OF_FINDING)


def test_segmentation_overlays_and_states_label_without_probability(
    segmentation: Built,
) -> None:
    assert segmentation.objects.overlays
    texts = [
        str(text.UnformattedTextValue)
        for state in segmentation.objects.states
        for annotation in state.GraphicAnnotationSequence
        for text in annotation.get("TextObjectSequence", [])
        if str(text.UnformattedTextValue) != NOT_FOR_CLINICAL_USE
    ]
    assert sorted(texts) == ["liver", "spleen"]


def test_segmentation_without_labels_makes_no_seg_and_says_absent(ct: Ct, tmp_path: Path) -> None:
    built = _build(ct.series, _report(ct.grid), tmp_path, "site-seg-empty", thorough=False)
    assert built.objects.segs == []
    assert built.objects.kos is None
    (group,) = content.groups(built.sr)
    assert content.coded(group)[FINDING] == ABSENT


# --- detection ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detection(ct: Ct, tmp_path_factory: pytest.TempPathFactory) -> Built:
    report = _report(ct.grid, [_box_finding(ct.volume, box) for box in BOXES])
    return _build(ct.series, report, tmp_path_factory.mktemp("detection"), "site-det")


def _box_read_back(group: Dataset) -> tuple[npt.NDArray[np.float64], dict[int, float]]:
    """The centre (mm) of a group's ELLIPSOID and its extent along each patient axis."""
    (surface,) = content.items(group, VOLUME_SURFACE)
    assert (surface.ValueType, surface.GraphicType) == ("SCOORD3D", "ELLIPSOID")
    points = np.array([float(v) for v in surface.GraphicData]).reshape(6, 3)
    extents: dict[int, float] = {}
    for start, end in zip(points[::2], points[1::2], strict=True):
        axis = int(np.argmax(np.abs(end - start)))
        extents[axis] = float(np.linalg.norm(end - start))
        np.testing.assert_allclose(np.delete(end - start, axis), 0.0, atol=1e-6)
    return points.mean(axis=0), extents


def test_detection_sr_holds_each_box_centre_extent_and_probability(
    ct: Ct, detection: Built
) -> None:
    for number, box in enumerate(BOXES, start=1):
        groups = _labelled(detection, f"Nodule {number}")
        (box_group,) = [g for g in groups if content.items(g, VOLUME_SURFACE)]
        centre, extents = _box_read_back(box_group)
        np.testing.assert_allclose(centre, box.centre_mm, atol=1e-3)
        assert extents == {
            axis: pytest.approx(extent, abs=1e-3) for axis, extent in enumerate(box.extent_mm)
        }
        surface = content.item(box_group, VOLUME_SURFACE)
        assert str(surface.ReferencedFrameOfReferenceUID) == ct.volume.frame_of_reference_uid
        assert _code_of(box_group, FINDING) == "27925004"
        assert content.numbers(box_group) == {CERTAINTY_OF_FINDING: 100 * box.probability}
        assert len(groups) == 3  # the planar SCOORD, the ellipsoid, the SEG segment


def test_detection_seg_holds_each_box_ellipsoid(ct: Ct, detection: Built) -> None:
    (seg,) = detection.segs
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["Nodule 1", "Nodule 2"]
    assert [str(s.SegmentDescription) for s in seg.SegmentSequence] == [
        f"Nodule {n}, p={box.probability:.2f}, {NOT_FOR_CLINICAL_USE}"
        for n, box in enumerate(BOXES, start=1)
    ]
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=list(ct.volume.sop_instance_uids),
        assert_missing_frames_are_empty=True,
    )
    for number, box in enumerate(BOXES):
        expected = _ellipsoid(ct.volume, box.centre_mm, np.array(box.extent_mm) / 2)
        np.testing.assert_array_equal(pixels[..., number].astype(bool), expected)


def test_a_rerun_keeps_the_boxes_tracking_uids(ct: Ct, detection: Built, tmp_path: Path) -> None:
    report = _report(ct.grid, [_box_finding(ct.volume, box) for box in BOXES])
    rerun = _build(
        ct.series, report, tmp_path, "site-det-rerun", predecessors=[detection.sr], thorough=False
    )
    before = [s.TrackingUID for s in detection.segs[0].SegmentSequence]
    after = [s.TrackingUID for s in rerun.segs[0].SegmentSequence]
    assert after == before


# --- classification ----------------------------------------------------------------------------


def _class_content(group: Dataset) -> tuple[str, dict[str, float], set[str]]:
    """The predicted class's code, each class's probability and the units used."""
    units = {
        str(entry.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
        for entry in group.ContentSequence
        if entry.ValueType == "NUM"
    }
    return _code_of(group, CLASSIFICATION), content.numbers(group), units


def _sources(group: Dataset) -> list[str]:
    return [
        str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for entry in group.ContentSequence
        if entry.ValueType == "IMAGE"
    ]


def test_grid_classification_has_the_class_probabilities(ct: Ct, tmp_path: Path) -> None:
    scores = ClassScores((NORMAL, ABNORMAL), GRID_PROBABILITIES)
    built = _build(ct.series, _report(ct.grid, classifications=[scores]), tmp_path, "site-cls")
    assert built.objects.segs == []
    assert built.objects.kos is None
    (group,) = content.groups(built.sr)
    assert str(content.item(group, TRACKING_IDENTIFIER).TextValue) == "Classification"
    predicted, probabilities, units = _class_content(group)
    assert predicted == ABNORMAL.property_type.value
    assert probabilities.keys() == {"17621005", "263654008"}
    assert probabilities["17621005"] == pytest.approx(GRID_PROBABILITIES[0], abs=1e-4)
    assert probabilities["263654008"] == pytest.approx(GRID_PROBABILITIES[1], abs=1e-4)
    assert units == {"1"}
    assert sorted(_sources(group)) == sorted(ct.volume.sop_instance_uids)


def test_image_classifications_each_name_their_image(tmp_path: Path) -> None:
    datasets = mammograms(16, (64, 48))
    grid = planar_grid(load_image_set(datasets))
    scores = [ClassScores(DENSITY, p, image_index=i) for i, p in enumerate(IMAGE_PROBABILITIES)]
    built = _build(datasets, _report(grid, classifications=scores), tmp_path, "site-cls-images")
    assert built.objects.segs == []
    groups = content.groups(built.sr)
    assert len(groups) == len(scores)
    for group, score, image in zip(groups, scores, grid.images, strict=True):
        label = str(content.item(group, TRACKING_IDENTIFIER).TextValue)
        assert label == classification_label(score)
        predicted, probabilities, units = _class_content(group)
        assert predicted == DENSITY[score.predicted].property_type.value
        assert probabilities == {
            concept.property_type.value: pytest.approx(p, abs=1e-4)
            for concept, p in zip(DENSITY, score.probabilities, strict=True)
        }
        assert units == {"1"}
        assert _sources(group) == [image.sop_instance_uid]
    assert classification_label(scores[1]) == "Classification of image 2"


def test_a_rebuilt_classification_sr_is_identical(ct: Ct) -> None:
    scores = ClassScores((NORMAL, ABNORMAL), GRID_PROBABILITIES)
    report = _report(ct.grid, classifications=[scores])
    first = build_result_objects(ct.series, report, result_uids("again"), OPTIONS)
    second = build_result_objects(ct.series, report, result_uids("again"), OPTIONS)
    assert encode(first.sr) == encode(second.sr)

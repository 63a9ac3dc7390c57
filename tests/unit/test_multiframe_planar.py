"""Multi-frame planar images: Ophthalmic Photography of several frames, Breast Tomosynthesis.

A two-frame OP instance (a stereo pair of the left eye) is read as two images of the
set; the SEGs, SR, Parametric Map, KOS, burned-in and explanation images built from
findings on its frames are written, read back, validated with dciodvfy and name the
right frames.  A Breast
Tomosynthesis image routes on its functional groups, stays unrouted by the shipped
rules, and is refused by the 2D loader.
"""

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    BreastTomosynthesisImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
)

from cad_node.config import load_rules
from cad_node.domain.findings import FindingType
from cad_node.domain.image_sets import (
    ExplanationMap,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarResult,
)
from cad_node.errors import InvalidSeriesError
from cad_node.imaging.image_set_loading import MAX_PHOTOGRAPH_FRAMES, load_image_set
from cad_node.results import codes
from cad_node.results.build import ResultObjects, build_planar_objects
from cad_node.results.uids import ResultUids, result_uids
from cad_node.routing.attributes import extract_attributes
from cad_node.routing.match import route
from cad_node.synth.dicom_planar import StudyInfo, mammogram_dataset
from tests import sr_content as content
from tests.dicom_validation import assert_valid_dicom
from tests.results_inputs import (
    DIM_FUNDUS,
    OP_SHAPE,
    OP_SPACING_MM,
    disk,
    dr_assessments,
    encode,
    fundus_pixels,
    headers_only,
    heatmap,
    planar_finding,
    stacked_frames,
    stereo_exam,
)
from tests.unit.test_planar_results import FUNDUS_MODEL, OPTIONS
from tests.unit.test_results_objects import write_every_object

SHIPPED_RULES = Path(__file__).parents[2] / "config" / "rules.yaml"
SEED = 8
STUDY = StudyInfo.from_seed(SEED, "fundus")
IMAGE_REGION, SEGMENT, IMAGE_LIBRARY = "111030", "121214", "111028"
VISUAL_EXPLANATION = codes.VISUAL_EXPLANATION.value
SOURCE_OF_SEGMENTATION, SOURCE_OF_GROUP = "121233", "121112"


def _on_os(
    finding_type: FindingType, image_uid: str, frame: int, full: npt.NDArray[np.bool_]
) -> PlanarFinding:
    return planar_finding(
        finding_type,
        image_uid,
        Laterality.LEFT,
        full,
        spacing_mm=OP_SPACING_MM,
        frame_number=frame,
    )


def stereo_result(image_set: ImageSet) -> PlanarResult:
    """A haemorrhage on OS frame 2, a microaneurysm on OS frame 1; OS explained on frame 2."""
    od, os_ = image_set.images[0].sop_instance_uid, image_set.images[1].sop_instance_uid
    return PlanarResult(
        model=FUNDUS_MODEL,
        study_instance_uid=image_set.study_instance_uid,
        findings=(
            _on_os(FindingType.HAEMORRHAGE, os_, 2, disk(OP_SHAPE, (30.0, 60.0), 5.0)),
            _on_os(FindingType.MICROANEURYSM, os_, 1, disk(OP_SHAPE, (50.0, 20.0), 2.0)),
        ),
        assessments=dr_assessments(od, os_, os_frames=(1, 2)),
        explanations=(
            ExplanationMap(os_, heatmap(OP_SHAPE, (30.0, 60.0)), "Grad-CAM", "ICDR grade 3", 2),
        ),
    )


class Stereo:
    """The stereo exam's objects, each written, validated and read back."""

    def __init__(self, folder: Path) -> None:
        self.datasets = stereo_exam(SEED)
        self.image_set = load_image_set(self.datasets)
        self.result = stereo_result(self.image_set)
        self.uids: ResultUids = result_uids("stereo-job")
        self.objects: ResultObjects = build_planar_objects(
            headers_only(self.datasets),
            self.image_set,
            self.result,
            self.uids,
            OPTIONS,
            overlay=True,
            gsps=True,
        )
        self.read = write_every_object(self.objects, folder, sr_templates=True)

    @property
    def os_uid(self) -> str:
        return str(self.datasets[1].SOPInstanceUID)

    def written(self, objects: Sequence[Dataset]) -> list[Dataset]:
        return [self.read[str(ds.SOPInstanceUID)] for ds in objects]


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Stereo:
    return Stereo(tmp_path_factory.mktemp("stereo"))


def source_frames(seg: Dataset) -> set[int]:
    """The Referenced Frame Numbers of every source reference of a SEG."""
    items = [*seg.SourceImageSequence]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        items.extend(frame.DerivationImageSequence[0].SourceImageSequence)
    return {int(item.ReferencedFrameNumber) for item in items}


# --- reading --------------------------------------------------------------------------------


def test_each_frame_of_a_photograph_is_an_image_of_the_set(tmp_path: Path) -> None:
    datasets = stereo_exam(SEED)
    for number, dataset in enumerate(datasets):
        dataset.save_as(tmp_path / f"{number}.dcm", enforce_file_format=True)
        assert_valid_dicom(tmp_path / f"{number}.dcm")

    image_set = load_image_set(sorted(tmp_path.glob("*.dcm")))

    references = [image.reference for image in image_set.images]
    od, os_ = (str(ds.SOPInstanceUID) for ds in datasets)
    assert references == [(od, None), (os_, 1), (os_, 2)]
    np.testing.assert_array_equal(
        image_set.images[2].pixels, fundus_pixels(2, DIM_FUNDUS).astype(np.float32)
    )
    assert image_set.images[2].laterality is Laterality.LEFT


def _tomosynthesis() -> Dataset:
    """A Breast Tomosynthesis image's header (PS3.3 A.83): geometry in functional groups."""
    frame = mammogram_dataset(
        np.full((40, 32), 500, dtype=np.uint16),
        study=StudyInfo.from_seed(8, "mammo"),
        laterality="L",
        view="CC",
        series_number=3,
        instance_number=1,
        pixel_spacing_mm=0.1,
    )
    bto = stacked_frames(frame, frame, frame)
    bto.SOPClassUID = BreastTomosynthesisImageStorage
    bto.file_meta.MediaStorageSOPClassUID = BreastTomosynthesisImageStorage
    for keyword in ("ViewPosition", "PixelSpacing", "ImagerPixelSpacing"):
        if keyword in bto:
            delattr(bto, keyword)
    measures = Dataset()
    measures.PixelSpacing = [0.1, 0.1]
    measures.SliceThickness = 1.0
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    bto.SharedFunctionalGroupsSequence = [shared]
    bto.PerFrameFunctionalGroupsSequence = [Dataset() for _ in range(3)]
    return bto


def test_tomosynthesis_routes_on_its_functional_groups_but_no_shipped_rule_takes_it() -> None:
    attributes = extract_attributes(_tomosynthesis(), "MODALITY")

    assert attributes["SOPClassUID"] == BreastTomosynthesisImageStorage
    assert attributes["PixelSpacing"] == pytest.approx([0.1, 0.1])
    assert attributes["SliceThickness"] == pytest.approx(1.0)
    assert attributes["NumberOfFrames"] == 3
    decision = route(attributes, load_rules(SHIPPED_RULES))
    assert not decision.matched
    (mammography,) = [e for e in decision.explanations if e.rule_name == "screening-mammography"]
    assert not mammography.matches
    assert BreastTomosynthesisImageStorage in mammography.text()


def test_the_2d_loader_refuses_tomosynthesis_naming_its_sop_class() -> None:
    with pytest.raises(InvalidSeriesError, match="Breast Tomosynthesis Image Storage"):
        load_image_set([_tomosynthesis()])


def test_tomosynthesis_beside_the_2d_views_of_its_study_is_left_out() -> None:
    bto = _tomosynthesis()
    view = mammogram_dataset(
        np.full((40, 32), 700, dtype=np.uint16),
        study=StudyInfo.from_seed(8, "mammo"),
        laterality="L",
        view="CC",
        series_number=1,
        instance_number=1,
        pixel_spacing_mm=0.1,
    )

    image_set = load_image_set([bto, view])

    assert [image.reference for image in image_set.images] == [(str(view.SOPInstanceUID), None)]


def test_the_2d_loader_refuses_any_multi_frame_grayscale_image_but_a_photograph() -> None:
    capture = _tomosynthesis()
    capture.SOPClassUID = MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    with pytest.raises(InvalidSeriesError, match="Multi-frame Grayscale Byte"):
        load_image_set([capture])


def test_a_photograph_of_more_frames_than_read_is_refused() -> None:
    od = stereo_exam(SEED)[0]
    video = stacked_frames(od, *[od] * MAX_PHOTOGRAPH_FRAMES)
    with pytest.raises(InvalidSeriesError, match=f"at most {MAX_PHOTOGRAPH_FRAMES}"):
        load_image_set([video])


# --- SEG ------------------------------------------------------------------------------------


def test_each_seg_references_the_frame_its_findings_are_on(stereo: Stereo) -> None:
    segs = stereo.written(stereo.objects.segs)
    assert len(segs) == 2  # frame 1 (microaneurysm), frame 2 (haemorrhage), in set order
    for seg, (finding, frame) in zip(
        segs, ((stereo.result.findings[1], 1), (stereo.result.findings[0], 2)), strict=True
    ):
        assert source_frames(seg) == {frame}
        read = hd.seg.segread(io.BytesIO(encode(seg)))
        pixels = read.get_pixels_by_source_frame(
            source_sop_instance_uid=stereo.os_uid, source_frame_numbers=[frame]
        )
        np.testing.assert_array_equal(pixels[0, :, :, 0], finding.mask.paste(OP_SHAPE))


# --- SR -------------------------------------------------------------------------------------


def _sr(stereo: Stereo) -> Dataset:
    return stereo.read[stereo.uids.sr_sop_instance_uid]


def referenced_frames(item: Dataset) -> list[int]:
    """The Referenced Frame Numbers of an IMAGE or SCOORD source reference."""
    value = item.ReferencedSOPSequence[0].get("ReferencedFrameNumber")
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, MultiValue) else [int(value)]


def test_sr_region_and_segment_groups_name_the_finding_frame(stereo: Stereo) -> None:
    groups = content.groups(_sr(stereo))
    regions = [g for g in groups if content.items(g, IMAGE_REGION)]
    segments = [g for g in groups if content.items(g, SEGMENT)]
    for finding, region, segment in zip(stereo.result.findings, regions, segments, strict=True):
        scoord = content.item(region, IMAGE_REGION)
        assert referenced_frames(scoord.ContentSequence[0]) == [finding.frame_number]
        assert referenced_frames(content.item(segment, SOURCE_OF_SEGMENTATION)) == [
            finding.frame_number
        ]


def test_sr_eye_group_lists_the_frames_it_read_and_the_library_each_instance_once(
    stereo: Stereo,
) -> None:
    sr = _sr(stereo)
    (library,) = content.item(sr, IMAGE_LIBRARY).ContentSequence
    in_library = [
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in library.ContentSequence
    ]
    assert in_library == [str(ds.SOPInstanceUID) for ds in stereo.datasets]
    left = stereo.uids.assessment_tracking_uid(1)
    (group,) = [g for g in content.groups(sr) if content.tracking_uid(g) == left]
    source = content.item(group, SOURCE_OF_GROUP)
    assert str(source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == stereo.os_uid
    assert referenced_frames(source) == [1, 2]
    assert content.items(group, VISUAL_EXPLANATION)
    report = hd.sr.srread(io.BytesIO(encode(sr))).content
    assert isinstance(report, hd.sr.MeasurementReport)


def test_a_rerun_keeps_the_tracking_uids_of_the_lesions_on_each_frame(stereo: Stereo) -> None:
    earlier = pydicom.dcmread(io.BytesIO(encode(stereo.objects.sr)))

    later = build_planar_objects(
        headers_only(stereo.datasets),
        stereo.image_set,
        stereo.result,
        result_uids("stereo-job-rerun"),
        OPTIONS,
        [earlier],
    )

    def tracking_uids(objects: ResultObjects) -> list[str]:
        return [str(i.TrackingUID) for seg in objects.segs for i in seg.SegmentSequence]

    assert tracking_uids(later) == tracking_uids(stereo.objects)


# --- burned-in, explanation, presentation state ---------------------------------------------


def test_burned_in_and_explanation_images_reference_their_frame(stereo: Stereo) -> None:
    overlays = stereo.written(stereo.objects.overlays)
    assert [int(o.SourceImageSequence[0].ReferencedFrameNumber) for o in overlays] == [1, 2]
    (explanation,) = stereo.written(stereo.objects.explanations)
    reference = explanation.SourceImageSequence[0]
    assert (reference.ReferencedSOPInstanceUID, reference.ReferencedFrameNumber) == (
        stereo.os_uid,
        2,
    )


def test_parametric_map_references_the_explained_frame(stereo: Stereo) -> None:
    (parametric_map,) = stereo.written(stereo.objects.parametric_maps)
    assert source_frames(parametric_map) == {2}
    assert {str(item.ReferencedSOPInstanceUID) for item in parametric_map.SourceImageSequence} == {
        stereo.os_uid
    }


def test_kos_flags_the_frames_with_findings(stereo: Stereo) -> None:
    kos = stereo.objects.kos
    assert kos is not None
    flagged = [
        (str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID), referenced_frames(i))
        for i in kos.ContentSequence
        if i.ValueType == "IMAGE"
    ]
    assert {uid for uid, _ in flagged} == {stereo.os_uid}
    assert sorted(frame for _, frames in flagged for frame in frames) == [1, 2]


def test_no_presentation_state_of_frames_and_the_reason_logged(
    stereo: Stereo, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cad_node.results.gsps"):
        objects = build_planar_objects(
            headers_only(stereo.datasets),
            stereo.image_set,
            stereo.result,
            stereo.uids,
            OPTIONS,
            gsps=True,
        )
    assert objects.states == []
    assert "multi-frame" in caplog.text

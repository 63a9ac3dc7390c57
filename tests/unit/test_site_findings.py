"""Site-model outputs as findings: label maps, boxes and class probabilities."""

import numpy as np
import pytest

from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import Concept, LabelConcept, MeasurementKind
from cad_node.models.site.findings import (
    OutputError,
    box_findings,
    class_scores,
    segmentation_findings,
)
from cad_node.models.site.geometry import PatientBox

ORGAN = Concept("123037004", "SCT", "Anatomical structure")


def _concept(label: str, threshold: float | None = None) -> LabelConcept:
    return LabelConcept(label, Concept("78961009", "SCT", label.title()), ORGAN, threshold)


def _volume(shape: tuple[int, int, int] = (8, 20, 24)) -> ImageVolume:
    affine = np.diag([2.0, 0.5, 0.75, 1.0])
    affine[:3, 3] = (-30.0, 10.0, 40.0)
    affine = affine[[2, 1, 0, 3]]  # (k, r, c) -> LPS: slices along z, rows y, columns x
    return ImageVolume(
        voxels=np.zeros(shape, dtype=np.float32),
        spacing_mm=(2.0, 0.5, 0.75),
        affine=affine,
        sop_instance_uids=tuple(f"2.25.4.{k}" for k in range(shape[0])),
        series_instance_uid="2.25.4",
        frame_of_reference_uid="2.25.4.0",
    )


def test_each_label_value_present_is_one_finding() -> None:
    volume = _volume()
    label_map = np.zeros(volume.shape, dtype=np.int64)
    label_map[2:5, 3:9, 4:8] = 1
    label_map[6, 10:12, 10:11] = 3
    labels = {1: _concept("spleen"), 2: _concept("liver"), 3: _concept("kidney")}
    spleen, kidney = segmentation_findings(label_map, volume, labels)
    assert (spleen.label, kidney.label) == ("spleen", "kidney")
    assert spleen.concept is labels[1]
    assert spleen.probability is None
    assert spleen.finding_type is None
    assert [m.image_index for m in spleen.masks] == [2, 3, 4]
    assert spleen.masks[0].offset == (3, 4)
    assert spleen.masks[0].mask.shape == (6, 4)
    assert spleen.centre == pytest.approx((3.0, 5.5, 5.5))
    voxel_mm3 = 2.0 * 0.5 * 0.75
    assert spleen.measurement(MeasurementKind.VOLUME) == pytest.approx(72 * voxel_mm3)
    assert kidney.measurement(MeasurementKind.VOLUME) == pytest.approx(2 * voxel_mm3)


def test_an_empty_label_map_has_no_findings() -> None:
    volume = _volume()
    assert segmentation_findings(np.zeros(volume.shape, np.int64), volume, {}) == ()


def test_a_label_value_without_a_concept_is_refused() -> None:
    volume = _volume()
    label_map = np.zeros(volume.shape, dtype=np.int64)
    label_map[1, 1, 1] = 7
    with pytest.raises(OutputError, match="label value 7"):
        segmentation_findings(label_map, volume, {1: _concept("spleen")})
    with pytest.raises(OutputError, match="shape"):
        segmentation_findings(label_map[1:], volume, {7: _concept("spleen")})


def test_boxes_at_or_above_their_threshold_are_findings_best_first() -> None:
    volume = _volume()
    centre = volume.index_to_patient((4.0, 10.0, 12.0))
    boxes = [
        PatientBox(centre, (6.0, 4.0, 4.0), 0.6, 0),
        PatientBox(centre, (6.0, 4.0, 4.0), 0.45, 0),
        PatientBox(centre, (3.0, 3.0, 6.0), 0.9, 1),
        PatientBox(centre, (3.0, 3.0, 6.0), 0.25, 1),
    ]
    labels = {0: _concept("nodule"), 1: _concept("mass", threshold=0.2)}
    found = box_findings(boxes, volume, labels)
    assert [f.probability for f in found] == pytest.approx([0.9, 0.6, 0.25])
    first = found[0]
    assert first.concept is labels[1]
    assert first.label is None
    assert first.extent_mm == (3.0, 3.0, 6.0)
    assert first.centre == pytest.approx((4.0, 10.0, 12.0))
    assert [m.image_index for m in first.masks] == [3, 4, 5]  # 6 mm along z over 2 mm slices
    assert first.masks[1].paste(volume.shape[1:])[10, 12]


def test_a_box_off_the_volume_or_of_an_unknown_label() -> None:
    volume = _volume()
    outside = volume.index_to_patient((-3.0, 10.0, 12.0))
    labels = {0: _concept("nodule")}
    assert box_findings([PatientBox(outside, (2.0, 2.0, 2.0), 0.9, 0)], volume, labels) == ()
    inside = volume.index_to_patient((4.0, 10.0, 12.0))
    with pytest.raises(OutputError, match="box label 5"):
        box_findings([PatientBox(inside, (2.0, 2.0, 2.0), 0.9, 5)], volume, labels)
    with pytest.raises(OutputError, match="not a probability"):
        box_findings([PatientBox(inside, (2.0, 2.0, 2.0), 3.5, 0)], volume, labels)


def test_class_probabilities_in_label_order() -> None:
    labels = {1: _concept("b"), 0: _concept("a"), 2: _concept("c")}
    scores = class_scores([0.2, 0.7, 1.00001], labels, image_index=3)
    assert [c.label for c in scores.classes] == ["a", "b", "c"]
    assert scores.probabilities == pytest.approx((0.2, 0.7, 1.0))
    assert scores.probabilities[2] <= 1.0
    assert scores.image_index == 3
    assert scores.predicted == 2


def test_class_probabilities_that_do_not_fit_the_labels() -> None:
    labels = {0: _concept("a"), 1: _concept("b")}
    with pytest.raises(OutputError, match="3 class probabilities"):
        class_scores([0.1, 0.2, 0.7], labels, None)
    with pytest.raises(OutputError, match="not a probability"):
        class_scores([float("nan"), 0.5], labels, None)
    with pytest.raises(OutputError, match="not a probability"):
        class_scores([-2.0, 3.0], labels, None)

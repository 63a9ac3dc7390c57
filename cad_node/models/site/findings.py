"""A site model's output as the node's findings: label maps, boxes and class probabilities.

Shared by the MONAI bundle and nnU-Net runners, after each has put its output on the source
grid (:mod:`cad_node.models.site.geometry`):

- a label map ``(k, r, c)`` gives one :class:`RegionFinding` per label value present (0 is
  background), named by its :class:`LabelConcept`, measured by its volume;
- boxes in patient space give one finding each, scored at least their label's threshold, whose
  mask is the box's ellipsoid and whose ``extent_mm`` the box's extent;
- class probabilities give a :class:`ClassScores`, classes in label-value order.
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import (
    ClassScores,
    ImageMask,
    LabelConcept,
    Measurement,
    MeasurementKind,
    RegionFinding,
)
from cad_node.models.site.geometry import PatientBox, ellipsoid_mask, patient_to_index

DEFAULT_BOX_THRESHOLD = 0.5
"""Boxes scored below it are not reported when their label sets no threshold."""

PROBABILITY_SLACK = 1e-4
"""Float rounding a probability may stray past [0, 1] by and still be one (then clipped)."""

Labels = Mapping[int, LabelConcept]


class OutputError(ValueError):
    """The model's output cannot be findings (an unknown label, probabilities that are not)."""


def segmentation_findings(
    label_map: npt.NDArray[np.integer], volume: ImageVolume, labels: Labels
) -> tuple[RegionFinding, ...]:
    """One finding per non-zero label value of ``label_map`` (``(k, r, c)`` on ``volume``).

    Raises
    ------
    OutputError
        The map is not the volume's shape, or holds a value ``labels`` does not name.
    """
    if label_map.shape != volume.shape:
        raise OutputError(f"a label map of shape {label_map.shape} on a volume {volume.shape}")
    values = [int(v) for v in np.unique(label_map) if v != 0]
    unknown = [v for v in values if v not in labels]
    if unknown:
        raise OutputError(f"label value {unknown[0]} is not in the model's labels")
    voxel_mm3 = float(abs(np.linalg.det(volume.affine[:3, :3])))
    boxes = ndimage.find_objects(label_map.astype(np.int64, copy=False))
    return tuple(
        _segment(label_map, v, boxes[v - 1], labels[v], voxel_mm3) for v in values if v > 0
    )


def _segment(
    label_map: npt.NDArray[np.integer],
    value: int,
    box: tuple[slice, slice, slice],
    concept: LabelConcept,
    voxel_mm3: float,
) -> RegionFinding:
    """The finding of label ``value``, read within its bounding ``box`` only."""
    mask = label_map[box] == value
    origin = np.array([s.start for s in box], dtype=np.float64)
    count = int(mask.sum())
    centre = origin + [_mean_index(mask, axis) for axis in range(3)]
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    return RegionFinding(
        finding_type=None,
        masks=tuple(_slice_masks(mask, slices, origin.astype(int))),
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        probability=None,
        measurements=(Measurement(MeasurementKind.VOLUME, count * voxel_mm3),),
        concept=concept,
        label=concept.label,
    )


def _mean_index(mask: npt.NDArray[np.bool_], axis: int) -> float:
    """The mean index of ``mask``'s voxels along ``axis``."""
    others = tuple(a for a in range(3) if a != axis)
    counts = mask.sum(axis=others)
    return float(np.dot(counts, np.arange(len(counts))) / counts.sum())


def _slice_masks(
    mask: npt.NDArray[np.bool_], slices: Iterable[int], origin: npt.NDArray[np.int_]
) -> list[ImageMask]:
    """One mask per slice of ``mask`` (placed at ``origin``), each cropped to its bounding box."""
    out = []
    k0, r_origin, c_origin = (int(o) for o in origin)
    for k in slices:
        rows, columns = np.nonzero(mask[k])
        r0, c0 = int(rows.min()), int(columns.min())
        crop = mask[k, r0 : int(rows.max()) + 1, c0 : int(columns.max()) + 1]
        out.append(
            ImageMask(k0 + int(k), (r_origin + r0, c_origin + c0), np.ascontiguousarray(crop))
        )
    return out


def box_findings(
    boxes: Sequence[PatientBox], volume: ImageVolume, labels: Labels
) -> tuple[RegionFinding, ...]:
    """One finding per box scored at least its label's threshold, best first.

    A box whose centre is off the volume is not a finding of it (its nearest voxel is outside).

    Raises
    ------
    OutputError
        A box's label is not in ``labels``, or its score is not a probability.
    """
    findings = []
    for box in sorted(boxes, key=lambda b: -b.score):
        concept = labels.get(box.label)
        if concept is None:
            raise OutputError(f"box label {box.label} is not in the model's labels")
        score = _probability(box.score, "box score")
        threshold = DEFAULT_BOX_THRESHOLD if concept.threshold is None else concept.threshold
        if score >= threshold and min(box.extent_mm) > 0:
            finding = _box_finding(box, score, concept, volume)
            findings.extend([finding] if finding is not None else [])
    return tuple(findings)


def _box_finding(
    box: PatientBox, score: float, concept: LabelConcept, volume: ImageVolume
) -> RegionFinding | None:
    placed = ellipsoid_mask(volume, box.centre_lps, box.extent_mm)
    if placed is None:
        return None
    (k0, r0, c0), mask = placed
    masks = [ImageMask(k0 + dk, (r0, c0), mask[dk]) for dk in range(len(mask)) if mask[dk].any()]
    centre = patient_to_index(volume, box.centre_lps)[0]
    return RegionFinding(
        finding_type=None,
        masks=tuple(masks),
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        probability=score,
        concept=concept,
        extent_mm=box.extent_mm,
    )


def class_scores(
    probabilities: Sequence[float], labels: Labels, image_index: int | None
) -> ClassScores:
    """The classes (label values 0..n-1, in order) and their probabilities.

    Raises
    ------
    OutputError
        The labels do not name exactly the classes 0..n-1, or a value is not a probability.
    """
    count = len(probabilities)
    if sorted(labels) != list(range(count)):
        raise OutputError(
            f"the model gives {count} class probabilities, its labels name classes "
            f"{sorted(labels)} (expected 0..{count - 1})"
        )
    return ClassScores(
        classes=tuple(labels[i] for i in range(count)),
        probabilities=tuple(_probability(p, "class probability") for p in probabilities),
        image_index=image_index,
    )


def _probability(value: float, what: str) -> float:
    value = float(value)
    if not -PROBABILITY_SLACK <= value <= 1.0 + PROBABILITY_SLACK:
        raise OutputError(f"a {what} of {value} is not a probability")
    return min(max(value, 0.0), 1.0)


__all__ = [
    "DEFAULT_BOX_THRESHOLD",
    "OutputError",
    "box_findings",
    "class_scores",
    "segmentation_findings",
]

"""Tracking Identifier and Tracking UID of each finding (PS3.16 TID 1410 rows 2-3, PS3.3 C.8.20.2).

The SEG segment, the SR groups and the presentation state marks of one finding share them.

The Tracking Identifier is the label of the finding in this run ("Nodule 1",
:func:`~cad_node.domain.results.finding_label`).  The Tracking UID names the lesion
across runs: when a re-run of a series (a late image arrived, so a new job) finds a
lesion that an earlier SR of the same series and model (a *predecessor*) tracked, the
lesion keeps that SR's Tracking UID, so viewers and longitudinal tools see one lesion,
not two.  Every other
finding gets ``uids.tracking_uid(i)`` of its own job, so a retry of the same job with the
same predecessors gives identical UIDs.

Matching rule
-------------
A predecessor contributes every content item group (a TID 1410 Planar ROI group as
cad-node writes it) holding a Tracking UID (DCM 112040), a finding type (DCM 121071
"Finding") and an image region SCOORD (PS3.3 C.18.6) whose SELECTED FROM image is an
image of the new report's grid (its SOP Instance UID and, for a frame of a multi-frame
image, its one Referenced Frame Number).  Groups without a SCOORD (TID 1411 segment
references, TID 1501 assessments) and whatever cannot be read are ignored; a malformed
or foreign SR contributes nothing and never fails the build.

A new finding and an old group are candidates when

1. the group's finding type equals the finding's (the property type of
   :func:`codes.finding_codes`: a shipped finding type's code or a site model's concept), and
2. the distance in mm between their centres is at most
   ``max(MIN_TOLERANCE_MM, the old region's radius)``.

Centres: the old SCOORD's is its first point for a CIRCLE, else the mean of its points
(a closed POLYLINE's repeated last point counted once); the new finding's is its
centre of mass ``(image index, row, column)``, in image coordinates ``(column + 0.5,
row + 0.5)`` (PS3.3 C.10.5.1.2).  In-plane differences are scaled by the old image's
pixel spacing (1 mm per pixel when unknown).  On a volume grid (a CT's slices) the
image index difference times the slice spacing is the third axis; on a grid of
standalone images (mammography views, photographs) only a finding on the old region's
own image is a candidate.  The old radius is the CIRCLE's (centre to its perimeter
point) or the largest centre-to-point distance of other graphic types.

Assignment is greedy and one-to-one: candidate pairs in order of distance, then finding
index, then predecessor order, then group order; a pair is taken when neither its
finding nor its Tracking UID is taken yet.  The same UID in several predecessors (a
lesion tracked over three runs) is thus carried once.  A new finding's own
``uids.tracking_uid(i)`` that a carried UID already uses (a predecessor of the same
job key) is replaced by ``uids.tracking_uid(i + n)``, ``i + 2n`` ... (``n`` findings)
until free.
"""

import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code

from cad_node.domain.image_sets import ImageReference
from cad_node.domain.results import ModelReport, RegionFinding, ResultGrid, finding_label
from cad_node.results import codes
from cad_node.results.uids import ResultUids

logger = logging.getLogger(__name__)

MIN_TOLERANCE_MM = 5.0
"""The least distance (mm) between an old and a new centre that still counts as one lesion."""

TRACKING_UID_CONCEPT = "112040"
"""DCM 112040 "Tracking Unique Identifier"."""
FINDING_CONCEPT = "121071"
"""DCM 121071 "Finding", the finding type of a TID 1410 group."""
_DCM = "DCM"
_MAX_DEPTH = 16
"""How deep the content tree is searched: TID 1500 groups sit at depth 2."""
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_READ_ERRORS = (
    AttributeError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    BytesLengthException,
)
"""What pydicom raises on a missing, empty or malformed element."""


@dataclass(frozen=True, slots=True)
class Tracking:
    """The Tracking UID and Tracking Identifier (label) of one finding."""

    uid: str
    identifier: str


@dataclass(frozen=True, slots=True, eq=False)
class TrackedRegion:
    """A finding an earlier SR drew: its Tracking UID, type and SCOORD on one image."""

    uid: str
    finding_type: Code
    image: ImageReference
    graphic_type: str
    points: npt.NDArray[np.float64]
    """``(N, 2)`` image coordinates ``(column, row)``, N >= 1, all finite."""

    @property
    def centre(self) -> tuple[float, float]:
        """``(column, row)`` of the centre: a CIRCLE's first point, else the points' mean."""
        if self.graphic_type == "CIRCLE":
            return (float(self.points[0, 0]), float(self.points[0, 1]))
        points = self.points
        if len(points) > 1 and np.array_equal(points[0], points[-1]):
            points = points[:-1]  # a closed POLYLINE repeats its first point
        column, row = points.mean(axis=0)
        return (float(column), float(row))

    def radius_mm(self, spacing_mm: tuple[float, float]) -> float:
        """The CIRCLE's radius, or the largest distance of a point from the centre, in mm."""
        centre = np.array(self.centre)
        points = self.points[1:2] if self.graphic_type == "CIRCLE" else self.points
        offsets = (points - centre) * np.array([spacing_mm[1], spacing_mm[0]])
        return float(np.max(np.hypot(offsets[:, 0], offsets[:, 1]), initial=0.0))


def finding_tracking(
    report: ModelReport, uids: ResultUids, predecessors: Sequence[Dataset] = ()
) -> tuple[Tracking, ...]:
    """One :class:`Tracking` per finding of ``report``, in its order.

    A finding that is the same lesion as one a predecessor tracked (see the module's
    matching rule) keeps that lesion's Tracking UID; the others get the job's own.
    """
    regions = [
        region
        for region in tracked_regions(predecessors)
        if _grid_index(report.grid, region.image) is not None
    ]
    carried = _assign(report, regions)
    if carried:
        logger.debug(
            "%d of %d findings keep a predecessor's Tracking UID",
            len(carried),
            len(report.findings),
        )
    taken = set(carried.values())
    count = len(report.findings)
    return tuple(
        Tracking(
            carried[index] if index in carried else _own_uid(uids, index, count, taken),
            finding_label(finding, index),
        )
        for index, finding in enumerate(report.findings)
    )


def tracked_regions(predecessors: Sequence[Dataset]) -> list[TrackedRegion]:
    """Every readable tracked image region of ``predecessors``, in document order."""
    regions: list[TrackedRegion] = []
    for predecessor in predecessors:
        for group in _containers(predecessor):
            region = _tracked_region(group)
            if region is not None:
                regions.append(region)
    return regions


# --- reading predecessors ----------------------------------------------------------------------


def _containers(dataset: Dataset) -> Iterator[Dataset]:
    """The content items with a Content Sequence, depth first, document order."""
    stack: list[tuple[Dataset, int]] = [(dataset, 0)]
    while stack:
        item, depth = stack.pop()
        children = _children(item)
        if not children:
            continue
        if depth > 0:
            yield item
        if depth < _MAX_DEPTH:
            stack.extend((child, depth + 1) for child in reversed(children))


def _children(item: Dataset) -> list[Dataset]:
    try:
        return [
            child for child in item.get("ContentSequence", None) or [] if isinstance(child, Dataset)
        ]
    except _READ_ERRORS:
        return []


def _tracked_region(group: Dataset) -> TrackedRegion | None:
    uid: str | None = None
    finding_type: Code | None = None
    scoord: tuple[str, ImageReference, npt.NDArray[np.float64]] | None = None
    for item in _children(group):
        try:
            value_type = str(item.get("ValueType", ""))
            if value_type == "UIDREF" and _is_concept(item, TRACKING_UID_CONCEPT):
                uid = uid or _uid(item)
            elif value_type == "CODE" and _is_concept(item, FINDING_CONCEPT):
                finding_type = finding_type or _code(item.ConceptCodeSequence[0])
            elif value_type == "SCOORD":
                scoord = scoord or _scoord(item)
        except _READ_ERRORS:
            continue
    if uid is None or finding_type is None or scoord is None:
        return None
    graphic_type, image, points = scoord
    return TrackedRegion(uid, finding_type, image, graphic_type, points)


def _is_concept(item: Dataset, value: str) -> bool:
    name = item.ConceptNameCodeSequence[0]
    return str(name.CodeValue) == value and str(name.CodingSchemeDesignator) == _DCM


def _uid(item: Dataset) -> str | None:
    uid = str(item.get("UID", "")).strip()
    return uid if len(uid) <= 64 and _UID.match(uid) else None


def _code(item: Dataset) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def _scoord(item: Dataset) -> tuple[str, ImageReference, npt.NDArray[np.float64]] | None:
    graphic_type = str(item.GraphicType)
    points = np.asarray([float(v) for v in item.GraphicData], dtype=np.float64)
    if points.size < 2 or points.size % 2 or not np.isfinite(points).all():
        return None
    image = _selected_from(item)
    if image is None:
        return None
    return graphic_type, image, points.reshape(-1, 2)


def _selected_from(scoord: Dataset) -> ImageReference | None:
    """The one image (frame) a SCOORD was SELECTED FROM (PS3.3 C.18.6.1.1)."""
    for child in _children(scoord):
        if child.get("ValueType") != "IMAGE" or child.get("RelationshipType") != "SELECTED FROM":
            continue
        (referenced,) = child.ReferencedSOPSequence
        frame = _frame_number(referenced.get("ReferencedFrameNumber", None))
        return (str(referenced.ReferencedSOPInstanceUID), frame)
    return None


def _frame_number(value: object) -> int | None:
    """The one frame named; None when none is.

    Raises
    ------
    ValueError
        When several are: the SCOORD would not lie on one image.
    """
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        if len(value) != 1:
            raise ValueError("a SCOORD selected from several frames")
        value = value[0]
    return int(str(value))


# --- matching ----------------------------------------------------------------------------------


def _grid_index(grid: ResultGrid, image: ImageReference) -> int | None:
    try:
        return grid.index_of(image)
    except KeyError:
        return None


def _assign(report: ModelReport, regions: Sequence[TrackedRegion]) -> dict[int, str]:
    """Finding index -> carried Tracking UID, greedily, nearest pairs first."""
    pairs: list[tuple[float, int, int, str]] = []
    for finding_index, finding in enumerate(report.findings):
        expected = _expected_type(finding)
        if expected is None:
            continue
        for region_order, region in enumerate(regions):
            if not _same_type(region.finding_type, expected):
                continue
            distance = _distance_mm(report.grid, finding, region)
            if distance is not None:
                pairs.append((distance, finding_index, region_order, region.uid))
    carried: dict[int, str] = {}
    for _, finding_index, _, uid in sorted(pairs):
        if finding_index not in carried and uid not in carried.values():
            carried[finding_index] = uid
    return carried


def _expected_type(finding: RegionFinding) -> Code | None:
    try:
        return codes.finding_codes(finding)[0]
    except ValueError:
        return None


def _same_type(old: Code, new: Code) -> bool:
    # Compared without scheme versions: pydicom's Code equality maps SRT to SCT.
    return bool(
        Code(old.value, old.scheme_designator, old.meaning)
        == Code(new.value, new.scheme_designator, new.meaning)
    )


def _distance_mm(grid: ResultGrid, finding: RegionFinding, region: TrackedRegion) -> float | None:
    """The centre distance in mm when it is within the tolerance, else None."""
    image_index = _grid_index(grid, region.image)
    if image_index is None:
        return None
    if grid.volume is None:
        if finding.display_image != image_index:
            return None
        across_mm = 0.0
    else:
        across_mm = (finding.centre[0] - image_index) * grid.volume.spacing_mm[0]
    spacing = grid.images[image_index].pixel_spacing_mm or (1.0, 1.0)
    column, row = region.centre
    distance = math.hypot(
        across_mm,
        (finding.centre[1] + 0.5 - row) * spacing[0],
        (finding.centre[2] + 0.5 - column) * spacing[1],
    )
    tolerance = max(MIN_TOLERANCE_MM, region.radius_mm(spacing))
    return distance if distance <= tolerance else None


def _own_uid(uids: ResultUids, index: int, count: int, taken: set[str]) -> str:
    """``uids.tracking_uid(index)``, or the next of ``index + count``, ... no carried UID uses."""
    candidate = index
    while (uid := uids.tracking_uid(candidate)) in taken:
        candidate += count
    return uid

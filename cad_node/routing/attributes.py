"""The series-level attributes that routing rules may test, taken from one instance.

They are stored with the series in the journal, so rules can be tested and
replayed later (dry run) without reading the images again. What a sender puts in
them is bounded: a text value is kept to its first :data:`MAX_VALUE_CHARS` characters,
a multi-valued one to its first :data:`MAX_VALUES` values.

A multi-frame image with functional groups (Enhanced CT and MR, Legacy Converted
Enhanced CT, PS3.3 C.7.6.16) keeps its geometry there, not at the top level: such a
keyword is read from the Shared Functional Groups Sequence, else from the first item
of the Per-frame one (:data:`FUNCTIONAL_GROUP_SOURCES`).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat, PersonName

from cad_node.domain.stacks import StackRank, stack_rank

CALLING_AE_TITLE = "CallingAETitle"
"""Pseudo-keyword: the AE title of the peer that sent the series."""

ROUTING_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "SliceThickness",
    "ImageType",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "ImagesInAcquisition",
    "ConvolutionKernel",
    "KVP",
    "ContrastBolusAgent",
    "Manufacturer",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "StationName",
    "InstitutionName",
    "ViewPosition",
    "ImageLaterality",
    "Laterality",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "BitsAllocated",
    "PresentationIntentType",
    "PatientPosition",
    "RequestedProcedurePriority",
    "StudyPriorityID",
)
"""Keywords copied from the instances of a series (no patient identifiers); which instance
speaks for the series: :func:`series_attributes`."""

MAX_VALUE_CHARS = 1024
"""Characters kept of a text value, and matched by a rule's regex (LO, the VR of
SeriesDescription, holds 64)."""
MAX_VALUES = 64
"""Values kept of a multi-valued element (ImageType has a handful)."""

FUNCTIONAL_GROUP_SOURCES: dict[str, tuple[str, ...]] = {
    "ImageOrientationPatient": ("PlaneOrientationSequence",),
    "PixelSpacing": ("PixelMeasuresSequence",),
    "SliceThickness": ("PixelMeasuresSequence",),
    "ConvolutionKernel": (
        "CTReconstructionSequence",
        "UnassignedSharedConvertedAttributesSequence",
    ),
    "KVP": ("CTXRayDetailsSequence", "UnassignedSharedConvertedAttributesSequence"),
    "ContrastBolusAgent": ("UnassignedSharedConvertedAttributesSequence",),
}
"""Routing keywords a multi-frame image may hold in a functional group (PS3.3 C.7.6.16.2,
C.8.15.3; a Legacy Converted image keeps the rest in its Unassigned Shared Converted
Attributes, PS3.3 C.7.6.16.2.25), by the group sequences read, in order."""

_FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")

JsonValue = str | int | float | list[Any] | None


def extract_attributes(dataset: Dataset, calling_ae_title: str) -> dict[str, JsonValue]:
    """The routing attributes of ``dataset`` as JSON-ready values.

    Multi-valued elements become lists; absent or empty elements are left out,
    so a rule on a missing keyword does not hold.
    """
    attributes: dict[str, JsonValue] = {CALLING_AE_TITLE: calling_ae_title.strip()}
    groups = functional_groups(dataset)
    for keyword in ROUTING_KEYWORDS:
        value = dataset.get(keyword)
        if (value is None or value == "") and keyword in FUNCTIONAL_GROUP_SOURCES:
            value = functional_group_value(groups, keyword)
        if value is None or value == "":
            continue
        attributes[keyword] = to_json_value(value)
    return attributes


def has_functional_groups(dataset: Dataset) -> bool:
    """Whether ``dataset`` holds Shared or Per-frame Functional Groups (PS3.3 C.7.6.16)."""
    return any(keyword in dataset for keyword in _FUNCTIONAL_GROUPS)


def functional_groups(dataset: Dataset) -> tuple[Dataset, ...]:
    """The shared functional groups item and the first per-frame one, those present.

    Only the first frame is read: the routing keywords describe the series, and the
    per-frame items of a long image are most of its header.
    """
    if not has_functional_groups(dataset):
        return ()
    items = []
    for keyword in _FUNCTIONAL_GROUPS:
        sequence = dataset.get(keyword)
        if sequence:
            items.append(sequence[0])
    return tuple(items)


def functional_group_value(groups: Sequence[Dataset], keyword: str) -> object | None:
    """The value of ``keyword`` in the first of ``groups`` whose functional group holds it."""
    for group_keyword in FUNCTIONAL_GROUP_SOURCES[keyword]:
        for groups_item in groups:
            group = groups_item.get(group_keyword)
            value: object = group[0].get(keyword) if group else None
            if value is not None and value != "":
                return value
    return None


def to_json_value(value: object) -> JsonValue:
    """A pydicom element value as str, int, float or a list of those, bounded in size."""
    if isinstance(value, MultiValue | list | tuple):
        return [to_json_value(item) for item in value[:MAX_VALUES]]
    if isinstance(value, IS | int):
        return int(value)
    if isinstance(value, DSfloat | float):
        return float(value)
    if isinstance(value, PersonName):
        return str(value)[:MAX_VALUE_CHARS]
    return str(value)[:MAX_VALUE_CHARS].strip()


def merge_missing(
    stored: Mapping[str, JsonValue], newer: Mapping[str, JsonValue]
) -> dict[str, JsonValue]:
    """``stored`` completed with keys only ``newer`` has (a later instance may carry more)."""
    merged = dict(newer)
    merged.update(stored)
    return merged


def attributes_rank(attributes: Mapping[str, JsonValue]) -> StackRank:
    """How well the instance (or series) with routing ``attributes`` speaks for its series."""
    sop_class_uid = attributes.get("SOPClassUID")
    image_type = attributes.get("ImageType")
    values = image_type if isinstance(image_type, list) else [image_type]
    return stack_rank(
        sop_class_uid if isinstance(sop_class_uid, str) else "",
        [value for value in values if isinstance(value, str)],
    )


def series_attributes(
    stored: Mapping[str, JsonValue], newer: Mapping[str, JsonValue]
) -> dict[str, JsonValue]:
    """The routing attributes of a series that held ``stored`` when an instance with ``newer``
    arrived: the stack's images speak for the series, not its scout or a screen capture.

    An instance that ranks higher (:func:`attributes_rank`) replaces ``stored``, one that
    ranks lower leaves it as it is, one of equal rank completes it (:func:`merge_missing`).
    """
    stored_rank, newer_rank = attributes_rank(stored), attributes_rank(newer)
    if newer_rank > stored_rank:
        return dict(newer)
    if newer_rank < stored_rank:
        return dict(stored)
    return merge_missing(stored, newer)

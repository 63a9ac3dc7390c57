"""The series-level attributes that routing rules may test, taken from one instance.

They are stored with the series in the journal, so rules can be tested and
replayed later (dry run) without reading the images again. What a sender puts in
them is bounded: a text value is kept to its first :data:`MAX_VALUE_CHARS` characters,
a multi-valued one to its first :data:`MAX_VALUES` values.
"""

from collections.abc import Mapping
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat, PersonName

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
)
"""Keywords copied from the first instance of a series (no patient identifiers)."""

MAX_VALUE_CHARS = 1024
"""Characters kept of a text value, and matched by a rule's regex (LO, the VR of
SeriesDescription, holds 64)."""
MAX_VALUES = 64
"""Values kept of a multi-valued element (ImageType has a handful)."""

JsonValue = str | int | float | list[Any] | None


def extract_attributes(dataset: Dataset, calling_ae_title: str) -> dict[str, JsonValue]:
    """The routing attributes of ``dataset`` as JSON-ready values.

    Multi-valued elements become lists; absent or empty elements are left out,
    so a rule on a missing keyword does not hold.
    """
    attributes: dict[str, JsonValue] = {CALLING_AE_TITLE: calling_ae_title.strip()}
    for keyword in ROUTING_KEYWORDS:
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        attributes[keyword] = to_json_value(value)
    return attributes


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

"""The acquisition attributes a validated domain constrains, read from DICOM headers.

:func:`image_headers` reads one instance's :class:`~cad_node.domain.domain_check.ImageHeaders`
from its header (the elements before Pixel Data suffice): the attributes of the
General Series, General Equipment, Image Pixel, CT/DX Image modules, and for an
enhanced multi-frame image (PS3.3 C.7.6.16) the Pixel Measures and CT X-Ray Details
functional groups, shared or of the first frame.
"""

from collections.abc import Iterable, Iterator, Sequence

from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from cad_node.domain.domain_check import ImageHeaders
from cad_node.domain.stacks import StackRank, stack_rank
from cad_node.imaging.stacks import image_type


def image_datasets(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The instances of a job's input that the domain check judges: its acquired images.

    As the volume loader does (:mod:`cad_node.domain.stacks`), a localizer, a screen
    capture or a dose report sent in a series is not what the model reads; an input of
    such objects only (a fundus camera sending Secondary Captures) is judged whole.
    Instances without Rows (no image at all) are never judged.
    """
    images = [dataset for dataset in datasets if "Rows" in dataset]
    acquired = [dataset for dataset in images if _rank(dataset) == StackRank.IMAGE]
    return acquired or images


def _rank(dataset: Dataset) -> StackRank:
    return stack_rank(str(dataset.get("SOPClassUID", "")), image_type(dataset))


def image_headers(dataset: Dataset) -> ImageHeaders:
    """The domain-constrained attributes of one image instance; None where absent or unreadable."""
    return ImageHeaders(
        modality=_text(dataset, "Modality"),
        sop_class_uid=_text(dataset, "SOPClassUID"),
        body_part_examined=_text(dataset, "BodyPartExamined"),
        photometric_interpretation=_text(dataset, "PhotometricInterpretation"),
        manufacturer=_text(dataset, "Manufacturer"),
        manufacturer_model_name=_text(dataset, "ManufacturerModelName"),
        pixel_spacing_mm=_pixel_spacing(dataset),
        slice_thickness_mm=_first_number(
            _with_groups(dataset, "PixelMeasuresSequence"), "SliceThickness"
        ),
        kvp=_first_number(_with_groups(dataset, "CTXRayDetailsSequence"), "KVP"),
        bits_stored=_integer(dataset, "BitsStored"),
        rows=_integer(dataset, "Rows"),
        columns=_integer(dataset, "Columns"),
        number_of_frames=_integer(dataset, "NumberOfFrames") or 1,
    )


def _text(dataset: Dataset, keyword: str) -> str | None:
    try:
        value = dataset.get(keyword)
    except (ValueError, TypeError, InvalidDicomError):
        return None
    if value is None:
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
        value = value[0] if len(value) else ""  # a multi-valued CS: its first value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.strip() or None


def _numbers(dataset: Dataset, keyword: str) -> tuple[float, ...]:
    try:
        value = dataset.get(keyword)
    except (ValueError, TypeError, InvalidDicomError):
        return ()
    if value is None or value == "":
        return ()
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]
    try:
        return tuple(float(item) for item in items)
    except (TypeError, ValueError):
        return ()


def _integer(dataset: Dataset, keyword: str) -> int | None:
    numbers = _numbers(dataset, keyword)
    return int(numbers[0]) if numbers else None


def _with_groups(dataset: Dataset, macro: str) -> Iterator[Dataset]:
    """``dataset`` itself, then the ``macro`` items of its shared and first per-frame
    functional groups (an enhanced image keeps its acquisition attributes there)."""
    yield dataset
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        item = _first_item(dataset, groups)
        macro_item = _first_item(item, macro) if item is not None else None
        if macro_item is not None:
            yield macro_item


def _first_item(dataset: Dataset, keyword: str) -> Dataset | None:
    """The first item of sequence ``keyword``; None when absent, empty or unreadable."""
    try:
        items = dataset.get(keyword)
        return items[0] if items else None
    except (ValueError, TypeError, InvalidDicomError, IndexError):
        return None


def _first_number(sources: Iterator[Dataset], keyword: str) -> float | None:
    for source in sources:
        numbers = _numbers(source, keyword)
        if numbers:
            return numbers[0]
    return None


def _pixel_spacing(dataset: Dataset) -> tuple[float, ...]:
    for source in _with_groups(dataset, "PixelMeasuresSequence"):
        if spacing := _numbers(source, "PixelSpacing"):
            return spacing
    return _numbers(dataset, "ImagerPixelSpacing")

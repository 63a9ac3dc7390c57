"""The images of a series that form the stack a volume is read from.

A series as scanners and PACS send it may hold more than one stack of slices.
In order, :func:`main_stack`:

1. leaves out objects that are no acquired image (Secondary Capture, Structured
   Report, ...: :func:`cad_node.domain.stacks.is_other_object`) and localizers
   (ImageType value 3 LOCALIZER, PS3.3 C.8.2.1.1.1);
2. groups the rest by ImageOrientationPatient (to 0.01), Rows/Columns and SOP
   Class UID, and keeps the largest group;
3. keeps one of each exact duplicate: the same SOP Instance UID, or the same
   ImagePositionPatient (to 0.01 mm) with the same pixels;
4. splits several reconstructions or acquisitions sent in one series: images
   told apart by :data:`RECONSTRUCTION_KEYWORDS` whose extents along the slice
   normal overlap are separate stacks, and the largest is kept.

Where two groups are equally large, which one to read is not clear: the series
is refused with :class:`~cad_node.errors.InvalidSeriesError`, naming the grouping.
"""

import logging
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from cad_node.domain.stacks import StackRank, stack_rank
from cad_node.errors import InvalidSeriesError

logger = logging.getLogger(__name__)

RECONSTRUCTION_KEYWORDS: tuple[str, ...] = (
    "ConvolutionKernel",
    "SliceThickness",
    "ContrastBolusAgent",
    "AcquisitionNumber",
)
"""What tells apart the reconstructions (kernel, thickness) and acquisitions (contrast phase,
acquisition) that a scanner may send in one series, tried in this order."""

_NAMED_VALUES = frozenset({"ConvolutionKernel", "SliceThickness", "AcquisitionNumber"})
"""Keywords whose values a refusal names (ContrastBolusAgent is free text)."""

_EXTENT_TOLERANCE_MM = 1e-3


def image_type(ds: Dataset) -> tuple[str, ...]:
    """The values of ImageType (0008,0008), as a tuple of strings."""
    value = ds.get("ImageType") or ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def main_stack(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The images of a series that form its volume (see the module's steps).

    Raises
    ------
    InvalidSeriesError
        When two or more stacks, or reconstructions, are equally large.
    """
    images = [ds for ds in datasets if _rank(ds) == StackRank.IMAGE]
    stack = _largest(_grouped(images, _stack_key), "stacks of other orientation or matrix")
    stack = _without_duplicates(stack)
    stack = _one_reconstruction(stack, RECONSTRUCTION_KEYWORDS)
    if len(stack) < len(datasets):
        logger.info(
            "series %s: %d of %d instances left out of the volume (localizers, other "
            "objects, other orientation or matrix, duplicates, other reconstructions)",
            datasets[0].get("SeriesInstanceUID", "?"),
            len(datasets) - len(stack),
            len(datasets),
        )
    return stack


def _rank(ds: Dataset) -> StackRank:
    return stack_rank(str(ds.get("SOPClassUID", "")), image_type(ds))


def _stack_key(ds: Dataset) -> Hashable:
    """What the images of one stack share: orientation (to 0.01), matrix and SOP class."""
    orientation = ds.get("ImageOrientationPatient")
    rounded = (
        tuple(round(float(v), 2) for v in orientation)
        if orientation is not None and len(orientation) == 6
        else None
    )
    return (rounded, ds.get("Rows"), ds.get("Columns"), str(ds.get("SOPClassUID", "")))


def _grouped(
    datasets: Sequence[Dataset], key: Callable[[Dataset], Hashable]
) -> dict[Hashable, list[Dataset]]:
    groups: dict[Hashable, list[Dataset]] = {}
    for ds in datasets:
        groups.setdefault(key(ds), []).append(ds)
    return groups


def _largest(groups: dict[Hashable, list[Dataset]], what: str) -> list[Dataset]:
    """The largest of ``groups``; [] when there is none.

    Raises
    ------
    InvalidSeriesError
        When the two largest are of one size; ``what`` says what the groups are.
    """
    sizes = sorted((len(group) for group in groups.values()), reverse=True)
    if len(sizes) > 1 and sizes[0] == sizes[1]:
        raise InvalidSeriesError(
            f"the series holds {len(groups)} {what}, the largest two of {sizes[0]} images "
            "each: send each as a series of its own"
        )
    return max(groups.values(), key=len) if groups else []


def _reading_order(ds: Dataset) -> tuple[int, str]:
    number = ds.get("InstanceNumber")
    return (int(number) if number is not None else 2**31, str(ds.get("SOPInstanceUID", "")))


def _without_duplicates(stack: Sequence[Dataset]) -> list[Dataset]:
    """``stack`` with one image (the first by InstanceNumber) of each exact duplicate."""
    kept: list[Dataset] = []
    seen_uids: set[str] = set()
    by_position: dict[Hashable, list[Dataset]] = {}
    for ds in sorted(stack, key=_reading_order):
        uid = str(ds.get("SOPInstanceUID", ""))
        same_position = by_position.setdefault(_position_key(ds), [])
        if uid in seen_uids or any(_same_pixels(ds, other) for other in same_position):
            continue
        seen_uids.add(uid)
        same_position.append(ds)
        kept.append(ds)
    return kept


def _position_key(ds: Dataset) -> Hashable:
    position = ds.get("ImagePositionPatient")
    if position is None or len(position) != 3:
        return None
    return tuple(round(float(v), 2) for v in position)


def _same_pixels(ds: Dataset, other: Dataset) -> bool:
    """Whether two images of one position hold the same stored values and rescale."""
    if _position_key(ds) is None or "PixelData" not in ds or "PixelData" not in other:
        return False
    rescale = ("RescaleSlope", "RescaleIntercept")
    if any(ds.get(keyword) != other.get(keyword) for keyword in rescale):
        return False
    if _transfer_syntax(ds) == _transfer_syntax(other):
        return bool(ds.get("PixelData") == other.get("PixelData"))
    return bool(np.array_equal(ds.pixel_array, other.pixel_array))


def _transfer_syntax(ds: Dataset) -> str:
    file_meta = getattr(ds, "file_meta", None)
    return str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""


def _one_reconstruction(stack: list[Dataset], keywords: Sequence[str]) -> list[Dataset]:
    """The largest reconstruction in ``stack``, told apart by ``keywords`` in turn.

    Images grouped by one keyword are separate reconstructions only where their extents
    along the slice normal overlap: slices of one sequential (axial mode) scan each carry
    the AcquisitionNumber of their rotation, and those extents follow one another.
    """
    normal = _normal(stack)
    if normal is None:
        return stack
    for number, keyword in enumerate(keywords):
        groups = _grouped(stack, _value_of(keyword))
        if len(groups) > 1 and _overlapping(groups, normal):
            chosen = _largest(groups, _reconstructions(keyword, groups))
            return _one_reconstruction(chosen, keywords[number + 1 :])
    return stack


def _value_of(keyword: str) -> Callable[[Dataset], Hashable]:
    def value(ds: Dataset) -> Hashable:
        return str(ds.get(keyword, ""))

    return value


def _reconstructions(keyword: str, groups: dict[Hashable, list[Dataset]]) -> str:
    values = f" {', '.join(sorted(map(str, groups)))}" if keyword in _NAMED_VALUES else ""
    return f"reconstructions or acquisitions at the same positions, by {keyword}{values}"


def _normal(stack: Sequence[Dataset]) -> npt.NDArray[np.float64] | None:
    """The normal of the stack's image plane; None where its first image has no valid one."""
    orientation = stack[0].get("ImageOrientationPatient") if stack else None
    if orientation is None or len(orientation) != 6:
        return None
    values = np.array([float(v) for v in orientation])
    return np.cross(values[:3], values[3:])


def _overlapping(groups: dict[Hashable, list[Dataset]], normal: npt.NDArray[np.float64]) -> bool:
    """Whether the extents of two of ``groups`` along ``normal`` overlap (ends included)."""
    extents = []
    for group in groups.values():
        positions = [p for ds in group if (p := _along(ds, normal)) is not None]
        if positions:
            extents.append((min(positions), max(positions)))
    extents.sort()
    reached = -np.inf
    for start, end in extents:
        if start <= reached + _EXTENT_TOLERANCE_MM:
            return True
        reached = max(reached, end)
    return False


def _along(ds: Dataset, normal: npt.NDArray[np.float64]) -> float | None:
    position = ds.get("ImagePositionPatient")
    if position is None or len(position) != 3:
        return None
    return float(np.array([float(v) for v in position]) @ normal)

"""Outlines of a finding's mask on its image: the SR's SCOORD and the presentation state's marks.

Coordinates are image (column, row) with (0.5, 0.5) the centre of the first pixel
(PS3.3 C.10.5.1.2).  A 2D SCOORD has no POLYGON type: a POLYLINE whose last point
repeats the first is a closed polygon (PS3.3 C.18.6.1.2).
"""

import numpy as np
import numpy.typing as npt
from skimage import measure

from cad_node.domain.results import ImageMask

MAX_OUTLINES = 64
"""Most outlines drawn of one mask (a fundus finding is the union of many spots)."""


def polygon_outline(mask: ImageMask) -> npt.NDArray[np.float64]:
    """Closed POLYLINE graphic data outlining the mask's largest 8-connected region.

    The outline runs along the region's border, through the midpoints between
    inside and outside pixels.
    """
    return _outline(_largest_region(mask.mask), mask.offset)


def region_outlines(mask: ImageMask) -> tuple[npt.NDArray[np.float64], ...]:
    """Closed POLYLINE outlines of the 8-connected regions of ``mask``, largest first,
    at most :data:`MAX_OUTLINES` of them."""
    labels = measure.label(mask.mask, connectivity=2)  # type: ignore[no-untyped-call]  # skimage ships no hints for it
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[:MAX_OUTLINES]
    return tuple(_outline(labels == label + 1, mask.offset) for label in order)


def _outline(region: npt.NDArray[np.bool_], offset: tuple[int, int]) -> npt.NDArray[np.float64]:
    padded = np.pad(region, 1).astype(np.float64)
    contours = measure.find_contours(padded, 0.5)  # type: ignore[no-untyped-call]  # skimage ships no hints for it
    outline: npt.NDArray[np.float64] = max(contours, key=len)
    simplified = measure.approximate_polygon(outline, tolerance=0.5)  # type: ignore[no-untyped-call]  # as above
    if len(simplified) >= 4:  # a closed polygon needs three corners and the repeat
        outline = simplified
    rows = outline[:, 0] - 1.0 + offset[0]
    columns = outline[:, 1] - 1.0 + offset[1]
    return np.column_stack([columns + 0.5, rows + 0.5])


def _largest_region(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    labels = measure.label(mask, connectivity=2)  # type: ignore[no-untyped-call]  # skimage ships no hints for it
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    region: npt.NDArray[np.bool_] = labels == largest
    return region

"""Standard orientation, breast crop and resize of one mammogram, and the way back.

Every view is brought to one frame before the network sees it:

1. **Flip** so the chest wall is on the left (column 0).  The image itself says
   which edge the breast rests on when it is clear (the breast touches the
   chest-wall edge over a long run of rows and the nipple side barely); when it
   is not, the laterality decides as the standard display does (right breast:
   chest wall on the right; PS3.17 mammography image orientation).
2. **Crop** to the breast: a threshold between background and tissue, the
   largest connected component, its bounding box plus a small margin.
3. **Resize** the crop to :data:`INPUT_SHAPE` (anti-aliased bilinear).
4. **Normalise**: zero mean, unit variance over the breast, clipped.

:class:`ViewGeometry` records steps 1-3, so that network outputs (masks,
probability maps, Grad-CAM maps) and points map back onto the source pixels.
"""

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from cad_node.domain.image_sets import Laterality, PlanarImage

INPUT_SHAPE: tuple[int, int] = (256, 192)
"""(rows, columns) of the network input."""

EDGE_FRACTION = 0.04
"""Width of the edge strips compared to find the chest wall, as a fraction of the columns."""
EDGE_MARGIN = 0.2
"""The breast must cover this much more of one edge strip than the other to decide."""
THRESHOLD_FRACTION = 0.08
"""Breast threshold: this far from the 1st to the 99th percentile."""
CROP_MARGIN = 4
"""Pixels added around the breast's bounding box."""
CLIP = (-4.0, 8.0)
"""Normalised values are clipped to this range (calcifications stay bright)."""

FloatArray = npt.NDArray[np.float32]
_T = TypeVar("_T", bound=np.generic)


@dataclass(frozen=True, slots=True)
class ViewGeometry:
    """How a source image became the network input: flip, crop box, resize.

    ``box`` is (first row, end row, first column, end column) in the flipped
    source; the input grid samples that box at ``input_shape``.
    """

    source_shape: tuple[int, int]
    flipped: bool
    box: tuple[int, int, int, int]
    input_shape: tuple[int, int] = INPUT_SHAPE

    def __post_init__(self) -> None:
        r0, r1, c0, c1 = self.box
        rows, columns = self.source_shape
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= columns):
            raise ValueError(f"crop box {self.box} does not fit an image of {self.source_shape}")

    @property
    def scale(self) -> tuple[float, float]:
        """Source pixels per input pixel, (rows, columns)."""
        r0, r1, c0, c1 = self.box
        return ((r1 - r0) / self.input_shape[0], (c1 - c0) / self.input_shape[1])

    def canonical(self, source: npt.NDArray[_T]) -> npt.NDArray[_T]:
        """The source array with the chest wall on the left."""
        return np.ascontiguousarray(source[:, ::-1]) if self.flipped else source

    def to_input(self, source: FloatArray) -> FloatArray:
        """A source-grid array (image, mask as float) resampled onto the input grid."""
        r0, r1, c0, c1 = self.box
        crop = np.asarray(self.canonical(source), dtype=np.float32)[r0:r1, c0:c1]
        return resize(crop, self.input_shape)

    def to_source(self, values: FloatArray) -> FloatArray:
        """An input-grid map (probabilities, heatmap) resampled back onto the source grid.

        Outside the crop box the map is 0.
        """
        r0, r1, c0, c1 = self.box
        canonical = np.zeros(self.source_shape, dtype=np.float32)
        canonical[r0:r1, c0:c1] = resize(values.astype(np.float32), (r1 - r0, c1 - c0))
        return np.asarray(self.canonical(canonical), dtype=np.float32)

    def point_to_source(self, row: float, column: float) -> tuple[float, float]:
        """A continuous input-grid index (pixel centres at integers) as a source index."""
        sr, sc = self.scale
        r = (row + 0.5) * sr - 0.5 + self.box[0]
        c = (column + 0.5) * sc - 0.5 + self.box[2]
        return (r, self.source_shape[1] - 1 - c if self.flipped else c)

    def point_to_input(self, row: float, column: float) -> tuple[float, float]:
        """A continuous source index as an input-grid index (inverse of point_to_source)."""
        c = self.source_shape[1] - 1 - column if self.flipped else column
        sr, sc = self.scale
        return ((row - self.box[0] + 0.5) / sr - 0.5, (c - self.box[2] + 0.5) / sc - 0.5)


@dataclass(frozen=True, slots=True, eq=False)
class StandardisedView:
    """A view ready for the network: ``pixels`` on the input grid and its geometry."""

    pixels: FloatArray
    geometry: ViewGeometry


def resize(array: FloatArray, shape: tuple[int, int]) -> FloatArray:
    """Bilinear resampling (anti-aliased when shrinking), pixel centres aligned."""
    if array.shape == shape:
        return array.astype(np.float32, copy=True)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrinking = shape[0] < array.shape[0] or shape[1] < array.shape[1]
    out = torch.nn.functional.interpolate(
        tensor, size=shape, mode="bilinear", align_corners=False, antialias=shrinking
    )
    return np.asarray(out[0, 0].numpy(), dtype=np.float32)


def breast_mask(pixels: FloatArray) -> npt.NDArray[np.bool_]:
    """The breast (and pectoral muscle): above the threshold, largest connected component."""
    low, high = np.percentile(pixels, [1.0, 99.0])
    above = pixels > low + THRESHOLD_FRACTION * (high - low)
    labels, count = ndimage.label(above)
    if count == 0:
        return np.ones(pixels.shape, dtype=np.bool_)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def chest_wall_on_left(pixels: FloatArray, laterality: Laterality | None) -> bool:
    """Which edge the breast rests on: from the image when clear, else from the laterality."""
    mask = breast_mask(pixels)
    strip = max(1, round(mask.shape[1] * EDGE_FRACTION))
    left, right = float(mask[:, :strip].mean()), float(mask[:, -strip:].mean())
    if abs(left - right) >= EDGE_MARGIN:
        return left > right
    return laterality is not Laterality.RIGHT


def crop_box(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int, int]:
    """The mask's bounding box plus :data:`CROP_MARGIN`, within the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, mask.shape[0], 0, mask.shape[1])
    return (
        max(0, int(rows[0]) - CROP_MARGIN),
        min(mask.shape[0], int(rows[-1]) + 1 + CROP_MARGIN),
        max(0, int(columns[0]) - CROP_MARGIN),
        min(mask.shape[1], int(columns[-1]) + 1 + CROP_MARGIN),
    )


def view_geometry(pixels: FloatArray, laterality: Laterality | None) -> ViewGeometry:
    """Flip and crop box of one source image."""
    flipped = not chest_wall_on_left(pixels, laterality)
    canonical = np.ascontiguousarray(pixels[:, ::-1]) if flipped else pixels
    box = crop_box(breast_mask(canonical))
    return ViewGeometry(source_shape=(pixels.shape[0], pixels.shape[1]), flipped=flipped, box=box)


def normalise(pixels: FloatArray) -> FloatArray:
    """Zero mean, unit variance over the breast; clipped to :data:`CLIP`."""
    inside = breast_mask(pixels)
    values = pixels[inside] if inside.any() else pixels.ravel()
    mean, std = float(values.mean()), float(values.std()) + 1e-3
    return np.asarray(np.clip((pixels - mean) / std, *CLIP), dtype=np.float32)


def standardise(image: PlanarImage) -> StandardisedView:
    """One grayscale view in standard orientation, cropped, resized and normalised."""
    if image.is_colour:
        raise ValueError(f"image {image.sop_instance_uid}: a mammogram must be grayscale")
    geometry = view_geometry(image.pixels, image.laterality)
    return StandardisedView(normalise(geometry.to_input(image.pixels)), geometry)

"""Fundus photograph -> network input, and network output -> source pixels.

Three steps, each undone exactly when mapping the outputs back:

1. **Field-of-view crop.** The dark border is thresholded (brightest channel above
   a fraction of the image's bright level); the bounding box of what remains gives
   the bounding circle of the field of view; the square around that circle (padded
   with black where it leaves the image) is the crop.
2. **Orientation.** A left eye (OS) is mirrored so that every eye has its optic
   disc on the right (nasal side of OD): the network sees one anatomy.
3. **Resize and colour normalisation.** The square is resized to
   :data:`INPUT_SIZE` by area averaging (which keeps tiny microaneurysms' contrast
   better than interpolation), then each RGB channel is standardised inside the
   field of view (zero mean, unit variance: removes the camera's gain and colour
   cast), and a second copy of the three channels gets Graham's local-average
   subtraction (minus a Gaussian blur of sigma ``INPUT_SIZE / 30``, normalised to
   the field of view): it removes vignetting and makes lesions stand out.  The
   input has 6 channels; outside the field of view it is 0.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage
from torch.nn import functional

INPUT_SIZE = 256
INPUT_CHANNELS = 6
FOV_LEVEL = 0.12
"""Pixels brighter than this fraction of the 99th percentile belong to the field of view."""
GRAHAM_SIGMA = INPUT_SIZE / 30.0


@dataclass(frozen=True, slots=True)
class CropGeometry:
    """Where the network's input square lies on the source image.

    The square spans source rows ``row0 .. row0 + side`` and columns
    ``col0 .. col0 + side`` (may extend past the image: padded with black);
    ``mirrored`` says the columns were flipped (a left eye).
    """

    row0: int
    col0: int
    side: int
    source_shape: tuple[int, int]
    mirrored: bool

    @property
    def scale(self) -> float:
        """Input pixels per source pixel."""
        return INPUT_SIZE / self.side

    def to_source(self, row: float, column: float) -> tuple[float, float]:
        """A continuous input-grid position (row, column) on the source image."""
        if self.mirrored:
            column = INPUT_SIZE - column
        return (self.row0 + row / self.scale, self.col0 + column / self.scale)

    def to_input(self, row: float, column: float) -> tuple[float, float]:
        """A continuous source position (row, column) on the input grid."""
        r, c = (row - self.row0) * self.scale, (column - self.col0) * self.scale
        return (r, INPUT_SIZE - c if self.mirrored else c)


@dataclass(frozen=True, slots=True, eq=False)
class Prepared:
    """One photograph ready for the network."""

    image: npt.NDArray[np.float32]
    """(INPUT_CHANNELS, INPUT_SIZE, INPUT_SIZE)."""
    fov: npt.NDArray[np.bool_]
    """(INPUT_SIZE, INPUT_SIZE): inside the field of view."""
    geometry: CropGeometry


def field_of_view_mask(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Pixels inside the camera's circular field of view (threshold on the dark border)."""
    brightest = pixels.max(axis=2) if pixels.ndim == 3 else pixels
    level = FOV_LEVEL * max(float(np.percentile(brightest, 99)), 1e-6)
    mask = ndimage.binary_opening(brightest > level, iterations=2)
    return np.asarray(mask, dtype=np.bool_)


def crop_geometry(fov: npt.NDArray[np.bool_], mirrored: bool) -> CropGeometry:
    """The square around the field of view's bounding circle (whole image when none is found)."""
    rows, columns = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    shape = (int(fov.shape[0]), int(fov.shape[1]))
    if rows.size < 16 or columns.size < 16:
        side = max(shape)
        return CropGeometry((shape[0] - side) // 2, (shape[1] - side) // 2, side, shape, mirrored)
    centre_r = (rows[0] + rows[-1] + 1) / 2
    centre_c = (columns[0] + columns[-1] + 1) / 2
    side = int(max(rows[-1] - rows[0], columns[-1] - columns[0]) + 1)
    row0, col0 = round(centre_r - side / 2), round(centre_c - side / 2)
    return CropGeometry(row0, col0, side, shape, mirrored)


def _square(image: npt.NDArray[np.float32], geometry: CropGeometry) -> npt.NDArray[np.float32]:
    """The crop square of ``image`` ((rows, columns) or (rows, columns, channels)), zero-padded."""
    g, (height, width) = geometry, geometry.source_shape
    out = np.zeros((g.side, g.side, *image.shape[2:]), dtype=np.float32)
    r0, r1 = max(0, g.row0), min(height, g.row0 + g.side)
    c0, c1 = max(0, g.col0), min(width, g.col0 + g.side)
    out[r0 - g.row0 : r1 - g.row0, c0 - g.col0 : c1 - g.col0] = image[r0:r1, c0:c1]
    return out[:, ::-1] if g.mirrored else out


def resize_area(square: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(side, side[, C]) -> (C, INPUT_SIZE, INPUT_SIZE) by area averaging (C = 1 for 2D)."""
    channels_last = square if square.ndim == 3 else square[..., None]
    tensor = torch.from_numpy(np.ascontiguousarray(channels_last.transpose(2, 0, 1)))[None]
    mode = "area" if square.shape[0] >= INPUT_SIZE else "bilinear"
    resized = functional.interpolate(tensor, size=(INPUT_SIZE, INPUT_SIZE), mode=mode)
    return np.asarray(resized[0].numpy(), dtype=np.float32)


def normalise_colour(
    rgb: npt.NDArray[np.float32], fov: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """(3, H, W) RGB -> (6, H, W): per-channel standardised, then Graham-subtracted copies."""
    inside = fov.astype(np.float32)
    weight = ndimage.gaussian_filter(inside, GRAHAM_SIGMA) + 1e-6
    out = np.zeros((INPUT_CHANNELS, *fov.shape), dtype=np.float32)
    for c in range(3):
        values = rgb[c][fov] if fov.any() else rgb[c].ravel()
        standard = (rgb[c] - values.mean()) / max(float(values.std()), 1e-3) * inside
        local = ndimage.gaussian_filter(standard, GRAHAM_SIGMA) / weight
        out[c] = standard
        out[3 + c] = 4.0 * (standard - local) * inside
    return out


def prepare(pixels: npt.NDArray[np.float32], *, mirror: bool) -> Prepared:
    """Crop, orient, resize and normalise one photograph (values as stored, e.g. 0-255 RGB)."""
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    rgb = np.asarray(rgb, dtype=np.float32)
    source_fov = field_of_view_mask(rgb)
    geometry = crop_geometry(source_fov, mirror)
    fov = resize_area(_square(source_fov.astype(np.float32), geometry))[0] > 0.5
    resized = resize_area(_square(rgb, geometry))
    return Prepared(normalise_colour(resized, fov), fov, geometry)


def prepare_mask(mask: npt.NDArray[np.bool_], geometry: CropGeometry) -> npt.NDArray[np.float32]:
    """A source-grid mask on the input grid: the fraction of each input pixel it covers."""
    fraction: npt.NDArray[np.float32] = resize_area(_square(mask.astype(np.float32), geometry))[0]
    return fraction


def to_source(maps: npt.NDArray[np.float32], geometry: CropGeometry) -> npt.NDArray[np.float32]:
    """(C, INPUT_SIZE, INPUT_SIZE) maps -> (C, rows, columns) on the source image (bilinear)."""
    g, (height, width) = geometry, geometry.source_shape
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    square = functional.interpolate(tensor, size=(g.side, g.side), mode="bilinear")[0].numpy()
    if g.mirrored:
        square = square[:, :, ::-1]
    out = np.zeros((maps.shape[0], height, width), dtype=np.float32)
    r0, r1 = max(0, g.row0), min(height, g.row0 + g.side)
    c0, c1 = max(0, g.col0), min(width, g.col0 + g.side)
    out[:, r0:r1, c0:c1] = square[:, r0 - g.row0 : r1 - g.row0, c0 - g.col0 : c1 - g.col0]
    return out

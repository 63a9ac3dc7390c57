"""One source image as a PNG for the review page: windowed, downscaled, no marks burned in.

The page draws the model's marks itself (so a click maps back to the image's pixels): the
PNG keeps the image's aspect ratio, and the page scales ``(row, column)`` by the PNG's
size over the instance's Rows and Columns.  A CT slice is shown in the lung window, other
grayscale images through their header's VOI window (else the percentiles of their values),
then MONOCHROME1 inverted; colour images as they are.
"""

from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

from cad_node.domain.results import LUNG_WINDOW, Window
from cad_node.errors import InvalidSeriesError
from cad_node.results.overlay import percentile_window, voi_window, windowed

MAX_SIDE = 1024
"""The longest side of a rendered image, in pixels."""


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames (0028,0008), 1 when absent or empty."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def _header_window(ds: Dataset) -> Window | None:
    """The header's first VOI window, applied before a MONOCHROME1 image is inverted."""
    probe = Dataset()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in ds:
            setattr(probe, keyword, ds.data_element(keyword).value)  # type: ignore[union-attr]
    return voi_window(probe)


def _window(ds: Dataset, values: npt.NDArray[np.float64]) -> Window:
    if str(ds.get("Modality", "")).upper() == "CT":
        return LUNG_WINDOW
    return _header_window(ds) or percentile_window(values)


def _rgb(ds: Dataset, frame: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        colour: npt.NDArray[np.uint8] = np.clip(frame, 0, 255).astype(np.uint8)
        return colour
    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    grey = windowed(values, _window(ds, values))
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def render_png(path: Path, frame_number: int | None = None) -> bytes:
    """The PNG of frame ``frame_number`` (from 1; None: the first) of the instance at ``path``.

    Raises
    ------
    InvalidSeriesError
        The file is no image pydicom can decode, or has no such frame.
    """
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise InvalidSeriesError(f"cannot read the instance: {exc}") from exc
    frames = frame_count(ds)
    index = (frame_number or 1) - 1
    if not 0 <= index < frames:
        raise InvalidSeriesError(f"the instance has {frames} frame(s), not frame {frame_number}")
    try:
        frame = pixel_array(ds, index=index)
    except (AttributeError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise InvalidSeriesError(f"cannot decode the pixels: {exc}") from exc
    image = Image.fromarray(_rgb(ds, frame), mode="RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()

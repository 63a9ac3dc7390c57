"""The review page's PNG of a source image: windowed, inverted for MONOCHROME1, colour as is,
one frame of a multi-frame instance, downscaled to at most 1024 pixels a side."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from cad_node.admin.review_image import MAX_SIDE, render_png
from cad_node.errors import InvalidSeriesError


def bundled(name: str) -> Dataset:
    return dcmread(get_testdata_file(name) or "")


def picture(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def saved(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_ct_slice_in_the_lung_window(tmp_path: Path) -> None:
    image = picture(render_png(saved(bundled("CT_small.dcm"), tmp_path / "ct.dcm")))
    assert image.size == (128, 128)
    assert image.mode == "RGB"
    grey = np.asarray(image.convert("L"))
    assert int(grey.max()) - int(grey.min()) > 100


def test_monochrome1_is_shown_inverted(tmp_path: Path) -> None:
    mr = bundled("MR_small.dcm")
    plain = np.asarray(picture(render_png(saved(mr, tmp_path / "m2.dcm"))).convert("L"))
    mr.PhotometricInterpretation = "MONOCHROME1"
    inverted = np.asarray(picture(render_png(saved(mr, tmp_path / "m1.dcm"))).convert("L"))
    assert np.array_equal(inverted, 255 - plain)


def test_a_colour_image_as_it_is(tmp_path: Path) -> None:
    rgb = bundled("SC_rgb_small_odd.dcm")
    image = picture(render_png(saved(rgb, tmp_path / "rgb.dcm")))
    assert image.size == (int(rgb.Columns), int(rgb.Rows))
    assert np.array_equal(np.asarray(image), rgb.pixel_array.astype(np.uint8))


def test_one_frame_of_a_multi_frame_image_and_large_ones_downscaled(tmp_path: Path) -> None:
    ds = bundled("CT_small.dcm")
    frame = ds.pixel_array
    big = np.kron(np.stack([frame, frame[::-1]]), np.ones((1, 10, 10), dtype=frame.dtype))
    ds.NumberOfFrames = 2
    ds.Rows, ds.Columns = big.shape[1], big.shape[2]
    ds.PixelData = big.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = saved(ds, tmp_path / "frames.dcm")
    first, second = (picture(render_png(path, number)) for number in (1, 2))
    assert first.size == (MAX_SIDE, MAX_SIDE)
    first_grey, second_grey = np.asarray(first.convert("L")), np.asarray(second.convert("L"))
    assert not np.array_equal(first_grey, second_grey)
    assert np.array_equal(first_grey, second_grey[::-1])
    with pytest.raises(InvalidSeriesError, match="has 2 frame"):
        render_png(path, 3)


def test_a_file_that_is_no_image_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(InvalidSeriesError, match="cannot"):
        render_png(junk)

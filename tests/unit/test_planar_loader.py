"""load_image_set: planar DICOM images of one study -> ImageSet (writer -> file -> loader)."""

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation

from cad_node.domain.image_sets import Laterality
from cad_node.errors import InvalidSeriesError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.synth.dicom_ct import SeriesInfo, write_slices
from cad_node.synth.dicom_planar import (
    StudyInfo,
    compress_jpeg_baseline,
    fundus_dataset,
    mammogram_dataset,
    write_fundus_study,
    write_mammo_study,
)
from cad_node.synth.lesions import Grid
from tests.dicom_validation import assert_valid_dicom
from tests.results_inputs import (
    noisy_fundus_pixels,
    noisy_mammogram_pixels,
    smooth_rgb_pixels,
    write_valid,
)

MAMMO = StudyInfo.from_seed(21, "mammo")
FUNDUS = StudyInfo.from_seed(21, "fundus")
SCREENING_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


def _mammogram(
    laterality: str, view: str, *, instance_number: int, for_processing: bool = False
) -> pydicom.Dataset:
    return mammogram_dataset(
        noisy_mammogram_pixels(instance_number),
        study=MAMMO,
        laterality=laterality,
        view=view,
        series_number=2 if for_processing else 1,
        instance_number=instance_number,
        pixel_spacing_mm=0.07,
        for_processing=for_processing,
    )


def test_four_view_mammogram_round_trips(tmp_path: Path) -> None:
    views = {key: noisy_mammogram_pixels(i) for i, key in enumerate(SCREENING_VIEWS)}
    paths = write_mammo_study(tmp_path, MAMMO, views, pixel_spacing_mm=0.07)
    for path in paths:
        assert_valid_dicom(path)
    image_set = load_image_set(paths)
    assert image_set.study_instance_uid == MAMMO.study_instance_uid
    assert image_set.modality == "MG"
    assert len(image_set.images) == 4
    for image, ((laterality, view), pixels) in zip(image_set.images, views.items(), strict=True):
        assert image.laterality is Laterality(laterality)
        assert image.view_position == view
        assert image.pixel_spacing_mm == (0.07, 0.07)
        assert image.sop_class_uid == DigitalMammographyXRayImageStorageForPresentation
        assert image.series_instance_uid == MAMMO.series_instance_uid(1)
        assert image.frame_of_reference_uid is None
        assert image.pixels.dtype == np.float32
        np.testing.assert_array_equal(image.pixels, pixels.astype(np.float32))
    assert len(image_set.of_laterality(Laterality.LEFT)) == 2


def test_for_processing_is_dropped_only_where_a_for_presentation_view_exists(
    tmp_path: Path,
) -> None:
    presented_rcc = _mammogram("R", "CC", instance_number=1)
    raw_rcc = _mammogram("R", "CC", instance_number=1, for_processing=True)
    raw_lcc = _mammogram("L", "CC", instance_number=2, for_processing=True)
    paths = [
        write_valid(raw_rcc, tmp_path / "raw_rcc.dcm"),
        write_valid(presented_rcc, tmp_path / "rcc.dcm"),
        write_valid(raw_lcc, tmp_path / "raw_lcc.dcm"),
    ]
    image_set = load_image_set(paths)
    assert [image.sop_instance_uid for image in image_set.images] == [
        presented_rcc.SOPInstanceUID,
        raw_lcc.SOPInstanceUID,
    ]


def test_fundus_round_trips_rgb_and_laterality(tmp_path: Path) -> None:
    photographs = [("R", noisy_fundus_pixels(1)), ("L", noisy_fundus_pixels(2))]
    paths = write_fundus_study(tmp_path, FUNDUS, photographs, pixel_spacing_mm=None)
    image_set = load_image_set(paths)
    assert image_set.modality == "OP"
    for image, (laterality, pixels) in zip(image_set.images, photographs, strict=True):
        assert image.laterality is Laterality(laterality)
        assert image.is_colour
        assert image.photometric_interpretation == "RGB"
        assert image.pixel_spacing_mm is None
        assert image.view_position == ""
        np.testing.assert_array_equal(image.pixels, pixels.astype(np.float32))


def test_jpeg_baseline_ybr_full_422_fundus_is_read_as_rgb(tmp_path: Path) -> None:
    pixels = smooth_rgb_pixels()
    ds = fundus_dataset(
        pixels,
        study=FUNDUS,
        laterality="L",
        series_number=1,
        instance_number=1,
        pixel_spacing_mm=0.01,
    )
    path = write_valid(compress_jpeg_baseline(ds, quality=95), tmp_path / "jpeg.dcm")
    assert pydicom.dcmread(path).PhotometricInterpretation == "YBR_FULL_422"
    image = load_image_set([path]).images[0]
    assert image.photometric_interpretation == "RGB"
    assert image.pixel_spacing_mm == (0.01, 0.01)
    # left in YCbCr, the red channel of this ramp would be off by tens of levels
    assert float(np.abs(image.pixels - pixels).mean()) < 3.0


def test_monochrome1_is_inverted_to_monochrome2_sense(tmp_path: Path) -> None:
    ds = _mammogram("L", "MLO", instance_number=3)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PresentationLUTShape = "INVERSE"
    path = write_valid(ds, tmp_path / "mono1.dcm")
    image = load_image_set([path]).images[0]
    expected = 4095.0 - noisy_mammogram_pixels(3).astype(np.float32)
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.photometric_interpretation == "MONOCHROME2"


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    # DX/MG fix RescaleSlope 1 and RescaleIntercept 0, so a CT slice carries the check
    hu = np.arange(-1000, 1048, dtype=np.int16).reshape(1, 32, 64)
    info = SeriesInfo.from_seed(
        5, series_description="planar rescale", patient_id="SYNTH-CT", images_in_acquisition=False
    )
    (path,) = write_slices(hu, Grid((1, 32, 64), (2.0, 0.5, 0.5), (0.0, 0.0, 0.0)), info, tmp_path)
    assert_valid_dicom(path)
    image = load_image_set([path]).images[0]
    np.testing.assert_array_equal(image.pixels, hu[0].astype(np.float32))
    assert image.frame_of_reference_uid == info.frame_of_reference_uid
    assert image.laterality is None


def test_multi_frame_photograph_gives_each_frame(tmp_path: Path) -> None:
    first, second = noisy_fundus_pixels(5), noisy_fundus_pixels(6)
    ds = fundus_dataset(
        first,
        study=FUNDUS,
        laterality="R",
        series_number=1,
        instance_number=1,
        pixel_spacing_mm=None,
    )
    ds.NumberOfFrames = 2
    ds.PixelData = first.tobytes() + second.tobytes()
    image_set = load_image_set([write_valid(ds, tmp_path / "frames.dcm")])
    assert [image.frame_number for image in image_set.images] == [1, 2]
    assert {image.sop_instance_uid for image in image_set.images} == {ds.SOPInstanceUID}
    np.testing.assert_array_equal(image_set.images[0].pixels, first.astype(np.float32))
    np.testing.assert_array_equal(image_set.images[1].pixels, second.astype(np.float32))
    assert image_set.image(ds.SOPInstanceUID, 2) is image_set.images[1]


def test_datasets_are_read_and_pixels_owned(tmp_path: Path) -> None:
    ds = _mammogram("R", "MLO", instance_number=4)
    path = write_valid(ds, tmp_path / "rmlo.dcm")
    read_back = pydicom.dcmread(path)
    image_set = load_image_set([read_back, path])  # the same instance twice: read once
    assert len(image_set.images) == 1
    pixels = image_set.images[0].pixels
    assert pixels.flags.owndata
    read_back.PixelData = bytes(len(read_back.PixelData))
    np.testing.assert_array_equal(pixels, noisy_mammogram_pixels(4).astype(np.float32))


def test_non_image_instances_are_skipped(tmp_path: Path) -> None:
    sr = get_testdata_file("test-SR.dcm")  # bundled with pydicom: an SR of another study
    assert sr is not None
    path = write_valid(_mammogram("R", "CC", instance_number=1), tmp_path / "rcc.dcm")
    image_set = load_image_set([sr, path])
    assert [image.view_position for image in image_set.images] == ["CC"]
    with pytest.raises(InvalidSeriesError, match="no image instance"):
        load_image_set([sr])


def test_images_of_two_studies_are_refused(tmp_path: Path) -> None:
    other = StudyInfo.from_seed(22, "mammo")
    first = write_valid(_mammogram("R", "CC", instance_number=1), tmp_path / "a.dcm")
    ds = mammogram_dataset(
        noisy_mammogram_pixels(1),
        study=other,
        laterality="L",
        view="CC",
        series_number=1,
        instance_number=1,
        pixel_spacing_mm=0.07,
    )
    with pytest.raises(InvalidSeriesError, match="StudyInstanceUID"):
        load_image_set([first, write_valid(ds, tmp_path / "b.dcm")])


def test_images_of_two_modalities_are_refused(tmp_path: Path) -> None:
    same_study = dataclasses.replace(FUNDUS, study_instance_uid=MAMMO.study_instance_uid)
    photograph = fundus_dataset(
        noisy_fundus_pixels(1),
        study=same_study,
        laterality="R",
        series_number=9,
        instance_number=1,
        pixel_spacing_mm=None,
    )
    paths = [
        write_valid(_mammogram("R", "CC", instance_number=1), tmp_path / "mg.dcm"),
        write_valid(photograph, tmp_path / "op.dcm"),
    ]
    with pytest.raises(InvalidSeriesError, match="Modality"):
        load_image_set(paths)


def test_unreadable_files_and_empty_input_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(InvalidSeriesError, match=r"junk\.dcm"):
        load_image_set([junk])
    with pytest.raises(InvalidSeriesError, match="no image instance"):
        load_image_set([])

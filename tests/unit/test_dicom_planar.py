"""The planar DICOM writers: mammograms (MG) and colour fundus photographs (OP), dciodvfy-valid."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    JPEGBaseline8Bit,
    OphthalmicPhotography8BitImageStorage,
)

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.synth.dicom_planar import (
    MammographyView,
    StudyInfo,
    chest_wall_on_left,
    compress_jpeg_baseline,
    fundus_dataset,
    mammogram_dataset,
    patient_orientation,
    write_fundus_study,
    write_mammo_study,
)
from tests.dicom_validation import assert_valid_dicom
from tests.results_inputs import (
    noisy_fundus_pixels,
    noisy_mammogram_pixels,
    smooth_rgb_pixels,
    write_valid,
)

MAMMO = StudyInfo.from_seed(7, "mammo")
FUNDUS = StudyInfo.from_seed(7, "fundus")


def _write_and_read(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(write_valid(ds, path))


@pytest.mark.parametrize(
    ("laterality", "view", "orientation"),
    [
        ("R", "CC", ["P", "L"]),
        ("L", "CC", ["A", "R"]),
        ("R", "MLO", ["P", "FL"]),
        ("L", "MLO", ["A", "FR"]),
    ],
)
def test_mammogram_for_presentation_is_valid_and_keeps_its_pixels(
    tmp_path: Path, laterality: str, view: MammographyView, orientation: list[str]
) -> None:
    pixels = noisy_mammogram_pixels()
    ds = mammogram_dataset(
        pixels,
        study=MAMMO,
        laterality=laterality,
        view=view,
        series_number=3,
        instance_number=2,
        pixel_spacing_mm=0.085,
    )
    back = _write_and_read(ds, tmp_path / "mg.dcm")
    assert back.SOPClassUID == DigitalMammographyXRayImageStorageForPresentation
    assert (back.Modality, back.PresentationIntentType) == ("MG", "FOR PRESENTATION")
    assert (back.ImageLaterality, back.ViewPosition) == (laterality, view)
    assert list(back.PatientOrientation) == orientation
    code = back.ViewCodeSequence[0]
    assert code.CodingSchemeDesignator == "SCT"
    assert code.CodeValue == {"CC": "399162004", "MLO": "399368009"}[view]
    assert back.AnatomicRegionSequence[0].CodeValue == "76752008"
    assert [float(v) for v in back.ImagerPixelSpacing] == [0.085, 0.085]
    assert [float(v) for v in back.PixelSpacing] == [0.085, 0.085]
    assert (back.BitsAllocated, back.BitsStored, back.PhotometricInterpretation) == (
        16,
        12,
        "MONOCHROME2",
    )
    assert "WindowCenter" in back
    assert "WindowWidth" in back
    assert back.ImageComments == NOT_FOR_CLINICAL_USE
    assert NOT_FOR_CLINICAL_USE in back.SeriesDescription
    assert back.PatientName == f"SYNTH^MAMMO{MAMMO.seed}"
    np.testing.assert_array_equal(back.pixel_array, pixels)


def test_mammogram_for_processing_has_its_sop_class_and_no_window(tmp_path: Path) -> None:
    ds = mammogram_dataset(
        noisy_mammogram_pixels(),
        study=MAMMO,
        laterality="L",
        view="MLO",
        series_number=4,
        instance_number=1,
        pixel_spacing_mm=0.1,
        for_processing=True,
    )
    back = _write_and_read(ds, tmp_path / "raw.dcm")
    assert back.SOPClassUID == DigitalMammographyXRayImageStorageForProcessing
    assert back.SOPInstanceUID != MAMMO.sop_instance_uid(4, 1)  # its For Presentation twin
    assert back.PresentationIntentType == "FOR PROCESSING"
    assert "WindowCenter" not in back


def test_chest_wall_side_matches_the_patient_orientation() -> None:
    # column index increasing towards anterior ("A") puts the posterior chest wall at column 0
    for laterality in ("L", "R"):
        for view in ("CC", "MLO"):
            along_columns = patient_orientation(laterality, view)[0]
            assert chest_wall_on_left(laterality) is (along_columns == "A")
    assert chest_wall_on_left("L")
    assert not chest_wall_on_left("R")


def test_uids_are_deterministic_per_seed_series_and_index() -> None:
    assert StudyInfo.from_seed(7, "mammo") == MAMMO
    assert MAMMO.study_instance_uid != FUNDUS.study_instance_uid
    assert MAMMO.study_instance_uid != StudyInfo.from_seed(8, "mammo").study_instance_uid
    assert MAMMO.series_instance_uid(1) != MAMMO.series_instance_uid(2)
    assert MAMMO.sop_instance_uid(1, 1) != MAMMO.sop_instance_uid(1, 1, "for-processing")
    uids = {MAMMO.sop_instance_uid(s, i) for s in (1, 2) for i in (1, 2, 3)}
    assert len(uids) == 6
    assert all(uid.startswith("2.25.") and len(uid) <= 64 for uid in uids)
    assert FUNDUS.patient_name.startswith("SYNTH^")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pixels": np.full((4, 4), 4096, dtype=np.uint16)}, "12 bits"),
        ({"pixels": np.zeros((4, 4), dtype=np.int16)}, "uint16"),
        ({"view": "ML"}, "view"),
        ({"pixel_spacing_mm": 0.0}, "spacing"),
        ({"laterality": "B"}, "B"),
    ],
)
def test_mammogram_rejects_invalid_input(change: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "pixels": noisy_mammogram_pixels(),
        "study": MAMMO,
        "laterality": "R",
        "view": "CC",
        "series_number": 1,
        "instance_number": 1,
        "pixel_spacing_mm": 0.1,
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        mammogram_dataset(**arguments)  # type: ignore[arg-type]  # deliberately wrong types


def test_fundus_photograph_is_valid_rgb(tmp_path: Path) -> None:
    pixels = noisy_fundus_pixels()
    ds = fundus_dataset(
        pixels,
        study=FUNDUS,
        laterality="L",
        series_number=1,
        instance_number=1,
        pixel_spacing_mm=0.012,
        field_of_view_deg=50,
    )
    back = _write_and_read(ds, tmp_path / "op.dcm")
    assert back.SOPClassUID == OphthalmicPhotography8BitImageStorage
    assert (back.Modality, back.ImageLaterality) == ("OP", "L")
    assert (back.PhotometricInterpretation, back.PlanarConfiguration) == ("RGB", 0)
    assert back.AnatomicRegionSequence[0].CodeValue == "5665001"  # retina, CID 4209
    assert back.HorizontalFieldOfView == pytest.approx(50.0)
    assert [float(v) for v in back.PixelSpacing] == [0.012, 0.012]
    assert back.ImageComments == NOT_FOR_CLINICAL_USE
    np.testing.assert_array_equal(back.pixel_array, pixels)


def test_fundus_without_spacing_writes_none(tmp_path: Path) -> None:
    ds = fundus_dataset(
        noisy_fundus_pixels(),
        study=FUNDUS,
        laterality="R",
        series_number=1,
        instance_number=2,
        pixel_spacing_mm=None,
    )
    back = _write_and_read(ds, tmp_path / "op.dcm")
    assert "PixelSpacing" not in back
    assert back.ImageLaterality == "R"


def test_fundus_rejects_grayscale_pixels() -> None:
    with pytest.raises(ValueError, match="uint8"):
        fundus_dataset(
            np.zeros((8, 8), dtype=np.uint8),
            study=FUNDUS,
            laterality="R",
            series_number=1,
            instance_number=1,
            pixel_spacing_mm=None,
        )


def test_jpeg_baseline_fundus_is_valid_and_close(tmp_path: Path) -> None:
    pixels = smooth_rgb_pixels()
    ds = fundus_dataset(
        pixels,
        study=FUNDUS,
        laterality="R",
        series_number=2,
        instance_number=1,
        pixel_spacing_mm=0.01,
    )
    back = _write_and_read(compress_jpeg_baseline(ds, quality=95), tmp_path / "jpeg.dcm")
    assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert (back.PhotometricInterpretation, back.LossyImageCompression) == ("YBR_FULL_422", "01")
    decoded = back.pixel_array  # pydicom converts to RGB by default
    assert np.abs(decoded.astype(int) - pixels).mean() < 3


def test_study_writers_write_one_valid_series_each(tmp_path: Path) -> None:
    views = {
        (lat, view): noisy_mammogram_pixels(i)
        for i, (lat, view) in enumerate([("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")])
    }
    mammo_paths = write_mammo_study(tmp_path / "mg", MAMMO, views, pixel_spacing_mm=0.1)
    fundus_paths = write_fundus_study(
        tmp_path / "op",
        FUNDUS,
        [("R", noisy_fundus_pixels(1)), ("L", noisy_fundus_pixels(2))],
        pixel_spacing_mm=None,
    )
    assert [p.name for p in mammo_paths] == [
        "MG_RCC.dcm",
        "MG_LCC.dcm",
        "MG_RMLO.dcm",
        "MG_LMLO.dcm",
    ]
    assert [p.name for p in fundus_paths] == ["OP_OD_01.dcm", "OP_OS_02.dcm"]
    for paths in (mammo_paths, fundus_paths):
        datasets = [pydicom.dcmread(p) for p in paths]
        assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, len(paths) + 1))
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(paths)
        for path in paths:
            assert_valid_dicom(path)

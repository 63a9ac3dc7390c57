"""The synthetic mammography generator: four valid views, lesions seen in both, ground truth."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cad_node.domain.findings import FindingType
from cad_node.domain.image_sets import Laterality
from cad_node.synth.dicom_planar import chest_wall_on_left
from cad_node.synth.mammo import (
    MammoSpec,
    MammoTruth,
    generate_mammo,
    load_truth,
    study_folders,
    write_dataset,
)
from tests.dicom_validation import assert_valid_dicom

SEED_WITH_MASS = 14
"""Seed 14: the right breast holds a spiculated mass (found by listing seeds once)."""


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mammo")
    return write_dataset(out, 1, SEED_WITH_MASS)[0]


@pytest.fixture(scope="module")
def truth(written: Path) -> MammoTruth:
    return load_truth(written)


def test_a_study_is_four_valid_12_bit_mammograms(written: Path, truth: MammoTruth) -> None:
    files = sorted(written.glob("*.dcm"))
    assert [p.name for p in files] == ["MG_LCC.dcm", "MG_LMLO.dcm", "MG_RCC.dcm", "MG_RMLO.dcm"]
    for path in files:
        assert_valid_dicom(path)
        ds = pydicom.dcmread(path)
        assert ds.Modality == "MG"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert int(ds.BitsStored) == 12
        assert (ds.Rows, ds.Columns) == (512, 384)
        assert ds.pixel_array.max() <= 4095
        assert ds.StudyInstanceUID == truth.study_instance_uid
        view = truth.view(ds.SOPInstanceUID)
        assert (ds.ImageLaterality, ds.ViewPosition) == (view.laterality.value, view.view_position)
    assert {(v.laterality, v.view_position) for v in truth.views} == {
        (lat, vp) for lat in Laterality for vp in ("CC", "MLO")
    }


def test_chest_wall_is_where_the_dicom_writer_says(written: Path, truth: MammoTruth) -> None:
    for view in truth.views:
        pixels = pydicom.dcmread(written / view.file).pixel_array.astype(np.float64)
        left, right = pixels[:, :10].mean(), pixels[:, -10:].mean()
        assert view.chest_wall_on_left is chest_wall_on_left(view.laterality)
        assert bool(left > right) is view.chest_wall_on_left  # the breast rests on the chest wall


def test_a_lesion_shows_in_both_views_at_the_same_depth(truth: MammoTruth) -> None:
    right = truth.breast(Laterality.RIGHT)
    assert right.malignant
    assert [les.lesion_type for les in right.lesions] == ["spiculated_mass"]
    lesion = right.lesions[0]
    assert lesion.finding_type is FindingType.MASS
    depths = []
    for view in truth.views:
        if view.laterality is not Laterality.RIGHT:
            continue
        ((_, mask),) = truth.lesion_masks(view)
        row, col = lesion.views[view.view_position].centre_rc
        assert mask[round(row), round(col)]
        area_mm2 = mask.sum() * np.prod(truth.pixel_spacing_mm)
        expected = np.pi * (lesion.diameter_mm / 2) ** 2
        assert 0.5 * expected < area_mm2 < 1.6 * expected
        depths.append(truth.columns - 1 - col)  # right breast: chest wall at the last column
    assert abs(depths[0] - depths[1]) * truth.pixel_spacing_mm[1] < 15.0
    assert not truth.breast(Laterality.LEFT).lesions


def test_generation_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", 1, 42)[0]
    second = write_dataset(tmp_path / "b", 1, 42)[0]
    assert (first / "truth.json").read_text() == (second / "truth.json").read_text()
    for path in first.glob("*.dcm"):
        assert path.read_bytes() == (second / path.name).read_bytes()
    assert study_folders(tmp_path / "a") == [first]
    other = generate_mammo(MammoSpec(seed=43, rows=128, columns=96, pixel_spacing_mm=1.0))
    again = generate_mammo(MammoSpec(seed=43, rows=128, columns=96, pixel_spacing_mm=1.0))
    assert all(
        np.array_equal(a.pixels, b.pixels) for a, b in zip(other.views, again.views, strict=True)
    )


def test_about_thirty_percent_of_breasts_hold_a_lesion() -> None:
    breasts = [
        breast
        for seed in range(60)
        for breast in generate_mammo(
            MammoSpec(seed=seed, rows=128, columns=96, pixel_spacing_mm=1.0)
        ).breasts
    ]
    malignant = [b for b in breasts if b.malignant]
    assert 0.18 < len(malignant) / len(breasts) < 0.42
    assert all(b.lesions for b in malignant)
    assert not any(b.lesions for b in breasts if not b.malignant)
    kinds = {les.lesion_type for b in malignant for les in b.lesions}
    assert kinds == {"spiculated_mass", "round_mass", "calcification_cluster"}
    with_cysts = [b for b in breasts if b.benign]
    assert 0.08 < len(with_cysts) / len(breasts) < 0.35
    assert {les.lesion_type for b in with_cysts for les in b.benign} == {"benign_cyst"}
    assert any(not b.malignant for b in with_cysts)  # a cyst alone is not malignant


def test_calcification_clusters_are_bright_specks_within_about_ten_mm() -> None:
    checked = 0
    for seed in range(24):
        study = generate_mammo(MammoSpec(seed=seed))
        for breast in study.breasts:
            for index, lesion in enumerate(breast.lesions):
                if lesion.lesion_type != "calcification_cluster":
                    continue
                assert lesion.diameter_mm <= 12.0
                for view in study.views:
                    if view.laterality is breast.laterality:
                        inside = view.pixels[view.lesion_masks[index]].astype(np.float64)
                        assert inside.max() > np.median(inside) + 150  # specks stand out
                        checked += 1
    assert checked >= 2

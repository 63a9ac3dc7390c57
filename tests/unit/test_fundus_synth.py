"""The synthetic fundus generator: determinism, anatomy, lesions that follow the grade, files."""

from pathlib import Path

import numpy as np
import pytest

from cad_node.imaging.image_set_loading import load_image_set
from cad_node.synth.fundus import (
    GRADE_PRIOR,
    LESION_MASKS,
    PROLIFERATIVE_MASK,
    EyePhoto,
    FundusSpec,
    draw_eye,
    draw_grades,
    generate_fundus,
    load_truth,
    study_folders,
    write_dataset,
)
from tests.dicom_validation import assert_valid_dicom

SIZE = 256


def _eye(grade: int, laterality: str = "R", seed: int = 3) -> EyePhoto:
    return draw_eye(SIZE, grade, laterality, np.random.default_rng(seed))


def test_same_seed_same_exam_other_seed_other_exam() -> None:
    first = generate_fundus(FundusSpec(seed=11, size=SIZE))
    again = generate_fundus(FundusSpec(seed=11, size=SIZE))
    other = generate_fundus(FundusSpec(seed=12, size=SIZE))
    for a, b in zip(first.eyes, again.eyes, strict=True):
        assert np.array_equal(a.pixels, b.pixels)
        assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
        assert a.grade == b.grade
    assert not np.array_equal(first.eyes[0].pixels, other.eyes[0].pixels)


def test_grades_follow_the_screening_prior() -> None:
    rng = np.random.default_rng(0)
    grades = np.array([draw_grades(rng) for _ in range(3000)]).ravel()
    frequencies = np.bincount(grades, minlength=5) / grades.size
    assert np.allclose(frequencies, GRADE_PRIOR, atol=0.03)


def test_photograph_is_rgb_with_a_dark_border_and_a_bright_nasal_disc() -> None:
    right, left = _eye(0, "R"), _eye(0, "L")
    for photo in (right, left):
        assert photo.pixels.shape == (SIZE, SIZE, 3)
        assert photo.pixels.dtype == np.uint8
        assert photo.pixels[:4, :4].max() < 10  # outside the field of view
        red = photo.pixels[SIZE // 2, SIZE // 2 - 40 : SIZE // 2 + 40].astype(float)
        assert red[:, 0].mean() > red[:, 1].mean() > red[:, 2].mean()  # orange-red fundus
    assert right.disc_rc[1] > SIZE / 2 > right.fovea_rc[1]  # OD: disc on the right
    assert left.disc_rc[1] < SIZE / 2 < left.fovea_rc[1]  # OS: mirrored
    assert np.array_equal(right.pixels, left.pixels[:, ::-1])  # same seed: exact mirror
    r, c = (round(v) for v in right.disc_rc)
    assert right.pixels[r, c].astype(int).sum() > right.pixels[SIZE // 2, SIZE // 2].sum()


@pytest.mark.parametrize("grade", [0, 1, 2, 3, 4])
def test_lesions_follow_the_icdr_grade(grade: int) -> None:
    photo = _eye(grade, seed=20 + grade)
    present = {name for name in LESION_MASKS if photo.masks[name].any()}
    if grade == 0:
        assert not present
        assert not photo.masks[PROLIFERATIVE_MASK].any()
    elif grade == 1:
        assert present == {"microaneurysm"}
    elif grade == 2:
        assert "microaneurysm" in present
        assert len(present) >= 2
        assert photo.lesion_counts["haemorrhage"] < 20
    elif grade == 3:
        assert photo.lesion_counts["haemorrhage"] >= 20
        assert not photo.masks[PROLIFERATIVE_MASK].any()
    else:
        assert photo.neovascularisation
        assert photo.masks[PROLIFERATIVE_MASK].any()
    assert photo.grade == grade


def test_severe_eye_has_haemorrhages_in_all_four_quadrants() -> None:
    photo = _eye(3, seed=5)
    rows, columns = np.nonzero(photo.masks["haemorrhage"])
    centre = SIZE / 2
    quadrants = {(bool(r < centre), bool(c < centre)) for r, c in zip(rows, columns, strict=True)}
    assert len(quadrants) == 4


def test_lesion_masks_lie_on_lesion_coloured_pixels() -> None:
    photo = _eye(3, seed=8)
    green = photo.pixels[..., 1].astype(float)
    fov = photo.pixels.max(axis=2) > 20
    background = green[fov].mean()
    assert green[photo.masks["haemorrhage"]].mean() < 0.8 * background  # red lesions are dark
    if photo.masks["hard_exudate"].any():
        assert green[photo.masks["hard_exudate"]].mean() > 1.3 * background  # yellow, bright


def test_write_dataset_writes_valid_dicom_masks_and_truth(tmp_path: Path) -> None:
    folders = write_dataset(tmp_path, count=1, seed=77, size=SIZE)
    assert study_folders(tmp_path) == folders
    truth = load_truth(folders[0])
    exam = generate_fundus(FundusSpec(seed=77, size=SIZE))
    images = load_image_set(sorted(folders[0].glob("*.dcm")))
    assert images.modality == "OP"
    assert images.study_instance_uid == truth.study_instance_uid
    for eye, photo in zip(truth.eyes, exam.eyes, strict=True):
        assert_valid_dicom(folders[0] / eye.file)
        image = images.image(eye.sop_instance_uid)
        assert image.laterality is not None
        assert image.laterality.value == eye.laterality
        assert np.array_equal(image.pixels.astype(np.uint8), photo.pixels)
        assert image.pixel_spacing_mm == pytest.approx((eye.pixel_spacing_mm,) * 2, rel=1e-4)
        assert eye.grade == photo.grade
        assert eye.lesion_counts == photo.lesion_counts
        masks = eye.masks()
        assert all(np.array_equal(masks[k], photo.masks[k]) for k in photo.masks)

"""Mammogram standardisation: flip to chest wall left, crop, resize, and the way back."""

import numpy as np
import pytest
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation

from cad_node.domain.image_sets import Laterality, PlanarImage
from cad_node.models.mammo.preprocess import (
    INPUT_SHAPE,
    ViewGeometry,
    chest_wall_on_left,
    standardise,
    view_geometry,
)
from cad_node.synth.mammo import MammoSpec, generate_mammo


@pytest.fixture(scope="module")
def study_views() -> list[tuple[PlanarImage, list[np.ndarray]]]:
    study = generate_mammo(MammoSpec(seed=14))  # a spiculated mass in the right breast
    return [
        (
            PlanarImage(
                sop_instance_uid=f"1.2.3.{i}",
                series_instance_uid="1.2.3",
                sop_class_uid=DigitalMammographyXRayImageStorageForPresentation,
                pixels=v.pixels.astype(np.float32),
                pixel_spacing_mm=(0.3, 0.3),
                laterality=v.laterality,
                view_position=v.view_position,
            ),
            list(v.lesion_masks),
        )
        for i, v in enumerate(study.views)
    ]


def test_the_chest_wall_ends_up_on_the_left(
    study_views: list[tuple[PlanarImage, list[np.ndarray]]],
) -> None:
    for image, _ in study_views:
        view = standardise(image)
        assert view.pixels.shape == INPUT_SHAPE
        assert view.geometry.flipped is (image.laterality is Laterality.RIGHT)
        left, right = view.pixels[:, :8].mean(), view.pixels[:, -8:].mean()
        assert left > right + 1.0
        assert abs(float(view.pixels.mean())) < 1.5  # normalised


def test_the_image_overrules_a_wrong_laterality(
    study_views: list[tuple[PlanarImage, list[np.ndarray]]],
) -> None:
    image, _ = study_views[0]  # a left breast: chest wall at column 0
    assert chest_wall_on_left(image.pixels, Laterality.RIGHT)
    assert not chest_wall_on_left(np.ascontiguousarray(image.pixels[:, ::-1]), Laterality.LEFT)
    flat = np.full((64, 48), 100.0, dtype=np.float32)  # no evidence: the laterality decides
    assert chest_wall_on_left(flat, Laterality.LEFT)
    assert not chest_wall_on_left(flat, Laterality.RIGHT)


def test_the_crop_holds_the_whole_breast(
    study_views: list[tuple[PlanarImage, list[np.ndarray]]],
) -> None:
    for image, _ in study_views:
        geometry = view_geometry(image.pixels, image.laterality)
        r0, r1, c0, c1 = geometry.box
        canonical = geometry.canonical(image.pixels)
        assert c0 == 0  # the breast touches the chest wall
        tissue = canonical > 400
        assert tissue[r0:r1, c0:c1].sum() == tissue.sum()
        assert c1 < image.shape[1]  # the background beyond the nipple is cut off


def test_points_map_to_the_input_and_back() -> None:
    geometry = ViewGeometry(source_shape=(512, 384), flipped=True, box=(40, 480, 0, 300))
    for row, column in [(40.0, 0.0), (250.5, 123.25), (479.0, 299.0)]:
        source = (row, 383 - column)  # flipped: canonical column c is source column 383 - c
        on_input = geometry.point_to_input(*source)
        assert geometry.point_to_source(*on_input) == pytest.approx(source)
    # the first input pixel covers 440/256 x 300/192 source pixels from the box's corner
    first = (40 - 0.5 + 0.5 * 440 / 256, 383 - (-0.5 + 0.5 * 300 / 192))
    assert geometry.point_to_source(0.0, 0.0) == pytest.approx(first)


def test_a_lesion_mask_survives_the_round_trip(
    study_views: list[tuple[PlanarImage, list[np.ndarray]]],
) -> None:
    checked = 0
    for image, masks in study_views:
        geometry = view_geometry(image.pixels, image.laterality)
        for mask in masks:
            on_input = geometry.to_input(mask.astype(np.float32))
            back = geometry.to_source(on_input) > 0.5
            dice = 2 * (back & mask).sum() / (back.sum() + mask.sum())
            assert dice > 0.9
            centre = np.argwhere(mask).mean(axis=0)
            input_centre = np.argwhere(on_input > 0.5).mean(axis=0)
            mapped = geometry.point_to_source(*input_centre)
            assert np.hypot(*(np.array(mapped) - centre)) < 2.0  # source pixels
            checked += 1
    assert checked == 2  # the mass on the right CC and MLO

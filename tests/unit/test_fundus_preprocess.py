"""Fundus preprocessing: FOV crop, OS mirroring, resize and their exact inverse."""

import numpy as np
import pytest

from cad_node.models.fundus.preprocess import (
    INPUT_CHANNELS,
    INPUT_SIZE,
    crop_geometry,
    field_of_view_mask,
    prepare,
    prepare_mask,
    to_source,
)
from cad_node.synth.fundus import draw_eye


def _disc_image(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    inside = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < radius**2
    image = np.zeros((*shape, 3), dtype=np.float32)
    image[inside] = (180.0, 80.0, 30.0)
    return image


def test_crop_is_the_square_around_the_field_of_view() -> None:
    image = _disc_image((300, 400), centre=(150, 210), radius=120)
    geometry = crop_geometry(field_of_view_mask(image), mirrored=False)
    assert geometry.side == pytest.approx(240, abs=3)
    assert geometry.row0 + geometry.side / 2 == pytest.approx(150, abs=2)
    assert geometry.col0 + geometry.side / 2 == pytest.approx(210, abs=2)


@pytest.mark.parametrize("mirrored", [False, True])
def test_coordinates_map_back_exactly(mirrored: bool) -> None:
    image = _disc_image((300, 400), centre=(150, 210), radius=120)
    geometry = crop_geometry(field_of_view_mask(image), mirrored=mirrored)
    for point in [(100.0, 150.0), (200.5, 260.25)]:
        assert geometry.to_source(*geometry.to_input(*point)) == pytest.approx(point)
    # the FOV centre lands in the middle of the input; a nasal point of OS lands on the right
    assert geometry.to_input(150, 210) == pytest.approx((INPUT_SIZE / 2,) * 2, abs=2)
    right_of_centre = geometry.to_input(150, 300)[1] > INPUT_SIZE / 2
    assert right_of_centre is not mirrored


@pytest.mark.parametrize("mirrored", [False, True])
def test_mask_round_trip_keeps_position_and_shape(mirrored: bool) -> None:
    # FOV partly outside the image (cut at the top): the crop pads with black
    image = _disc_image((360, 420), centre=(150, 230), radius=170)
    geometry = crop_geometry(field_of_view_mask(image), mirrored=mirrored)
    lesion = np.zeros((360, 420), dtype=np.bool_)
    lesion[200:216, 120:140] = True
    on_input = prepare_mask(lesion, geometry)
    centre_in = np.argwhere(on_input > 0.5).mean(axis=0) + 0.5
    expected = geometry.to_input(208, 130)
    assert tuple(centre_in) == pytest.approx(expected, abs=1.0)
    back = to_source(on_input[None], geometry)[0] > 0.5
    dice = 2 * (back & lesion).sum() / (back.sum() + lesion.sum())
    assert dice > 0.9
    assert np.argwhere(back).mean(axis=0) == pytest.approx((207.5, 129.5), abs=1.0)


def test_prepared_input_mirrors_the_left_eye_onto_the_right_eye_anatomy() -> None:
    right = draw_eye(384, 0, "R", np.random.default_rng(4))
    left = draw_eye(384, 0, "L", np.random.default_rng(4))  # the same eye, mirrored
    a = prepare(right.pixels.astype(np.float32), mirror=False)
    b = prepare(left.pixels.astype(np.float32), mirror=True)
    assert a.image.shape == (INPUT_CHANNELS, INPUT_SIZE, INPUT_SIZE)
    assert np.abs(a.image - b.image).mean() < 0.05
    assert a.fov[INPUT_SIZE // 2, INPUT_SIZE // 2]
    assert not a.fov[0, 0]
    assert (a.image[:, ~a.fov] == 0).all()


def test_colour_normalisation_removes_the_camera_gain() -> None:
    photo = draw_eye(384, 2, "R", np.random.default_rng(9)).pixels.astype(np.float32)
    cast = photo * np.array([0.8, 1.15, 0.9], dtype=np.float32)  # another camera's white balance
    a, b = prepare(photo, mirror=False), prepare(cast, mirror=False)
    inside = a.fov & b.fov
    for channel in range(INPUT_CHANNELS):
        correlation = np.corrcoef(a.image[channel][inside], b.image[channel][inside])[0, 1]
        assert correlation > 0.99
        assert np.abs(a.image[channel][inside] - b.image[channel][inside]).mean() < 0.05

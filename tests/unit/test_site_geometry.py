"""Site-model geometry: DICOM LPS volumes as MONAI RAS arrays, and results back on the source."""

import numpy as np
import pytest
import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms.spatial.array import Orientation

from cad_node.domain.imaging import ImageVolume, slice_affine
from cad_node.domain.results import SourceImage
from cad_node.models.site import geometry
from tests.bundles import orientation_cosines


def _volume(
    orientation: str = "axial",
    head_first: bool = True,
    shape: tuple[int, int, int] = (6, 7, 8),
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.8),
    origin: tuple[float, float, float] = (-100.0, -150.0, 50.0),
) -> ImageVolume:
    cosines = orientation_cosines(orientation, head_first)
    normal = np.cross(cosines[:3], cosines[3:])
    affine = slice_affine(np.array(origin), cosines, normal, spacing)
    return ImageVolume(
        voxels=np.zeros(shape, dtype=np.float32),
        spacing_mm=spacing,
        affine=affine,
        sop_instance_uids=tuple(f"2.25.9.{k}" for k in range(shape[0])),
        series_instance_uid="2.25.9",
        frame_of_reference_uid="2.25.9.0",
    )


ORIENTATIONS = [
    (name, head_first)
    for name in ("axial", "coronal", "sagittal", "oblique")
    for head_first in (True, False)
]


def test_a_hand_computed_point_of_an_axial_series() -> None:
    volume = _volume()
    # slice 2, row 3, column 1 of an axial head-first series at IPP (-100, -150, 50)
    lps = volume.index_to_patient((2.0, 3.0, 1.0))
    assert lps == pytest.approx((-100.0 + 0.8, -150.0 + 3 * 0.7, 50.0 + 2 * 2.5))
    ras = geometry.apply_affine(geometry.ras_affine(volume.affine), [1.0, 3.0, 2.0])[0]
    assert ras == pytest.approx((100.0 - 0.8, 150.0 - 3 * 0.7, 55.0))


@pytest.mark.parametrize(("orientation", "head_first"), ORIENTATIONS)
def test_a_point_is_the_same_through_lps_and_ras(orientation: str, head_first: bool) -> None:
    volume = _volume(orientation, head_first)
    ras = geometry.ras_affine(volume.affine)
    for k, r, c in [(0, 0, 0), (5, 6, 7), (2.5, 1.25, 3.75)]:
        through_ras = geometry.ras_to_lps(geometry.apply_affine(ras, [c, r, k]))[0]
        assert through_ras == pytest.approx(volume.index_to_patient((k, r, c)))
    assert geometry.volume_affine(ras) == pytest.approx(volume.affine)


@pytest.mark.parametrize(("orientation", "head_first"), ORIENTATIONS)
def test_monai_places_a_voxel_where_dicom_does(orientation: str, head_first: bool) -> None:
    """A hot voxel, reoriented to RAS by MONAI from the reader output, is at its DICOM place."""
    volume = _volume(orientation, head_first)
    volume.voxels[4, 2, 5] = 1.0
    data, meta = geometry.volume_reader_output(volume)
    image = MetaTensor(torch.from_numpy(data)[None], meta=meta)
    oriented = Orientation(axcodes="RAS")(image)
    assert isinstance(oriented, MetaTensor)
    hot = np.argwhere(oriented[0].numpy() == 1.0)[0]
    at = geometry.apply_affine(oriented.affine.numpy(), hot)[0]
    assert geometry.ras_to_lps(at) == pytest.approx(volume.index_to_patient((4, 2, 5)))


def test_the_reader_output_is_column_row_slice_with_the_series_uid() -> None:
    volume = _volume()
    volume.voxels[1, 2, 3] = 7.0
    data, meta = geometry.volume_reader_output(volume)
    assert data.shape == (8, 7, 6)
    assert data[3, 2, 1] == 7.0
    assert meta["filename_or_obj"] == "2.25.9"
    assert meta["space"] == "RAS"
    assert list(meta["spatial_shape"]) == [8, 7, 6]


def test_planar_images_read_as_pil_reader_gives_them() -> None:
    grey = np.arange(12, dtype=np.float32).reshape(3, 4)
    image = SourceImage("2.25.1", "2.25.2", None, grey)
    data, meta = geometry.image_reader_output(image, None)
    assert data.shape == (4, 3)
    assert data[1, 2] == grey[2, 1]
    assert np.isnan(meta["original_channel_dim"])
    rgb, _ = geometry.image_reader_output(image, 3)
    assert rgb.shape == (4, 3, 3)
    assert np.array_equal(rgb[..., 2], data)
    colour = SourceImage("2.25.1", "2.25.2", None, np.zeros((3, 4, 3), dtype=np.float32))
    data, meta = geometry.image_reader_output(colour, 3)
    assert data.shape == (4, 3, 3)
    assert meta["original_channel_dim"] == -1


def test_labels_on_the_same_grid_are_transposed() -> None:
    volume = _volume("oblique", head_first=False)
    labels = np.random.default_rng(0).integers(0, 3, volume.shape[::-1])
    on_source = geometry.labels_on_source(labels, geometry.ras_affine(volume.affine), volume)
    assert np.array_equal(on_source, labels.transpose(2, 1, 0))


def test_labels_on_another_grid_are_resampled_onto_the_source() -> None:
    """The same labels on a flipped, twice finer grid come back exactly."""
    volume = _volume("coronal", head_first=False)
    source = np.random.default_rng(1).integers(0, 3, volume.shape)
    fine = np.repeat(np.repeat(np.repeat(source.transpose(2, 1, 0), 2, 0), 2, 1), 2, 2)
    fine = fine[::-1]
    half = np.diag([0.5, 0.5, 0.5, 1.0])
    half[:3, 3] = -0.25  # voxel centres of a twice finer grid over the same voxels
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, fine.shape[0] - 1
    affine = geometry.ras_affine(volume.affine) @ half @ flip
    assert np.array_equal(geometry.labels_on_source(fine, affine, volume), source)


def test_world_boxes_in_ras_and_lps() -> None:
    corners = np.array([[10.0, -20.0, 5.0, 14.0, -12.0, 11.0]])
    ((centre, extent),) = geometry.world_boxes(corners, "LPS")
    assert centre == pytest.approx((12.0, -16.0, 8.0))
    assert extent == pytest.approx((4.0, 8.0, 6.0))
    ((centre, extent),) = geometry.world_boxes(corners, "RAS")
    assert centre == pytest.approx((-12.0, 16.0, 8.0))
    assert extent == pytest.approx((4.0, 8.0, 6.0))
    with pytest.raises(ValueError, match="world space"):
        geometry.world_boxes(corners, "XYZ")


def test_index_boxes_go_through_the_image_affine() -> None:
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 30.0)
    ((centre, extent),) = geometry.index_boxes(np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0]]), affine)
    # RAS centre (-10 + 3, 20 + 1.5, 30 + 1) is LPS (7, -21.5, 31)
    assert centre == pytest.approx((7.0, -21.5, 31.0))
    assert extent == pytest.approx((6.0, 3.0, 2.0))


def test_an_ellipsoid_fills_its_box_on_the_grid() -> None:
    volume = _volume(shape=(12, 40, 40), spacing=(2.0, 1.0, 1.0))
    centre = volume.index_to_patient((6.0, 20.0, 20.0))
    placed = geometry.ellipsoid_mask(volume, centre, (10.0, 6.0, 8.0))
    assert placed is not None
    (k0, r0, c0), mask = placed
    assert mask[6 - k0, 20 - r0, 20 - c0]
    k, r, c = np.nonzero(mask)
    assert c.max() - c.min() + 1 == 11  # x: 10 mm over 1 mm columns, both ends on the surface
    assert r.max() - r.min() + 1 == 7  # y: 6 mm over 1 mm rows
    assert k.max() - k.min() + 1 == 5  # z: 8 mm over 2 mm slices


def test_a_box_smaller_than_a_voxel_keeps_its_nearest_voxel() -> None:
    volume = _volume(shape=(12, 40, 40), spacing=(2.0, 1.0, 1.0))
    centre = volume.index_to_patient((6.2, 20.3, 19.8))
    placed = geometry.ellipsoid_mask(volume, centre, (0.1, 0.1, 0.1))
    assert placed is not None
    offset, mask = placed
    assert int(mask.sum()) == 1
    assert tuple(int(v) for v in np.argwhere(mask)[0] + offset) == (6, 20, 20)


def test_a_box_off_the_volume_has_no_mask() -> None:
    volume = _volume()
    far = volume.index_to_patient((-5.0, 3.0, 3.0))
    assert geometry.ellipsoid_mask(volume, far, (4.0, 4.0, 4.0)) is None

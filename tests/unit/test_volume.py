"""load_volume: sorting along the slice normal, HU, spacing, affine, and each invalid series."""

import random
from copy import deepcopy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, XRayRadiationDoseSRStorage

from cad_node.errors import InvalidSeriesError
from cad_node.imaging.volume import load_volume
from tests.synthetic import SyntheticSeries, write_ct_series


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_ct_series(
        tmp_path_factory.mktemp("ct"),
        seed=31,
        rows=64,
        slices=12,
        slice_thickness_mm=5.0,
        nodule_count=1,
    )


def _datasets(series: SyntheticSeries) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in series.paths]


def test_shuffled_slices_sort_along_the_normal(series: SyntheticSeries) -> None:
    paths = list(series.paths)
    random.Random(4).shuffle(paths)
    volume = load_volume(paths)
    assert volume.voxels.dtype == np.float32
    assert np.array_equal(volume.voxels, series.hu.astype(np.float32))
    assert volume.sop_instance_uids == series.sop_instance_uids
    assert volume.spacing_mm == pytest.approx((5.0, 350 / 64, 350 / 64))
    assert volume.series_instance_uid == series.series_instance_uid
    assert volume.frame_of_reference_uid == series.frame_of_reference_uid


def test_affine_maps_index_to_image_position(series: SyntheticSeries) -> None:
    volume = load_volume(series.paths)
    last = pydicom.dcmread(series.paths[0])  # InstanceNumber 1: the highest slice
    k = volume.shape[0] - 1
    assert volume.index_to_patient((k, 0, 0)) == pytest.approx(
        [float(v) for v in last.ImagePositionPatient], abs=1e-3
    )
    x, _, _ = volume.index_to_patient((k, 0, 3))
    assert x == pytest.approx(float(last.ImagePositionPatient[0]) + 3 * 350 / 64, abs=1e-3)
    nodule = series.nodules[0]
    assert volume.index_to_patient(nodule.centre_index) == pytest.approx(
        nodule.centre_patient_mm, abs=1e-2
    )


def test_reversed_normal_still_sorts(series: SyntheticSeries) -> None:
    # rows along -y flips the normal: the order must follow it, not z
    datasets = _datasets(series)
    for ds in datasets:
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
    volume = load_volume(datasets)
    assert volume.sop_instance_uids == tuple(reversed(series.sop_instance_uids))
    second = pydicom.dcmread(series.paths[1])  # second highest: k = 1 now
    assert volume.index_to_patient((1, 0, 0)) == pytest.approx(
        [float(v) for v in second.ImagePositionPatient], abs=1e-3
    )


def test_compressed_slices_decode(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    for ds in datasets:
        ds.compress(RLELossless)
    volume = load_volume(datasets)
    assert np.array_equal(volume.voxels, series.hu.astype(np.float32))


def test_one_slice_is_refused(series: SyntheticSeries) -> None:
    with pytest.raises(InvalidSeriesError, match="at least 2 slices"):
        load_volume(series.paths[:1])


def test_a_gap_names_the_slices_missing(series: SyntheticSeries) -> None:
    paths = list(series.paths)
    del paths[5]
    del paths[7:9]
    with pytest.raises(InvalidSeriesError, match=r"3 slice\(s\) missing in 2 gap\(s\)"):
        load_volume(paths)


def test_uneven_spacing_is_refused(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    position = datasets[4].ImagePositionPatient
    datasets[4].ImagePositionPatient = [position[0], position[1], float(position[2]) + 1.5]
    with pytest.raises(InvalidSeriesError, match=r"uneven gaps from 3\.500 to 6\.500 mm"):
        load_volume(datasets)


def test_a_gantry_tilt_is_refused(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    for ds in datasets:  # 12 degrees: y moves with z, the image plane stays axial
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + z * np.tan(np.radians(12)), z]
    with pytest.raises(InvalidSeriesError, match=r"gantry tilt.*about 12.0 degrees"):
        load_volume(datasets)


def test_positions_rounded_to_the_hundredth_are_no_tilt(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    for k, ds in enumerate(datasets):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + 0.01 * (k % 2), y - 0.01 * (k % 3 == 0), z]
    assert load_volume(datasets).sop_instance_uids == series.sop_instance_uids


def _coronal_localizer(series: SyntheticSeries) -> Dataset:
    scout = _datasets(series)[0]
    scout.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    return scout


def test_a_localizer_in_the_series_is_left_out(series: SyntheticSeries) -> None:
    datasets = [_coronal_localizer(series), *_datasets(series)]

    volume = load_volume(datasets)

    assert volume.sop_instance_uids == series.sop_instance_uids
    assert np.array_equal(volume.voxels, series.hu.astype(np.float32))


def test_an_image_of_another_orientation_is_left_out_even_unmarked(
    series: SyntheticSeries,
) -> None:
    scout = _coronal_localizer(series)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # mislabelled, as some scanners do

    volume = load_volume([*_datasets(series), scout])

    assert volume.sop_instance_uids == series.sop_instance_uids


def test_a_slice_of_another_orientation_leaves_a_gap_that_is_refused(
    series: SyntheticSeries,
) -> None:
    datasets = _datasets(series)
    datasets[3].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(InvalidSeriesError, match="inconsistent slice spacing"):
        load_volume(datasets)


def test_two_stacks_of_one_size_are_refused(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    for ds in datasets[6:]:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(InvalidSeriesError, match="2 stacks"):
        load_volume(datasets)


def test_orientations_apart_by_less_than_the_grouping_are_refused(
    series: SyntheticSeries,
) -> None:
    datasets = _datasets(series)
    datasets[3].ImageOrientationPatient = [1, 0.004, 0, 0, 1, 0]
    with pytest.raises(InvalidSeriesError, match="mixed ImageOrientationPatient"):
        load_volume(datasets)


def test_missing_pixel_spacing_is_refused(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    del datasets[2].PixelSpacing
    with pytest.raises(InvalidSeriesError, match="PixelSpacing"):
        load_volume(datasets)


def test_a_slice_of_another_matrix_leaves_a_gap_that_is_refused(
    series: SyntheticSeries, tmp_path: Path
) -> None:
    other = write_ct_series(
        tmp_path, seed=31, rows=32, slices=12, slice_thickness_mm=5.0, nodule_count=1
    )
    datasets = _datasets(series)
    datasets[4] = pydicom.dcmread(other.paths[4])  # left out of the stack: a gap remains
    with pytest.raises(InvalidSeriesError, match="inconsistent slice spacing"):
        load_volume(datasets)


def test_duplicate_positions_are_refused(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    datasets[6].ImagePositionPatient = datasets[7].ImagePositionPatient
    with pytest.raises(InvalidSeriesError, match="same position"):
        load_volume(datasets)


def test_slices_of_two_series_are_refused(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    datasets[0].SeriesInstanceUID = "1.2.3"
    with pytest.raises(InvalidSeriesError, match="2 series"):
        load_volume(datasets)


def test_unreadable_file_is_an_invalid_series(series: SyntheticSeries, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(InvalidSeriesError, match="cannot read"):
        load_volume([*series.paths[:3], junk])


def _copy(ds: Dataset, number: int) -> Dataset:
    copy = deepcopy(ds)
    copy.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.88.{number}"
    copy.InstanceNumber = 100 + number
    return copy


def test_a_secondary_capture_and_a_dose_report_are_left_out(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    capture = _copy(datasets[0], 1)
    capture.SOPClassUID = SecondaryCaptureImageStorage
    capture.ImagePositionPatient = [0, 0, 999]
    report = Dataset()
    report.SOPClassUID = XRayRadiationDoseSRStorage
    report.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.88.2"
    report.SeriesInstanceUID = series.series_instance_uid

    volume = load_volume([capture, report, *datasets])

    assert volume.sop_instance_uids == series.sop_instance_uids


def test_exact_duplicates_are_read_once(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    resent = _copy(datasets[3], 1)  # the same image under a new SOP Instance UID
    recoded = _copy(datasets[5], 2)
    recoded.compress(RLELossless)  # the same pixels in another transfer syntax

    volume = load_volume([resent, recoded, *datasets, datasets[7]])

    assert volume.sop_instance_uids == series.sop_instance_uids
    assert np.array_equal(volume.voxels, series.hu.astype(np.float32))


def test_other_pixels_at_one_position_are_refused(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    other = _copy(datasets[3], 1)
    other.RescaleIntercept = -1000
    with pytest.raises(InvalidSeriesError, match="2 or more slices share the same position"):
        load_volume([*datasets, other])


def _reconstruction(datasets: list[Dataset], kernel: str, first: int) -> list[Dataset]:
    copies = [_copy(ds, first + k) for k, ds in enumerate(datasets)]
    for ds in copies:
        ds.ConvolutionKernel = kernel
    return copies


def test_the_largest_reconstruction_is_read(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    for ds in datasets:
        ds.ConvolutionKernel = "B30f"
    lung = _reconstruction(datasets[2:10], "B70f", 1)
    for ds in lung:
        ds.RescaleIntercept = -1000  # other pixels: no duplicates

    volume = load_volume([*lung, *datasets])

    assert volume.sop_instance_uids == series.sop_instance_uids


def test_two_reconstructions_of_one_size_are_refused(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    lung = _reconstruction(datasets, "B70f", 1)
    for ds in lung:
        ds.RescaleIntercept = -1000
    with pytest.raises(
        InvalidSeriesError,
        match=r"2 reconstructions .* by ConvolutionKernel B70f, STANDARD, the largest two of 12",
    ):
        load_volume([*datasets, *lung])


def test_a_second_phase_is_told_apart_by_acquisition_number(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    for ds in datasets:
        ds.AcquisitionNumber = 1
    arterial = [_copy(ds, k) for k, ds in enumerate(datasets[:5])]
    for ds in arterial:
        ds.AcquisitionNumber = 2
        ds.RescaleIntercept = -1000
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 1.0]  # positions of its own, inside the stack

    volume = load_volume([*arterial, *datasets])

    assert volume.sop_instance_uids == series.sop_instance_uids


def test_acquisitions_one_after_the_other_are_one_stack(series: SyntheticSeries) -> None:
    datasets = _datasets(series)
    for k, ds in enumerate(datasets):
        ds.AcquisitionNumber = 1 + k // 4  # axial (sequential) mode: 4 slices per rotation

    volume = load_volume(datasets)

    assert volume.sop_instance_uids == series.sop_instance_uids

"""The synthetic chest CT generator: HU-true anatomy, nodule ground truth, a valid DICOM series."""

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cad_node.synth.ct import (
    CtPhantom,
    NoduleType,
    PhantomSpec,
    generate_ct,
    load_ground_truth,
    write_series,
)
from cad_node.synth.dataset import write_dataset
from tests.dicom_validation import assert_valid_dicom
from tests.synthetic import write_ct_series

SMALL = PhantomSpec(
    rows=128,
    slices=40,
    slice_thickness_mm=2.5,
    seed=11,
    nodule_count=3,
    diameter_range_mm=(8.0, 20.0),
)


@pytest.fixture(scope="module")
def phantom() -> CtPhantom:
    return generate_ct(SMALL)


def test_anatomy_has_true_hounsfield_units(phantom: CtPhantom) -> None:
    hu = phantom.hu
    assert hu.shape == (40, 128, 128)
    assert np.median(hu[:, :3, :3]) == pytest.approx(-1000, abs=60)  # air outside the body
    lung = hu[phantom.lungs & (phantom.labels == 0)]
    assert -900 < np.median(lung) < -780
    assert hu.max() > 400  # bone
    body_centre = hu[:, 64, 64]
    assert np.median(body_centre) > -200  # mediastinum, not air


def test_nodules_match_their_ground_truth(phantom: CtPhantom) -> None:
    assert len(phantom.nodules) == 3
    voxel_mm3 = float(np.prod(phantom.spacing_mm))
    for nodule in phantom.nodules:
        count = int((phantom.labels == nodule.label).sum())
        assert nodule.volume_mm3 == pytest.approx(count * voxel_mm3)
        assert nodule.equivalent_diameter_mm == pytest.approx(nodule.diameter_mm, rel=0.25)
        k, r, c = (round(v) for v in nodule.centre_index)
        assert phantom.labels[k, r, c] == nodule.label
        x, y, z = phantom.index_to_patient(nodule.centre_index)
        assert (x, y, z) == pytest.approx(nodule.centre_patient_mm, abs=1e-6)
        centre_hu = float(np.median(phantom.hu[k, r - 1 : r + 2, c - 1 : c + 2]))
        expected = -550 if nodule.nodule_type is NoduleType.GROUND_GLASS else 30
        assert centre_hu == pytest.approx(expected, abs=150)


def test_same_seed_same_volume_other_seed_other_volume() -> None:
    spec = PhantomSpec(rows=64, slices=16, slice_thickness_mm=5.0, seed=3, nodule_count=1)
    first, again = generate_ct(spec), generate_ct(spec)
    assert np.array_equal(first.hu, again.hu)
    other = generate_ct(PhantomSpec(rows=64, slices=16, slice_thickness_mm=5.0, seed=4))
    assert not np.array_equal(first.hu, other.hu)


def test_some_scans_have_no_nodule() -> None:
    counts = [
        len(generate_ct(PhantomSpec(rows=48, slices=12, slice_thickness_mm=6.0, seed=s)).nodules)
        for s in range(12)
    ]
    assert 0 in counts
    assert max(counts) > 0


def test_written_series_is_valid_ct_and_round_trips(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", seed=12, images_in_acquisition=True)
    assert len(series.paths) == 48
    assert_valid_dicom(series.paths[0])
    ds = pydicom.dcmread(series.paths[0])
    assert ds.Modality == "CT"
    assert ds.BodyPartExamined == "CHEST"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.ImagesInAcquisition == 48
    assert ds.PatientName == "Synthetic^Phantom"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.InstanceNumber == 1
    k = len(series.paths) - 1  # InstanceNumber 1 is the most superior slice
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert np.array_equal(hu, series.hu[k])
    assert ds.SOPInstanceUID == series.sop_instance_uids[k]


def test_uids_derive_from_the_seed(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path / "a", seed=21, slices=8, nodule_count=0)
    b = write_ct_series(tmp_path / "b", seed=21, slices=8, nodule_count=0)
    c = write_ct_series(tmp_path / "c", seed=22, slices=8, nodule_count=0)
    assert a.series_instance_uid == b.series_instance_uid != c.series_instance_uid
    assert a.sop_instance_uids == b.sop_instance_uids
    assert all(len(uid) <= 64 for uid in a.sop_instance_uids)


def test_ground_truth_json_and_label_mask(tmp_path: Path) -> None:
    phantom = generate_ct(SMALL)
    write_series(phantom, tmp_path)
    data = json.loads((tmp_path / "ground_truth.json").read_text())
    assert len(data["nodules"]) == 3
    truth = load_ground_truth(tmp_path)
    assert truth.nodules == phantom.nodules
    assert np.array_equal(truth.labels(), phantom.labels)


def test_full_size_slices_are_half_a_megabyte(tmp_path: Path) -> None:
    spec = PhantomSpec(rows=512, slices=3, seed=5, nodule_count=0)
    paths = write_series(generate_ct(spec), tmp_path)
    size = paths[0].stat().st_size
    assert 512 * 512 * 2 < size < 600_000
    assert float(pydicom.dcmread(paths[0]).PixelSpacing[0]) * 512 == pytest.approx(350, abs=1)


def test_dataset_varies_matrix_and_thickness(tmp_path: Path) -> None:
    folders = write_dataset(tmp_path, 2, 40, rows=64, slices=10)
    assert [f.name for f in folders] == ["ct_000040", "ct_000041"]
    assert all((f / "ground_truth.json").is_file() for f in folders)
    assert math.isclose(len(list(folders[0].glob("*.dcm"))), 10)

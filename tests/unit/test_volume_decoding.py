"""load_volume leaves no decoded pixels behind on the data sets it was given."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from cad_node.imaging.volume import load_volume
from tests.synthetic import SyntheticSeries, write_ct_series


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_ct_series(tmp_path_factory.mktemp("ct"), seed=5, rows=64, slices=10)


def _read(paths: tuple[Path, ...]) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def test_decoded_slices_are_not_kept_on_the_data_sets(series: SyntheticSeries) -> None:
    datasets = _read(series.paths)

    volume = load_volume(datasets)

    assert np.array_equal(volume.voxels, series.hu.astype(np.float32))
    assert all(ds._pixel_array is None for ds in datasets)
    assert all("PixelData" in ds for ds in datasets)


def test_a_copy_the_caller_decoded_stays(series: SyntheticSeries) -> None:
    datasets = _read(series.paths)
    decoded = datasets[3].pixel_array

    volume = load_volume(datasets)

    assert datasets[3]._pixel_array is decoded
    assert np.array_equal(volume.voxels, series.hu.astype(np.float32))

"""IsolatedDecoder: series loads in a bounded child process (time, memory, crashes)."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cad_node.domain.image_sets import ImageSet
from cad_node.errors import CadNodeError, InvalidSeriesError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.isolation import DecodingAbortedError, DecodingLimits, IsolatedDecoder
from cad_node.imaging.volume import load_volume
from cad_node.synth.dicom_planar import StudyInfo, write_mammo_study
from tests.synthetic import SyntheticSeries, write_ct_series, write_frame_bombs
from tests.unit import isolation_children as children

MEMORY_BYTES = 768 * 2**20
"""Far above what the child needs to decode these small series, far below a frame bomb."""


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    folder = tmp_path_factory.mktemp("ct")
    return write_ct_series(folder, seed=5, rows=64, slices=8, nodule_count=1)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedDecoder]:
    """One decoder for the module (as the worker keeps one): its restarts are under test."""
    limits = DecodingLimits(timeout_seconds=20.0, memory_bytes=MEMORY_BYTES)
    with IsolatedDecoder(limits, tmp_path_factory.mktemp("scratch")) as decoder:
        yield decoder


def _mammogram_views(seed: int) -> dict[tuple[str, str], npt.NDArray[np.uint16]]:
    rng = np.random.default_rng(seed)
    views = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
    return {view: rng.integers(0, 4096, size=(40, 32)).astype(np.uint16) for view in views}


def test_a_volume_decodes_as_in_process(decoder: IsolatedDecoder, series: SyntheticSeries) -> None:
    isolated = decoder.load_volume(series.paths)
    in_process = load_volume(series.paths)
    assert np.array_equal(isolated.voxels, in_process.voxels)
    assert isolated.voxels.dtype == np.float32
    assert isolated.voxels.flags.writeable
    assert np.array_equal(isolated.affine, in_process.affine)
    assert isolated.sop_instance_uids == in_process.sop_instance_uids
    assert isolated.spacing_mm == in_process.spacing_mm
    assert list(decoder.scratch_dir.iterdir()) == []


def test_an_image_set_decodes_as_in_process(decoder: IsolatedDecoder, tmp_path: Path) -> None:
    study = StudyInfo.from_seed(7, "mammo")
    paths = write_mammo_study(tmp_path, study, _mammogram_views(7), pixel_spacing_mm=0.07)
    isolated: ImageSet = decoder.load_image_set(paths)
    in_process = load_image_set(paths)
    assert [i.sop_instance_uid for i in isolated.images] == [
        i.sop_instance_uid for i in in_process.images
    ]
    for mine, theirs in zip(isolated.images, in_process.images, strict=True):
        assert np.array_equal(mine.pixels, theirs.pixels)


def test_the_decoder_process_does_not_import_torch(
    decoder: IsolatedDecoder, series: SyntheticSeries
) -> None:
    decoder.load_volume(series.paths)
    assert decoder.call(children.imported, "pydicom")
    assert not decoder.call(children.imported, "torch")


def test_a_decode_past_the_timeout_is_killed_and_the_next_one_runs(tmp_path: Path) -> None:
    limits = DecodingLimits(timeout_seconds=0.5, memory_bytes=MEMORY_BYTES)
    with IsolatedDecoder(limits, tmp_path) as decoder:
        first = decoder.call(children.process_id)
        with pytest.raises(DecodingAbortedError, match=r"^decoding timed out after 0\.5 s$"):
            decoder.call(children.sleep, 60)
        assert decoder.call(children.sleep, 0) == "woke"
        assert decoder.call(children.process_id) != first


def test_an_allocation_past_the_memory_limit_aborts(decoder: IsolatedDecoder) -> None:
    with pytest.raises(
        DecodingAbortedError, match=r"^decoding ran out of memory \(limit 768 MB\)$"
    ):
        decoder.call(children.allocate, 2 * MEMORY_BYTES)
    assert decoder.call(children.allocate, 2**20) == 2**20


def test_a_frame_bomb_is_aborted_not_allocated(
    decoder: IsolatedDecoder, series: SyntheticSeries, tmp_path: Path
) -> None:
    with pytest.raises(DecodingAbortedError, match="ran out of memory"):
        decoder.load_volume(write_frame_bombs(series.paths, tmp_path))
    assert decoder.load_volume(series.paths).voxels.shape == (8, 64, 64)


@pytest.mark.parametrize(
    ("signal_number", "reason"),
    [
        (signal.SIGSEGV, r"^decoder process crashed \(SIGSEGV\)$"),
        (signal.SIGKILL, r"^decoder process killed \(SIGKILL; out of memory\?\)$"),
    ],
)
def test_a_dead_decoder_is_reported_and_replaced(
    decoder: IsolatedDecoder, signal_number: int, reason: str
) -> None:
    with pytest.raises(DecodingAbortedError, match=reason):
        decoder.call(children.die_by, signal_number)
    assert decoder.call(children.sleep, 0) == "woke"


def test_a_decoder_that_died_while_idle_is_replaced_without_blame(
    decoder: IsolatedDecoder, series: SyntheticSeries
) -> None:
    os.kill(decoder.call(children.process_id), signal.SIGKILL)
    time.sleep(0.2)  # the kernel closes its end of the pipe
    assert decoder.load_volume(series.paths).voxels.shape == (8, 64, 64)


def test_a_malformed_series_is_refused_as_in_process(
    decoder: IsolatedDecoder, series: SyntheticSeries
) -> None:
    one_slice = series.paths[:1]
    with pytest.raises(InvalidSeriesError) as in_process:
        load_volume(one_slice)
    with pytest.raises(InvalidSeriesError) as isolated:
        decoder.load_volume(one_slice)
    assert str(isolated.value) == str(in_process.value)


def test_another_error_names_its_class_only(decoder: IsolatedDecoder) -> None:
    with pytest.raises(CadNodeError) as raised:
        decoder.call(children.fail)
    assert not isinstance(raised.value, DecodingAbortedError)
    assert str(raised.value) == "decoding failed: RuntimeError"


@pytest.mark.parametrize(("timeout", "memory"), [(0.0, 1), (1.0, 0)])
def test_limits_must_be_positive(timeout: float, memory: int) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        DecodingLimits(timeout_seconds=timeout, memory_bytes=memory)

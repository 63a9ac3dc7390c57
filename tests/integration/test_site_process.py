"""A site model in its warm child process: a model that raises, misreports, hangs or is killed
fails that one job with its own message, and the next job runs in a fresh child (issue 16,
items 2 and 5).

Real child processes throughout. The runners of tests/site_runners.py are told what to do by
each grid; the bundle cases run tiny MONAI bundles whose ``scripts/`` raise, misshape or sleep,
through the node's own bundle runner.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cad_node.domain.results import ResultGrid
from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.models.base import InputKind, reports_directly
from cad_node.models.manifest import MANIFEST_NAME, Manifest, Task, WeightsFormat
from cad_node.models.site.folder import hash_files
from cad_node.models.site.process import SiteModel
from tests.site_runners import (
    ANSWER,
    BRIGHT,
    HANG,
    LOAD_ERROR,
    MARKERS,
    MISFIT,
    RAISE,
    SPOT,
    UNLOADABLE,
    image_grid_of,
    scripted_runner,
    volume_grid_of,
    write_scripted_bundle,
)

pytestmark = pytest.mark.slow

TIMEOUT_SECONDS = 2.0
EXIT_SECONDS = 10.0
"""How long a child may take to exit once its parent or its pipe is gone."""
SPOT_LABELS = {
    "1": {
        "label": "spot",
        "code": "49755003",
        "scheme": "SCT",
        "meaning": "Morphologically abnormal structure",
        "category": {
            "code": "49755003",
            "scheme": "SCT",
            "meaning": "Morphologically abnormal structure",
        },
    }
}


def write_site_model(
    folder: Path,
    name: str,
    *,
    input_kind: InputKind = InputKind.VOLUME,
    timeout_seconds: float = TIMEOUT_SECONDS,
    task: Task = Task.SEGMENTATION,
    labels: dict[str, dict[str, Any]] | None = None,
) -> tuple[Path, Manifest]:
    """A site model folder: whatever ``folder`` already holds, a weights file if it has none,
    and a manifest hashing every file."""
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(b"not really weights")
    files = hash_files(folder)
    manifest = Manifest(
        name=name,
        version="1",
        family="site",
        modality="CT" if input_kind is InputKind.VOLUME else "MG",
        weights_file="models/model.pt",
        sha256=files["models/model.pt"],
        operating_threshold=0.5,
        intended_use="tests",
        format=WeightsFormat.MONAI_BUNDLE,
        task=task,
        labels=SPOT_LABELS if labels is None else labels,
        files=files,
        input_kind=input_kind.value,
        timeout_seconds=timeout_seconds,
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder, manifest


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[SiteModel]:
    """A loaded site model whose runner does what each grid says."""
    folder, manifest = write_site_model(tmp_path / "scripted", "scripted")
    with SiteModel(folder, manifest, scripted_runner) as model:
        model.load("cpu")
        yield model


def assert_gone(pid: int) -> None:
    """The process ``pid`` has exited (a zombie no one reaped counts: it runs no more)."""
    deadline = time.monotonic() + EXIT_SECONDS
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z", "X"):
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still runs ({_state(pid)})")


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def assert_answers(model: SiteModel, seed: int = 5) -> None:
    """The model answers a volume grid: its finding is the brightest voxel, on this grid."""
    grid = volume_grid_of(ANSWER, seed=seed)
    report = model.report(grid)
    assert grid.volume is not None
    (finding,) = report.findings
    brightest = np.unravel_index(int(np.argmax(grid.volume.voxels)), grid.volume.shape)
    assert finding.centre == tuple(float(i) for i in brightest)


# -- the warm child answers ---------------------------------------------------------------------


def test_a_site_model_is_a_reporting_model_of_its_manifest(scripted: SiteModel) -> None:
    assert reports_directly(scripted)
    assert scripted.identity == scripted.manifest.identity()
    assert (scripted.modalities, scripted.input_kind) == (("CT",), InputKind.VOLUME)


def test_the_volume_arrives_whole_and_the_report_lies_on_the_parents_grid(
    scripted: SiteModel,
) -> None:
    grid = volume_grid_of(ANSWER, seed=3)
    pid = scripted.pid

    report = scripted.report(grid)

    assert report.grid is grid
    assert report.model == scripted.identity
    (finding,) = report.findings
    assert grid.volume is not None
    brightest = np.unravel_index(int(np.argmax(grid.volume.voxels)), grid.volume.shape)
    assert finding.centre == tuple(float(i) for i in brightest)
    assert (finding.concept, finding.label) == (SPOT, "spot")
    assert_answers(scripted, seed=4)
    assert scripted.pid == pid, "the child stays warm between jobs"


def test_planar_images_arrive_whole_and_each_is_classified(tmp_path: Path) -> None:
    folder, manifest = write_site_model(
        tmp_path / "planar", "planar", input_kind=InputKind.IMAGE_SET, task=Task.CLASSIFICATION
    )
    grid = image_grid_of(ANSWER, brightness=(0.25, 0.75, 0.5))
    with SiteModel(folder, manifest, scripted_runner) as model:
        model.load("cpu")
        report = model.report(grid)

    assert report.grid is grid
    assert [scores.image_index for scores in report.classifications] == [0, 1, 2]
    assert [scores.probabilities[0] for scores in report.classifications] == [0.25, 0.75, 0.5]
    assert report.classifications[1].classes[report.classifications[1].predicted] == BRIGHT


# -- failures stay one job's --------------------------------------------------------------------


def test_a_runner_that_raises_fails_the_job_with_its_message_and_stays_warm(
    scripted: SiteModel,
) -> None:
    pid = scripted.pid

    with pytest.raises(ModelError, match="bundle says no") as failed:
        scripted.report(volume_grid_of(RAISE))

    assert str(failed.value) == "model scripted raised ValueError: bundle says no"
    assert scripted.pid == pid
    assert_answers(scripted)


def test_a_report_that_leaves_the_images_fails_the_job(scripted: SiteModel) -> None:
    with pytest.raises(ModelError) as failed:
        scripted.report(volume_grid_of(MISFIT))

    assert (
        str(failed.value) == "model scripted raised ValueError: finding 1's mask leaves its image"
    )

    assert_answers(scripted)


def test_a_job_past_its_timeout_kills_the_child_and_the_next_job_gets_a_fresh_one(
    scripted: SiteModel,
) -> None:
    pid = scripted.pid
    assert pid is not None
    started = time.monotonic()

    with pytest.raises(ModelError) as failed:
        scripted.report(volume_grid_of(HANG))

    assert str(failed.value) == "model scripted ran past its timeout of 2 s"
    assert time.monotonic() - started < TIMEOUT_SECONDS + 5
    assert_gone(pid)
    assert scripted.pid is None
    assert_answers(scripted)
    assert scripted.pid not in (None, pid)


def test_a_child_killed_mid_job_fails_the_job_and_the_next_job_gets_a_fresh_one(
    tmp_path: Path,
) -> None:
    folder, manifest = write_site_model(tmp_path / "killed", "killed", timeout_seconds=60)
    with SiteModel(folder, manifest, scripted_runner) as model:
        model.load("cpu")
        pid = model.pid
        assert pid is not None
        killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
        killer.start()
        try:
            with pytest.raises(ModelError) as failed:
                model.report(volume_grid_of(HANG))
        finally:
            killer.cancel()

        assert str(failed.value) == "model killed: its process was killed (SIGKILL; out of memory?)"
        assert_answers(model)
        assert model.pid not in (None, pid)


def test_a_runner_that_cannot_be_built_fails_the_load_with_its_message(tmp_path: Path) -> None:
    folder, manifest = write_site_model(tmp_path / UNLOADABLE, UNLOADABLE)
    model = SiteModel(folder, manifest, scripted_runner)

    with pytest.raises(ModelError) as failed:
        model.load("cpu")

    assert str(failed.value) == f"model {UNLOADABLE}: {LOAD_ERROR}"
    assert model.pid is None


def test_an_altered_file_is_refused_before_any_child_starts(tmp_path: Path) -> None:
    folder, manifest = write_site_model(tmp_path / "altered", "altered")
    (folder / "models" / "model.pt").write_bytes(b"other weights")
    model = SiteModel(folder, manifest, scripted_runner)

    with pytest.raises(WeightsIntegrityError, match=r"models/model\.pt has changed"):
        model.load("cpu")

    assert model.pid is None


def test_a_job_before_load_is_refused(tmp_path: Path) -> None:
    folder, manifest = write_site_model(tmp_path / "cold", "cold")

    with pytest.raises(ModelError, match=r"^model cold is not loaded$"):
        SiteModel(folder, manifest, scripted_runner).report(volume_grid_of(ANSWER))


# -- no orphans -----------------------------------------------------------------------------------


def test_close_stops_the_child(tmp_path: Path) -> None:
    folder, manifest = write_site_model(tmp_path / "closed", "closed")
    model = SiteModel(folder, manifest, scripted_runner)
    model.load("cpu")
    pid = model.pid
    assert pid is not None

    model.close()

    assert_gone(pid)
    assert model.pid is None


PARENT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from cad_node.models.manifest import Manifest
    from cad_node.models.site.process import SiteModel
    from tests.site_runners import HANG, scripted_runner, volume_grid_of

    folder = Path(sys.argv[1])
    model = SiteModel(folder, Manifest.read(folder), scripted_runner)
    model.load("cpu")
    print(model.pid, flush=True)
    if sys.argv[2] == "hang":
        model.report(volume_grid_of(HANG))
    os._exit(0)  # no clean-up: only the pipe's end tells the child
    """
)


@pytest.mark.parametrize("parent_end", ["exits while the child idles", "is killed mid-job"])
def test_the_child_exits_with_its_parent(tmp_path: Path, parent_end: str) -> None:
    folder, _ = write_site_model(tmp_path / "orphan", "orphan", timeout_seconds=600)
    hang = parent_end == "is killed mid-job"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(folder), "hang" if hang else "idle"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    if hang:
        time.sleep(1.0)  # the job is running
        parent.kill()
    parent.wait(timeout=60)

    assert_gone(child_pid)


# -- a MONAI bundle whose own scripts/ raise, misshape or hang ------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteModel]:
    """The scripted bundle, loaded by the node's own bundle runner in a warm child."""
    folder = write_scripted_bundle(tmp_path_factory.mktemp("bundle") / "scripted_bundle")
    folder, manifest = write_site_model(folder, "scripted_bundle", timeout_seconds=TIMEOUT_SECONDS)
    with SiteModel(folder, manifest) as model:
        model.load("cpu")
        yield model


def marked_grid(marker: float | None) -> ResultGrid:
    """A volume grid whose voxel (0, 0, 0) holds ``marker`` (None: an ordinary value)."""
    grid = volume_grid_of(ANSWER, seed=11)
    assert grid.volume is not None
    grid.volume.voxels[0, 0, 0] = 0.0 if marker is None else marker
    return grid


def assert_bundle_answers(model: SiteModel) -> None:
    """The bundle segments the voxels above 0.5 as label 1 ("spot")."""
    grid = marked_grid(None)
    assert grid.volume is not None
    report = model.report(grid)
    (finding,) = report.findings
    assert finding.concept == SPOT
    assert sum(int(mask.mask.sum()) for mask in finding.masks) == int(
        (grid.volume.voxels > 0.5).sum()
    )


def test_a_bundle_that_raises_fails_the_job_with_its_message(bundle: SiteModel) -> None:
    pid = bundle.pid

    with pytest.raises(ModelError) as failed:
        bundle.report(marked_grid(MARKERS["raise"]))

    assert str(failed.value) == "model scripted_bundle: bundle says no"
    assert bundle.pid == pid
    assert_bundle_answers(bundle)


def test_a_bundle_answer_of_an_unexpected_shape_fails_the_job(bundle: SiteModel) -> None:
    with pytest.raises(ModelError, match=r"^model scripted_bundle: .*not a 3D label map"):
        bundle.report(marked_grid(MARKERS["misshape"]))

    assert_bundle_answers(bundle)


def test_a_bundle_past_its_timeout_is_killed_and_the_next_job_runs(bundle: SiteModel) -> None:
    pid = bundle.pid
    assert pid is not None

    with pytest.raises(ModelError) as failed:
        bundle.report(marked_grid(MARKERS["hang"]))

    assert str(failed.value) == "model scripted_bundle ran past its timeout of 2 s"
    assert_gone(pid)
    assert_bundle_answers(bundle)
    assert bundle.pid not in (None, pid)


def test_a_bundle_killed_mid_job_fails_it_and_the_next_job_runs(bundle: SiteModel) -> None:
    pid = bundle.pid
    assert pid is not None
    killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))  # well before the timeout
    killer.start()
    try:
        with pytest.raises(ModelError) as failed:
            bundle.report(marked_grid(MARKERS["hang"]))
    finally:
        killer.cancel()

    assert str(failed.value) == (
        "model scripted_bundle: its process was killed (SIGKILL; out of memory?)"
    )
    assert_bundle_answers(bundle)
    assert bundle.pid not in (None, pid)

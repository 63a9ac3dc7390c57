"""A site model kept warm in its own child process: a bundle that hangs, crashes or raises fails
one job, never the node (issue 16, "Failures stay one job's").

:class:`SiteModel` is what the registry returns for the family ``site``. ``load`` checks the
sha256 of every file of the folder, then starts a fresh interpreter (not a fork: the worker may
hold torch threads and a CUDA context) that builds the runner
(:func:`~cad_node.models.site.runner.make_runner`) once and answers one grid after another.
Each job's grid goes down the pipe pickled with protocol 5, its arrays out of band (a volume
grid's slices are views of its voxels, so they are sent once); the child answers with the
findings and classifications only, and the parent builds the report on its own grid.

A job that runs past the manifest's ``timeout_seconds`` kills the child; a child that dies
is reported with its signal or exit code; the runner's own error becomes the job's error.
The next job starts a fresh child. The child has no address-space limit (CUDA reserves
terabytes of virtual memory), exits when its pipe closes, and exits within a second of its
parent's death while a job runs. This bounds time, not trust: a bundle is code the admin
chose to install, and its child runs as the node's user.
"""

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from cad_node.domain.findings import ModelIdentity
from cad_node.domain.image_sets import Assessment, ExplanationMap
from cad_node.domain.results import (
    AnatomicRegion,
    ClassScores,
    ModelReport,
    Procedure,
    RegionFinding,
    ResultGrid,
)
from cad_node.errors import ModelError
from cad_node.models.base import InputKind
from cad_node.models.manifest import Manifest
from cad_node.models.site.folder import verify_files
from cad_node.models.site.ood import SiteOodScorer, scorer_of
from cad_node.models.site.runner import SiteRunner, make_runner

logger = logging.getLogger(__name__)

RunnerFactory = Callable[[Path, Manifest, str], SiteRunner]
"""Builds a runner in the child: importable by name (it is pickled by reference)."""

LOAD_TIMEOUT_SECONDS = 600.0
"""How long a fresh child may take to import its libraries and build the runner (weights onto
the GPU included); not part of any job's timeout."""

_PARENT_POLL_SECONDS = 1.0
_EXIT_WAIT_SECONDS = 5.0


class SiteModel:
    """A site model (MONAI bundle, nnU-Net v2 folder) run in a warm child process.

    Thread-safe: one job at a time per model.

    Parameters
    ----------
    folder
        The model folder (``manifest.json`` and every file it hashes).
    manifest
        Its manifest (``family`` "site").
    runner_factory
        Builds the runner in the child (tests pass their own; it must be importable there).
    load_timeout_seconds
        How long the child may take to build the runner.
    """

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        runner_factory: RunnerFactory = make_runner,
        load_timeout_seconds: float = LOAD_TIMEOUT_SECONDS,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.identity: ModelIdentity = manifest.identity()
        self.modalities: tuple[str, ...] = (manifest.modality,)
        self.input_kind = InputKind(manifest.input_kind)
        self._factory = runner_factory
        self._load_timeout = load_timeout_seconds
        self._device: str | None = None
        self._child: _Child | None = None
        self._scorer: SiteOodScorer | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The process id of the warm child; None while none runs."""
        child = self._child
        return None if child is None else child.pid

    def load(self, device: str) -> None:
        """Check every file's sha256, then start the child and build the runner on ``device``.

        Raises
        ------
        WeightsIntegrityError
            A file differs from the manifest's hash, is missing, or is not in the manifest.
        ModelError
            The runner cannot be built (the runner's message), or the child did not start,
            or its OOD statistics (``cad-node models calibrate``) cannot be read.
        """
        with self._lock:
            self._stop()
            self._device = device
            self._child = self._start()
            self._scorer = scorer_of(self.folder, self.manifest)

    def report(self, grid: ResultGrid) -> ModelReport:
        """The model's findings and classifications on ``grid``, within the manifest's timeout,
        with its OOD score where the site calibrated it (:mod:`cad_node.models.site.ood`).

        After a failure that stopped the child, this starts a fresh one first (its files
        checked again).

        Raises
        ------
        ModelError
            The model raised (its own message), answered what the grid cannot hold, ran past
            its timeout (its child is killed) or its child died; or no child could be started
            (a :class:`~cad_node.errors.WeightsIntegrityError` where a file changed).
        """
        with self._lock:
            started = time.perf_counter()
            answer = self._answer(grid)
            report = self._report_of(answer, grid)
            if self._scorer is not None:
                report = replace(report, ood=self._scorer.score(report))
        logger.info(
            "model %s: %d findings, %d classifications in %.1f s",
            self.manifest.name,
            len(report.findings),
            len(report.classifications),
            time.perf_counter() - started,
        )
        return report

    def close(self) -> None:
        """Stop the child (a later job starts a fresh one)."""
        with self._lock:
            self._stop()

    def __enter__(self) -> "SiteModel":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _answer(self, grid: ResultGrid) -> "_Answer":
        child = self._running_child()
        try:
            child.send_grid(grid)
        except OSError:  # the child died while idle: the grid is not to blame; once more
            self._stop()
            child = self._running_child()
            self._send(child, grid)
        try:
            reply = child.reply(self.manifest.timeout_seconds)
        except ModelError:
            self._stop()
            raise
        if isinstance(reply, _Failed):
            raise ModelError(reply.message)
        if not isinstance(reply, _Answer):
            self._stop()
            raise ModelError(f"model {self.manifest.name}: its process answered out of turn")
        return reply

    def _send(self, child: "_Child", grid: ResultGrid) -> None:
        try:
            child.send_grid(grid)
        except OSError:
            self._child = None
            raise ModelError(f"model {self.manifest.name}: {child.death()}") from None

    def _report_of(self, answer: "_Answer", grid: ResultGrid) -> ModelReport:
        try:
            return ModelReport(
                model=answer.model,
                grid=grid,
                findings=answer.findings,
                region=answer.region,
                procedure=answer.procedure,
                assessments=answer.assessments,
                explanations=answer.explanations,
                classifications=answer.classifications,
            )
        except (KeyError, ValueError) as exc:
            raise ModelError(
                f"model {self.manifest.name}: its report does not fit the images: {exc}"
            ) from exc

    def _running_child(self) -> "_Child":
        if self._child is not None and self._child.alive():
            return self._child
        self._stop()
        self._child = self._start()
        return self._child

    def _start(self) -> "_Child":
        if self._device is None:
            raise ModelError(f"model {self.manifest.name} is not loaded")
        verify_files(self.folder, self.manifest)  # each child reads them afresh
        start = _Start(self._factory, self.folder, self.manifest, self._device, _torch_threads())
        return _Child.start(start, self._load_timeout)

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()


def _torch_threads() -> int | None:
    """The parent's torch threads per operator (``torch_threads``), for the child to use too;
    None where the parent never imported torch."""
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


# --- messages between the parent and the child ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Start:
    factory: RunnerFactory
    folder: Path
    manifest: Manifest
    device: str
    threads: int | None


@dataclass(frozen=True, slots=True)
class _Ready:
    pass


@dataclass(frozen=True, slots=True)
class _Job:
    """A pickled grid (protocol 5); its out-of-band buffers follow, one message each."""

    pickled: bytes
    buffer_sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Answer:
    """A report less its grid (the parent holds that)."""

    model: ModelIdentity
    findings: tuple[RegionFinding, ...]
    region: AnatomicRegion | None
    procedure: Procedure
    assessments: tuple[Assessment, ...]
    explanations: tuple[ExplanationMap, ...]
    classifications: tuple[ClassScores, ...]


@dataclass(frozen=True, slots=True)
class _Failed:
    """The runner could not be built or raised: its message, for the job's error."""

    message: str


_Reply = _Ready | _Answer | _Failed


# --- the parent's side ------------------------------------------------------------------------


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, process: "subprocess.Popen[bytes]", connection: Connection, name: str):
        self.process = process
        self.connection = connection
        self.name = name
        self._stopped = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, start: _Start, timeout: float) -> "_Child":
        """A child with its runner built; ModelError with the runner's message otherwise."""
        began = time.perf_counter()
        child = cls(*_spawn(), start.manifest.name)
        try:
            child.connection.send(start)
            reply = child.reply(timeout, what=f"did not load within {timeout:g} s")
        except BaseException:
            child.stop()
            raise
        if not isinstance(reply, _Ready):
            child.stop()
            message = reply.message if isinstance(reply, _Failed) else "answered out of turn"
            raise ModelError(message)
        logger.info(
            "model %s: process %d ready on %s in %.1f s",
            start.manifest.name,
            child.pid,
            start.device,
            time.perf_counter() - began,
        )
        return child

    def alive(self) -> bool:
        return self.process.poll() is None

    def send_grid(self, grid: ResultGrid) -> None:
        buffers: list[pickle.PickleBuffer] = []
        pickled = pickle.dumps(
            _without_slice_copies(grid), protocol=5, buffer_callback=buffers.append
        )
        views = [buffer.raw() for buffer in buffers]
        self.connection.send(_Job(pickled, tuple(view.nbytes for view in views)))
        for view in views:
            self.connection.send_bytes(view)

    def reply(self, timeout: float, what: str | None = None) -> _Reply:
        """The child's next message; ModelError once it ran past ``timeout`` (killed) or died."""
        if not self.connection.poll(timeout):
            self.stop()
            raise ModelError(
                f"model {self.name} {what}"
                if what
                else f"model {self.name} ran past its timeout of {timeout:g} s"
            )
        try:
            reply: _Reply = self.connection.recv()
        except (EOFError, OSError):
            raise ModelError(f"model {self.name}: {self.death()}") from None
        return reply

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.connection.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        logger.info(
            "model %s: process %d stopped (exit code %s)",
            self.name,
            self.process.pid,
            self.process.returncode,
        )

    def death(self) -> str:
        """How the child went (after it closed its end of the pipe)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=_EXIT_WAIT_SECONDS)
        code = self.process.returncode
        self.stop()
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return f"its process was killed ({name}; out of memory?)"
            return f"its process crashed ({name})"
        return f"its process exited (exit code {code})"


def _spawn() -> tuple["subprocess.Popen[bytes]", Connection]:
    """A fresh interpreter running :func:`serve`, and the parent's end of its pipe."""
    parent_end, child_end = socket.socketpair()
    fd = child_end.fileno()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-c", _CHILD_MAIN, str(fd)]
    with child_end:
        process = subprocess.Popen(command, pass_fds=(fd,), env=environment)
    return process, Connection(parent_end.detach())


_CHILD_MAIN = "import sys; from cad_node.models.site.process import serve; serve(sys.argv[1])"


def _without_slice_copies(grid: ResultGrid) -> ResultGrid:
    """``grid`` for the pipe: a volume grid's images without their pixels (views of the voxels,
    which travel once); :func:`_with_slices` puts them back."""
    volume = grid.volume
    if volume is None or not all(
        np.may_share_memory(image.pixels, volume.voxels) for image in grid.images
    ):
        return grid
    empty = np.zeros((0, 0), dtype=np.float32)
    images = tuple(replace(image, pixels=empty) for image in grid.images)
    return ResultGrid(grid.study_instance_uid, grid.modality, images, volume)


def _with_slices(grid: ResultGrid) -> ResultGrid:
    volume = grid.volume
    if volume is None or all(image.pixels.size for image in grid.images):
        return grid
    images = tuple(replace(image, pixels=volume.voxels[k]) for k, image in enumerate(grid.images))
    return ResultGrid(grid.study_instance_uid, grid.modality, images, volume)


# --- the child's side -------------------------------------------------------------------------


def serve(fd: str) -> None:
    """The child: build the runner, then answer grids on ``fd`` until the pipe closes."""
    connection = Connection(int(fd))
    _exit_with_parent()
    try:
        start: _Start = connection.recv()
    except EOFError:
        return
    runner = _built_runner(start, connection)
    if runner is None:
        return
    while True:
        try:
            grid = _received_grid(connection, start.manifest.name)
        except EOFError:
            return
        if isinstance(grid, _Failed):
            connection.send(grid)
        else:
            connection.send(_run(runner, grid, start.manifest.name))


def _exit_with_parent() -> None:
    """Exit once the parent is gone, even in the middle of a job (the pipe's end of file is
    seen only between jobs)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _built_runner(start: _Start, connection: Connection) -> SiteRunner | None:
    if start.threads is not None:
        from cad_node.models.runtime import set_cpu_threads  # torch: the runner needs it anyway

        set_cpu_threads(start.threads)
    try:
        runner = start.factory(start.folder, start.manifest, start.device)
    except ModelError as exc:
        connection.send(_Failed(str(exc)))
        return None
    except Exception as exc:  # the bundle's own code: its message is the admin's clue
        connection.send(_Failed(_message(start.manifest.name, "cannot be loaded", exc)))
        return None
    connection.send(_Ready())
    return runner


def _received_grid(connection: Connection, name: str) -> ResultGrid | _Failed:
    """The next job's grid (EOFError once the pipe closes), or why it cannot be rebuilt."""
    job: _Job = connection.recv()
    buffers = []
    for size in job.buffer_sizes:
        buffer = bytearray(size)
        connection.recv_bytes_into(buffer)
        buffers.append(buffer)
    try:  # every byte is read: the pipe stays in step whatever this raises
        grid: ResultGrid = pickle.loads(job.pickled, buffers=buffers)
        return _with_slices(grid)
    except Exception as exc:  # a node bug, not the model's: name it, keep the child
        return _Failed(_message(name, "could not read the images:", exc))


def _run(runner: SiteRunner, grid: ResultGrid, name: str) -> _Reply:
    try:
        report = runner.report(grid)
    except ModelError as exc:
        return _Failed(str(exc))
    except Exception as exc:  # the bundle's own code: its message is the job's error
        return _Failed(_message(name, "raised", exc))
    if not isinstance(report, ModelReport):
        return _Failed(f"model {name}: the runner returned a {type(report).__name__}, no report")
    return _Answer(
        model=report.model,
        findings=report.findings,
        region=report.region,
        procedure=report.procedure,
        assessments=report.assessments,
        explanations=report.explanations,
        classifications=report.classifications,
    )


def _message(name: str, what: str, exc: Exception) -> str:
    return f"model {name} {what} {type(exc).__name__}: {exc}"


__all__ = ["LOAD_TIMEOUT_SECONDS", "RunnerFactory", "SiteModel", "serve"]

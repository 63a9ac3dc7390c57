"""Image decoding in a separate, bounded process: a decoder that hangs or explodes cannot
take the node down with it.

A DICOM file can make a decoder run for ever or allocate gigabytes (a compressed frame
bomb, a pathological JPEG 2000 code stream, a forged frame count). The worker therefore
loads a series (DICOM decode -> numpy) in a persistent child process that runs under an
address-space limit (``RLIMIT_AS``) and must answer within a wall-time limit. A child
that overruns either bound, or dies, is killed and started afresh for the next series;
the series is then *quarantined* (:class:`DecodingAbortedError`).

The line between a quarantined series and a failed job: the loaders' own refusals
(:class:`~cad_node.errors.InvalidSeriesError`: a malformed file, an inconsistent volume)
are raised here unchanged, and fail the job as before. Only a decoder that was killed,
crashed, or ran out of memory or time quarantines the series.

The child imports numpy, pydicom and its pixel handlers, never torch. The decoded
arrays come back through a scratch file, not the pipe: the child writes each array's
buffer there (pickle protocol 5, out of band) and the parent reads each into one
bytearray that numpy then uses in place, so the parent holds one copy of the volume.
This bounds resources; it is not a security sandbox (the child runs as the same user).
"""

import contextlib
import ctypes
import logging
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar, cast

from cad_node.domain.image_sets import ImageSet
from cad_node.domain.imaging import ImageVolume
from cad_node.errors import CadNodeError, InvalidSeriesError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.volume import load_volume

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

SCRATCH_DIR = "tmp/decoding"
"""Under the storage folder: where the child leaves decoded arrays for the parent."""

_START_SECONDS = 60.0
"""How long a fresh child may take to import its libraries (not part of the decode bound)."""


class DecodingAbortedError(CadNodeError):
    """The decoder process was killed, crashed, or ran out of time or memory.

    The series is quarantined with ``str(error)`` as the reason; it is not retried
    automatically.
    """


@dataclass(frozen=True, slots=True)
class DecodingLimits:
    """The bounds of one series' decode."""

    timeout_seconds: float
    """Wall time for one series, from request to the decoded arrays on disk."""
    memory_bytes: int
    """The child's address-space limit (``RLIMIT_AS``): libraries, datasets and arrays."""

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be > 0, got {self.timeout_seconds}")
        if self.memory_bytes <= 0:
            raise ValueError(f"memory_bytes must be > 0, got {self.memory_bytes}")


@dataclass(frozen=True, slots=True)
class _Request:
    function: Callable[..., Any]
    arguments: tuple[Any, ...]
    scratch_path: Path


@dataclass(frozen=True, slots=True)
class _Decoded:
    """The pickled result (its arrays out of band) and the byte count of each array."""

    pickled: bytes
    buffer_sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Refused:
    """The loader refused the input (InvalidSeriesError): the job fails, no quarantine."""

    reason: str


@dataclass(frozen=True, slots=True)
class _OutOfMemory:
    pass


@dataclass(frozen=True, slots=True)
class _Raised:
    """Another exception in the loader: a failure like any other, named by its class only."""

    error_type: str


_Reply = _Decoded | _Refused | _OutOfMemory | _Raised


class IsolatedDecoder:
    """Runs loaders in one persistent, bounded child process; thread-safe, one call at a time.

    Parameters
    ----------
    limits
        The time and memory bounds of each call.
    scratch_dir
        A folder on the storage volume for the decoded arrays (removed after each call).
    """

    def __init__(self, limits: DecodingLimits, scratch_dir: Path) -> None:
        self.limits = limits
        self.scratch_dir = scratch_dir
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None

    def load_volume(self, paths: Sequence[Path]) -> ImageVolume:
        """:func:`~cad_node.imaging.volume.load_volume` of ``paths``, in the child."""
        return self.call(load_volume, list(paths))

    def load_image_set(self, paths: Sequence[Path]) -> ImageSet:
        """:func:`~cad_node.imaging.image_set_loading.load_image_set` of ``paths``, in the child."""
        return self.call(load_image_set, list(paths))

    def call(self, function: Callable[..., _T], *arguments: Any) -> _T:
        """``function(*arguments)`` in the child (``function`` importable by name).

        Raises
        ------
        DecodingAbortedError
            The call overran the time or memory limit, or the child died.
        InvalidSeriesError
            ``function`` raised it (the input is malformed).
        CadNodeError
            ``function`` raised another exception (named by its class only).
        """
        self.scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        request = _Request(function, arguments, self.scratch_dir / f"{uuid.uuid4().hex}.bin")
        with self._lock:
            try:
                return cast(_T, self._call_locked(request))
            finally:
                request.scratch_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the child (a later call starts a new one)."""
        with self._lock:
            self._stop()

    def __enter__(self) -> "IsolatedDecoder":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call_locked(self, request: _Request) -> Any:
        try:
            connection = self._running_child()
            connection.send(request)
        except OSError:  # the child died while idle: the series is not to blame
            self._stop()
            connection = self._running_child()
            connection.send(request)
        reply = self._reply(connection)
        if isinstance(reply, _Decoded):
            return _read_result(reply, request.scratch_path)
        if not isinstance(reply, _Refused):
            self._stop()  # a fresh child after a failure: its heap may be fragmented or broken
        raise _error_of(reply, self.limits)

    def _reply(self, connection: Connection) -> _Reply:
        """The child's answer, or DecodingAbortedError once it is killed or dead."""
        timeout = self.limits.timeout_seconds
        if not connection.poll(timeout):
            self._stop()
            raise DecodingAbortedError(f"decoding timed out after {timeout:g} s")
        try:
            reply: _Reply = connection.recv()
        except (EOFError, OSError):
            raise DecodingAbortedError(self._death()) from None
        return reply

    def _running_child(self) -> Connection:
        if self._process is not None and self._process.poll() is None and self._connection:
            return self._connection
        self._stop()
        self._process, self._connection = _start_child(self.limits.memory_bytes)
        if not self._connection.poll(_START_SECONDS):
            self._stop()
            raise CadNodeError(f"the decoder process did not start within {_START_SECONDS:g} s")
        try:
            self._connection.recv()  # "ready": the libraries are imported
        except EOFError:
            raise CadNodeError(f"the decoder process failed to start: {self._death()}") from None
        logger.info("decoder process %d started", self._process.pid)
        return self._connection

    def _death(self) -> str:
        """Why the child is gone (after it closed its end of the pipe)."""
        process = self._process
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)  # its exit status, not the SIGKILL of _stop
        self._stop()
        code = None if process is None else process.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return f"decoder process killed ({name}; out of memory?)"
            return f"decoder process crashed ({name})"
        return f"decoder process exited (exit code {code})"

    def _stop(self) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        logger.info("decoder process %d stopped (exit code %s)", process.pid, process.returncode)


def _start_child(memory_bytes: int) -> tuple["subprocess.Popen[bytes]", Connection]:
    """A fresh interpreter (not a fork of the worker, which holds torch and the models)
    running :func:`serve`, and the parent's end of its pipe."""
    parent_end, child_end = socket.socketpair()
    fd = child_end.fileno()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-c", _CHILD_MAIN, str(fd), str(memory_bytes)]
    with child_end:
        process = subprocess.Popen(command, pass_fds=(fd,), env=environment)
    return process, Connection(parent_end.detach())


_CHILD_MAIN = "import sys; from cad_node.imaging.isolation import serve; serve(*sys.argv[1:])"


def _error_of(reply: _Reply, limits: DecodingLimits) -> CadNodeError:
    if isinstance(reply, _Refused):
        return InvalidSeriesError(reply.reason)
    if isinstance(reply, _OutOfMemory):
        limit_mb = limits.memory_bytes // 2**20
        return DecodingAbortedError(f"decoding ran out of memory (limit {limit_mb} MB)")
    if isinstance(reply, _Raised):
        return CadNodeError(f"decoding failed: {reply.error_type}")
    raise TypeError(f"not an error reply: {type(reply).__name__}")


def _read_result(reply: _Decoded, scratch_path: Path) -> Any:
    buffers = []
    with scratch_path.open("rb") as scratch:
        for size in reply.buffer_sizes:
            buffer = bytearray(size)
            if scratch.readinto(buffer) != size:
                raise CadNodeError("the decoder's scratch file is truncated")
            buffers.append(buffer)
    return pickle.loads(reply.pickled, buffers=buffers)


def serve(fd: str, memory_bytes: str) -> None:
    """The child: apply the memory limit, then answer requests on ``fd`` until it closes."""
    limit = int(memory_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    connection = Connection(int(fd))
    connection.send("ready")
    while True:
        try:
            request: _Request = connection.recv()
        except EOFError:
            return
        connection.send(_answer(request))
        _release_freed_memory()


def _release_freed_memory() -> None:
    """Give the freed heap back to the system while the model runs (glibc keeps it otherwise:
    a 300-slice 512x512 CT left 240 MB resident in the idle decoder, 85 MB after the trim)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


def _answer(request: _Request) -> _Reply:
    try:
        result = request.function(*request.arguments)
        reply: _Reply = _write_result(result, request.scratch_path)
    except InvalidSeriesError as exc:
        return _Refused(str(exc))
    except MemoryError:
        return _OutOfMemory()
    except Exception as exc:  # the parent decides; the text may quote patient data
        return _Raised(type(exc).__name__)
    return reply


def _write_result(result: object, scratch_path: Path) -> _Decoded:
    buffers: list[pickle.PickleBuffer] = []
    pickled = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    sizes = []
    with scratch_path.open("wb") as scratch:
        for buffer in buffers:
            view = buffer.raw()
            scratch.write(view)
            sizes.append(view.nbytes)
    return _Decoded(pickled, tuple(sizes))

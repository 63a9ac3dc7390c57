"""Real peers for the benchmarks: DCMTK ``storescp``/``storescu``, Orthanc, ``cad-node serve``.

Every peer gets a free port and its own folder, runs in its own session (so a
Ctrl-C reaches only the benchmark, whose ``finally`` blocks stop the peers in
order) and is sent SIGTERM by the kernel if the benchmark itself dies
(``PR_SET_PDEATHSIG``), so no receiver outlives a run.
"""

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.dcmtk import DCMTK_ENV, free_port, port_open, program, storescu_argv

REPO_ROOT = Path(__file__).resolve().parents[1]

_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 30.0


class PeerError(RuntimeError):
    """A peer did not start, failed a transfer, or did not store what it acknowledged."""


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise PeerError(f"timed out after {timeout:.0f} s waiting for {what}")


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
"""Loaded in the parent: the child between fork and exec should only make the one call."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when we die.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Peer:
    """A child process listening on ``port``, with its stdout and stderr in ``log_path``."""

    name: str
    process: "subprocess.Popen[bytes]"
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


def spawn(name: str, argv: Sequence[str], port: int, log_path: Path, env: dict[str, str]) -> Peer:
    """Start ``argv`` in its own session, output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = _start_child(argv, log_path, env, mode="ab")
    return Peer(name=name, process=process, port=port, log_path=log_path)


@contextmanager
def running(peer: Peer, ready: Callable[[], bool], timeout: float) -> Iterator[Peer]:
    """Wait until ``ready()``, yield the peer, stop it on the way out (Ctrl-C included)."""

    def _ready() -> bool:
        if not peer.alive():
            raise PeerError(
                f"{peer.name} exited with {peer.process.returncode}:\n{peer.log_tail()}"
            )
        return ready()

    try:
        wait_for(_ready, timeout, f"{peer.name} to listen on port {peer.port}")
        yield peer
    finally:
        peer.stop()


@contextmanager
def storescp(
    out_dir: Path,
    log_path: Path,
    *,
    ae_title: str = "STORESCP",
    fork: bool = True,
    reception_log: Path | None = None,
) -> Iterator[Peer]:
    """DCMTK ``storescp`` writing every received instance to ``out_dir``.

    ``fork`` serves concurrent associations in parallel, as Orthanc and cad-node do;
    ``reception_log`` gets one line ``<unix time> <file name>`` per stored instance
    (``--exec-on-reception``, run by storescp through ``/bin/sh -c``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [program("storescp"), "--aetitle", ae_title]
    argv += ["--output-directory", str(out_dir), "--promiscuous"]
    if fork:
        argv.append("--fork")
    if reception_log is not None:
        argv += ["--exec-on-reception", f"echo $(date +%s.%N) #f >> {reception_log}"]
    peer = spawn("storescp", [*argv, str(port)], port, log_path, DCMTK_ENV)
    with running(peer, lambda: port_open(port), 30) as ready:
        yield ready


@dataclass
class OrthancPeer(Peer):
    """Orthanc with its REST API on ``http_port`` (localhost only)."""

    http_port: int = 0

    def get_json(self, path: str) -> object:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def count_instances(self) -> int:
        """``CountInstances`` from ``GET /statistics``."""
        statistics = self.get_json("/statistics")
        if not isinstance(statistics, dict):
            raise PeerError(f"unexpected /statistics answer: {statistics!r}")
        return int(statistics["CountInstances"])

    def answers(self) -> bool:
        try:
            self.get_json("/system")
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return port_open(self.port)


def orthanc_config(work_dir: Path, ae_title: str, dicom_port: int, http_port: int) -> Path:
    """A throw-away Orthanc configuration: own ports, own storage, no plugins, no auth."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "cad-node-bench",
        "StorageDirectory": str(work_dir / "storage"),
        "IndexDirectory": str(work_dir / "index"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "StorageCompression": False,
        "Plugins": [],
        "LuaScripts": [],
        "SaveJobs": False,
    }
    path = work_dir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextmanager
def orthanc(work_dir: Path, *, ae_title: str = "ORTHANC") -> Iterator[OrthancPeer]:
    """Debian's Orthanc on a temporary config, started with ``--logdir``; stopped after."""
    dicom_port, http_port = free_port(), free_port()
    config = orthanc_config(work_dir, ae_title, dicom_port, http_port)
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    spawned = spawn(
        "orthanc",
        ["Orthanc", f"--logdir={log_dir}", str(config)],
        dicom_port,
        work_dir / "orthanc.out",
        DCMTK_ENV,
    )
    peer = OrthancPeer(
        name=spawned.name,
        process=spawned.process,
        port=dicom_port,
        log_path=spawned.log_path,
        http_port=http_port,
    )
    with running(peer, peer.answers, 60):
        yield peer


NODE_COMMAND_VARIABLE = "CAD_NODE_BENCH_COMMAND"
"""Replaces ``cad-node serve`` (e.g. another checkout's venv); ``--config FILE`` is appended."""


def node_command() -> list[str]:
    """``$CAD_NODE_BENCH_COMMAND``, else the venv's ``cad-node serve``, else ``python -m``."""
    if os.environ.get(NODE_COMMAND_VARIABLE):
        return shlex.split(os.environ[NODE_COMMAND_VARIABLE])
    script = Path(sys.executable).with_name("cad-node")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "cad_node", "serve"]


NODE_STARTED = "cad_node.app: cad-node "
"""Starts the line serve logs once it has started everything (extra ingest processes
included): ``cad_node.app: cad-node <AE title> listening on <address>:<port>``."""


@contextmanager
def cad_node(config_path: Path, port: int, log_path: Path) -> Iterator[Peer]:
    """``cad-node serve --config config_path``, ready once it logs that it has started and
    ``port`` accepts connections.

    The port alone is not enough: it opens before the extra ingest processes
    (``ingest_processes``) listen, and associations made meanwhile all go to the
    node's own process.
    """
    env = {**DCMTK_ENV, "PYTHONUNBUFFERED": "1"}
    peer = spawn("cad-node", [*node_command(), "--config", str(config_path)], port, log_path, env)

    def started() -> bool:
        return NODE_STARTED in peer.log_tail(chars=1_000_000) and port_open(port)

    with running(peer, started, 180) as ready:
        yield ready


def send(
    port: int,
    called_ae: str,
    groups: Sequence[Sequence[Path]],
    log_dir: Path,
    *,
    calling_ae: str = "BENCHSCU",
) -> float:
    """Send each group with its own ``storescu`` (one association each), all at once.

    Returns the wall-clock seconds from the first start to the last exit.
    ``-R`` proposes only the SOP classes and transfer syntaxes the files need.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    start = time.perf_counter()
    try:
        for index, files in enumerate(groups):
            log_path = log_dir / f"storescu-{index}.log"
            argv = storescu_argv(port, files, calling_ae=calling_ae, called_ae=called_ae)
            processes.append((_start_child(argv, log_path, DCMTK_ENV, mode="wb"), log_path))
        for process, _ in processes:
            process.wait()
        elapsed = time.perf_counter() - start
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, log_path in processes:
        if process.returncode != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise PeerError(f"storescu exited with {process.returncode}:\n{tail}")
    return elapsed


def _start_child(
    argv: Sequence[str], log_path: Path, env: dict[str, str], *, mode: str
) -> "subprocess.Popen[bytes]":
    """``argv`` in its own session, dying with us, its output to ``log_path`` (opened ``mode``)."""
    with log_path.open(mode) as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (single-threaded caller; needs prctl in the child)
        )


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set (``VmHWM``) of ``pid`` plus that of its live children, from /proc."""
    total = proc_status_kib(pid, "VmHWM") * 1024
    for child in children(pid):
        total += peak_rss_bytes(child)
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident set (``VmRSS``) of ``pid`` and all its live descendants, now."""
    return proc_status_kib(pid, "VmRSS") * 1024 + sum(tree_rss_bytes(c) for c in children(pid))


class TreeRssSampler:
    """The highest ``VmRSS`` of a process and its descendants *together*, polled in a thread.

    Adding each process's own peak (:func:`peak_rss_bytes`) overstates a node whose
    decoder child peaks while the node itself is small; a child's ``VmHWM`` is also
    gone once it exits.  Polling the sum every ``interval`` seconds measures what the
    machine had to hold at once; the node's own ``VmHWM`` is a floor for it, since a
    peak shorter than the interval can fall between two polls.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.peak_bytes = 0
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="tree-rss", daemon=True)

    def __enter__(self) -> "TreeRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop polling, after one last sample; the peak stays readable."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._thread.join()
            self._sample()

    def _poll(self) -> None:
        while not self._stopped.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        own_peak = proc_status_kib(self.pid, "VmHWM") * 1024
        self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self.pid), own_peak)


def reset_peak_rss(pid: int) -> None:
    """Start ``VmHWM`` of ``pid`` and its live children afresh (``clear_refs`` 5, Linux 4.0+).

    Lets one benchmark measure the peak of each phase of a long-running node.
    """
    for child in children(pid):
        reset_peak_rss(child)
    with suppress(OSError):  # it exited meanwhile: nothing of it is left to count
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def proc_status_kib(pid: int, field: str) -> int:
    """A kB field of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``); 0 once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return found

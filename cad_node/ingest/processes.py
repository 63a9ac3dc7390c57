"""Extra receiving processes on the node's DICOM port (``ingest_processes`` in the config).

One Python process receives on one core at a time: pynetdicom's PDU handling,
the header decode and the journal write of every instance hold the GIL (ingest
profile, docs/benchmarks.md).  With ``ingest_processes: N`` the node starts N-1
``cad-node ingest`` processes.  Each runs a Storage SCP on the node's port with
``SO_REUSEPORT``, so the kernel hands each new association to one of the N
listeners.  Every process writes the same spool and journal, and each still
acknowledges an instance only after its file is fsynced and its row committed.

The node's own process keeps everything else: assembly, jobs, export, the admin
API.  A series that an extra process completes by count is routed by the next
assembly sweep (at most ``SWEEP_SECONDS`` later) rather than at once.

Example::

    extra = IngestProcesses(settings, port=scp.port, count=settings.ingest_processes - 1)
    extra.start()   # returns once every process listens
    ...
    extra.stop()    # SIGTERM; in-flight instances are answered or never acknowledged
"""

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from cad_node.clock import utc_now
from cad_node.config import Settings
from cad_node.errors import CadNodeError

logger = logging.getLogger(__name__)

READY = "listening"
"""What an ingest process prints on its standard output once its SCP listens."""
START_SECONDS = 60.0
STOP_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


class IngestProcessError(CadNodeError):
    """An ingest process did not start."""


@dataclass
class IngestProcesses:
    """``count`` ``cad-node ingest`` processes sharing ``port`` with the node's own SCP."""

    settings: Settings
    port: int
    count: int
    _children: list["subprocess.Popen[bytes]"] = field(init=False, default_factory=list)

    def start(self) -> None:
        """Start them all; returns once each listens.

        Raises
        ------
        IngestProcessError
            One exited or did not listen within ``START_SECONDS`` (the others are stopped).
        """
        try:
            for _ in range(self.count):
                self._children.append(self._spawn())
            for child in self._children:
                _wait_until_listening(child, START_SECONDS)
        except Exception:
            self.stop()
            raise
        logger.info("%d extra ingest processes listening on port %d", self.count, self.port)

    def stop(self) -> None:
        """SIGTERM each, then wait; one that outlives ``STOP_SECONDS`` is killed."""
        for child in self._children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for child in self._children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("ingest process %d did not stop: killed", child.pid)
                child.kill()
                child.wait()
        self._children.clear()

    def _spawn(self) -> "subprocess.Popen[bytes]":
        argv = [sys.executable, "-m", "cad_node", "ingest", "--port", str(self.port)]
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None
        child.stdin.write(self.settings.model_dump_json().encode())
        child.stdin.close()
        return child


def _wait_until_listening(child: "subprocess.Popen[bytes]", seconds: float) -> None:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], seconds)
    line = child.stdout.readline().decode(errors="replace").strip() if ready else ""
    if line != READY:
        code = child.poll()
        state = f"exited with {code}" if code is not None else f"not listening after {seconds:g} s"
        raise IngestProcessError(f"ingest process {child.pid} {state}")


def run_ingest_process(settings: Settings, port: int) -> None:
    """The ``cad-node ingest`` process: a Storage SCP on ``port`` until SIGTERM or SIGINT."""
    from cad_node.ingest.scp import StorageSCP
    from cad_node.store.db import make_engine, session_factory

    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the node died before the line above
        return
    stopping = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    engine = make_engine(settings.resolved_database_url)
    scp = StorageSCP.from_settings(settings, session_factory(engine), utc_now, port=port)
    try:
        scp.start()
        print(READY, flush=True)
        stopping.wait()
    finally:
        scp.stop()
        engine.dispose()


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the node's process dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux/glibc: the node's stop() still ends it
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

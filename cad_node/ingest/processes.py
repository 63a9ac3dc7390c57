"""Extra receiving processes on the node's DICOM port (``ingest_processes`` in the config).

One Python process receives on one core at a time: pynetdicom's PDU handling,
the header decode and the journal write of every instance hold the GIL
(docs/benchmarks.md, "Profiles and changes").  With ``ingest_processes: N`` the node starts N-1
``cad-node ingest`` processes.  Each inherits the node's listening socket and
accepts on it beside the node's own SCP: the first process free to take a new
association takes it.  Every process writes the same spool; the journal rows
of an extra process are committed by the node's process, which it reaches over
a socket pair (:mod:`cad_node.ingest.journal_link`).  Each process still
acknowledges an instance only after its file is fsynced and its row committed,
and applies the settings' ``limits`` (:mod:`cad_node.ingest.connections`) to the
connections it accepts: the associations and the connections per source address
are counted per process.

The node's own process keeps everything else: assembly, jobs, export, the admin
API, and hears of every instance as soon as its row is committed.

Example::

    extra = IngestProcesses(settings, scp, count=settings.ingest_processes - 1)
    extra.start()   # returns once every process listens
    ...
    extra.stop()    # SIGTERM; in-flight instances are answered or never acknowledged
"""

import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from cad_node.clock import utc_now, wait_until_set
from cad_node.config import Settings
from cad_node.errors import CadNodeError
from cad_node.ingest.journal_link import LinkedJournal, serve_link

if TYPE_CHECKING:
    from cad_node.ingest.scp import StorageSCP

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
    """``count`` ``cad-node ingest`` processes accepting on the listening socket of the node's
    own SCP, ``scp``, whose journal commits their rows and hears of them."""

    settings: Settings
    scp: "StorageSCP"
    count: int
    _children: list["subprocess.Popen[bytes]"] = field(init=False, default_factory=list)
    _links: list[threading.Thread] = field(init=False, default_factory=list)

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
        logger.info("%d extra ingest processes listening on port %d", self.count, self.scp.port)

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
        for link in self._links:
            link.join(timeout=STOP_SECONDS)
        self._links.clear()

    def _spawn(self) -> "subprocess.Popen[bytes]":
        listening = self.scp.listening_socket.fileno()
        node_end, child_end = socket.socketpair()
        with child_end:
            argv = [sys.executable, "-m", "cad_node", "ingest"]
            argv += ["--listening-fd", str(listening), "--journal-fd", str(child_end.fileno())]
            child = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=[listening, child_end.fileno()],
            )
        store_service = self.scp.store_service
        link = threading.Thread(
            target=serve_link,
            args=(node_end, store_service.journal, store_service.notify),
            name=f"journal-link-{child.pid}",
            daemon=True,
        )
        link.start()
        self._links.append(link)
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


def run_ingest_process(settings: Settings, listening_fd: int, journal_fd: int) -> None:
    """The ``cad-node ingest`` process: a Storage SCP accepting on the inherited socket
    ``listening_fd`` until SIGTERM or SIGINT, its journal rows committed by the node's
    process at the other end of ``journal_fd``."""
    from cad_node.export.commitment_service import CommitmentReports
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
    journal = LinkedJournal(socket.socket(fileno=journal_fd))
    sessions = session_factory(engine)
    scp = StorageSCP.from_settings(
        settings,
        sessions,
        utc_now,
        port=0,  # unused: the inherited socket is bound already
        listening_fd=listening_fd,
        journal=journal,
        # a PACS's storage commitment report may land here: journaled directly (the node's
        # export sweep sends again what it reports failed within a second)
        on_commitment_report=CommitmentReports(sessions, utc_now, settings.export.max_attempts),
    )
    try:
        scp.start()
        print(READY, flush=True)
        wait_until_set(stopping)
    finally:
        scp.stop()
        journal.close()
        engine.dispose()


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the node's process dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux/glibc: the node's stop() still ends it
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

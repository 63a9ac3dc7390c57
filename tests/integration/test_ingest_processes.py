"""``ingest_processes: 3``: ``cad-node serve`` and two ``cad-node ingest`` processes on one port.

Eight DCMTK ``storescu`` associations at once: the three processes accept them
on one listening socket, every instance is acknowledged, spooled and in the one
journal (the extra processes' rows committed by serve over their links), and the
extra processes did part of the receiving.  They stop with the node, and die with
it when it is killed.
"""

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from cad_node.store.schema import Instance, Series
from tests.dcmtk import storescu
from tests.integration.peers import NodeProcess, running_node, wait_for, write_config
from tests.integration.process_usage import cpu_seconds, descendants
from tests.synthetic import write_ct_series

pytestmark = pytest.mark.slow

SENDERS = 8
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
SLICES = 12


class Child(NamedTuple):
    """A process by its pid and start time: the pid alone may name a newer process once
    this one has gone (pids wrap at 32768 on many kernels, and a busy machine reuses them)."""

    pid: int
    started: str


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat from its state on (the third field); empty once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return []


def _ingest_children(node_pid: int) -> list[Child]:
    return [
        Child(pid, _stat(pid)[19])
        for pid in descendants(node_pid)
        if b"ingest" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ]


def _alive(child: Child) -> bool:
    stat = _stat(child.pid)
    return bool(stat) and stat[0] != "Z" and stat[19] == child.started


def _counts(database: Path) -> tuple[int, int]:
    engine = create_engine(f"sqlite:///{database}")
    try:
        with Session(engine) as session:
            instances = session.scalar(select(func.count()).select_from(Instance)) or 0
            series = session.scalar(select(func.count()).select_from(Series)) or 0
    finally:
        engine.dispose()
    return instances, series


def test_extra_ingest_processes_share_the_port_and_the_journal(tmp_path: Path) -> None:
    config = write_config(tmp_path, ingest_processes=3, rules=[])
    sent = [
        write_ct_series(tmp_path / f"series-{n}", seed=500 + n, rows=64, slices=SLICES).paths
        for n in range(SENDERS)
    ]
    with running_node(config, tmp_path / "node.log") as node:
        children = _ingest_children(node.process.pid)
        assert len(children) == 2, node.log()[-3000:]
        busy_before = sum(cpu_seconds(child.pid) for child in children)
        with ThreadPoolExecutor(SENDERS) as senders:
            results = list(senders.map(lambda files: storescu(node.port, files), sent))
        for result in results:
            assert result.returncode == 0, result.stderr[-2000:]
        assert sum(cpu_seconds(child.pid) for child in children) - busy_before > 0.05, (
            "the extra ingest processes received nothing"
        )
        assert _counts(tmp_path / "storage" / "journal.sqlite") == (SENDERS * SLICES, SENDERS)
        spooled = [p for p in (tmp_path / "storage").rglob("*.dcm") if "results" not in p.parts]
        assert len(spooled) == SENDERS * SLICES
    wait_for(lambda: not any(map(_alive, children)), 30, "the ingest processes to stop")


def _established_to(port: int, pid: int) -> int:
    """Connections to ``port`` whose accepted socket ``pid`` holds (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(FileNotFoundError):
            target = os.readlink(fd)
            held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


@contextmanager
def _node_with_one_extra_process(tmp_path: Path) -> Iterator[tuple[NodeProcess, Child]]:
    """``ingest_processes: 2``: the node and the pid of its extra ingest process."""
    config = write_config(tmp_path, ingest_processes=2, rules=[])
    with running_node(config, tmp_path / "node.log") as node:
        (child,) = _ingest_children(node.process.pid)
        yield node, child


def _verification_requestor(ae_title: str) -> AE:
    requestor = AE(ae_title=ae_title)
    requestor.add_requested_context(VERIFICATION_SOP_CLASS)
    return requestor


def test_associations_spread_evenly_over_the_processes(tmp_path: Path) -> None:
    requestor = _verification_requestor("SPREAD")
    with _node_with_one_extra_process(tmp_path) as (node, child):
        associations: list[Association] = []
        try:
            for _ in range(SENDERS):
                associations.append(requestor.associate("127.0.0.1", node.port, ae_title="CADNODE"))
                assert associations[-1].is_established
            time.sleep(0.2)
            held = [_established_to(node.port, pid) for pid in (node.process.pid, child.pid)]
        finally:
            for association in associations:
                association.release()
    assert sum(held) == SENDERS
    assert min(held) >= SENDERS // 2 - 1, f"associations split {held}"


def test_the_node_still_accepts_after_an_extra_process_stops(tmp_path: Path) -> None:
    requestor = _verification_requestor("AFTER")
    with _node_with_one_extra_process(tmp_path) as (node, child):
        os.kill(child.pid, signal.SIGTERM)  # it closes its SCP: not the listening socket they share
        wait_for(lambda: not _alive(child), 30, "the ingest process to stop")
        for _ in range(4):
            association = requestor.associate("127.0.0.1", node.port, ae_title="CADNODE")
            assert association.is_established, node.log()[-3000:]
            assert association.send_c_echo().Status == 0x0000
            association.release()


def test_extra_ingest_processes_die_with_a_killed_node(tmp_path: Path) -> None:
    config = write_config(tmp_path, ingest_processes=2, rules=[])
    with running_node(config, tmp_path / "node.log") as node:
        children = _ingest_children(node.process.pid)
        assert len(children) == 1, node.log()[-3000:]
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=30)
        wait_for(lambda: not _alive(children[0]), 30, "the orphaned ingest process to exit")

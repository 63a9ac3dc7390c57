"""One ``cad-node serve`` per storage folder (issue 24, item 1).

A second ``serve`` started by mistake on a live node's config used to run crash
recovery on the live node's journal (requeueing the job it held, deleting the spool
files it was writing) before it died on the busy port with a bare traceback.  Now
it takes the storage folder's lock and checks the DICOM port before it opens the
journal, and exits with one line, touching nothing; a node killed with SIGKILL
leaves no lock behind.
"""

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from cad_node.app import PortInUseError, check_port_free
from cad_node.domain.states import JobState
from cad_node.ingest.spool import TEMP_SUFFIX, Spool
from cad_node.store.lock import LOCK_FILE_NAME, FolderInUseError, StorageLock
from cad_node.store.schema import Instance, Job
from tests.conftest import echo, send
from tests.integration.peers import NodeProcess, journal_rows, running_node, wait_for, write_config
from tests.synthetic import write_ct_series

SUCCESS = 0x0000
EXIT_TIMEOUT = 180.0
"""Seconds a refused ``serve`` may take to exit (imports included, on a busy machine)."""
OTHER_WORKER = "gpu-host-2:4242"
"""The worker id of the job the live node's journal shows running (a ``cad-node worker``)."""


# -- the lock and the port check, in-process --------------------------------------------------


def test_a_second_lock_on_the_folder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    first = StorageLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(FolderInUseError) as refused:
            StorageLock(tmp_path).acquire()  # another open file: flock refuses it as it would
        assert refused.value.pid == os.getpid()
        assert str(refused.value).startswith(
            f"another cad-node (pid {os.getpid()}) owns {tmp_path}"
        )
    finally:
        first.release()
    second = StorageLock(tmp_path)
    second.acquire()  # released: free again
    second.release()


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    dead_pid = _pid_of_finished_process()
    (tmp_path / LOCK_FILE_NAME).write_text(f"{dead_pid}\n")
    lock = StorageLock(tmp_path)
    lock.acquire()
    try:
        assert (tmp_path / LOCK_FILE_NAME).read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


def _pid_of_finished_process() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=60)
    return process.pid


def test_a_port_another_program_listens_on_is_reported_by_number(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = int(other.getsockname()[1])
        with pytest.raises(PortInUseError) as refused:
            check_port_free("127.0.0.1", port)
    assert str(refused.value) == (
        f"port {port} is in use (127.0.0.1:{port}): another program listens there"
    )
    check_port_free("127.0.0.1", port)  # closed: free
    check_port_free("127.0.0.1", 0)


# -- real processes: a live node, a second serve, a successor after SIGKILL --------------------


@pytest.mark.slow
def test_a_second_serve_exits_touching_nothing_and_a_killed_nodes_successor_starts(
    tmp_path: Path,
) -> None:
    ct = write_ct_series(
        tmp_path / "ct", seed=242424, rows=64, slices=6, images_in_acquisition=True
    )
    # workers: 0 -- the live node runs no model: its job is held by a worker elsewhere
    config_path = write_config(_folder(tmp_path / "live"), workers=0, quiet_seconds=60)
    storage = Path(yaml.safe_load(config_path.read_text())["storage_dir"])
    live = NodeProcess(config_path, tmp_path / "live" / "node.log")
    try:
        assert send(live.port, list(ct.paths)) == [SUCCESS] * len(ct.paths)
        wait_for(lambda: len(journal_rows(storage, select(Job))) == 1, 60, "the series' job")
        job_id = _hold_the_job(storage)
        in_flight = _temp_spool_file(storage)  # as if the live node were writing it

        # the same config: the folder is the live node's
        second = _serve(config_path)
        assert second.returncode != 0
        assert f"another cad-node (pid {live.process.pid}) owns {storage}" in second.stderr
        _assert_one_clear_line(second)
        (held,) = journal_rows(storage, select(Job))
        assert (held.id, held.state, held.worker_id) == (job_id, JobState.RUNNING, OTHER_WORKER)
        assert held.attempts == 1
        assert in_flight.is_file(), "the live node's spool temp file was deleted"

        # another folder, the live node's port: refused before its journal is made
        other_config = write_config(_folder(tmp_path / "other"), port=live.port, workers=0)
        other_storage = Path(yaml.safe_load(other_config.read_text())["storage_dir"])
        other_in_flight = _temp_spool_file(other_storage)
        third = _serve(other_config)
        assert third.returncode != 0
        assert (
            f"port {live.port} is in use (127.0.0.1:{live.port}): another program listens there"
            in third.stderr
        )
        _assert_one_clear_line(third)
        assert not (other_storage / "journal.sqlite").exists(), "a journal was made"
        assert other_in_flight.is_file(), "recovery ran in the refused node's folder"

        # the live node still receives
        assert echo(live.port) == SUCCESS
        more = write_ct_series(
            tmp_path / "more", seed=424242, rows=64, slices=3, images_in_acquisition=True
        )
        assert send(live.port, list(more.paths)) == [SUCCESS] * len(more.paths)
        assert len(journal_rows(storage, select(Instance))) == len(ct.paths) + len(more.paths)
        assert "Traceback" not in live.log()

        live.kill()
    finally:
        live.stop()

    # SIGKILL left the lock file with a dead pid: the successor starts and recovers
    assert (storage / LOCK_FILE_NAME).read_text() == f"{live.process.pid}\n"
    with running_node(config_path, tmp_path / "live" / "successor.log") as successor:
        assert (storage / LOCK_FILE_NAME).read_text() == f"{successor.process.pid}\n"
        assert echo(successor.port) == SUCCESS
        job = next(j for j in journal_rows(storage, select(Job)) if j.id == job_id)
        assert (job.state, job.worker_id) == (JobState.QUEUED, None), "recovery requeues it"
        assert not in_flight.exists(), "recovery removes the dead node's temp files"
        assert "Traceback" not in successor.log()


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _serve(config_path: Path) -> subprocess.CompletedProcess[str]:
    """``cad-node serve`` run to its exit (bounded: a serve that starts fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "cad_node", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        check=False,
    )


def _assert_one_clear_line(refused: subprocess.CompletedProcess[str]) -> None:
    output = refused.stdout + refused.stderr
    assert "Traceback" not in output, output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("cad-node: error:")]
    assert len(errors) == 1, output


def _hold_the_job(storage: Path) -> int:
    """Mark the one job RUNNING under :data:`OTHER_WORKER` with a lease an hour long."""
    now = datetime.now(UTC)
    engine = create_engine(f"sqlite:///{storage / 'journal.sqlite'}")
    try:
        with Session(engine) as session, session.begin():
            (job_id,) = session.scalars(select(Job.id)).all()
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    state=JobState.RUNNING,
                    worker_id=OTHER_WORKER,
                    attempts=1,
                    started_at=now,
                    lease_expires_at=now + timedelta(hours=1),
                )
            )
    finally:
        engine.dispose()
    return int(job_id)


def _temp_spool_file(storage: Path) -> Path:
    """A spool temp file, as a node writes while it receives (recovery removes such files)."""
    spool = Spool(storage)
    spool.temp_dir.mkdir(parents=True, exist_ok=True)
    path = spool.temp_dir / f"in-flight{TEMP_SUFFIX}"
    path.write_bytes(b"\0" * 128)
    assert list(spool.temp_files()) == [path]
    return path

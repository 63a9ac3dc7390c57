"""Scale-out on PostgreSQL: ``cad-node serve`` with ``workers: 0`` and two ``cad-node worker``s.

One worker is killed (SIGKILL) while it runs the job; its lease is no longer
renewed, the node's sweep puts the job back in the queue when the lease expires,
the other worker finishes it, and the destination receives each result once.
"""

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from cad_node.config import Settings
from cad_node.domain.states import DeliveryState, JobState
from cad_node.models.registry import ModelRegistry
from cad_node.store.jobs import claim_next_job, requeue_expired
from cad_node.store.schema import Delivery, Job, Result
from cad_node.worker import LeasedWorker, LeaseHeartbeat, make_worker
from tests.conftest import FakeClock
from tests.conftest import Journal as JournalFixture
from tests.dcmtk import storescu
from tests.integration.peers import running_node, storescp, wait_for, write_config
from tests.synthetic import write_ct_series
from tests.unit.test_jobs import add_series, queue

LEASE_SECONDS = 3


class Journal:
    """Read-only queries on the node's PostgreSQL journal."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def all(self, statement: Any) -> list[Any]:
        with Session(self.engine) as session:
            return list(session.scalars(statement).all())


class WorkerProcess:
    """``cad-node worker`` in a child process, its output in ``log_path``."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cad_node", "worker", "--config", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"cad-node worker exited: {self.log()[-3000:]}")
        return "started" in self.log()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


@contextmanager
def workers(config_path: Path, folder: Path, count: int) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(config_path, folder / f"worker-{n}.log") for n in range(count)]
    try:
        for worker in started:
            wait_for(worker.started, 120, "cad-node worker to start")
        yield started
    finally:
        for worker in started:
            worker.close()


def _running_job(journal: Journal) -> Job | None:
    running = journal.all(select(Job).where(Job.state == JobState.RUNNING))
    return running[0] if running else None


def _leased_worker(journal: JournalFixture, clock: FakeClock) -> LeasedWorker:
    settings = Settings(lease_seconds=10)
    return make_worker(settings, journal.sessionmaker, ModelRegistry(), clock)


def _lease_of(journal: JournalFixture, job_id: int) -> datetime | None:
    with journal.sessionmaker() as session:
        expires: datetime | None = session.get_one(Job, job_id).lease_expires_at
    return None if expires is None else expires.replace(tzinfo=UTC)


def test_the_heartbeat_keeps_the_lease_and_a_dead_worker_loses_it(
    any_journal: JournalFixture,
) -> None:
    clock = FakeClock()
    worker = _leased_worker(any_journal, clock)
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
        queue(session)
        job = claim_next_job(session, worker.worker_id, clock(), worker.lease_seconds)
        assert job is not None
        job_id = job.id
    with LeaseHeartbeat(lambda: worker._renew(job_id), interval=0.05):
        for _ in range(3):  # 24 s of fake time under a 10 s lease
            clock.advance(8)
            until = clock() + timedelta(seconds=10)

            def renewed(until: datetime = until) -> bool:
                return _lease_of(any_journal, job_id) == until

            wait_for(renewed, 10, "a heartbeat")
            with any_journal.sessionmaker.begin() as session:
                assert requeue_expired(session, clock()) == 0
    clock.advance(10)  # no heartbeat: the lease runs out
    with any_journal.sessionmaker.begin() as session:
        assert requeue_expired(session, clock()) == 1
    assert worker._renew(job_id) is False  # no longer this worker's job


@pytest.mark.slow
@pytest.mark.postgresql
def test_a_killed_workers_job_is_finished_by_the_other_once(
    tmp_path: Path, postgresql_url: str
) -> None:
    series = write_ct_series(tmp_path / "ct", seed=5)
    config_path = write_config(
        tmp_path, database_url=postgresql_url, workers=0, lease_seconds=LEASE_SECONDS
    )
    journal = Journal(postgresql_url)
    pacs_dir = tmp_path / "pacs"
    with ExitStack() as stack:
        node = stack.enter_context(running_node(config_path, tmp_path / "node.log"))
        stack.enter_context(storescp(node.config["destinations"]["pacs"]["port"], pacs_dir))
        pair = stack.enter_context(workers(config_path, tmp_path, 2))
        assert storescu(node.port, list(series.paths)).returncode == 0

        wait_for(lambda: _running_job(journal) is not None, 120, "a worker to claim the job")
        job = _running_job(journal)
        assert job is not None
        assert job.worker_id is not None
        (victim,) = [w for w in pair if job.worker_id.split(":")[1] == str(w.pid)]
        (survivor,) = [w for w in pair if w is not victim]
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=30)

        def delivered() -> bool:
            states = journal.all(select(Delivery.state))
            return states == [DeliveryState.DELIVERED] * 2

        wait_for(delivered, 180, "the other worker to finish and the node to deliver")
        (done,) = journal.all(select(Job))
        assert done.state == JobState.DONE
        assert done.attempts == 2
        assert done.worker_id is not None
        assert done.worker_id.split(":")[1] == str(survivor.pid)
        assert f"job {done.id} done" in survivor.log()
        assert f"job {done.id} done" not in victim.log()

        survivor.process.send_signal(signal.SIGTERM)  # a clean stop: exit status 0
        assert survivor.process.wait(timeout=60) == 0
        assert "stopped" in survivor.log()
        assert "Traceback" not in node.log() + survivor.log()

    results = journal.all(select(Result))
    received = [dcmread(path) for path in pacs_dir.iterdir() if path.is_file()]
    assert sorted(ds.SOPInstanceUID for ds in received) == sorted(
        r.sop_instance_uid for r in results
    )
    assert len(received) == 2
    journal.engine.dispose()

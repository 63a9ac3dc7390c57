"""A worker whose lease expired and whose job was re-run elsewhere drops its own outcome."""

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cad_node.domain.states import JobState
from cad_node.models.registry import ModelRegistry
from cad_node.pipeline.work import JobInput, Worker
from cad_node.results.options import ResultOptions
from cad_node.store.jobs import claim_next_job, complete_job, requeue_expired
from cad_node.store.schema import Job
from tests.conftest import Journal
from tests.unit.test_jobs import SERIES_UID, T0, add_series, queue


def worker(journal: Journal, worker_id: str, tmp_path: Path, **options: Any) -> Worker:
    """A CPU worker on ``journal`` at T0, storing in ``tmp_path``; ``options`` (``limits`` ...)
    go to :class:`Worker` as they are."""
    return Worker(
        sessions=journal.sessionmaker,
        registry=ModelRegistry(device="cpu"),
        storage_dir=tmp_path,
        result_options=ResultOptions(),
        result_kinds={},
        clock=lambda: T0,
        worker_id=worker_id,
        **options,
    )


def job_input(job_id: int) -> JobInput:
    return JobInput(job_id, SERIES_UID, 1, "lung_nodule_ct", (), T0, (), ())


def test_a_reclaimed_job_is_not_failed_by_its_first_worker(
    any_journal: Journal, tmp_path: Path
) -> None:
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
        job_id = queue(session)
    with any_journal.sessionmaker.begin() as session:
        claim_next_job(session, "stalled", T0, lease_seconds=10)
    with any_journal.sessionmaker.begin() as session:
        requeue_expired(session, T0 + timedelta(seconds=10))
        claim_next_job(session, "healthy", T0 + timedelta(seconds=10), lease_seconds=10)
    with any_journal.sessionmaker.begin() as session:
        job = session.get_one(Job, job_id)
        complete_job(session, job, [], finding_count=0, now=T0 + timedelta(seconds=12))

    worker(any_journal, "stalled", tmp_path)._fail(job_input(job_id), "late crash")

    with any_journal.sessionmaker.begin() as session:
        job = session.scalars(select(Job)).one()
        assert (job.state, job.error) == (JobState.DONE, None)


def test_the_holding_worker_records_its_failure(any_journal: Journal, tmp_path: Path) -> None:
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
        job_id = queue(session)
    with any_journal.sessionmaker.begin() as session:
        claim_next_job(session, "w", T0, lease_seconds=10)

    worker(any_journal, "w", tmp_path)._fail(job_input(job_id), "the model refused it")

    with any_journal.sessionmaker.begin() as session:
        job = session.scalars(select(Job)).one()
        assert (job.state, job.error) == (JobState.FAILED, "the model refused it")

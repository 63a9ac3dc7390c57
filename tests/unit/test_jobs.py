"""The job queue in the journal, on SQLite and PostgreSQL: claim, lease, reclaim, complete."""

from datetime import UTC, datetime, timedelta

from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from sqlalchemy import select
from sqlalchemy.orm import Session

from cad_node.domain.states import DeliveryState, JobState, ResultKind, SeriesState
from cad_node.store.jobs import (
    StoredResult,
    claim_next_job,
    complete_job,
    earlier_results,
    fail_job,
    queue_job,
    requeue_all_running,
    requeue_expired,
)
from cad_node.store.schema import Delivery, Job, Series, Study
from tests.conftest import Journal

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SERIES_UID = "1.2.826.0.1.3680043.8.498.1"


def add_series(session: Session) -> None:
    session.add(Study(study_instance_uid="1.2.826.0.1.3680043.8.498.0", created_at=T0))
    session.flush()  # no relationship() orders these inserts: the tables only share foreign keys
    session.add(
        Series(
            series_instance_uid=SERIES_UID,
            study_instance_uid="1.2.826.0.1.3680043.8.498.0",
            modality="CT",
            state=SeriesState.ROUTED,
            revision=1,
            instance_count=3,
            calling_ae_title="SCANNER",
            attributes={"Modality": "CT"},
            first_received_at=T0,
            last_received_at=T0,
        )
    )
    session.flush()


def queue(session: Session, revision: int = 1) -> int:
    job = queue_job(
        session,
        series_instance_uid=SERIES_UID,
        series_revision=revision,
        rule_name="chest",
        model_name="lung_nodule_ct",
        destinations=["pacs"],
        now=T0,
    )
    return job.id


def test_claim_takes_each_job_once(any_journal: Journal) -> None:
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
        first = queue(session)
    with any_journal.sessionmaker.begin() as session:
        job = claim_next_job(session, "worker-a", T0, lease_seconds=60)
        assert job is not None
        assert (job.id, job.state, job.attempts) == (first, JobState.RUNNING, 1)
    with any_journal.sessionmaker.begin() as session:
        assert claim_next_job(session, "worker-b", T0, lease_seconds=60) is None


def test_expired_lease_is_reclaimed(any_journal: Journal) -> None:
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
        queue(session)
    with any_journal.sessionmaker.begin() as session:
        assert claim_next_job(session, "dies", T0, lease_seconds=60) is not None
    with any_journal.sessionmaker.begin() as session:
        assert requeue_expired(session, T0 + timedelta(seconds=59)) == 0
        assert requeue_expired(session, T0 + timedelta(seconds=60)) == 1
    with any_journal.sessionmaker.begin() as session:
        job = claim_next_job(session, "survivor", T0, lease_seconds=60)
        assert job is not None
        assert (job.worker_id, job.attempts) == ("survivor", 2)


def test_restart_requeues_running_jobs(any_journal: Journal) -> None:
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
        queue(session)
        claim_next_job(session, "crashed", T0, lease_seconds=600)
    with any_journal.sessionmaker.begin() as session:
        assert requeue_all_running(session) == 1
        assert session.scalar(select(Job.state)) == JobState.QUEUED


def test_complete_journals_results_and_pending_deliveries(any_journal: Journal) -> None:
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
        queue(session)
    results = [
        StoredResult(ResultKind.SEG, SegmentationStorage, "2.25.1", "2.25.10", "a", ("pacs",)),
        StoredResult(
            ResultKind.SR,
            Comprehensive3DSRStorage,
            "2.25.2",
            "2.25.20",
            "b",
            ("pacs", "viewer"),
        ),
    ]
    with any_journal.sessionmaker.begin() as session:
        job = claim_next_job(session, "w", T0, lease_seconds=60)
        assert job is not None
        complete_job(session, job, results, finding_count=2, now=T0)
    with any_journal.sessionmaker.begin() as session:
        job = session.scalars(select(Job)).one()
        assert (job.state, job.finding_count) == (JobState.DONE, 2)
        deliveries = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        assert [(d.destination, d.state) for d in deliveries] == [
            ("pacs", DeliveryState.PENDING),
            ("pacs", DeliveryState.PENDING),
            ("viewer", DeliveryState.PENDING),
        ]
        predecessors = earlier_results(session, SERIES_UID, 2, ResultKind.SR)
        assert [r.sop_instance_uid for r in predecessors] == ["2.25.2"]
        assert earlier_results(session, SERIES_UID, 1, ResultKind.SR) == []


def test_failed_job_keeps_its_reason(any_journal: Journal) -> None:
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
        queue(session)
    with any_journal.sessionmaker.begin() as session:
        job = claim_next_job(session, "w", T0, lease_seconds=60)
        assert job is not None
        fail_job(job, "one slice is not a volume", T0)
    with any_journal.sessionmaker.begin() as session:
        job = session.scalars(select(Job)).one()
        assert (job.state, job.error) == (JobState.FAILED, "one slice is not a volume")

"""Retention's selection and removal on a real SQLite journal, with an injected clock.

Rows are written as the node writes them; the files are small stand-ins in a storage
folder. What may go: a series whose every job ended and every delivery ended delivered,
settled longer ago than the keep time; what stays: everything else, and every row.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, SegmentationStorage
from sqlalchemy import select

from cad_node.cli import build_parser
from cad_node.config import RetentionSettings
from cad_node.domain.states import DeliveryState, JobState, ResultKind, SeriesState
from cad_node.store.disk import folder_bytes, storage_use
from cad_node.store.retention import (
    RetentionPolicy,
    purge,
    purgeable_series,
    purged_inputs_error,
)
from cad_node.store.schema import AuditEvent, Delivery, Instance, Job, Result, Series, Study
from tests.conftest import Journal

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.900"
POLICY = RetentionPolicy(keep_hours=72, keep_unrouted_hours=None)


@dataclass
class Storage:
    """A journal and its storage folder, filled the way the node fills them."""

    journal: Journal
    root: Path
    jobs: int = 0

    def series(
        self,
        uid: str,
        state: SeriesState = SeriesState.ROUTED,
        *,
        at: datetime = T0,
        instances: int = 2,
        study: str = STUDY,
    ) -> list[str]:
        """A series received at ``at`` with ``instances`` spooled files; their paths."""
        paths = [f"spool/{study}/{uid}/{uid}.{n}.dcm" for n in range(1, instances + 1)]
        with self.journal.sessionmaker.begin() as session:
            if session.get(Study, study) is None:
                session.add(Study(study_instance_uid=study, created_at=at))
                session.flush()
            session.add(_series_row(uid, study, state, at))
            session.flush()
            for number, path in enumerate(paths, 1):
                session.add(_instance_row(uid, number, path, at))
        for path in paths:
            self.write(path, b"\0" * 100)
        return paths

    def job(
        self,
        uid: str,
        state: JobState = JobState.DONE,
        *,
        at: datetime = T0,
        deliveries: tuple[DeliveryState, ...] = (DeliveryState.DELIVERED,),
        group: list[str] | None = None,
        kinds: tuple[ResultKind, ...] = (ResultKind.SEG, ResultKind.SR),
    ) -> list[str]:
        """A job on ``uid`` that ended at ``at``, its results and deliveries; result paths."""
        self.jobs += 1
        paths = [f"results/{uid}/{self.jobs}/m-{kind}.dcm" for kind in kinds]
        with self.journal.sessionmaker.begin() as session:
            job = _job_row(uid, state, at, group, self.jobs)
            session.add(job)
            session.flush()
            for kind, path in zip(kinds, paths, strict=True):
                result = _result_row(job.id, kind, path, at, f"{uid}.{self.jobs}.{kind}")
                session.add(result)
                session.flush()
                for number, delivery in enumerate(deliveries):
                    session.add(_delivery_row(result.id, f"pacs{number}", delivery, at))
        for path in paths:
            self.write(path, b"\0" * 50)
        return paths

    def write(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def candidates(self, now: datetime, policy: RetentionPolicy = POLICY) -> list[str]:
        with self.journal.sessionmaker() as session:
            return [c.series_instance_uid for c in purgeable_series(session, policy, now)]


def _series_row(uid: str, study: str, state: SeriesState, at: datetime) -> Series:
    return Series(
        series_instance_uid=uid,
        study_instance_uid=study,
        modality="CT",
        state=state,
        revision=1,
        instance_count=2,
        calling_ae_title="CT01",
        attributes={},
        first_received_at=at,
        last_received_at=at,
        completed_at=at,
    )


def _instance_row(uid: str, number: int, path: str, at: datetime) -> Instance:
    return Instance(
        sop_instance_uid=f"{uid}.{number}",
        series_instance_uid=uid,
        sop_class_uid=CTImageStorage,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        instance_number=number,
        path=path,
        size_bytes=100,
        calling_ae_title="CT01",
        series_revision=1,
        received_at=at,
    )


def _job_row(uid: str, state: JobState, at: datetime, group: list[str] | None, n: int) -> Job:
    ended = state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
    return Job(
        series_instance_uid=uid,
        series_revision=n,
        rule_name="lung",
        model_name="m",
        destinations=["pacs0"],
        state=state,
        created_at=at,
        finished_at=at if ended else None,
        series_group=group,
    )


def _result_row(job_id: int, kind: ResultKind, path: str, at: datetime, uid: str) -> Result:
    return Result(
        job_id=job_id,
        kind=kind,
        sop_class_uid=SegmentationStorage,
        sop_instance_uid=uid,
        series_instance_uid=uid + ".1",
        path=path,
        created_at=at,
    )


def _delivery_row(result_id: int, name: str, state: DeliveryState, at: datetime) -> Delivery:
    delivered = state not in (DeliveryState.PENDING, DeliveryState.FAILED)  # stored there
    return Delivery(
        result_id=result_id,
        destination=name,
        state=state,
        attempts=1,
        next_attempt_at=at,
        delivered_at=at if delivered else None,
    )


@pytest.fixture
def storage(any_journal: Journal, tmp_path: Path) -> Storage:
    root = tmp_path / "storage"
    root.mkdir()
    return Storage(any_journal, root)


AFTER = T0 + timedelta(hours=72, minutes=1)
BEFORE = T0 + timedelta(hours=71, minutes=59)


# -- selection -----------------------------------------------------------------------------


def test_a_delivered_series_goes_only_after_the_keep_time(storage: Storage) -> None:
    storage.series("1.1")
    storage.job("1.1", deliveries=(DeliveryState.DELIVERED, DeliveryState.DELIVERED_WITH_WARNING))
    assert storage.candidates(BEFORE) == []
    assert storage.candidates(AFTER) == ["1.1"]


def test_the_keep_time_counts_from_the_last_delivery(storage: Storage) -> None:
    storage.series("1.1")
    storage.job("1.1", at=T0 + timedelta(hours=10))
    assert storage.candidates(AFTER) == []
    assert storage.candidates(AFTER + timedelta(hours=10)) == ["1.1"]


def test_a_series_whose_results_were_committed_goes_after_the_keep_time(storage: Storage) -> None:
    storage.series("1.1")
    storage.job("1.1", deliveries=(DeliveryState.COMMITTED, DeliveryState.DELIVERED))
    assert storage.candidates(BEFORE) == []
    assert storage.candidates(AFTER) == ["1.1"]


@pytest.mark.parametrize("state", [DeliveryState.PENDING, DeliveryState.FAILED, DeliveryState.SENT])
def test_a_delivery_not_delivered_keeps_the_series(storage: Storage, state: DeliveryState) -> None:
    storage.series("1.1")
    storage.job("1.1", deliveries=(DeliveryState.DELIVERED, state))
    assert storage.candidates(AFTER + timedelta(days=365)) == []


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING])
def test_a_job_not_ended_keeps_the_series(storage: Storage, state: JobState) -> None:
    storage.series("1.1")
    storage.job("1.1")
    storage.job("1.1", state, deliveries=())  # a late instance's re-run
    assert storage.candidates(AFTER + timedelta(days=365)) == []


def test_failed_cancelled_and_shadow_jobs_have_ended(storage: Storage) -> None:
    for uid, state in (("1.1", JobState.FAILED), ("1.2", JobState.CANCELLED)):
        storage.series(uid)
        storage.job(uid, state, deliveries=(), kinds=())
    storage.series("1.3")
    storage.job("1.3", deliveries=())  # shadow: results recorded, sent nowhere
    assert storage.candidates(AFTER) == ["1.1", "1.2", "1.3"]


def test_a_study_group_job_keeps_every_series_it_reads(storage: Storage) -> None:
    group = ["2.1", "2.2", "2.3", "2.4"]
    for uid in group:
        storage.series(uid)
    storage.job("2.1", deliveries=(DeliveryState.PENDING,), group=group)
    assert storage.candidates(AFTER) == []


def test_an_unrouted_series_follows_keep_unrouted_hours(storage: Storage) -> None:
    storage.series("3.1", SeriesState.UNROUTED)
    assert storage.candidates(AFTER + timedelta(days=365)) == []  # None: kept
    policy = RetentionPolicy(keep_hours=72, keep_unrouted_hours=1)
    assert storage.candidates(T0 + timedelta(minutes=59), policy) == []
    assert storage.candidates(T0 + timedelta(minutes=61), policy) == ["3.1"]


@pytest.mark.parametrize("state", [SeriesState.RECEIVING, SeriesState.COMPLETE])
def test_a_series_on_its_way_stays(storage: Storage, state: SeriesState) -> None:
    storage.series("4.1", state)
    policy = RetentionPolicy(keep_hours=0, keep_unrouted_hours=0)
    assert storage.candidates(AFTER, policy) == []


def test_a_routed_series_no_job_reads_stays(storage: Storage) -> None:
    storage.series("4.2", SeriesState.ROUTED)
    assert storage.candidates(AFTER, RetentionPolicy(keep_hours=0, keep_unrouted_hours=0)) == []


def test_the_purge_command_shortens_the_keep_time_and_takes_unrouted() -> None:
    settings = RetentionSettings(keep_hours=72, keep_unrouted_hours=None)
    assert RetentionPolicy.from_settings(settings) == RetentionPolicy(72, None)
    assert RetentionPolicy.from_settings(settings, older_than_hours=2) == RetentionPolicy(2, None)
    assert RetentionPolicy.from_settings(settings, unrouted=True) == RetentionPolicy(72, 72)
    both = RetentionPolicy.from_settings(settings, older_than_hours=0, unrouted=True)
    assert both == RetentionPolicy(0, 0)
    hourly = RetentionSettings(keep_hours=72, keep_unrouted_hours=1)
    assert RetentionPolicy.from_settings(hourly, older_than_hours=5) == RetentionPolicy(5, 1)


# -- removal -------------------------------------------------------------------------------


def test_purge_removes_files_keeps_rows_and_the_sr(storage: Storage) -> None:
    spooled = storage.series("5.1")
    seg, sr = storage.job("5.1")
    kept = storage.series("5.2")
    storage.job("5.2", deliveries=(DeliveryState.PENDING,))

    report = purge(storage.journal.sessionmaker, storage.root, POLICY, AFTER)

    assert [c.series_instance_uid for c in report.purged] == ["5.1"]
    assert report.files_removed == 3
    assert report.bytes_removed == 250
    assert not any((storage.root / p).exists() for p in [*spooled, seg])
    assert (storage.root / sr).exists()  # a later revision's SR references it
    assert not (storage.root / "spool" / STUDY / "5.1").exists()
    assert all((storage.root / p).exists() for p in kept)
    with storage.journal.sessionmaker() as session:
        assert session.get_one(Series, "5.1").purged_at == AFTER
        assert session.get_one(Series, "5.2").purged_at is None
        assert len(session.scalars(select(Instance)).all()) == 4
        results = {r.path: r.purged_at for r in session.scalars(select(Result))}
    assert results[seg] == AFTER
    assert results[sr] is None
    with storage.journal.sessionmaker() as session:
        (event,) = session.scalars(select(AuditEvent)).all()
    assert (event.actor, event.action, event.target) == ("node", "series.purged", "series 5.1")
    assert event.detail == {
        "files_removed": 3,
        "bytes_removed": 250,
        "settled_at": "2026-12-01 08:00:00 UTC",
    }
    assert purge(storage.journal.sessionmaker, storage.root, POLICY, AFTER).purged == ()


def test_a_resent_series_is_purged_again(storage: Storage) -> None:
    spooled = storage.series("6.1")
    storage.job("6.1")
    purge(storage.journal.sessionmaker, storage.root, POLICY, AFTER)
    later = AFTER + timedelta(hours=1)
    with storage.journal.sessionmaker.begin() as session:  # the sender sends it again
        for instance in session.scalars(select(Instance)):
            instance.received_at = later
    for path in spooled:
        storage.write(path, b"\0" * 100)
    assert storage.candidates(later + timedelta(hours=71)) == []
    report = purge(storage.journal.sessionmaker, storage.root, POLICY, later + timedelta(hours=73))
    assert report.files_removed == 2


def test_a_rerun_of_a_purged_series_is_refused_with_the_reason(storage: Storage) -> None:
    paths = [storage.root / p for p in storage.series("7.1", instances=3)]
    purged = {"7.1": AFTER}
    assert purged_inputs_error(paths, purged) is None  # all there (sent again): it runs
    paths[0].unlink()
    paths[1].unlink()
    reason = purged_inputs_error(paths, purged)
    assert reason is not None
    assert "2 of 3 instance files were removed by retention" in reason
    assert "series 7.1 at 2026-12-04 08:01 UTC" in reason
    assert "Send the whole series again" in reason
    assert purged_inputs_error(paths, {}) is None  # not purged: the usual error applies


def test_storage_use_measures_spool_and_results(storage: Storage) -> None:
    storage.series("8.1", instances=3)
    storage.job("8.1")
    use = storage_use(storage.root, min_free_fraction=0.0)
    assert use.spool_bytes == 300
    assert use.results_bytes == 100
    assert 0 < use.free_bytes <= use.total_bytes
    assert use.low is False
    assert storage_use(storage.root, min_free_fraction=1.0).low is True
    assert folder_bytes(storage.root / "missing") == 0


@pytest.mark.parametrize(("hours", "reason"), [("-1", "0 or more"), ("soon", "not a number")])
def test_the_purge_command_refuses_hours_it_cannot_use(
    hours: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["purge", "--older-than", hours])
    assert reason in capsys.readouterr().err

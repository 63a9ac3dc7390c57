"""Group commit of received instances (cad_node.ingest.journal_writer) on a real SQLite journal."""

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage
from sqlalchemy import event, func, select

from cad_node.errors import StorageError
from cad_node.ingest.journal_writer import GroupCommitter, JournalWriter
from cad_node.store.instances import InstanceRecord, RecordOutcome
from cad_node.store.schema import Instance, Series
from tests.conftest import Journal

SERIES_UID = "1.2.826.0.1.3680043.9.3811.7.1"
REFUSED_SOP_UID = "1.2.826.0.1.3680043.9.3811.7.2.999"


def _record(number: int) -> InstanceRecord:
    sop_instance_uid = f"1.2.826.0.1.3680043.9.3811.7.2.{number}"
    return InstanceRecord(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=CTImageStorage,
        series_instance_uid=SERIES_UID,
        study_instance_uid="1.2.826.0.1.3680043.9.3811.7.0",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        instance_number=number,
        path=f"spool/s/{sop_instance_uid}.dcm",
        size_bytes=1000,
        calling_ae_title="SCANNER",
        attributes={"Modality": "CT"},
        expected_count=None,
    )


def _now() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def writer(journal: Journal) -> JournalWriter:
    return JournalWriter(journal.sessionmaker, _now)


def _record_from_threads(writer: GroupCommitter, numbers: range) -> dict[int, object]:
    """Each record from its own thread, all at once; the outcome or the exception per number."""
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(numbers))

    def record(number: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[number] = writer.record(_record(number))
        except StorageError as exc:
            results[number] = exc

    threads = [threading.Thread(target=record, args=(n,)) for n in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_records_share_commits_and_each_is_committed_before_it_returns(
    journal: Journal, writer: JournalWriter, tmp_path: Path
) -> None:
    commits: list[int] = []
    event.listen(journal.engine, "commit", lambda _connection: commits.append(1))
    # Another connection holds SQLite's write lock, so the records queue up behind the first.
    blocker = sqlite3.connect(
        tmp_path / "journal.sqlite", isolation_level=None, check_same_thread=False
    )
    blocker.execute("BEGIN IMMEDIATE")
    released = threading.Timer(1.0, blocker.execute, args=("COMMIT",))
    released.start()

    results = _record_from_threads(writer, range(16))
    released.join()
    blocker.close()

    assert all(isinstance(outcome, RecordOutcome) for outcome in results.values())
    assert sorted(o.instance_count for o in results.values()) == list(range(1, 17))  # type: ignore[attr-defined]
    assert len(commits) <= 3  # the first record's batch, then those that queued behind it
    with journal.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 16
        assert session.scalar(select(Series.instance_count)) == 16


def refuse_one_sop_instance(journal: Journal) -> None:
    """Make the journal refuse the row of :data:`REFUSED_SOP_UID` (a trigger)."""
    with journal.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON instances "
            f"WHEN NEW.sop_instance_uid = '{REFUSED_SOP_UID}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )


def test_a_refused_row_fails_only_its_own_instance(journal: Journal, writer: JournalWriter) -> None:
    refuse_one_sop_instance(journal)

    results = _record_from_threads(writer, range(990, 1000))

    assert isinstance(results.pop(999), StorageError)
    assert all(isinstance(outcome, RecordOutcome) for outcome in results.values())
    with journal.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 9

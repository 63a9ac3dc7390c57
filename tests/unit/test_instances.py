"""Recording instances in the journal, on SQLite and PostgreSQL."""

import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cad_node.domain.states import SeriesState
from cad_node.store import instances
from cad_node.store.instances import (
    InstanceRecord,
    RecordedIdentity,
    RecordOutcome,
    record_instance,
    record_instances,
    record_instances_with_driver,
)
from cad_node.store.schema import Instance, Series, Study
from tests.conftest import Journal


def _through_the_driver(
    session: Session, records: Sequence[InstanceRecord], now: datetime
) -> list[RecordOutcome]:
    """record_instances, run by record_instances_with_driver in the session's transaction."""
    connection = session.connection()
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    return record_instances_with_driver(dbapi_connection, connection.dialect, records, now)


@pytest.fixture(autouse=True, params=["core", "driver"])
def recording_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here twice: SQLAlchemy Core statements, then the same through the driver
    (what the ingest JournalWriter uses on SQLite and PostgreSQL)."""
    if request.param == "driver":
        monkeypatch.setattr(instances, "record_instances", _through_the_driver)
        monkeypatch.setattr(sys.modules[__name__], "record_instances", _through_the_driver)
    return str(request.param)


T0 = datetime(2026, 1, 2, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.11"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def make_record(number: int, **changes: object) -> InstanceRecord:
    sop_instance_uid = f"1.2.826.0.1.3680043.8.498.12.{number}"
    record = InstanceRecord(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=CTImageStorage,
        series_instance_uid=SERIES,
        study_instance_uid=STUDY,
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        instance_number=number,
        path=f"spool/{STUDY}/{SERIES}/{sop_instance_uid}.dcm",
        size_bytes=1000 + number,
        calling_ae_title="SCANNER",
        attributes={"CallingAETitle": "SCANNER", "Modality": "CT", "SliceThickness": 1.25},
        expected_count=None,
    )
    return replace(record, **changes)  # type: ignore[arg-type]  # test helper: typed by the dataclass


def record(journal: Journal, instance: InstanceRecord, now: datetime = T0) -> RecordOutcome:
    with journal.sessionmaker.begin() as session:
        return record_instance(session, instance, now)


def series_row(session: Session) -> Series:
    return session.execute(select(Series)).scalar_one()


def test_the_first_instance_creates_study_series_and_instance(any_journal: Journal) -> None:
    outcome = record(any_journal, make_record(1, expected_count=3))

    assert outcome.is_new
    assert (outcome.series_revision, outcome.instance_count, outcome.expected_count) == (1, 1, 3)
    assert not outcome.revision_raised
    with any_journal.sessionmaker() as session:
        series = series_row(session)
        assert session.get_one(Study, STUDY).created_at == T0
        instance = session.get_one(Instance, make_record(1).sop_instance_uid)
    assert series.state == SeriesState.RECEIVING
    assert series.modality == "CT"
    assert series.calling_ae_title == "SCANNER"
    assert series.attributes == {
        "CallingAETitle": "SCANNER",
        "Modality": "CT",
        "SliceThickness": 1.25,
    }
    assert (series.first_received_at, series.last_received_at) == (T0, T0)
    assert (instance.series_revision, instance.size_bytes, instance.instance_number) == (1, 1001, 1)


def test_a_resend_counts_once_and_refreshes_the_row(any_journal: Journal) -> None:
    record(any_journal, make_record(1))
    later = T0 + timedelta(seconds=5)

    outcome = record(any_journal, make_record(1, size_bytes=4242, calling_ae_title="OTHER"), later)

    assert not outcome.is_new
    assert outcome.instance_count == 1
    with any_journal.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
        instance = session.get_one(Instance, make_record(1).sop_instance_uid)
        assert (instance.size_bytes, instance.calling_ae_title) == (4242, "OTHER")
        assert series_row(session).last_received_at == later


def test_instances_are_counted_and_the_expected_count_is_kept(any_journal: Journal) -> None:
    record(any_journal, make_record(1))
    record(any_journal, make_record(2, expected_count=3), T0 + timedelta(seconds=1))
    outcome = record(any_journal, make_record(3, expected_count=99), T0 + timedelta(seconds=2))

    assert (outcome.instance_count, outcome.expected_count) == (3, 3)
    assert outcome.expected_count_reached


def test_later_instances_complete_but_never_overwrite_attributes(any_journal: Journal) -> None:
    record(any_journal, make_record(1))
    extra = {"CallingAETitle": "X", "Modality": "MR", "BodyPartExamined": "CHEST"}
    record(any_journal, make_record(2, attributes=extra))

    with any_journal.sessionmaker() as session:
        attributes = series_row(session).attributes
    assert attributes["Modality"] == "CT"
    assert attributes["CallingAETitle"] == "SCANNER"
    assert attributes["BodyPartExamined"] == "CHEST"


def test_last_received_at_never_goes_back(any_journal: Journal) -> None:
    record(any_journal, make_record(1), T0 + timedelta(seconds=10))
    record(any_journal, make_record(2), T0)

    with any_journal.sessionmaker() as session:
        assert series_row(session).last_received_at == T0 + timedelta(seconds=10)


@pytest.mark.parametrize("state", [SeriesState.COMPLETE, SeriesState.ROUTED, SeriesState.UNROUTED])
def test_a_late_instance_raises_the_revision(any_journal: Journal, state: SeriesState) -> None:
    record(any_journal, make_record(1))
    with any_journal.sessionmaker.begin() as session:
        series = series_row(session)
        series.state = state
        series.completed_at = T0

    late = record(any_journal, make_record(2), T0 + timedelta(minutes=5))
    resend = record(any_journal, make_record(1), T0 + timedelta(minutes=6))

    assert (late.is_new, late.revision_raised, late.series_revision) == (True, True, 2)
    assert (resend.is_new, resend.revision_raised, resend.series_revision) == (False, False, 2)
    with any_journal.sessionmaker() as session:
        series = series_row(session)
        columns = select(Instance.instance_number, Instance.series_revision)
        revisions = dict(session.execute(columns).all())
    assert (series.state, series.completed_at, series.instance_count) == (
        SeriesState.RECEIVING,
        None,
        2,
    )
    assert revisions == {1: 1, 2: 2}


def test_a_batch_counts_each_instance_in_order_and_a_duplicate_once(any_journal: Journal) -> None:
    other_series = "1.2.826.0.1.3680043.8.498.13"
    batch = [
        make_record(1, expected_count=3),
        make_record(2, expected_count=3),
        make_record(9, series_instance_uid=other_series),
        make_record(2, expected_count=3),  # the same instance twice in one transaction
        make_record(3, expected_count=3),
    ]
    with any_journal.sessionmaker.begin() as session:
        outcomes = record_instances(session, batch, T0)

    assert [(o.is_new, o.instance_count) for o in outcomes] == [
        (True, 1),
        (True, 2),
        (True, 1),
        (False, 2),
        (True, 3),
    ]
    assert [o.expected_count_reached for o in outcomes] == [False, False, False, False, True]
    with any_journal.sessionmaker() as session:
        counts = dict(
            session.execute(select(Series.series_instance_uid, Series.instance_count)).all()
        )
        instances = session.scalar(select(func.count()).select_from(Instance))
        studies = session.scalar(select(func.count()).select_from(Study))
    assert counts == {SERIES: 3, other_series: 1}
    assert (instances, studies) == (4, 1)


def test_a_late_batch_raises_the_revision_once(any_journal: Journal) -> None:
    record(any_journal, make_record(1))
    with any_journal.sessionmaker.begin() as session:
        series_row(session).state = SeriesState.ROUTED

    with any_journal.sessionmaker.begin() as session:
        outcomes = record_instances(session, [make_record(2), make_record(3)], T0)

    assert [(o.revision_raised, o.series_revision) for o in outcomes] == [(True, 2), (False, 2)]


def test_a_resend_after_completion_changes_nothing(any_journal: Journal) -> None:
    record(any_journal, make_record(1))
    with any_journal.sessionmaker.begin() as session:
        series_row(session).state = SeriesState.ROUTED

    outcome = record(any_journal, make_record(1), T0 + timedelta(minutes=1))

    assert (outcome.is_new, outcome.series_revision) == (False, 1)
    with any_journal.sessionmaker() as session:
        series = series_row(session)
    assert (series.state, series.last_received_at) == (SeriesState.ROUTED, T0)


OTHER_STUDY = "1.2.826.0.1.3680043.8.498.20"
OTHER_SERIES = "1.2.826.0.1.3680043.8.498.21"


def elsewhere(number: int, study: str, series: str, **changes: object) -> InstanceRecord:
    """Instance ``number``'s SOP Instance UID under ``study`` and ``series``."""
    sop_instance_uid = make_record(number).sop_instance_uid
    path = f"spool/{study}/{series}/{sop_instance_uid}.dcm"
    return make_record(
        number, study_instance_uid=study, series_instance_uid=series, path=path, **changes
    )


def journal_rows(journal: Journal) -> tuple[list[tuple[object, ...]], ...]:
    """Every study, series and instance row, as plain tuples."""
    with journal.sessionmaker() as session:
        return (
            [tuple(row) for row in session.execute(select(Study.study_instance_uid))],
            [
                tuple(row)
                for row in session.execute(
                    select(
                        Series.series_instance_uid,
                        Series.study_instance_uid,
                        Series.instance_count,
                        Series.last_received_at,
                        Series.state,
                    )
                )
            ],
            [
                tuple(row)
                for row in session.execute(
                    select(
                        Instance.sop_instance_uid,
                        Instance.series_instance_uid,
                        Instance.path,
                        Instance.size_bytes,
                        Instance.calling_ae_title,
                        Instance.received_at,
                    )
                )
            ],
        )


@pytest.mark.parametrize(
    ("study", "series"),
    [(STUDY, OTHER_SERIES), (OTHER_STUDY, SERIES), (OTHER_STUDY, OTHER_SERIES)],
    ids=["another-series", "another-study", "both"],
)
def test_a_sop_instance_uid_resent_elsewhere_is_refused_and_changes_nothing(
    any_journal: Journal, study: str, series: str
) -> None:
    record(any_journal, make_record(1))
    studies, series_rows, instance_rows = journal_rows(any_journal)
    conflicting = elsewhere(1, study, series, size_bytes=7, calling_ae_title="INTRUDER")

    outcome = record(any_journal, conflicting, T0 + timedelta(minutes=1))

    assert outcome.refused
    assert outcome.conflict == RecordedIdentity(SERIES, STUDY)
    assert (outcome.is_new, outcome.instance_count) == (False, 0)
    after = journal_rows(any_journal)
    assert after[1:] == (series_rows, instance_rows)
    assert set(after[0]) - set(studies) <= {(OTHER_STUDY,)}  # a study row, with no series


def test_a_batch_refuses_only_the_instance_resent_elsewhere(any_journal: Journal) -> None:
    record(any_journal, make_record(1))
    batch = [
        make_record(2),
        elsewhere(1, OTHER_STUDY, OTHER_SERIES),
        elsewhere(3, OTHER_STUDY, OTHER_SERIES),
        elsewhere(2, STUDY, OTHER_SERIES),  # recorded under SERIES earlier in this batch
        make_record(1),
    ]
    with any_journal.sessionmaker.begin() as session:
        outcomes = record_instances(session, batch, T0)

    assert [o.conflict for o in outcomes] == [
        None,
        RecordedIdentity(SERIES, STUDY),
        None,
        RecordedIdentity(SERIES, STUDY),
        None,
    ]
    assert [(o.is_new, o.instance_count) for o in outcomes] == [
        (True, 2),
        (False, 0),
        (True, 1),
        (False, 0),
        (False, 2),
    ]
    with any_journal.sessionmaker() as session:
        counts = dict(
            session.execute(select(Series.series_instance_uid, Series.instance_count)).all()
        )
        series_of = dict(
            session.execute(select(Instance.instance_number, Instance.series_instance_uid)).all()
        )
    assert counts == {SERIES: 2, OTHER_SERIES: 1}
    assert series_of == {1: SERIES, 2: SERIES, 3: OTHER_SERIES}


def test_a_refused_instance_creates_no_series(any_journal: Journal) -> None:
    record(any_journal, make_record(1))

    record(any_journal, elsewhere(1, STUDY, OTHER_SERIES))

    with any_journal.sessionmaker() as session:
        uids = session.scalars(select(Series.series_instance_uid)).all()
    assert uids == [SERIES]


def test_concurrent_associations_record_one_new_series(any_journal: Journal) -> None:
    """Threads racing to create the same study and series: no IntegrityError, no lost count."""
    count = 12
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def send(number: int) -> None:
        try:
            barrier.wait(timeout=10)
            record(any_journal, make_record(number))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(1, count + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    with any_journal.sessionmaker() as session:
        assert series_row(session).instance_count == count
        assert session.scalar(select(func.count()).select_from(Instance)) == count
        assert session.scalar(select(func.count()).select_from(Study)) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sop_instance_uid": ""}, "sop_instance_uid"),
        ({"series_instance_uid": "1." * 40}, "series_instance_uid"),
        ({"path": "/abs/file.dcm"}, "relative"),
        ({"path": "spool/../../etc/passwd"}, "relative"),
        ({"size_bytes": -1}, "size_bytes"),
        ({"expected_count": 0}, "expected_count"),
        ({"calling_ae_title": "A" * 17}, "AE title"),
    ],
)
def test_an_invalid_record_cannot_be_built(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_record(1, **changes)


def test_modality_comes_from_the_attributes() -> None:
    assert make_record(1).modality == "CT"
    assert make_record(1, attributes={"CallingAETitle": "X"}).modality == ""


def test_the_driver_statements_cover_every_column_the_rows_set() -> None:
    """The driver path compiles its inserts for listed columns: a column added to a row
    builder but not to its list would be dropped without a word."""
    record = make_record(1, expected_count=3)

    assert tuple(instances._instance_row(record, 1, T0)) == instances._INSTANCE_KEYS
    assert tuple(instances._new_series_row(record, T0)) == instances._NEW_SERIES_KEYS


AXIAL = {
    "CallingAETitle": "SCANNER",
    "Modality": "CT",
    "SOPClassUID": CTImageStorage,
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "SliceThickness": 1.25,
}
SCOUT = AXIAL | {
    "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
    "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
    "SliceThickness": 3.0,
    "KVP": 120.0,
}
CAPTURE = {
    "CallingAETitle": "SCANNER",
    "Modality": "OT",
    "SOPClassUID": SecondaryCaptureImageStorage,
}


def _recorded(journal: Journal, *records: InstanceRecord) -> RecordOutcome:
    with journal.sessionmaker.begin() as session:
        return record_instances(session, list(records), T0)[-1]


@pytest.mark.parametrize("one_batch", [True, False])
def test_a_scout_sent_first_gives_way_to_the_stack(any_journal: Journal, one_batch: bool) -> None:
    scout = make_record(1, attributes=SCOUT, expected_count=1)
    axial = [make_record(n, attributes=AXIAL, expected_count=3) for n in (2, 3)]
    if one_batch:
        outcome = _recorded(any_journal, scout, *axial)
    else:
        outcome = [_recorded(any_journal, r) for r in (scout, *axial)][-1]

    assert (outcome.instance_count, outcome.expected_count) == (3, 4)  # 3 axial + the scout
    assert not outcome.expected_count_reached
    with any_journal.sessionmaker() as session:
        series = series_row(session)
    assert series.attributes == AXIAL  # the scout's KVP is no attribute of the stack
    assert series.expected_count == 4


def test_a_capture_first_gives_way_and_the_modality_follows(any_journal: Journal) -> None:
    capture = make_record(
        1, sop_class_uid=SecondaryCaptureImageStorage, attributes=CAPTURE, expected_count=1
    )
    outcome = _recorded(any_journal, capture)
    assert outcome.expected_count is None  # a screen capture never completes the series

    _recorded(any_journal, make_record(2, attributes=AXIAL))

    with any_journal.sessionmaker() as session:
        series = series_row(session)
    assert (series.modality, series.attributes) == ("CT", AXIAL)


def test_a_scout_or_capture_after_the_stack_changes_nothing_but_the_count(
    any_journal: Journal,
) -> None:
    _recorded(any_journal, make_record(1, attributes=AXIAL, expected_count=2))
    capture = make_record(3, sop_class_uid=SecondaryCaptureImageStorage, attributes=CAPTURE)
    outcome = _recorded(any_journal, make_record(2, attributes=SCOUT, expected_count=1), capture)

    assert (outcome.instance_count, outcome.expected_count) == (3, 4)
    with any_journal.sessionmaker() as session:
        series = series_row(session)
    assert (series.modality, series.attributes) == ("CT", AXIAL)

"""The queue's order by clinical priority, on SQLite and PostgreSQL: stat before routine,
oldest first within a class, promotion after the age limit (a stepped clock), lanes."""

from datetime import UTC, datetime, timedelta

import pytest
from pydicom.uid import CTImageStorage
from sqlalchemy import select

from cad_node.config.queue import LaneSettings, QueueSettings
from cad_node.domain.priority import PriorityClass, PriorityFrom, resolve_priority
from cad_node.pipeline.assemble import Assembler
from cad_node.queueing import lane_claims, models_without_lane
from cad_node.routing.rules import Rule
from cad_node.store.instances import InstanceRecord, record_instance
from cad_node.store.jobs import claim_next_job, queue_job
from cad_node.store.lanes import ClaimFilter, claiming_for
from cad_node.store.priority import promote_waiting
from cad_node.store.schema import Job
from tests.conftest import FakeClock, Journal
from tests.unit.test_jobs import SERIES_UID, add_series

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LIMITS = {
    PriorityClass.URGENT: timedelta(minutes=15),
    PriorityClass.ROUTINE: timedelta(minutes=60),
    PriorityClass.SCREENING: timedelta(minutes=240),
}


def queue(
    journal: Journal,
    revision: int,
    priority: PriorityClass | None,
    at: datetime,
    model: str = "lung_nodule_ct",
) -> int:
    with journal.sessionmaker.begin() as session:
        job = queue_job(
            session,
            series_instance_uid=SERIES_UID,
            series_revision=revision,
            rule_name="chest",
            model_name=model,
            destinations=["pacs"],
            now=at,
            priority_class=priority,
        )
        return job.id


def claim(journal: Journal, at: datetime, models: set[str] | None = None) -> int | None:
    lane = None if models is None else ClaimFilter(frozenset(models))
    with journal.sessionmaker.begin() as session, claiming_for(lane):
        job = claim_next_job(session, "worker", at, lease_seconds=60)
        return None if job is None else job.id


@pytest.fixture
def journal(any_journal: Journal) -> Journal:
    with any_journal.sessionmaker.begin() as session:
        add_series(session)
    return any_journal


def test_stat_before_routine_and_oldest_first_within_a_class(journal: Journal) -> None:
    routine = [queue(journal, n, None, T0 + timedelta(seconds=n)) for n in range(1, 6)]
    screening = queue(journal, 6, PriorityClass.SCREENING, T0)
    stat = queue(journal, 7, PriorityClass.STAT, T0 + timedelta(seconds=30))
    urgent = queue(journal, 8, PriorityClass.URGENT, T0 + timedelta(seconds=20))
    order = [claim(journal, T0 + timedelta(minutes=1)) for _ in range(8)]
    assert order == [stat, urgent, *routine, screening]
    assert claim(journal, T0 + timedelta(minutes=1)) is None


def test_queue_records_class_and_rank(journal: Journal) -> None:
    job_id = queue(journal, 1, PriorityClass.STAT, T0)
    plain = queue(journal, 2, None, T0)
    with journal.sessionmaker() as session:
        stat, routine = session.get(Job, job_id), session.get(Job, plain)
        assert stat is not None
        assert routine is not None
        assert (stat.priority_class, stat.priority_rank) == ("stat", 0)
        assert (routine.priority_class, routine.priority_rank) == (None, 2)


def test_a_long_wait_is_promoted_one_class_at_a_time(journal: Journal) -> None:
    screening = queue(journal, 1, PriorityClass.SCREENING, T0)
    clock = T0
    ranks = []
    for minutes in (239, 1, 59, 1, 14, 1):  # the stepped clock: just under, then at, each limit
        clock += timedelta(minutes=minutes)
        with journal.sessionmaker.begin() as session:
            promote_waiting(session, clock, LIMITS)
        with journal.sessionmaker() as session:
            job = session.get(Job, screening)
            assert job is not None
            ranks.append(job.priority_rank)
    assert ranks == [3, 2, 2, 1, 1, 0]
    with journal.sessionmaker() as session:
        job = session.get(Job, screening)
        assert job is not None
        assert job.priority_class == "screening"
        assert job.promoted_at is not None


def test_a_promoted_job_goes_before_newer_jobs_of_its_new_class(journal: Journal) -> None:
    old = queue(journal, 1, PriorityClass.SCREENING, T0)
    later = T0 + timedelta(minutes=241)
    fresh = queue(journal, 2, PriorityClass.ROUTINE, later)
    with journal.sessionmaker.begin() as session:
        assert promote_waiting(session, later, LIMITS) == 1
    assert [claim(journal, later), claim(journal, later)] == [old, fresh]


def test_a_lane_claims_only_its_models(journal: Journal) -> None:
    ct = queue(journal, 1, PriorityClass.STAT, T0)
    mammo = queue(journal, 2, None, T0 + timedelta(seconds=1), model="mammo_screening")
    assert claim(journal, T0, {"mammo_screening", "fundus_dr"}) == mammo
    assert claim(journal, T0, {"mammo_screening"}) is None
    assert claim(journal, T0) == ct


def test_the_star_lane_claims_every_model_no_other_lane_names(journal: Journal) -> None:
    lanes = {
        "ct": LaneSettings(models=("lung_nodule_ct",)),
        "rest": LaneSettings(models=("*",)),
    }
    queue(journal, 1, PriorityClass.STAT, T0)
    site = queue(journal, 2, None, T0, model="site_model")
    rest = lane_claims("rest", lanes)
    assert rest == ClaimFilter(exclude=frozenset({"lung_nodule_ct"}))
    with journal.sessionmaker.begin() as session, claiming_for(rest):
        job = claim_next_job(session, "worker", T0, lease_seconds=60)
        assert job is not None
        assert job.id == site
    assert lane_claims("ct", lanes) == ClaimFilter(include=frozenset({"lung_nodule_ct"}))
    assert models_without_lane(lanes, ["site_model"]) == []
    assert models_without_lane({"ct": lanes["ct"]}, ["site_model", "lung_nodule_ct"]) == [
        "site_model"
    ]


@pytest.mark.parametrize(
    ("source", "attributes", "expected"),
    [
        (PriorityFrom.DICOM, {"RequestedProcedurePriority": "STAT"}, PriorityClass.STAT),
        (PriorityFrom.DICOM, {"StudyPriorityID": "HIGH"}, PriorityClass.URGENT),
        (PriorityFrom.DICOM, {"StudyPriorityID": "LOW"}, PriorityClass.SCREENING),
        (PriorityFrom.DICOM, {"RequestedProcedurePriority": "SOON"}, PriorityClass.URGENT),
        (PriorityFrom.CALLING_AE, {}, PriorityClass.STAT),
        (None, {"RequestedProcedurePriority": "STAT"}, PriorityClass.URGENT),
    ],
)
def test_priority_from_dicom_or_the_calling_ae(
    source: PriorityFrom | None, attributes: dict[str, object], expected: PriorityClass
) -> None:
    found = resolve_priority(
        PriorityClass.URGENT, source, attributes, {"ED_CT": PriorityClass.STAT}, "ED_CT "
    )
    assert found is expected


def test_no_rule_class_is_routine() -> None:
    assert resolve_priority(None, None, {}) is PriorityClass.ROUTINE


def ct_instance(series: int, calling_ae: str, priority: str | None) -> InstanceRecord:
    """One CT image (expected alone: the series completes by count) from ``calling_ae``."""
    series_uid = f"1.2.826.0.1.3680043.8.498.31.{series}"
    attributes: dict[str, object] = {"CallingAETitle": calling_ae, "Modality": "CT"}
    if priority is not None:
        attributes["RequestedProcedurePriority"] = priority
    return InstanceRecord(
        sop_instance_uid=f"{series_uid}.1",
        sop_class_uid=CTImageStorage,
        series_instance_uid=series_uid,
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.30.{series}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        instance_number=1,
        path=f"spool/{series_uid}/1.dcm",
        size_bytes=1000,
        calling_ae_title=calling_ae,
        attributes=attributes,  # type: ignore[arg-type]  # JSON values
        expected_count=1,
    )


@pytest.mark.parametrize(
    ("rule_fields", "calling_ae", "dicom", "expected"),
    [
        ({"priority_class": "urgent"}, "SCANNER", "STAT", ("urgent", 1)),
        ({"priority_from": "dicom"}, "SCANNER", "STAT", ("stat", 0)),
        (
            {"priority_from": "dicom", "priority_class": "screening"},
            "SCANNER",
            None,
            ("screening", 3),
        ),
        ({"priority_from": "calling_ae"}, "ED_CT", None, ("stat", 0)),
        ({"priority_from": "calling_ae"}, "SCANNER", None, ("routine", 2)),
    ],
)
def test_routing_queues_the_class_the_rule_says(
    journal: Journal,
    rule_fields: dict[str, str],
    calling_ae: str,
    dicom: str | None,
    expected: tuple[str, int],
) -> None:
    rule = Rule.model_validate(
        {
            "name": "chest",
            "when": {"keyword": "Modality", "equals": "CT"},
            "model": "lung_nodule_ct",
            "destinations": ["pacs"],
            **rule_fields,
        }
    )
    clock = FakeClock()
    assembler = Assembler(
        sessions=journal.sessionmaker,
        rules=lambda: (rule,),
        quiet_seconds=10.0,
        clock=clock,
        calling_ae_classes={"ED_CT": PriorityClass.STAT},
    )
    with journal.sessionmaker.begin() as session:
        record_instance(session, ct_instance(1, calling_ae, dicom), clock())
    assert [r.job_id for r in assembler.sweep()] != [None]
    with journal.sessionmaker() as session:
        job = session.scalars(select(Job)).one()
        assert (job.priority_class or "routine", job.priority_rank) == expected


def test_a_model_runs_in_one_lane_only() -> None:
    with pytest.raises(ValueError, match="model 'fundus_dr' is in lanes 'a' and 'b'"):
        QueueSettings(
            lanes={
                "a": LaneSettings(models=("fundus_dr",)),
                "b": LaneSettings(models=("mammo_screening", "fundus_dr")),
            }
        )

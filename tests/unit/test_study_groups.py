"""Mammography and fundus series complete and route as one study group."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pydicom.uid import (
    BreastTomosynthesisImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
)
from sqlalchemy import select

from cad_node.assembly.completion import StudyGrouping, four_views_present, study_group_complete
from cad_node.domain.states import SeriesState
from cad_node.pipeline.assemble import Assembler
from cad_node.routing.rules import Rule
from cad_node.store.instances import InstanceRecord, record_instance
from cad_node.store.schema import Job, Series
from cad_node.store.series import instance_paths
from tests.conftest import FakeClock, Journal

STUDY = "1.2.826.0.1.3680043.8.498.20"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
GROUPS = {"MG": StudyGrouping.FOUR_VIEWS, "OP": StudyGrouping.QUIET}


def mammogram(series: int, number: int, laterality: str, view: str) -> InstanceRecord:
    series_uid = f"1.2.826.0.1.3680043.8.498.21.{series}"
    sop_uid = f"1.2.826.0.1.3680043.8.498.22.{series}.{number}"
    return InstanceRecord(
        sop_instance_uid=sop_uid,
        sop_class_uid=DigitalMammographyXRayImageStorageForPresentation,
        series_instance_uid=series_uid,
        study_instance_uid=STUDY,
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        instance_number=number,
        path=f"spool/{STUDY}/{series_uid}/{sop_uid}.dcm",
        size_bytes=1000,
        calling_ae_title="MAMMO",
        attributes={"CallingAETitle": "MAMMO", "Modality": "MG", "ViewPosition": view},
        expected_count=None,
        image_laterality=laterality,
        view_position=view,
    )


RULES = (
    Rule.model_validate(
        {
            "name": "screening-mammography",
            "when": {"keyword": "Modality", "equals": "MG"},
            "model": "mammo_screening",
            "destinations": ["pacs"],
        }
    ),
)


@pytest.fixture
def journal(any_journal: Journal) -> Journal:
    """Every test here runs on SQLite and on PostgreSQL."""
    return any_journal


@pytest.fixture
def assembler(journal: Journal, clock: FakeClock) -> Assembler:
    return Assembler(
        sessions=journal.sessionmaker,
        rules=lambda: RULES,
        quiet_seconds=10.0,
        clock=clock,
        study_groups=GROUPS,
    )


def receive(journal: Journal, clock: FakeClock, *records: InstanceRecord) -> None:
    with journal.sessionmaker.begin() as session:
        for instance in records:
            record_instance(session, instance, clock())


def jobs(journal: Journal) -> list[Job]:
    with journal.sessionmaker() as session:
        return list(session.scalars(select(Job)))


def test_four_views_in_two_series_make_one_job_before_the_quiet_period(
    journal: Journal, clock: FakeClock, assembler: Assembler
) -> None:
    receive(journal, clock, mammogram(1, 1, "R", "CC"), mammogram(1, 2, "L", "CC"))
    assert assembler.sweep() == []  # two views only, not quiet yet

    clock.advance(3)
    receive(journal, clock, mammogram(2, 1, "R", "MLO"), mammogram(2, 2, "L", "MLO"))
    routed = assembler.sweep()

    assert len(routed) == 1
    (job,) = jobs(journal)
    assert job.model_name == "mammo_screening"
    first, second = mammogram(1, 1, "R", "CC"), mammogram(2, 1, "R", "MLO")
    assert job.series_group == [first.series_instance_uid, second.series_instance_uid]
    with journal.sessionmaker() as session:
        states = {s.series_instance_uid: s for s in session.scalars(select(Series))}
        paths = instance_paths(session, *(job.series_group or []))
    assert {s.state for s in states.values()} == {SeriesState.ROUTED}
    assert "study group" in (
        states[mammogram(2, 1, "R", "MLO").series_instance_uid].routing_explanation or ""
    )
    assert len(paths) == 4


def test_an_incomplete_mammogram_waits_for_the_quiet_period(
    journal: Journal, clock: FakeClock, assembler: Assembler
) -> None:
    receive(journal, clock, mammogram(1, 1, "R", "CC"), mammogram(1, 2, "R", "MLO"))
    clock.advance(9)
    assert assembler.sweep() == []
    clock.advance(1)

    assert len(assembler.sweep()) == 1
    (job,) = jobs(journal)
    assert job.series_group == [mammogram(1, 1, "R", "CC").series_instance_uid]


def test_a_later_series_of_the_study_is_read_with_the_earlier_ones(
    journal: Journal, clock: FakeClock, assembler: Assembler
) -> None:
    receive(journal, clock, mammogram(1, 1, "R", "CC"), mammogram(1, 2, "R", "MLO"))
    clock.advance(10)
    assembler.sweep()
    clock.advance(60)
    receive(journal, clock, mammogram(2, 1, "L", "CC"), mammogram(2, 2, "L", "MLO"))

    assert len(assembler.sweep()) == 1  # the four views are there now
    second = max(jobs(journal), key=lambda job: job.id)
    assert second.series_instance_uid == mammogram(2, 1, "L", "CC").series_instance_uid
    assert second.series_group == [
        mammogram(1, 1, "R", "CC").series_instance_uid,
        mammogram(2, 1, "L", "CC").series_instance_uid,
    ]


def test_a_group_is_routed_by_a_series_a_rule_takes_not_by_whichever_came_first(
    journal: Journal, clock: FakeClock
) -> None:
    two_d_only = Rule.model_validate(
        {
            "name": "screening-mammography",
            "when": {
                "keyword": "SOPClassUID",
                "equals": DigitalMammographyXRayImageStorageForPresentation,
            },
            "model": "mammo_screening",
            "destinations": ["pacs"],
        }
    )
    assembler = Assembler(
        sessions=journal.sessionmaker,
        rules=lambda: (two_d_only,),
        quiet_seconds=10.0,
        clock=clock,
        study_groups=GROUPS,
    )
    tomosynthesis = replace(
        mammogram(1, 1, "R", "CC"),
        sop_class_uid=BreastTomosynthesisImageStorage,
        attributes={
            "Modality": "MG",
            "SOPClassUID": BreastTomosynthesisImageStorage,
        },
    )
    receive(journal, clock, tomosynthesis)
    clock.advance(1)
    views = [
        mammogram(2, n, side, view)
        for n, (side, view) in enumerate(
            (("R", "CC"), ("R", "MLO"), ("L", "CC"), ("L", "MLO")), start=1
        )
    ]
    receive(
        journal,
        clock,
        *[
            replace(
                v,
                attributes={
                    **v.attributes,
                    "SOPClassUID": DigitalMammographyXRayImageStorageForPresentation,
                },
            )
            for v in views
        ],
    )

    assert len(assembler.sweep()) == 1
    (job,) = jobs(journal)
    assert job.series_instance_uid == views[0].series_instance_uid
    assert job.model_name == "mammo_screening"


def test_ungrouped_modalities_still_complete_per_series(
    journal: Journal, clock: FakeClock, assembler: Assembler
) -> None:
    ct = replace(
        mammogram(3, 1, "", ""),
        attributes={"CallingAETitle": "CT", "Modality": "CT"},
        image_laterality=None,
        view_position=None,
    )
    receive(journal, clock, ct)
    clock.advance(10)

    (routed,) = assembler.sweep()
    assert routed.rule_name is None  # no CT rule here: completed alone and unrouted


def test_four_views_rule() -> None:
    views = [("L", "CC"), ("L", "MLO"), ("R", "CC")]
    assert not four_views_present(views)
    assert four_views_present([*views, ("R", "MLO"), (None, None)])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    recent = now - timedelta(seconds=1)
    full = [*views, ("R", "MLO")]
    assert study_group_complete(StudyGrouping.FOUR_VIEWS, full, recent, now, 10)
    assert not study_group_complete(StudyGrouping.QUIET, full, recent, now, 10)
    assert study_group_complete(StudyGrouping.QUIET, [], now - timedelta(seconds=10), now, 10)

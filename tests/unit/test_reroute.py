"""Re-routing a completed series by the rules in force now (:meth:`Assembler.reroute`), on
SQLite and PostgreSQL: the sweep's own decision, a new revision only when the series'
revision has a job of the model already, a study group routed together."""

from collections.abc import Sequence

import pytest
from sqlalchemy import select

from cad_node.domain.states import SeriesState
from cad_node.pipeline.assemble import Assembler
from cad_node.routing.rules import Rule
from cad_node.store.instances import InstanceRecord
from cad_node.store.schema import AuditEvent, Job, Series
from tests.conftest import FakeClock, Journal
from tests.unit.test_instances import make_record
from tests.unit.test_study_groups import GROUPS, mammogram, receive
from tests.unit.test_study_groups import jobs as jobs_of

CT_SERIES = "1.2.826.0.1.3680043.8.498.31"


def rule(name: str, model: str, modality: str) -> Rule:
    return Rule.model_validate(
        {
            "name": name,
            "when": {"keyword": "Modality", "equals": modality},
            "model": model,
            "destinations": ["pacs"],
        }
    )


@pytest.fixture
def journal(any_journal: Journal) -> Journal:
    return any_journal


class Rules:
    """The rules in force, changed by the test as an admin would."""

    def __init__(self, *rules: Rule) -> None:
        self.rules: Sequence[Rule] = rules

    def __call__(self) -> Sequence[Rule]:
        return self.rules


def assembler(journal: Journal, clock: FakeClock, rules: Rules) -> Assembler:
    return Assembler(
        sessions=journal.sessionmaker,
        rules=rules,
        quiet_seconds=10.0,
        clock=clock,
        study_groups=GROUPS,
    )


def reroute(
    journal: Journal, node: Assembler, clock: FakeClock, uid: str
) -> tuple[int, int | None]:
    with journal.sessionmaker.begin() as session:
        series = session.get_one(Series, uid)
        outcome = node.reroute(session, series, clock())
        return outcome.series_revision, outcome.job_id


def ct_record() -> InstanceRecord:
    return make_record(1, series_instance_uid=CT_SERIES)


def test_a_reroute_after_a_rule_change_queues_the_new_model_on_the_same_revision(
    journal: Journal, clock: FakeClock
) -> None:
    rules = Rules()
    node = assembler(journal, clock, rules)
    receive(journal, clock, ct_record())
    clock.advance(10)
    node.sweep()
    assert jobs_of(journal) == []

    rules.rules = (rule("ct", "model_a", "CT"),)
    assert reroute(journal, node, clock, CT_SERIES)[0] == 1
    rules.rules = (rule("ct", "model_b", "CT"),)
    assert reroute(journal, node, clock, CT_SERIES)[0] == 1  # another model: same revision
    # model_a again: revision 1 has a job of it, so the revision is raised.
    rules.rules = (rule("ct", "model_a", "CT"),)
    revision, job_id = reroute(journal, node, clock, CT_SERIES)

    assert revision == 2
    assert [(job.series_revision, job.model_name) for job in jobs_of(journal)] == [
        (1, "model_a"),
        (1, "model_b"),
        (2, "model_a"),
    ]
    with journal.sessionmaker() as session:
        series = session.get_one(Series, CT_SERIES)
        assert (series.state, series.rule_name, series.revision) == (SeriesState.ROUTED, "ct", 2)
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    # One "received" (the sweep), one "routed" per routing: a re-route receives nothing.
    assert actions == ["series.received", *["series.routed"] * 4]
    assert job_id is not None


def test_a_reroute_of_a_grouped_series_routes_its_study_group(
    journal: Journal, clock: FakeClock
) -> None:
    rules = Rules()
    node = assembler(journal, clock, rules)
    receive(journal, clock, mammogram(1, 1, "R", "CC"), mammogram(1, 2, "L", "CC"))
    receive(journal, clock, mammogram(2, 1, "R", "MLO"), mammogram(2, 2, "L", "MLO"))
    node.sweep()
    second = mammogram(2, 1, "R", "MLO").series_instance_uid
    first = mammogram(1, 1, "R", "CC").series_instance_uid

    rules.rules = (rule("mammo", "mammo_screening", "MG"),)
    reroute(journal, node, clock, second)

    (job,) = jobs_of(journal)
    assert job.series_instance_uid == first
    assert job.series_group == [first, second]
    with journal.sessionmaker() as session:
        states = {s.series_instance_uid: s.state for s in session.scalars(select(Series))}
        assert session.scalar(select(Job.series_revision)) == 1
    assert states == {first: SeriesState.ROUTED, second: SeriesState.ROUTED}

"""A rule's ``on_out_of_domain`` goes into the job when it is queued (sweep and re-route),
on SQLite and PostgreSQL, and the journal counts the abstentions per model and reason."""

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from cad_node.domain.abstention import Abstention, AbstentionReason, OodScore, OutOfDomainAction
from cad_node.domain.domain_check import abstention_record
from cad_node.domain.states import JobState
from cad_node.pipeline.assemble import Assembler
from cad_node.routing.rules import Rule
from cad_node.store.abstentions import AbstentionCount, abstention_counts, done_jobs_per_model
from cad_node.store.jobs import complete_job, queue_job
from cad_node.store.schema import Series
from tests.conftest import FakeClock, Journal
from tests.unit.test_reroute import CT_SERIES, Rules, assembler, ct_record, reroute
from tests.unit.test_study_groups import jobs, receive

T0 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


@pytest.fixture
def journal(any_journal: Journal) -> Journal:
    return any_journal


def ct_rule(action: OutOfDomainAction | None) -> Rule:
    data = {
        "name": "ct",
        "when": {"keyword": "Modality", "equals": "CT"},
        "model": "lung_nodule_ct",
        "destinations": ["pacs"],
    }
    if action is not None:
        data["on_out_of_domain"] = action.value
    return Rule.model_validate(data)


def test_the_rules_choice_is_queued_with_the_job_and_a_reroute_takes_the_rule_then(
    journal: Journal, clock: FakeClock
) -> None:
    rules = Rules(ct_rule(None))
    node: Assembler = assembler(journal, clock, rules)
    receive(journal, clock, ct_record())
    clock.advance(10)
    node.sweep()
    rules.rules = (ct_rule(OutOfDomainAction.RUN_ANYWAY),)
    reroute(journal, node, clock, CT_SERIES)

    assert [job.on_out_of_domain for job in jobs(journal)] == ["report", "run_anyway"]


def _done_job(session: Session, model: str, revision: int, abstention: Abstention | None) -> None:
    job = queue_job(
        session,
        series_instance_uid=CT_SERIES,
        series_revision=revision,
        rule_name="ct",
        model_name=model,
        destinations=[],
        now=T0,
    )
    job.on_out_of_domain = "skip" if revision == 3 else None
    record = abstention_record(abstention) if abstention is not None else None
    complete_job(session, job, [], 0, T0, abstention=record)


def test_abstentions_are_counted_per_model_reason_and_choice(
    journal: Journal, clock: FakeClock
) -> None:
    receive(journal, clock, ct_record())
    outside = Abstention(AbstentionReason.OUTSIDE_VALIDATED_DOMAIN, ("Modality 'MR' ...",))
    ood = Abstention(
        AbstentionReason.OUT_OF_DISTRIBUTION, ("over",), OodScore("mahalanobis", 9.0, 3.0)
    )
    with journal.sessionmaker.begin() as session:
        assert session.get(Series, CT_SERIES) is not None
        _done_job(session, "lung_nodule_ct", 1, outside)
        _done_job(session, "lung_nodule_ct", 2, ood)
        _done_job(session, "lung_nodule_ct", 3, outside)
        _done_job(session, "lung_nodule_ct", 4, None)
        _done_job(session, "fundus_dr", 1, ood)

    with journal.sessionmaker() as session:
        counts = abstention_counts(session)
        done = done_jobs_per_model(session)
    assert counts == [
        AbstentionCount("fundus_dr", "out_of_distribution", "report", 1),
        AbstentionCount("lung_nodule_ct", "out_of_distribution", "report", 1),
        AbstentionCount("lung_nodule_ct", "outside_validated_domain", "report", 1),
        AbstentionCount("lung_nodule_ct", "outside_validated_domain", "skip", 1),
    ]
    assert done == {"fundus_dr": 1, "lung_nodule_ct": 4}
    assert all(job.state == JobState.DONE for job in jobs(journal))

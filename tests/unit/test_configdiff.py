"""node.yaml against the journal (cad_node.configdiff): the comparison on literals, apply on a
SQLite journal seeded as a node seeds it, the start-up warnings through the log redaction,
and the dashboard's banner."""

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cad_node.admin.api import create_app
from cad_node.admin.context import AdminContext
from cad_node.config import Settings
from cad_node.configdiff.diff import compare, compare_destinations, compare_rules
from cad_node.configdiff.sync import apply_to_journal, diff_against_journal
from cad_node.errors import ConfigError
from cad_node.models.registry import ModelRegistry
from cad_node.security.redaction import RedactingFilter
from cad_node.store.model_modes_and_destinations import DestinationBook
from cad_node.store.rulesets import RuleBook, version_number
from cad_node.store.schema import AuditEvent
from tests.conftest import FakeClock, Journal

MODELS = ("lung_nodule_ct", "mammo_screening")
PACS = {"host": "127.0.0.1", "port": 104, "ae_title": "PACS", "results": ["seg", "sr"]}
CT = {
    "name": "ct",
    "model": "lung_nodule_ct",
    "mode": "shadow",
    "when": {"keyword": "Modality", "equals": "CT"},
}
MG = {
    "name": "mg",
    "model": "mammo_screening",
    "mode": "shadow",
    "when": {"keyword": "Modality", "equals": "MG"},
}


def settings(rules: list[dict[str, Any]], destinations: dict[str, Any]) -> Settings:
    return Settings.model_validate({"rules": rules, "destinations": destinations})


# -- the comparison -------------------------------------------------------------------------


def test_the_same_data_has_no_difference() -> None:
    difference = compare([CT, MG], [CT, MG], {"pacs": PACS}, {"pacs": PACS})
    assert not difference.differs
    assert difference.unified == ()
    assert difference.text() == "node.yaml and the journal hold the same rules and destinations"


def test_rules_differ_by_name_content_and_order() -> None:
    changed = {**CT, "when": {"keyword": "Modality", "equals": "MR"}, "priority": 5}
    assert compare_rules([changed], [CT]) == ["rule ct: changed (when, priority)"]
    assert compare_rules([CT], [CT, MG]) == ["rule mg: only in the journal"]
    assert compare_rules([CT, MG], [MG]) == ["rule ct: only in node.yaml"]
    assert compare_rules([MG, CT], [CT, MG]) == [
        "rules: order differs (node.yaml: mg, ct; journal: ct, mg)"
    ]


def test_destinations_differ_by_name_and_each_setting() -> None:
    moved = {**PACS, "port": 4242, "results": ["sr"]}
    assert compare_destinations({"pacs": moved, "viewer": PACS}, {"pacs": PACS, "old": PACS}) == [
        "destination old: only in the journal",
        "destination pacs: port: journal 104, node.yaml 4242",
        'destination pacs: results: journal ["seg", "sr"], node.yaml ["sr"]',
        "destination viewer: only in node.yaml",
    ]
    tls = {**PACS, "tls": {"ca_certificates": "/ca.pem"}}
    assert compare_destinations({"pacs": tls}, {"pacs": PACS}) == [
        'destination pacs: tls: journal (not set), node.yaml {"ca_certificates": "/ca.pem"}'
    ]


def test_the_text_is_a_unified_diff_of_yaml_journal_first() -> None:
    difference = compare([CT], [CT, MG], {"pacs": {**PACS, "port": 11}}, {"pacs": PACS})
    assert difference.sections == ("rules", "destinations")
    text = difference.text()
    assert text.startswith("node.yaml differs from the journal:\n  rule mg: only in the journal\n")
    assert "--- journal\n+++ node.yaml\n" in text
    assert "-    port: 104\n+    port: 11\n" in text
    assert "-- name: mg\n" in text


# -- the journal ------------------------------------------------------------------------------


def seeded(journal: Journal, clock: FakeClock, config: Settings) -> None:
    """Seed the journal as a node does on its first start (cad_node.app.Node._open)."""
    RuleBook(journal.sessionmaker, clock).seed(config.rules)
    DestinationBook(journal.sessionmaker, clock).seed(config.destinations)


def test_apply_writes_only_what_differs_audited_as_the_admin_api_does(journal: Journal) -> None:
    clock = FakeClock()
    seeded(journal, clock, settings([CT], {"pacs": PACS, "old": PACS}))
    edited = settings([CT, {**MG, "destinations": ["viewer"]}], {"pacs": PACS, "viewer": PACS})
    with journal.sessionmaker() as session:
        assert diff_against_journal(session, edited).sections == ("rules", "destinations")
    with journal.sessionmaker.begin() as session:
        done = apply_to_journal(
            session, edited, "cli", clock(), source="node.yaml", installed_models=MODELS
        )
    assert done == [
        "destination viewer: added",
        "destination old: deleted",
        "rules: saved as version 2",
    ]
    with journal.sessionmaker() as session:
        assert not diff_against_journal(session, edited).differs
        assert version_number(session) == 2
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [(e.actor, e.action, e.target) for e in events] == [
            ("cli", "destination.create", "destination viewer"),
            ("cli", "destination.delete", "destination old"),
            ("cli", "rules.apply", "version 2"),
        ]
    with journal.sessionmaker.begin() as session:
        assert (
            apply_to_journal(
                session, edited, "cli", clock(), source="node.yaml", installed_models=MODELS
            )
            == []
        )


def test_apply_refuses_a_destination_whose_tls_files_are_missing(journal: Journal) -> None:
    clock = FakeClock()
    seeded(journal, clock, settings([CT], {"pacs": PACS}))
    bad = settings([CT], {"pacs": {**PACS, "tls": {"ca_certificates": "/no/such/ca.pem"}}})
    with pytest.raises(ConfigError, match=r"ca\.pem"), journal.sessionmaker.begin() as session:
        apply_to_journal(session, bad, "cli", clock(), source="node.yaml", installed_models=MODELS)
    with journal.sessionmaker() as session:
        assert session.scalars(select(AuditEvent)).all() == []


def test_the_start_up_warnings_survive_the_log_redaction(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    seeded(journal, clock, settings([CT], {"pacs": PACS}))
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.WARNING):
        seeded(journal, clock, settings([MG], {"pacs": {**PACS, "port": 5}}))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    for message in messages:
        assert "withheld" not in message
        assert "cad-node config diff" in message
        assert "cad-node config apply" in message


# -- the dashboard --------------------------------------------------------------------------


def dashboard(journal: Journal, config: Settings) -> str:
    clock = FakeClock()
    context = AdminContext(
        settings=config,
        sessions=journal.sessionmaker,
        rule_book=RuleBook(journal.sessionmaker, clock),
        registry=ModelRegistry(device="cpu"),
        clock=clock,
        ready=lambda: True,
    )
    with TestClient(create_app(context)) as client:
        page = client.get("/")
        assert page.status_code == 200
        return page.text


def test_the_dashboard_warns_while_the_config_differs_from_the_journal(journal: Journal) -> None:
    started_with = settings([CT], {"pacs": PACS})
    seeded(journal, FakeClock(), started_with)
    assert 'id="config-drift"' not in dashboard(journal, started_with)
    edited = settings([CT], {"pacs": {**PACS, "port": 5}})
    page = dashboard(journal, edited)
    assert 'id="config-drift"' in page
    assert "(destinations)" in page
    assert "cad-node config apply" in page
    assert "5" not in page.split('id="config-drift"')[1].split("</p>")[0]  # names parts only

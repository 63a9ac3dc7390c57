"""Admin actions on journal rows no running pipeline touches: cancel a queued job, retry a
failed delivery; tokens and the rule book. Real HTTP on 127.0.0.1 to the admin server alone."""

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import select

from cad_node.admin.api import create_app
from cad_node.admin.auth import Principal, find_principal, token_sha256
from cad_node.admin.context import AdminContext
from cad_node.admin.server import AdminServer
from cad_node.config import AdminSettings, AdminToken, Settings
from cad_node.domain.states import DeliveryState, JobState, ResultKind
from cad_node.models.registry import ModelRegistry
from cad_node.store.jobs import StoredResult, claim_next_job, complete_job
from cad_node.store.rulesets import RuleBook, save_version
from cad_node.store.schema import AuditEvent, Delivery, Job
from tests.conftest import FakeClock, Journal
from tests.unit.test_jobs import T0, add_series, queue

TOKEN = "unit-admin-token"


@pytest.fixture
def client(journal: Journal, free_port: int, clock: FakeClock) -> Iterator[httpx.Client]:
    admin = AdminSettings(
        port=free_port,
        tokens=(AdminToken(name="carol", role="admin", sha256=token_sha256(TOKEN)),),
    )
    settings = Settings.model_validate(
        {
            "destinations": {"pacs": {"host": "127.0.0.1", "port": 1, "ae_title": "PACS"}},
            "admin": admin.model_dump(),
        }
    )
    rule_book = RuleBook(journal.sessionmaker, clock)
    rule_book.seed(settings.rules)
    context = AdminContext(
        settings=settings,
        sessions=journal.sessionmaker,
        rule_book=rule_book,
        registry=ModelRegistry(device="cpu"),
        clock=clock,
        ready=lambda: True,
    )
    server = AdminServer(create_app(context), admin)
    assert server.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", headers=headers) as http:
            yield http
    finally:
        server.stop()


def test_cancel_a_queued_job_then_retry_it(journal: Journal, client: httpx.Client) -> None:
    with journal.sessionmaker.begin() as session:
        add_series(session)
        job_id = queue(session)
    cancelled = client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    with journal.sessionmaker.begin() as session:
        assert claim_next_job(session, "w", T0, lease_seconds=60) is None
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    assert client.post(f"/api/jobs/{job_id}/retry").json()["state"] == "queued"
    with journal.sessionmaker() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions == ["job.cancel", "job.retry"]


def test_retry_a_failed_delivery_now(
    journal: Journal, client: httpx.Client, clock: FakeClock
) -> None:
    with journal.sessionmaker.begin() as session:
        add_series(session)
        queue(session)
        job = claim_next_job(session, "w", T0, lease_seconds=60)
        assert job is not None
        stored = StoredResult(
            ResultKind.SR,
            Comprehensive3DSRStorage,
            "2.25.2",
            "2.25.20",
            "b",
            ("pacs",),
        )
        complete_job(session, job, [stored], finding_count=0, now=T0)
        delivery = session.scalars(select(Delivery)).one()
        delivery.state, delivery.attempts, delivery.last_error = DeliveryState.FAILED, 20, "0xC000"
    listed = client.get("/api/deliveries", params={"state": "failed"}).json()
    assert listed["total"] == 1
    (item,) = listed["items"]
    assert item["sop_instance_uid"] == "2.25.2"
    retried = client.post(f"/api/deliveries/{item['id']}/retry").json()
    assert (retried["state"], retried["attempts"]) == ("pending", 0)
    assert datetime.fromisoformat(retried["next_attempt_at"]) == clock.now.astimezone(UTC)
    assert client.post(f"/api/deliveries/{item['id'] + 1}/retry").status_code == 404
    with journal.sessionmaker() as session:
        event = session.scalars(select(AuditEvent)).one()
        assert (event.actor, event.action) == ("carol", "delivery.retry")
        assert event.detail == {"sop_instance_uid": "2.25.2", "destination": "pacs"}
        assert session.get_one(Job, 1).state == JobState.DONE


def test_tokens_are_matched_by_their_sha256() -> None:
    tokens = (
        AdminToken(name="a", role="admin", sha256=token_sha256("one")),
        AdminToken(name="r", role="read", sha256=token_sha256("two")),
    )
    assert find_principal(tokens, "one") == Principal("a", "admin")
    principal = find_principal(tokens, "two")
    assert principal is not None
    assert (principal.name, principal.can_write) == ("r", False)
    assert find_principal(tokens, "three") is None
    with pytest.raises(ValueError, match="sha256"):
        AdminToken(name="x", role="read", sha256="not-a-hash")


def test_rule_book_follows_the_latest_version(journal: Journal, clock: FakeClock) -> None:
    settings = Settings.model_validate(
        {
            "destinations": {"pacs": {"host": "h", "port": 1, "ae_title": "PACS"}},
            "rules": [
                {
                    "name": "r1",
                    "model": "m",
                    "destinations": ["pacs"],
                    "when": {"keyword": "Modality", "equals": "CT"},
                }
            ],
        }
    )
    book = RuleBook(journal.sessionmaker, clock)
    book.seed(settings.rules)
    book.seed(())  # a second start keeps the journal's rules
    assert [rule.name for rule in book.current()] == ["r1"]
    renamed = settings.rules[0].model_copy(update={"name": "r2"})
    with journal.sessionmaker.begin() as session:
        save_version(session, [renamed], "dave", "rename", clock())
    assert [rule.name for rule in book.current()] == ["r2"]

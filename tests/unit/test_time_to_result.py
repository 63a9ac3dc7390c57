"""Time to result per priority class and model: the journal's figures, the dashboard's API
(median, p90, the target missed) and the Prometheus histogram and alert gauge, over real HTTP
to the admin server alone."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from cad_node.admin.api import create_app
from cad_node.admin.auth import token_sha256
from cad_node.admin.context import AdminContext
from cad_node.admin.server import AdminServer
from cad_node.admin.time_to_result import quantile, summarise
from cad_node.config import AdminSettings, AdminToken, Settings
from cad_node.config.queue import QueueSettings
from cad_node.domain.priority import PriorityClass
from cad_node.models.registry import ModelRegistry
from cad_node.store.jobs import claim_next_job, complete_job, queue_job
from cad_node.store.priority import TimeToResult, times_to_result
from cad_node.store.rulesets import RuleBook
from cad_node.store.schema import Series
from tests.conftest import FakeClock, Journal
from tests.unit.test_jobs import SERIES_UID, add_series

TOKEN = "unit-read-token"


def test_quantiles_are_values_that_occurred() -> None:
    values = [float(n) for n in range(1, 11)]
    assert (quantile(values, 0.5), quantile(values, 0.9), quantile([], 0.9)) == (5.0, 9.0, 0.0)


def test_summary_per_class_and_model_and_the_target() -> None:
    rows = [
        *(TimeToResult(PriorityClass.STAT, "lung_nodule_ct", s) for s in (30.0, 40.0, 200.0)),
        TimeToResult(PriorityClass.ROUTINE, "fundus_dr", 3.0),
    ]
    summary = summarise(rows, {PriorityClass.STAT: 120.0, PriorityClass.ROUTINE: 10.0})
    assert [(m.priority_class, m.model_name, m.median_seconds) for m in summary.by_model] == [
        ("stat", "lung_nodule_ct", 40.0),
        ("routine", "fundus_dr", 3.0),
    ]
    missed = {c.priority_class: c.missed for c in summary.by_class}
    assert missed == {"stat": True, "urgent": False, "routine": False, "screening": False}


def finish_jobs(journal: Journal, clock: FakeClock, seconds: list[float]) -> None:
    """A stat CT job per entry, done that many seconds after its series' last instance."""
    with journal.sessionmaker.begin() as session:
        add_series(session)
        session.execute(update(Series).values(last_received_at=clock()))
    for revision, taken in enumerate(seconds, start=1):
        with journal.sessionmaker.begin() as session:
            queue_job(
                session,
                series_instance_uid=SERIES_UID,
                series_revision=revision,
                rule_name="chest",
                model_name="lung_nodule_ct",
                destinations=[],
                now=clock(),
                priority_class=PriorityClass.STAT,
            )
            job = claim_next_job(session, "w", clock(), lease_seconds=600)
            assert job is not None
            complete_job(session, job, [], 0, clock() + timedelta(seconds=taken))


@pytest.fixture
def client(
    journal: Journal, free_port: int, clock: FakeClock, tmp_storage: Path
) -> Iterator[httpx.Client]:
    admin = AdminSettings(
        port=free_port, tokens=(AdminToken(name="ro", role="read", sha256=token_sha256(TOKEN)),)
    )
    settings = Settings(
        admin=admin,
        storage_dir=tmp_storage,
        queue=QueueSettings(target_seconds={PriorityClass.STAT: 60}),
    )
    rule_book = RuleBook(journal.sessionmaker, clock)
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


def test_the_api_and_the_metrics_show_a_missed_target(
    journal: Journal, clock: FakeClock, client: httpx.Client
) -> None:
    finish_jobs(journal, clock, [20.0, 30.0, 90.0])
    with journal.sessionmaker() as session:
        assert sorted(r.seconds for r in times_to_result(session)) == [20.0, 30.0, 90.0]
    clock.advance(120)
    panel = client.get("/api/time-to-result").json()
    assert panel["by_model"] == [
        {
            "priority_class": "stat",
            "model_name": "lung_nodule_ct",
            "count": 3,
            "median_seconds": 30.0,
            "p90_seconds": 90.0,
        }
    ]
    stat = next(c for c in panel["by_class"] if c["priority_class"] == "stat")
    assert (stat["target_seconds"], stat["missed"]) == (60.0, True)
    text = client.get("/metrics").text
    bucket = 'cad_node_time_to_result_seconds_bucket{le="30.0",model="lung_nodule_ct",'
    assert f'{bucket}priority_class="stat"}} 2.0' in text
    assert 'cad_node_time_to_result_target_missed{priority_class="stat"} 1.0' in text
    assert 'cad_node_time_to_result_target_missed{priority_class="routine"} 0.0' in text

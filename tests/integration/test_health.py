"""Health you can see (issue 24, item 4), against real peers on 127.0.0.1.

Destination health by real C-ECHOes (DCMTK storescp down, then up); the dashboard in
Chromium showing a delivery retrying with its error and the destination DOWN, then both
OK once the PACS is up; /api/health and /metrics; every metric the example alert rules
in deploy/prometheus name is in the real /metrics; an expected retry logs one WARNING
and no ERROR, a delivery given up one ERROR.
"""

import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from cad_node.app import Node
from cad_node.config import (
    DestinationSettings,
    DestinationTlsSettings,
    ExportSettings,
    Settings,
    TimeoutSettings,
)
from cad_node.domain.states import DeliveryState
from cad_node.export.health import DestinationMonitor
from cad_node.export.outcomes import OutcomeKind
from cad_node.export.service import deliver_due
from tests.conftest import Journal
from tests.dcmtk import NODE_AE_TITLE, free_port, storescu
from tests.integration.browser import (
    BROWSER_MARKS,
    assert_no_csp_violation,
    shoot,
    sign_in,
    wait_loaded,
    wait_text,
)
from tests.integration.conftest import (
    ADMIN_TOKEN,
    READ_TOKEN,
    admin_tokens,
    api_client,
    in_process_node,
)
from tests.integration.peers import shipped_rules_anyway, storescp, wait_for
from tests.integration.test_export import T0, add_results, ct_copies, destination
from tests.integration.test_tls import Pki, _export, make_pki, tls_storescp
from tests.synthetic import SyntheticSeries, write_ct_series

REPOSITORY = Path(__file__).parents[2]
ALERTS = REPOSITORY / "deploy" / "prometheus" / "alerts.yml"
FAST = TimeoutSettings(connect_seconds=2, acse_seconds=5, dimse_seconds=5, network_seconds=10)
PACS_DOWN = "cannot connect (down or unreachable)"


def lung_rule() -> dict[str, Any]:
    """The shipped lung CT rule (model lung_nodule_ct), sending to ``pacs``, run anyway
    outside the model's domain (the small test CTs are)."""
    (lung,) = [rule for rule in shipped_rules_anyway() if rule["model"] == "lung_nodule_ct"]
    return {**lung, "destinations": ["pacs"]}


def health_settings(tmp_path: Path, pacs_port: int, **health: float) -> Settings:
    """A node whose results go to a PACS on ``pacs_port``, retried every second or two."""
    return Settings.model_validate(
        {
            "ae_title": NODE_AE_TITLE,
            "port": 0,
            "bind_address": "127.0.0.1",
            "storage_dir": str(tmp_path / "storage"),
            "quiet_seconds": 60,  # the series completes by its ImagesInAcquisition
            "device": "cpu",
            "destinations": {"pacs": {"host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"}},
            "rules": [lung_rule()],
            "export": {
                "initial_backoff_seconds": 1,
                "max_backoff_seconds": 2,
                "max_attempts": 1000,
                "timeouts": FAST.model_dump(),
            },
            "health": {"echo_interval_seconds": 5, **health},
            "admin": {
                "port": free_port(),
                "tokens": admin_tokens(),
            },
        }
    )


@pytest.fixture
def pacs_port() -> int:
    return free_port()


def health_of(api: httpx.Client) -> dict[str, Any]:
    answer = api.get("/api/health")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def pacs_health(api: httpx.Client) -> dict[str, Any]:
    destinations: list[dict[str, Any]] = health_of(api)["destinations"]
    (pacs,) = [d for d in destinations if d["name"] == "pacs"]
    return pacs


# -- the C-ECHO monitor ----------------------------------------------------------------------


def test_monitor_sees_a_pacs_down_then_up_and_logs_each_change_once(
    tmp_path: Path, pacs_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    destinations = {"pacs": DestinationSettings(host="127.0.0.1", port=pacs_port, ae_title="PACS")}
    monitor = DestinationMonitor(lambda: destinations, NODE_AE_TITLE, FAST, lambda: T0)
    assert monitor.current() == {}

    with caplog.at_level(logging.INFO):
        monitor.check_all()
        monitor.check_all()  # still down: nothing more to say
    down = monitor.current()["pacs"]
    assert (down.ok, down.detail, down.checked_at) == (False, PACS_DOWN, T0)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in warnings] == [logging.WARNING], caplog.text
    assert "destination pacs does not answer C-ECHO" in warnings[0].getMessage()

    caplog.clear()
    with storescp(pacs_port, tmp_path / "pacs"), caplog.at_level(logging.INFO):
        up = monitor.check_all()["pacs"]
    assert (up.ok, up.detail) == (True, "success")
    assert up.seconds > 0
    assert "destination pacs answers C-ECHO again" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text

    destinations.clear()  # a destination deleted is no longer reported
    monitor.check_all()
    assert monitor.current() == {}


# -- logging of retries ----------------------------------------------------------------------


def test_an_expected_retry_logs_one_warning_and_giving_up_one_error(
    tmp_path: Path,
    journal: Journal,
    tmp_storage: Path,
    pacs_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_results(journal, tmp_storage, ct_copies(tmp_path, 2), ["pacs"])
    destinations = {"pacs": destination(pacs_port)}
    export = ExportSettings(
        initial_backoff_seconds=5, max_backoff_seconds=5, max_attempts=2, timeouts=FAST
    )

    with caplog.at_level(logging.INFO):
        report = deliver_due(
            journal.sessionmaker, destinations, tmp_storage, "CADNODE", T0, export=export
        )
    assert report.pending == 2
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in loud] == [logging.WARNING], caplog.text
    message = loud[0].getMessage()
    assert "export to pacs: 2 deliveries to retry at 2026-11-25 12:00:05 UTC (attempt 1)" in message
    assert PACS_DOWN in message

    caplog.clear()
    with caplog.at_level(logging.INFO):
        report = deliver_due(
            journal.sessionmaker,
            destinations,
            tmp_storage,
            "CADNODE",
            T0 + timedelta(seconds=5),
            export=export,
        )
    assert report.failed == 2
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in loud] == [logging.ERROR] * 2, caplog.text  # one per delivery
    assert all("gave up after 2 attempts" in r.getMessage() for r in loud)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and a server certificate for 127.0.0.1 (as tests/integration/test_tls.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_failed_tls_handshake_to_a_destination_logs_no_error(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """pynetdicom logs the handshake's exception (a traceback) as an ERROR: kept at DEBUG."""
    port = free_port()
    wrong_name = DestinationTlsSettings(ca_certificates=pki.ca, server_hostname="pacs.example")
    with (
        tls_storescp(port, tmp_path / "pacs", pki, require_client=False),
        caplog.at_level(logging.INFO),
    ):
        assert _export(port, wrong_name) == [OutcomeKind.RETRY]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# -- /api/health, /metrics and the alert rules -----------------------------------------------


def alert_metric_names() -> set[str]:
    """Every cad_node_* metric the example alert rules' expressions name."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    expressions = [rule["expr"] for group in groups for rule in group["rules"]]
    assert expressions
    return {name for e in expressions for name in re.findall(r"\bcad_node_[a-z_]+", e)}


def exposed_metric_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture
def idle_node(tmp_path: Path, pacs_port: int) -> Iterator[Node]:
    """A node with the PACS down and every disk "low" (min_free_disk_fraction 1.0)."""
    settings = health_settings(tmp_path, pacs_port, min_free_disk_fraction=1.0)
    with in_process_node(settings) as node:
        yield node


def test_health_api_and_metrics_cover_every_alert_rule(idle_node: Node) -> None:
    with api_client(idle_node, READ_TOKEN) as api:
        wait_for(lambda: pacs_health(api)["up"] is False, 30, "the first C-ECHO of pacs")
        health = health_of(api)
        pacs = pacs_health(api)
        assert (pacs["detail"], pacs["pending"], pacs["retrying"]) == (PACS_DOWN, 0, 0)
        assert (pacs["ae_title"], pacs["checked_at"] is not None) == ("PACS", True)
        assert health["echo_interval_seconds"] == 5
        assert (health["pending"], health["pending_total"]) == ([], 0)
        disk = health["disk"]
        assert 0 < disk["free_bytes"] <= disk["total_bytes"]
        assert disk["low"] is True

        metrics = api.get("/metrics").text
    assert 'cad_node_destination_up{destination="pacs"} 0.0' in metrics
    assert 'cad_node_deliveries_pending{destination="pacs"} 0.0' in metrics
    assert 'cad_node_delivery_oldest_pending_seconds{destination="pacs"} 0.0' in metrics
    assert "cad_node_storage_low 1.0" in metrics
    missing = alert_metric_names() - exposed_metric_names(metrics)
    assert not missing, f"deploy/prometheus/alerts.yml names metrics /metrics lacks: {missing}"


def test_health_needs_a_token(idle_node: Node) -> None:
    with api_client(idle_node, "wrong") as api:
        assert api.get("/api/health").status_code == 401


# -- the dashboard in Chromium: PACS down, then up -------------------------------------------


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    """A 40-slice chest CT with ImagesInAcquisition, so the node completes it by count."""
    return write_ct_series(
        tmp_path_factory.mktemp("small-ct"),
        seed=242424,
        rows=128,
        slices=40,
        nodule_count=2,
        images_in_acquisition=True,
    )


def retrying(api: httpx.Client) -> bool:
    pending = health_of(api)["pending"]
    return bool(pending) and all(d["attempts"] >= 1 for d in pending)


def all_delivered(api: httpx.Client) -> bool:
    summary: dict[str, int] = api.get("/api/summary").json()["deliveries"]
    return summary[DeliveryState.PENDING] == 0 and summary[DeliveryState.DELIVERED] > 0


@BROWSER_MARKS[0]
@BROWSER_MARKS[1]
def test_dashboard_shows_a_delivery_retrying_while_the_pacs_is_down_then_ok(
    *,
    tmp_path: Path,
    pacs_port: int,
    small_ct: SyntheticSeries,
    browser: WebDriver,
    screenshots: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = health_settings(tmp_path, pacs_port)
    with in_process_node(settings) as node, api_client(node, ADMIN_TOKEN) as api:
        sent = storescu(node.scp.port, small_ct.paths, called_ae=NODE_AE_TITLE)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: retrying(api), 300, "the results' deliveries to be retried")
        wait_for(lambda: pacs_health(api)["up"] is False, 30, "pacs to be seen down")
        metrics = api.get("/metrics").text
        assert 'cad_node_destination_up{destination="pacs"} 0.0' in metrics
        retrying_now = re.search(
            r'cad_node_deliveries_retrying\{destination="pacs"\} (\S+)', metrics
        )
        assert retrying_now is not None
        assert float(retrying_now.group(1)) > 0

        sign_in(browser, str(api.base_url), ADMIN_TOKEN)
        wait_text(browser, "destination-health", "DOWN")
        wait_text(browser, "pending-deliveries", "retrying")
        assert PACS_DOWN in browser.find_element(By.ID, "pending-deliveries").text
        assert PACS_DOWN in browser.find_element(By.ID, "destination-health").text
        shoot(
            browser,
            screenshots / "admin-dashboard.png",
            "Destinations",
            "DOWN",
            "Pending and retrying deliveries",
            "retrying",
            PACS_DOWN,
            "Disk",
        )

        with storescp(pacs_port, tmp_path / "pacs"):
            wait_for(lambda: all_delivered(api), 120, "the results to reach the PACS")
            wait_for(lambda: pacs_health(api)["up"] is True, 30, "pacs to answer C-ECHO")
            browser.refresh()
            wait_loaded(browser)
            wait_text(browser, "destination-health", "OK")
            assert "DOWN" not in browser.find_element(By.ID, "destination-health").text
            pending = browser.find_element(By.ID, "pending-deliveries").text
            assert "none" in pending
            assert "retrying" not in pending
            shoot(browser, screenshots / "admin-dashboard-pacs-up.png", "OK", "success")
        received = list((tmp_path / "pacs").rglob("*"))
        assert [p for p in received if p.is_file()]
        assert_no_csp_violation(browser)
    # Every retry said so once, as a WARNING; nothing logged an ERROR.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    retries = [r.getMessage() for r in caplog.records if "to retry at" in r.getMessage()]
    assert retries
    assert all(PACS_DOWN in message for message in retries)

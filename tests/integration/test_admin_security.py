"""The admin API's defences against a token holder or an anonymous peer, on a running node.

Over real HTTP on 127.0.0.1 (httpx) and real C-ECHO / C-STORE from pynetdicom:

- a catastrophic regex (``(a+)+$``), tested, dry-run or stored as a rule, stalls neither
  the API, routing nor the Storage SCP (RE2, linear time): C-ECHO round trips measured
  while it runs are all answered;
- testing and dry runs take an admin token;
- every response carries the security headers; no CDN-loaded ``/docs``;
- a body over ``admin.max_body_bytes`` is a 413, declared or streamed;
- a destination host and a rule's model name are checked (422 with the reason).
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from cad_node.admin.guard import SECURITY_HEADERS
from cad_node.admin.web import PAGES
from cad_node.app import Node
from cad_node.routing.rules import MAX_CONDITIONS
from tests.dcmtk import NODE_AE_TITLE
from tests.integration.conftest import ADMIN_TOKEN, READ_TOKEN, api_client
from tests.integration.test_admin_api import CT_RULE, ct_series, send_and_wait_routed

pytestmark = pytest.mark.slow

MAX_BODY_BYTES = 8192
CATASTROPHIC_RULE: dict[str, Any] = {
    **CT_RULE,
    "name": "catastrophic",
    "when": {"keyword": "SeriesDescription", "regex": "(a+)+$"},
}
ATTACK_DESCRIPTION = "a" * 60 + "!"
"""A valid LO (64 characters at most) on which Python's ``re`` backtracks 2**60 times."""
ECHO_BOUND_SECONDS = 5.0
"""A C-ECHO on loopback answers in milliseconds; a stalled node would take the regex's time."""


@pytest.fixture
def admin_overrides() -> dict[str, Any]:
    return {"max_body_bytes": MAX_BODY_BYTES}


@dataclass
class Echoes:
    """C-ECHO round trips: when each was sent (monotonic), how long it took, its status."""

    sent_at: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def answered_between(self, start: float, end: float) -> int:
        return sum(1 for sent in self.sent_at if start <= sent <= end)


@contextmanager
def echo_loop(port: int) -> Iterator[Echoes]:
    """C-ECHO the node over one association, back to back, until the block ends."""
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE_TITLE)
    assert assoc.is_established
    echoes, stop = Echoes(), threading.Event()

    def run() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            status = assoc.send_c_echo()
            echoes.seconds.append(time.monotonic() - sent)
            echoes.statuses.append(int(status.Status) if "Status" in status else -1)
            echoes.sent_at.append(sent)
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield echoes
    finally:
        stop.set()
        thread.join(timeout=30)
        assoc.release()
    assert not thread.is_alive(), "a C-ECHO was never answered"


def wait_echoes(echoes: Echoes, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(echoes.statuses) < count:
        assert time.monotonic() < deadline, "C-ECHO not answered"
        time.sleep(0.01)


# -- a catastrophic regex stalls nothing ------------------------------------------------------


def test_a_catastrophic_pattern_stalls_neither_the_api_nor_c_echo(
    node: Node, admin: httpx.Client
) -> None:
    series = send_and_wait_routed(node, admin, ct_series(ATTACK_DESCRIPTION))
    request = {"series_instance_uid": series["series_instance_uid"], "rule": CATASTROPHIC_RULE}
    with echo_loop(node.scp.port) as echoes:
        wait_echoes(echoes, 3)
        start = time.monotonic()
        requests = 0
        while requests < 5 or time.monotonic() - start < 1.0:
            tested = admin.post("/api/rules/test", json=request)
            assert tested.status_code == 200
            assert tested.json()["matches"] is False
            dry = admin.post("/api/rules/dry-run", json={"rules": [CATASTROPHIC_RULE], "days": 1})
            assert dry.status_code == 200
            assert dry.json()["series_examined"] == 1
            requests += 1
        end = time.monotonic()
        wait_echoes(echoes, len(echoes.statuses) + 3)
    assert set(echoes.statuses) == {0x0000}
    assert echoes.answered_between(start, end) >= 1
    assert max(echoes.seconds) < ECHO_BOUND_SECONDS, f"slowest C-ECHO {max(echoes.seconds):.3f} s"


def test_a_stored_catastrophic_rule_still_routes_every_sender(
    node: Node, admin: httpx.Client
) -> None:
    assert admin.post("/api/rules", json=CATASTROPHIC_RULE).status_code == 201
    with echo_loop(node.scp.port) as echoes:
        routed = send_and_wait_routed(node, admin, ct_series(ATTACK_DESCRIPTION))
        other = send_and_wait_routed(node, admin, ct_series("chest " + "a" * 50))
        wait_echoes(echoes, 3)
    assert routed["state"] == "unrouted"
    assert other["state"] == "routed"
    assert other["rule_name"] == "catastrophic"
    assert set(echoes.statuses) == {0x0000}
    assert max(echoes.seconds) < ECHO_BOUND_SECONDS


def test_a_pattern_re2_refuses_is_a_422_with_the_reason(admin: httpx.Client) -> None:
    rule = {**CT_RULE, "when": {"keyword": "SeriesDescription", "regex": r"(a)\1"}}
    answer = admin.post("/api/rules", json=rule)
    assert answer.status_code == 422
    assert "backreferences are not supported" in answer.json()["detail"]


def test_a_rule_over_the_size_limit_is_a_422(admin: httpx.Client) -> None:
    leaves = [{"keyword": "Modality", "equals": "CT"}] * MAX_CONDITIONS
    answer = admin.post("/api/rules/validate", json={**CT_RULE, "when": {"any": leaves}})
    assert answer.status_code == 422
    assert f"at most {MAX_CONDITIONS} conditions" in answer.json()["detail"]


def test_testing_and_dry_runs_need_an_admin_token(node: Node) -> None:
    request = {"series_instance_uid": "1.2.3", "rule": CT_RULE}
    with api_client(node, READ_TOKEN) as reader:
        assert reader.post("/api/rules/test", json=request).status_code == 403
        dry = reader.post("/api/rules/dry-run", json={"rules": [CT_RULE], "days": 1})
        assert dry.status_code == 403
        assert reader.post("/api/rules/validate", json=CT_RULE).status_code == 200
    with api_client(node, ADMIN_TOKEN) as admin:
        assert admin.post("/api/rules/test", json=request).status_code == 404  # no such series


# -- the HTTP surface -------------------------------------------------------------------------


SERVED = ["/", *(f"/ui/{page}" for page in PAGES), "/static/admin.js", "/static/admin.css"]


@pytest.mark.parametrize(
    "path", [*SERVED, "/health/live", "/api/rules", "/openapi.json", "/nowhere", "/docs"]
)
def test_every_response_carries_the_security_headers(node: Node, path: str) -> None:
    with api_client(node) as anonymous:
        answer = anonymous.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers[name] == value, name
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]


def test_no_docs_page_and_no_cdn_in_any_served_page(node: Node) -> None:
    with api_client(node) as anonymous:
        assert anonymous.get("/docs").status_code == 404
        assert anonymous.get("/redoc").status_code == 404
        assert anonymous.get("/docs/oauth2-redirect").status_code == 404
        assert "/api/rules" in anonymous.get("/openapi.json").json()["paths"]
        for path in SERVED:
            text = anonymous.get(path).text.lower()
            assert anonymous.get(path).status_code == 200, path
            for external in ("cdn", "http://", "https://", "//unpkg", "jsdelivr"):
                assert external not in text, f"{external} in {path}"


def test_a_body_declared_over_the_limit_is_a_413_before_it_is_read(node: Node) -> None:
    body = b"{" + b" " * MAX_BODY_BYTES + b"}"
    with api_client(node) as anonymous:
        answer = anonymous.post("/api/rules", content=body)
    assert answer.status_code == 413
    assert "admin.max_body_bytes" in answer.json()["detail"]


def test_a_streamed_body_over_the_limit_is_a_413(admin: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 1024

    answer = admin.post(
        "/api/rules", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in answer.request.headers  # sent chunked
    assert answer.status_code == 413
    assert admin.get("/api/rules").json()["version"] == 1


def test_a_body_within_the_limit_is_served(admin: httpx.Client) -> None:
    padded = {**CT_RULE, "description": "x" * 1000}
    assert len(httpx.Request("POST", "/", json=padded).content) < MAX_BODY_BYTES
    assert admin.post("/api/rules", json=padded).status_code == 201


@pytest.mark.parametrize(
    "host", ["http://pacs.example.org", "pacs.example.org:104", "pacs/dicom", "pa cs", "-pacs"]
)
def test_an_invalid_destination_host_is_a_422(admin: httpx.Client, host: str) -> None:
    destination = {"host": host, "port": 104, "ae_title": "VIEWER"}
    answer = admin.post("/api/destinations/viewer", json=destination)
    assert answer.status_code == 422
    assert "is not an IP address or a DNS host name" in answer.json()["detail"]
    assert admin.get("/api/destinations/viewer").status_code == 404


@pytest.mark.parametrize("host", ["pacs.example.org", "10.0.0.5", "::1", "orthanc"])
def test_a_valid_destination_host_is_accepted(admin: httpx.Client, host: str) -> None:
    destination = {"host": host, "port": 104, "ae_title": "VIEWER"}
    assert admin.post("/api/destinations/viewer", json=destination).status_code == 201


@pytest.mark.parametrize("model", ["../weights", "lung nodule", "x" * 65, "<script>"])
def test_an_invalid_model_name_is_a_422(admin: httpx.Client, model: str) -> None:
    answer = admin.post("/api/rules", json={**CT_RULE, "model": model})
    assert answer.status_code == 422
    assert "is not a model name" in answer.json()["detail"]

"""Per-model switch, destinations changed through the API, and the audit of the data flow.

A running in-process node (``cad_node.app.Node``) over real HTTP on 127.0.0.1;
images arrive by C-STORE from pynetdicom; results go to DCMTK's storescp.
"""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import select

from cad_node.app import Node
from cad_node.store.schema import Result
from tests.conftest import send
from tests.dcmtk import free_port
from tests.integration.peers import storescp, wait_for
from tests.integration.test_admin_api import ct_series, send_and_wait_routed
from tests.synthetic import write_ct_series

MODEL = "lung_nodule_ct"
LUNG_RULE: dict[str, Any] = {
    "name": "lung",
    "priority": 30,
    "mode": "active",
    "model": MODEL,
    "destinations": ["pacs"],
    "when": {"keyword": "Modality", "equals": "CT"},
}
VIEWER_RULE = {**LUNG_RULE, "destinations": ["viewer"]}


def audit(client: httpx.Client, **filters: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/api/audit", params=filters).json()["items"]
    return items


def jobs_of(client: httpx.Client, series_instance_uid: str) -> list[dict[str, Any]]:
    answer = client.get("/api/jobs", params={"series_instance_uid": series_instance_uid})
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


# -- per-model switch ------------------------------------------------------------------------


def test_model_switch_is_admin_only_checked_and_audited(
    admin: httpx.Client, reader: httpx.Client
) -> None:
    assert reader.put(f"/api/models/{MODEL}/mode", json={"mode": "off"}).status_code == 403
    assert admin.put(f"/api/models/{MODEL}/mode", json={"mode": "dim"}).status_code == 422
    assert admin.put("/api/models/nope/mode", json={"mode": "off"}).status_code == 404
    models = {m["name"]: m for m in reader.get("/api/models").json()}
    assert models[MODEL]["mode"] == "active"

    answer = admin.put(f"/api/models/{MODEL}/mode", json={"mode": "shadow"})
    assert answer.json() == {"model_name": MODEL, "mode": "shadow", "previous": "active"}
    models = {m["name"]: m for m in reader.get("/api/models").json()}
    assert models[MODEL]["mode"] == "shadow"
    (event,) = audit(admin, action="model.mode")
    assert event["actor"] == "alice"
    assert event["target"] == f"model {MODEL}"
    assert event["detail"] == {"from": "active", "to": "shadow"}


def test_model_off_queues_no_job_and_shadow_sends_nothing(node: Node, admin: httpx.Client) -> None:
    assert admin.post("/api/rules", json=LUNG_RULE).status_code == 201

    assert admin.put(f"/api/models/{MODEL}/mode", json={"mode": "off"}).status_code == 200
    off = send_and_wait_routed(node, admin, ct_series("model off"))
    assert off["state"] == "unrouted"
    assert off["rule_name"] == "lung"
    assert f"model {MODEL} is switched off" in off["routing_explanation"]
    assert jobs_of(admin, off["series_instance_uid"]) == []
    (routed,) = audit(admin, action="series.routed", target=f"series {off['series_instance_uid']}")
    assert routed["detail"]["model_mode"] == "off"
    assert routed["detail"]["job_id"] is None

    assert admin.put(f"/api/models/{MODEL}/mode", json={"mode": "shadow"}).status_code == 200
    shadow = send_and_wait_routed(node, admin, ct_series("model shadow"))
    assert shadow["state"] == "routed"
    (job,) = jobs_of(admin, shadow["series_instance_uid"])
    assert job["rule_name"] == "lung"
    assert job["destinations"] == []  # runs and records, as a shadow rule: sends nothing

    assert admin.put(f"/api/models/{MODEL}/mode", json={"mode": "active"}).status_code == 200
    active = send_and_wait_routed(node, admin, ct_series("model active"))
    (job,) = jobs_of(admin, active["series_instance_uid"])
    assert job["destinations"] == ["pacs"]


# -- destinations ------------------------------------------------------------------------------


def test_destination_changes_are_checked_and_audited(
    admin: httpx.Client, reader: httpx.Client
) -> None:
    viewer = {"host": "127.0.0.1", "port": 11112, "ae_title": "VIEWER", "results": ["sr"]}
    assert reader.post("/api/destinations/viewer", json=viewer).status_code == 403
    bad = admin.post("/api/destinations/viewer", json={**viewer, "port": 0})
    assert bad.status_code == 422
    assert "port" in bad.json()["detail"]
    assert admin.post("/api/destinations/bad%20name", json=viewer).status_code == 422
    assert admin.post("/api/destinations/viewer", json=viewer).status_code == 201
    assert admin.post("/api/destinations/viewer", json=viewer).status_code == 409
    assert admin.put("/api/destinations/nope", json=viewer).status_code == 404
    edited = admin.put("/api/destinations/viewer", json={**viewer, "ae_title": "VIEWER2"})
    assert edited.json()["ae_title"] == "VIEWER2"
    names = [d["name"] for d in reader.get("/api/destinations").json()]
    assert names == ["pacs", "viewer"]

    refused = admin.post("/api/rules", json={**LUNG_RULE, "destinations": ["nowhere"]})
    assert refused.status_code == 422
    assert "'nowhere' is not configured" in refused.json()["detail"]
    assert admin.post("/api/rules", json=VIEWER_RULE).status_code == 201
    in_use = admin.delete("/api/destinations/viewer")
    assert in_use.status_code == 409
    assert "lung" in in_use.json()["detail"]

    assert admin.delete("/api/rules/lung").status_code == 200
    assert admin.delete("/api/destinations/viewer").status_code == 204
    assert admin.delete("/api/destinations/viewer").status_code == 404
    assert [d["name"] for d in reader.get("/api/destinations").json()] == ["pacs"]
    actions = [event["action"] for event in audit(admin) if event["target"] == "destination viewer"]
    assert actions == ["destination.delete", "destination.update", "destination.create"]


@pytest.mark.slow
def test_a_destination_added_through_the_api_receives_results_and_the_flow_is_audited(
    node: Node, admin: httpx.Client, tmp_path: Path
) -> None:
    port = free_port()
    viewer = {"host": "127.0.0.1", "port": port, "ae_title": "VIEWER", "results": ["sr"]}
    assert admin.post("/api/destinations/viewer", json=viewer).status_code == 201
    assert admin.post("/api/rules", json=VIEWER_RULE).status_code == 201
    series = write_ct_series(tmp_path / "ct", seed=7)
    out_dir = tmp_path / "viewer"

    with storescp(port, out_dir, ae_title="VIEWER"):
        assert set(send(node.scp.port, list(series.paths), calling_ae="CT01")) == {0x0000}
        wait_for(lambda: any(out_dir.glob("*")), 180, "the result to reach the new destination")
        wait_for(lambda: bool(audit(admin, action="delivery.sent")), 30, "the audit of the send")

    received = [dcmread(path) for path in out_dir.glob("*") if path.is_file()]
    assert [ds.SOPClassUID for ds in received] == [
        Comprehensive3DSRStorage
    ]  # the journal's kinds: SR only
    sr = received[0]

    target = f"series {series.series_instance_uid}"
    (got,) = audit(admin, action="series.received", target=target)
    assert got["actor"] == "node"
    assert got["detail"]["instance_count"] == len(series.paths)
    assert got["detail"]["calling_ae_title"] == "CT01"
    (routed,) = audit(admin, action="series.routed", target=target)
    (job,) = jobs_of(admin, series.series_instance_uid)
    assert routed["detail"] == {**routed["detail"], "rule": "lung", "model": MODEL}
    assert routed["detail"]["job_id"] == job["id"]
    (sent,) = audit(admin, action="delivery.sent")
    assert sent["detail"] == {
        **sent["detail"],
        "destination": "viewer",
        "sop_instance_uid": sr.SOPInstanceUID,
        "status": 0,
    }
    text = json.dumps(audit(admin, limit="500"))
    patient = dcmread(series.paths[0])
    for value in (str(patient.PatientName), str(patient.PatientID)):
        assert value
        assert value not in text


@pytest.mark.slow
def test_a_shadow_model_records_results_and_sends_nothing(
    node: Node, admin: httpx.Client, tmp_path: Path
) -> None:
    assert admin.post("/api/rules", json=LUNG_RULE).status_code == 201
    assert admin.put(f"/api/models/{MODEL}/mode", json={"mode": "shadow"}).status_code == 200
    shadow = write_ct_series(tmp_path / "shadow", seed=8)
    assert set(send(node.scp.port, list(shadow.paths))) == {0x0000}

    def job_state(series_instance_uid: str) -> str | None:
        jobs = jobs_of(admin, series_instance_uid)
        return jobs[0]["state"] if jobs else None

    wait_for(lambda: job_state(shadow.series_instance_uid) == "done", 180, "the shadow job")
    (job,) = jobs_of(admin, shadow.series_instance_uid)
    with node.sessions() as session:
        kinds = session.scalars(select(Result.kind).where(Result.job_id == job["id"])).all()
    assert "sr" in kinds  # recorded in the journal ...
    assert admin.get("/api/deliveries").json()["total"] == 0  # ... and sent nowhere

    # switched back to active, the next series is sent; the destination is down: audited
    assert admin.put(f"/api/models/{MODEL}/mode", json={"mode": "active"}).status_code == 200
    active = write_ct_series(tmp_path / "active", seed=9)
    assert set(send(node.scp.port, list(active.paths))) == {0x0000}
    wait_for(lambda: bool(audit(admin, action="delivery.failed")), 180, "the failed send")
    failed = audit(admin, action="delivery.failed")[-1]
    assert failed["detail"]["destination"] == "pacs"
    assert failed["detail"]["will_retry"] is True
    assert failed["detail"]["state"] == "pending"

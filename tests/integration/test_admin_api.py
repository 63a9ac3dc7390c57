"""The admin API of a running node, over real HTTP on 127.0.0.1 (httpx), with real DICOM peers.

The node runs in-process (``cad_node.app.Node``) with its admin server on a free
port; images arrive by C-STORE from pynetdicom; the destination's C-ECHO is
answered by DCMTK's storescp.
"""

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from cad_node.app import Node
from tests.conftest import send
from tests.integration.conftest import (
    MR_RULE,
    UNLOADABLE_MODEL,
    api_client,
    in_process_node,
    install_unloadable_model,
    node_settings,
)
from tests.integration.peers import storescp, wait_for

CT_RULE: dict[str, Any] = {
    "name": "ct-rule",
    "priority": 20,
    "mode": "active",
    "model": UNLOADABLE_MODEL,
    "destinations": ["pacs"],
    "when": {
        "all": [
            {"keyword": "Modality", "equals": "CT"},
            {"keyword": "SeriesDescription", "regex": "(?i)admin"},
        ]
    },
}


def ct_series(description: str) -> Dataset:
    """pydicom's CT_small as a new series (fresh UIDs) with ``description``."""
    dataset = dcmread(get_testdata_file("CT_small.dcm") or "")
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.SeriesDescription = description
    return dataset


def send_and_wait_routed(node: Node, client: httpx.Client, dataset: Dataset) -> dict[str, Any]:
    """C-STORE ``dataset`` to the node; the series once the assembly sweep has routed it."""
    assert send(node.scp.port, [dataset]) == [0x0000]
    url = f"/api/series/{dataset.SeriesInstanceUID}"

    def routed() -> bool:
        answer = client.get(url)
        return answer.status_code == 200 and answer.json()["state"] in ("routed", "unrouted")

    wait_for(routed, 30, "the series to be completed and routed")
    series: dict[str, Any] = client.get(url).json()
    return series


# -- health, auth -------------------------------------------------------------------------


def test_health_needs_no_token(anonymous: httpx.Client) -> None:
    assert anonymous.get("/health/live").json() == {"status": "ok", "checks": {}}
    ready = anonymous.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"journal": True, "dicom": True}


@pytest.mark.parametrize(
    "path", ["/api/series", "/api/jobs", "/api/deliveries", "/api/rules", "/metrics"]
)
def test_reads_need_a_valid_token(anonymous: httpx.Client, path: str) -> None:
    assert anonymous.get(path).status_code == 401
    bad = anonymous.get(path, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401
    assert bad.headers["WWW-Authenticate"] == "Bearer"


def test_a_read_token_reads_but_may_not_write(reader: httpx.Client) -> None:
    assert reader.get("/api/rules").status_code == 200
    assert reader.post("/api/rules", json=CT_RULE).status_code == 403
    assert reader.put("/api/rules/mr-rule", json=MR_RULE).status_code == 403
    assert reader.delete("/api/rules/mr-rule").status_code == 403
    assert reader.post("/api/rules/versions/1/rollback").status_code == 403
    assert reader.post("/api/jobs/1/retry").status_code == 403
    assert reader.post("/api/deliveries/1/retry").status_code == 403
    assert reader.get("/api/rules").json()["version"] == 1


def test_no_token_configured_refuses_all_but_health(tmp_path: Path) -> None:
    with (
        in_process_node(node_settings(tmp_path, tokens=[])) as running,
        api_client(running) as client,
    ):
        assert client.get("/health/live").status_code == 200
        refused = client.get("/api/rules", headers={"Authorization": "Bearer anything"})
        assert refused.status_code == 401
        assert "no admin token is configured" in refused.json()["detail"]


def test_openapi_is_served(anonymous: httpx.Client) -> None:
    schema = anonymous.get("/openapi.json").json()
    assert "/api/rules/{name}" in schema["paths"]
    assert "/api/rules/dry-run" in schema["paths"]


# -- rules --------------------------------------------------------------------------------


def test_rules_seeded_from_the_config(admin: httpx.Client) -> None:
    rule_set = admin.get("/api/rules").json()
    assert rule_set["version"] == 1
    assert rule_set["author"] == "config"
    assert [rule["name"] for rule in rule_set["rules"]] == ["mr-rule"]
    assert admin.get("/api/rules/mr-rule").json()["model"] == UNLOADABLE_MODEL
    assert admin.get("/api/rules/nope").status_code == 404


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"when": {"keyword": "Modallity", "equals": "CT"}}, "Modallity"),
        ({"when": {"keyword": "SeriesDescription", "regex": "(unclosed"}}, "regex"),
        ({"destinations": ["nowhere"]}, "'nowhere' is not configured"),
        ({"mode": "sometimes"}, "mode"),
    ],
)
def test_an_invalid_rule_is_a_422_with_the_reason(
    admin: httpx.Client, change: dict[str, Any], reason: str
) -> None:
    answer = admin.post("/api/rules", json={**CT_RULE, **change})
    assert answer.status_code == 422
    assert reason in answer.json()["detail"]
    assert admin.post("/api/rules/validate", json={**CT_RULE, **change}).status_code == 422
    assert admin.get("/api/rules").json()["version"] == 1


def test_a_rule_naming_an_unknown_model_is_refused_with_the_models_known(
    admin: httpx.Client, tmp_path: Path
) -> None:
    typo = {**CT_RULE, "model": "lung_nodul_ct"}
    for answer in (
        admin.post("/api/rules", json=typo),
        admin.post("/api/rules/validate", json=typo),
        admin.put("/api/rules/mr-rule", json={**MR_RULE, "model": "lung_nodul_ct"}),
        admin.post("/api/rules/dry-run", json={"rules": [typo], "days": 1}),
    ):
        assert answer.status_code == 422
        detail = answer.json()["detail"]
        assert "model 'lung_nodul_ct' is not installed" in detail
        assert "(installed: fundus_dr, lung_nodule_ct, mammo_screening, unloadable_model)" in detail
    assert "rule 'ct-rule': model" in admin.post("/api/rules", json=typo).json()["detail"]
    assert admin.get("/api/rules").json()["version"] == 1

    # read from the models folder at each save: a model added to the running node counts
    install_unloadable_model(tmp_path / "storage" / "models", "lung_nodul_ct")
    assert admin.post("/api/rules", json=typo).status_code == 201


def test_a_rule_switched_off_may_name_a_model_not_yet_installed(admin: httpx.Client) -> None:
    later = {**CT_RULE, "model": "added_later", "mode": "off"}
    assert admin.post("/api/rules", json=later).status_code == 201
    refused = admin.post("/api/rules/ct-rule/mode", json={"mode": "shadow"})
    assert refused.status_code == 422
    assert "rule 'ct-rule': model 'added_later' is not installed" in refused.json()["detail"]
    assert admin.get("/api/rules/ct-rule").json()["mode"] == "off"


def test_the_rule_table_shows_each_rules_conditions(admin: httpx.Client) -> None:
    assert admin.get("/api/rules").json()["conditions"] == ["Modality equals MR"]
    created = admin.post("/api/rules", json=CT_RULE).json()
    assert created["conditions"] == [
        "Modality equals MR",
        "Modality equals CT and SeriesDescription matches /(?i)admin/",
    ]


def test_rule_crud_is_versioned_and_audited(admin: httpx.Client) -> None:
    assert admin.post("/api/rules/validate", json=CT_RULE).json()["valid"] is True
    created = admin.post("/api/rules", json=CT_RULE)
    assert created.status_code == 201
    assert created.json()["version"] == 2
    assert admin.post("/api/rules", json=CT_RULE).status_code == 409

    updated = admin.put("/api/rules/ct-rule", json={**CT_RULE, "priority": 5})
    assert updated.json()["version"] == 3
    assert admin.get("/api/rules/ct-rule").json()["priority"] == 5

    disabled = admin.post("/api/rules/ct-rule/mode", json={"mode": "off"})
    assert disabled.status_code == 200
    assert admin.get("/api/rules/ct-rule").json()["mode"] == "off"

    assert admin.delete("/api/rules/ct-rule").json()["version"] == 5
    assert admin.get("/api/rules/ct-rule").status_code == 404

    versions = admin.get("/api/rules/versions").json()
    assert [v["version"] for v in versions] == [5, 4, 3, 2, 1]
    assert {v["author"] for v in versions[:4]} == {"alice"}

    rolled = admin.post("/api/rules/versions/3/rollback").json()
    assert rolled["version"] == 6
    assert admin.get("/api/rules/ct-rule").json()["priority"] == 5
    assert admin.post("/api/rules/versions/99/rollback").status_code == 404

    audit = admin.get("/api/audit", params={"limit": 3}).json()
    assert audit["total"] == 5
    assert [e["action"] for e in audit["items"]] == [
        "rules.rollback",
        "rule.delete",
        "rule.mode.off",
    ]
    assert all(e["actor"] == "alice" for e in audit["items"])


def test_a_rule_change_routes_the_next_series_without_restart(
    node: Node, admin: httpx.Client
) -> None:
    before = send_and_wait_routed(node, admin, ct_series("admin test chest"))
    assert before["state"] == "unrouted"

    explained = admin.post(
        "/api/rules/test",
        json={"series_instance_uid": before["series_instance_uid"], "rule": CT_RULE},
    ).json()
    assert explained["matches"] is True
    assert "✓ Modality equals CT" in explained["text"]

    dry = admin.post("/api/rules/dry-run", json={"rules": [MR_RULE, CT_RULE], "days": 1}).json()
    assert dry["series_examined"] == 1
    assert dry["changed"] == [
        {
            "series_instance_uid": before["series_instance_uid"],
            "modality": "CT",
            "current_rule": None,
            "draft_rule": "ct-rule",
            "draft_model": UNLOADABLE_MODEL,
        }
    ]

    assert admin.post("/api/rules", json=CT_RULE).status_code == 201
    after = send_and_wait_routed(node, admin, ct_series("admin test chest"))
    assert after["state"] == "routed"
    assert after["rule_name"] == "ct-rule"
    assert "routed by rule ct-rule" in after["routing_explanation"]

    jobs = admin.get("/api/jobs", params={"series_instance_uid": after["series_instance_uid"]})
    (job,) = jobs.json()["items"]
    assert job["rule_name"] == "ct-rule"
    assert job["destinations"] == ["pacs"]


def test_rule_test_names_the_failing_condition(node: Node, admin: httpx.Client) -> None:
    series = send_and_wait_routed(node, admin, ct_series("abdomen"))
    answer = admin.post(
        "/api/rules/test",
        json={"series_instance_uid": series["series_instance_uid"], "rule_name": "mr-rule"},
    ).json()
    assert answer["matches"] is False
    assert answer["condition"]["text"] == "Modality equals MR"
    assert answer["condition"]["actual"] == "CT"
    missing = admin.post("/api/rules/test", json={"series_instance_uid": "1.2.3", "rule": CT_RULE})
    assert missing.status_code == 404


# -- series, jobs, metrics -------------------------------------------------------------------


def test_series_and_jobs_listed_filtered_paged_and_retried(node: Node, admin: httpx.Client) -> None:
    admin.post("/api/rules", json=CT_RULE)
    first = send_and_wait_routed(node, admin, ct_series("admin one"))
    send_and_wait_routed(node, admin, ct_series("admin two"))

    page = admin.get("/api/series", params={"limit": 1, "modality": "CT"}).json()
    assert page["total"] == 2
    assert len(page["items"]) == 1
    assert admin.get("/api/series", params={"state": "unrouted"}).json()["total"] == 0
    assert admin.get("/api/series", params={"limit": 0}).status_code == 422
    studies = admin.get("/api/studies", params={"modality": "CT"}).json()
    assert studies["total"] == 1  # both series are copies of one study
    assert studies["items"][0]["series_count"] == 2
    assert studies["items"][0]["instance_count"] == 2
    assert studies["items"][0]["modalities"] == ["CT"]
    assert admin.get("/api/studies", params={"modality": "MR"}).json()["total"] == 0

    def failed_jobs() -> int:
        total: int = admin.get("/api/jobs", params={"state": "failed"}).json()["total"]
        return total

    wait_for(lambda: failed_jobs() == 2, 30, "both jobs to fail (the model cannot load)")
    job = admin.get("/api/jobs", params={"series_instance_uid": first["series_instance_uid"]})
    job_id = job.json()["items"][0]["id"]
    assert UNLOADABLE_MODEL in job.json()["items"][0]["error"]
    assert admin.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    retried = admin.post(f"/api/jobs/{job_id}/retry")
    assert retried.status_code == 200
    wait_for(lambda: failed_jobs() == 2, 30, "the retried job to run again")
    assert admin.get(f"/api/jobs/{job_id}").json()["attempts"] >= 2
    assert admin.post("/api/jobs/999/retry").status_code == 404

    metrics = admin.get("/metrics").text
    assert "cad_node_instances_received_total 2.0" in metrics
    assert 'cad_node_series{state="routed"} 2.0' in metrics
    assert 'cad_node_jobs{state="failed"} 2.0' in metrics
    assert "cad_node_queue_depth 0.0" in metrics
    assert f'cad_node_job_duration_seconds_count{{model="{UNLOADABLE_MODEL}"}} 2.0' in metrics
    assert 'cad_node_deliveries{state="failed"} 0.0' in metrics
    assert "# TYPE cad_node_job_stage_seconds summary" in metrics


# -- models, destinations --------------------------------------------------------------------


def test_models_listed_with_hash_and_device(reader: httpx.Client) -> None:
    models = {model["name"]: model for model in reader.get("/api/models").json()}
    lung = models["lung_nodule_ct"]
    assert len(lung["sha256"]) == 64
    assert lung["device"] == "cpu"
    assert lung["version"]
    assert (lung["format"], lung["task"], lung["labels"]) == ("native", None, [])
    site = models[UNLOADABLE_MODEL]
    assert (site["task"], site["labels"]) == ("segmentation", ["spleen", "liver"])
    assert lung["validated_domain"]["modalities"] == ["CT"]  # shipped: declared
    assert (site["validated_domain"], site["ood"]) == (None, None)  # added without either


def test_destination_echo_is_a_real_c_echo(
    node: Node, reader: httpx.Client, tmp_path: Path
) -> None:
    (pacs,) = reader.get("/api/destinations").json()
    assert pacs["name"] == "pacs"
    down = reader.post("/api/destinations/pacs/echo").json()
    assert down["ok"] is False
    assert "cannot connect" in down["detail"]
    with storescp(pacs["port"], tmp_path / "pacs"):
        up = reader.post("/api/destinations/pacs/echo").json()
    assert up == {**up, "ok": True, "status": 0, "detail": "success"}
    assert reader.post("/api/destinations/nope/echo").status_code == 404

"""``GET /api/rules/versions/{v}/diff``: what a rollback to version ``v`` would change in
the rules in force, rule by rule and field by field, before the admin confirms it; and a
rollback to a version naming a model removed since is announced as refused (issue 24)."""

import shutil
from pathlib import Path

import httpx

from cad_node.app import Node
from tests.integration.conftest import (
    ADMIN_TOKEN,
    MR_RULE,
    READ_TOKEN,
    base_url,
    install_unloadable_model,
)
from tests.integration.test_admin_api import CT_RULE


def client(node: Node, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=base_url(node), headers=headers, timeout=30)


def test_the_diff_lists_rules_added_removed_and_changed_against_the_version_in_force(
    node: Node,
) -> None:
    with client(node, ADMIN_TOKEN) as admin, client(node, READ_TOKEN) as reader:
        assert admin.post("/api/rules", json=CT_RULE).status_code == 201  # version 2
        narrower = {**CT_RULE, "when": {"keyword": "Modality", "equals": "CT"}}
        assert admin.put("/api/rules/ct-rule", json=narrower).status_code == 200  # 3
        renumbered = {**MR_RULE, "priority": 15, "description": "MR, later"}
        assert admin.put("/api/rules/mr-rule", json=renumbered).status_code == 200  # 4

        to_first = reader.get("/api/rules/versions/1/diff")  # a read token may look
        assert to_first.status_code == 200, to_first.text
        diff = to_first.json()
        assert diff["version"] == 1
        assert diff["in_force"] == 4
        assert diff["refused"] is None
        assert diff["order_changed"] is False
        assert diff["changes"] == [
            {"rule": "ct-rule", "change": "removed", "fields": []},
            {
                "rule": "mr-rule",
                "change": "changed",
                "fields": [
                    {"field": "description", "in_force": "MR, later", "after": ""},
                    {"field": "priority", "in_force": "15", "after": "10"},
                ],
            },
        ]

        to_second = admin.get("/api/rules/versions/2/diff").json()
        (ct_change,) = [c for c in to_second["changes"] if c["rule"] == "ct-rule"]
        assert ct_change["change"] == "changed"
        assert ct_change["fields"] == [
            {
                "field": "when",
                "in_force": "Modality equals CT",
                "after": ct_change["fields"][0]["after"],
            }
        ]
        assert "SeriesDescription" in ct_change["fields"][0]["after"]

        assert admin.get("/api/rules/versions/4/diff").json()["changes"] == []
        assert admin.get("/api/rules/versions/99/diff").status_code == 404

        admin.delete("/api/rules/ct-rule")  # 5: mr-rule alone, as version 1 but changed
        assert admin.post("/api/rules", json=narrower).status_code == 201  # 6
        assert admin.delete("/api/rules/mr-rule").status_code == 200  # 7
        assert admin.post("/api/rules", json=renumbered).status_code == 201  # 8: ct, mr
        reordered = admin.get("/api/rules/versions/4/diff").json()  # 4 listed mr, ct
        assert reordered["changes"] == []
        assert reordered["order_changed"] is True


def test_the_diff_says_when_a_rollback_would_be_refused_and_the_rollback_is(
    node: Node, tmp_path: Path
) -> None:
    models = tmp_path / "storage" / "models"
    install_unloadable_model(models, "site_chest")
    site_rule = {**CT_RULE, "name": "site", "model": "site_chest"}
    with client(node, ADMIN_TOKEN) as admin:
        assert admin.post("/api/rules", json=site_rule).status_code == 201  # version 2
        assert admin.delete("/api/rules/site").status_code == 200  # 3
        shutil.rmtree(models / "site_chest")

        diff = admin.get("/api/rules/versions/2/diff").json()

        assert diff["changes"] == [{"rule": "site", "change": "added", "fields": []}]
        assert diff["refused"] is not None
        assert "rule 'site': model 'site_chest' is not installed" in diff["refused"]
        refused = admin.post("/api/rules/versions/2/rollback")
        assert refused.status_code == 422
        assert admin.get("/api/rules").json()["version"] == 3


def test_an_audit_event_of_a_rollback_names_the_versions(node: Node) -> None:
    with client(node, ADMIN_TOKEN) as admin:
        admin.post("/api/rules", json=CT_RULE)  # version 2
        rolled = admin.post("/api/rules/versions/1/rollback")
        assert rolled.status_code == 200
        assert rolled.json()["version"] == 3
        event = admin.get("/api/audit", params={"action": "rules.rollback"}).json()["items"][0]
        assert event["target"] == "version 1"
        assert event["detail"] == {"version": 3}

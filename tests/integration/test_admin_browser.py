"""The admin web page in a real browser: Debian's chromium, headless, driven by Selenium.

An admin enters the token, edits a rule (live validation), tests it against a stored
series, saves it; the next series sent by C-STORE is routed by the new rule. The pages
run under the admin app's Content-Security-Policy: the browser reports no violation.
Screenshots are saved (``CAD_NODE_SCREENSHOTS`` names a folder to keep them) and checked.
"""

import json
from pathlib import Path

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from cad_node.app import Node
from tests.integration.browser import (
    BROWSER_MARKS,
    assert_no_csp_violation,
    set_editor,
    shoot,
    wait_loaded,
    wait_text,
)
from tests.integration.conftest import ADMIN_TOKEN, base_url
from tests.integration.test_admin_api import CT_RULE, ct_series, send_and_wait_routed

pytestmark = BROWSER_MARKS


def test_admin_edits_tests_and_saves_a_rule_that_routes_the_next_series(
    node: Node, browser: WebDriver, screenshots: Path
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=base_url(node), headers=headers, timeout=30) as api:
        stored = send_and_wait_routed(node, api, ct_series("admin chest"))
        assert stored["state"] == "unrouted"

        browser.get(f"{base_url(node)}/ui/rules")
        browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait_text(browser, "who", "alice (admin)")
        wait_loaded(browser)
        assert "mr-rule" in browser.find_element(By.ID, "rules").text

        set_editor(browser, {**CT_RULE, "when": {"keyword": "Modallity", "equals": "CT"}})
        # The page validates on every keystroke: wait for the verdict on the whole rule,
        # not the "not JSON" of a half-typed one.
        wait_text(browser, "validation", "Modallity")
        assert "✗" in browser.find_element(By.ID, "validation").text
        shoot(browser, screenshots / "rules-invalid.png", "Modallity")

        browser.find_element(By.ID, "new-rule").click()
        set_editor(browser, CT_RULE)
        wait_text(browser, "validation", "✓ valid")
        Select(browser.find_element(By.ID, "test-series")).select_by_value(
            stored["series_instance_uid"]
        )
        browser.find_element(By.ID, "test-rule").click()
        wait_text(browser, "test-result", "rule ct-rule")
        assert "✓ Modality equals CT" in browser.find_element(By.ID, "test-result").text
        browser.find_element(By.ID, "dry-run").click()
        wait_text(browser, "dry-summary", "1 routed differently")

        browser.find_element(By.ID, "save-rule").click()
        wait_text(browser, "message", "rule ct-rule saved: version 2")
        wait_text(browser, "rules", "ct-rule")
        shoot(browser, screenshots / "rules.png", "ct-rule", "✓ valid", "1 routed differently")

        routed = send_and_wait_routed(node, api, ct_series("admin chest"))
        assert routed["rule_name"] == "ct-rule"

        browser.get(f"{base_url(node)}/")  # the token is kept for the browser session
        wait_text(browser, "last-jobs", "ct-rule")
        shoot(browser, screenshots / "dashboard.png", "Last jobs", "ct-rule", "routed")

        browser.get(f"{base_url(node)}/ui/destinations")
        echo = (By.XPATH, "//table[@id='destinations']//button[text()='Echo']")
        WebDriverWait(browser, 20).until(ec.element_to_be_clickable(echo)).click()
        wait_text(browser, "destinations", "FAILED: cannot connect")
        assert_no_csp_violation(browser)


def test_admin_switches_a_model_adds_a_destination_and_reads_the_audit(
    node: Node, browser: WebDriver, screenshots: Path
) -> None:
    browser.get(f"{base_url(node)}/ui/models")
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_text(browser, "who", "alice (admin)")
    switch = (By.ID, "mode-lung_nodule_ct")
    WebDriverWait(browser, 20).until(ec.element_to_be_clickable(switch))
    Select(browser.find_element(*switch)).select_by_value("shadow")
    wait_text(browser, "message", "model lung_nodule_ct is now shadow")
    wait_text(browser, "models", "Synthetic chest CT series from `cad-node synth ct` only")
    wait_text(browser, "models", "modalities: CT")  # each constraint of the validated domain
    shoot(browser, screenshots / "models.png", "lung_nodule_ct", "shadow")

    browser.get(f"{base_url(node)}/ui/destinations")
    wait_text(browser, "destinations", "pacs")
    browser.find_element(By.ID, "destination-name").send_keys("viewer")
    editor = browser.find_element(By.ID, "destination-json")
    editor.clear()
    editor.send_keys(json.dumps({"host": "127.0.0.1", "port": 0, "ae_title": "VIEWER"}))
    browser.find_element(By.ID, "destination-add").click()
    wait_text(browser, "message", "destination: port")  # the config model's reason
    editor.clear()
    editor.send_keys(json.dumps({"host": "127.0.0.1", "port": 11112, "ae_title": "VIEWER"}))
    browser.find_element(By.ID, "destination-add").click()
    wait_text(browser, "message", "destination viewer added")
    wait_text(browser, "destinations", "VIEWER")
    shoot(browser, screenshots / "destinations.png", "viewer", "11112", "Edit", "Delete")

    browser.get(f"{base_url(node)}/ui/audit")
    wait_text(browser, "audit", "destination.create")
    assert "model.mode" in browser.find_element(By.ID, "audit").text
    shoot(browser, screenshots / "audit.png", "destination viewer", "model lung_nodule_ct")
    assert_no_csp_violation(browser)

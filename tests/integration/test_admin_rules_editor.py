"""The rules page's form editor, rollback diff and audit detail in Chromium (issue 24).

An admin writes a rule with the form (model from the installed models, destinations as
checkboxes, conditions as rows) and sees the JSON follow; types JSON and sees the form
follow; saves; asks to roll back, reads the diff of what the rollback would change,
cancels, asks again and confirms; the editor then shows the rule as now in force, not
the draft from before. Every time on the page ends in " UTC"; the audit page shows an
event's detail as wrapped "key: value" lines. Screenshots: ``admin-rules.png``,
``admin-audit.png`` (``CAD_NODE_SCREENSHOTS=docs/images`` keeps them for the guide).
"""

import json
from pathlib import Path
from typing import Any

import httpx
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from cad_node.app import Node
from tests.integration.browser import (
    BROWSER_MARKS,
    assert_no_csp_violation,
    set_editor,
    shoot,
    sign_in,
    wait_loaded,
    wait_text,
)
from tests.integration.conftest import ADMIN_TOKEN, UNLOADABLE_MODEL, base_url
from tests.integration.test_admin_api import ct_series, send_and_wait_routed

pytestmark = BROWSER_MARKS

FORM_RULE: dict[str, Any] = {
    "name": "chest-form",
    "description": "chest CT, written with the form",
    "priority": 30,
    "mode": "active",
    "model": UNLOADABLE_MODEL,
    "destinations": ["pacs"],
    "when": {
        "any": [
            {"keyword": "Modality", "equals": "CT"},
            {"keyword": "SeriesDescription", "regex": "(?i)chest"},
        ]
    },
}
STORED_DEFAULTS: dict[str, Any] = {"include_own_results": False, "on_out_of_domain": "report"}
"""What the API adds to a rule saved without them: the fields' defaults."""


EVERY_OPERATOR: list[dict[str, Any]] = [
    {"keyword": "Modality", "equals": "CT"},
    {"keyword": "SeriesNumber", "equals": 3},
    {"keyword": "Modality", "in": ["CT", "MR"]},
    {"keyword": "ImageType", "contains": "AXIAL"},
    {"keyword": "SeriesDescription", "regex": "(?i)chest"},
    {"keyword": "SliceThickness", "min": 0.5},
    {"keyword": "SliceThickness", "max": 2.5},
    {"keyword": "SliceThickness", "min": 0.5, "max": 2.5},
    {"keyword": "ContrastBolusAgent", "present": False},
    {"keyword": "ImageOrientationPatient", "plane": "axial"},
]
NESTED = {"all": [{"keyword": "Modality", "equals": "CT"}, {"any": EVERY_OPERATOR[:2]}]}


def by_id(browser: WebDriver, element_id: str) -> WebElement:
    return browser.find_element(By.ID, element_id)


def retype(element: WebElement, text: str) -> None:
    element.clear()
    element.send_keys(text)


def json_shown(browser: WebDriver) -> Any:
    return json.loads(by_id(browser, "rule-json").get_attribute("value") or "null")


def wait_json(browser: WebDriver, expected: dict[str, Any]) -> None:
    """Wait until the JSON text holds ``expected`` (the form's edits reach it as typed)."""
    WebDriverWait(browser, 20).until(lambda b: json_shown(b) == expected)


def wait_value(browser: WebDriver, element_id: str, value: str) -> None:
    WebDriverWait(browser, 20).until(lambda b: by_id(b, element_id).get_attribute("value") == value)


def condition_rows(browser: WebDriver) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, "#rf-conditions tr.condition")


def fill_condition(row: WebElement, keyword: str, operator: str, value: str) -> None:
    retype(row.find_element(By.CSS_SELECTOR, "input.keyword"), keyword)
    Select(row.find_element(By.CSS_SELECTOR, "select.operator")).select_by_value(operator)
    retype(row.find_element(By.CSS_SELECTOR, "input.value"), value)


def write_rule_with_the_form(browser: WebDriver) -> None:
    browser.find_element(By.ID, "new-rule").click()
    wait_value(browser, "rf-name", "new-rule")
    retype(by_id(browser, "rf-name"), FORM_RULE["name"])
    retype(by_id(browser, "rf-description"), FORM_RULE["description"])
    retype(by_id(browser, "rf-priority"), str(FORM_RULE["priority"]))
    Select(by_id(browser, "rf-mode")).select_by_value("active")
    Select(by_id(browser, "rf-model")).select_by_value(UNLOADABLE_MODEL)
    browser.find_element(By.CSS_SELECTOR, "#rf-destinations input[value=pacs]").click()
    Select(by_id(browser, "rf-combinator")).select_by_value("any")
    (first,) = condition_rows(browser)
    fill_condition(first, "Modality", "equals", "CT")
    by_id(browser, "rf-add-condition").click()
    fill_condition(condition_rows(browser)[1], "SeriesDescription", "regex", "(?i)chest")


def roll_back_to(browser: WebDriver, version: int) -> None:
    """Click the versions table's rollback button of ``version``: the diff opens.

    The table is drawn again when a save's reload ends; a row found just before that is
    stale, so the lookup and click are tried again until one lands."""
    row = f"//table[@id='versions']//tr[td[1][text()='{version}']]"

    def clicked(b: WebDriver) -> bool:
        b.find_element(By.XPATH, row).find_element(By.TAG_NAME, "button").click()
        return True

    WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(clicked)
    WebDriverWait(browser, 20).until(lambda b: by_id(b, "rollback").is_displayed())


def full_page(browser: WebDriver) -> None:
    """Make the window as tall as the page, so that a screenshot shows all of it."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(int(height) + 120, 1000), 3000))
    browser.execute_script("window.scrollTo(0, 0)")


def test_admin_writes_a_rule_with_the_form_and_confirms_a_rollback_from_its_diff(
    node: Node, browser: WebDriver, screenshots: Path
) -> None:
    sign_in(browser, f"{base_url(node)}/ui/rules", ADMIN_TOKEN)
    wait_text(browser, "who", "alice (admin)")
    wait_value(browser, "rf-name", "mr-rule")  # the first rule in force, in the form
    assert by_id(browser, "rf-model").get_attribute("value") == UNLOADABLE_MODEL
    models = [o.text for o in Select(by_id(browser, "rf-model")).options]
    assert "lung_nodule_ct" in models  # the installed models, from /api/models
    assert " UTC: seeded from the configuration" in by_id(browser, "rule-version-by").text
    assert " UTC" in by_id(browser, "versions").text

    # Every operator the form offers goes row -> condition -> row unchanged.
    for condition in EVERY_OPERATOR:
        back = browser.execute_script("return rowCondition(conditionRow(arguments[0]))", condition)
        assert back == condition
    assert browser.execute_script("return conditionRows(arguments[0])", NESTED) is None

    # Form -> JSON: each edit of the form shows in the JSON at once.
    write_rule_with_the_form(browser)
    wait_json(browser, FORM_RULE)
    wait_text(browser, "validation", "✓ valid")
    by_id(browser, "save-rule").click()
    wait_text(browser, "message", "rule chest-form saved: version 2")
    wait_text(browser, "rules", "Modality equals CT or SeriesDescription")

    # JSON -> form: typed JSON shows in the form (once it parses).
    set_editor(browser, {**FORM_RULE, "priority": 45, "destinations": []})
    wait_value(browser, "rf-priority", "45")
    assert not browser.find_element(By.CSS_SELECTOR, "#rf-destinations input").is_selected()
    wait_text(browser, "validation", "active but names no destinations")
    browser.find_element(By.CSS_SELECTOR, "#rf-destinations input[value=pacs]").click()
    wait_json(browser, {**FORM_RULE, "priority": 45})
    nested = {**FORM_RULE, "priority": 45, "when": {"not": {"keyword": "Modality", "equals": "MR"}}}
    set_editor(browser, nested)
    WebDriverWait(browser, 20).until(lambda b: by_id(b, "rf-nested").is_displayed())
    retype(by_id(browser, "rf-description"), "not MR")
    wait_json(browser, {**nested, "description": "not MR"})  # the nested conditions kept
    set_editor(browser, {**FORM_RULE, "priority": 45})
    wait_text(browser, "validation", "✓ valid")
    by_id(browser, "save-rule").click()
    wait_text(browser, "message", "rule chest-form saved: version 3")
    wait_loaded(browser)

    # Rollback: the diff first; cancel changes nothing.
    roll_back_to(browser, 1)
    wait_text(browser, "rollback-changes", "removed: rule chest-form")
    by_id(browser, "rollback-cancel").click()
    wait_text(browser, "message", "rollback cancelled: nothing changed")
    assert by_id(browser, "rule-version").text == "3"

    roll_back_to(browser, 2)
    wait_text(browser, "rollback-title", "Roll back to version 2")
    wait_text(browser, "rollback-changes", "changed: rule chest-form")
    assert "priority: 45 → 30" in by_id(browser, "rollback-changes").text
    # The draft in the editor differs from what will be in force: the rollback replaces it.
    retype(by_id(browser, "rf-priority"), "99")
    wait_value(browser, "rf-priority", "99")
    full_page(browser)
    shoot(
        browser,
        screenshots / "admin-rules.png",
        "Conditions",
        "Add condition",
        "priority: 45 → 30",
        "Confirm rollback to version 2",
    )
    browser.set_window_size(1280, 1000)
    by_id(browser, "rollback-confirm").click()
    wait_text(browser, "message", "rolled back: version 4 is in force (rollback to version 2)")
    wait_loaded(browser)
    assert not by_id(browser, "rollback").is_displayed()
    assert by_id(browser, "rule-version").text == "4"
    wait_value(browser, "rf-priority", "30")  # the rule as now in force, not the 99 draft
    assert json_shown(browser) == {**FORM_RULE, **STORED_DEFAULTS}  # as stored
    assert_no_csp_violation(browser)

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=base_url(node), headers=headers, timeout=30) as api:
        viewer = {
            "host": "127.0.0.1",
            "port": 11112,
            "ae_title": "VIEWER",
            "results": ["seg", "sr"],
        }
        assert api.post("/api/destinations/viewer", json=viewer).status_code == 201
        routed = send_and_wait_routed(node, api, ct_series("chest"))  # UIDs in the audit
        assert routed["rule_name"] == "chest-form"
    browser.get(f"{base_url(node)}/ui/audit")
    wait_loaded(browser)
    wait_text(browser, "audit", "rules.rollback")
    audit = by_id(browser, "audit")
    assert "version: 4" in audit.text  # detail as "key: value" lines, not raw JSON
    assert "results: seg, sr" in audit.text
    assert f"study_instance_uid: {routed['study_instance_uid']}" in audit.text
    assert "rule: chest-form" in audit.text
    assert '{"version"' not in audit.text
    first_time = browser.find_element(By.XPATH, "//table[@id='audit']//tr[2]/td[2]").text
    assert first_time.endswith(" UTC")
    page_width = browser.execute_script("return document.documentElement.scrollWidth")
    assert int(page_width) <= 1280  # wrapped: no row wider than the window
    shoot(
        browser, screenshots / "admin-audit.png", "rules.rollback", "version: 4", "host: 127.0.0.1"
    )
    assert_no_csp_violation(browser)

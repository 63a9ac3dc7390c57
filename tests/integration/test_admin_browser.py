"""The admin web page in a real browser: Debian's chromium, headless, driven by Selenium.

An admin enters the token, edits a rule (live validation), tests it against a stored
series, saves it; the next series sent by C-STORE is routed by the new rule. The pages
run under the admin app's Content-Security-Policy: the browser reports no violation.
Screenshots are saved (``CAD_NODE_SCREENSHOTS`` names a folder to keep them) and checked.
"""

import importlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageStat

from cad_node.app import Node
from tests.integration.test_admin_api import (
    ADMIN_TOKEN,
    CT_RULE,
    base_url,
    ct_series,
    node_settings,
    send_and_wait_routed,
)

if os.environ.get("CI") and shutil.which("chromedriver") is None:
    raise RuntimeError("CI must run the browser test: install chromium and chromium-driver")
webdriver = (
    importlib.import_module("selenium.webdriver")
    if os.environ.get("CI")
    else pytest.importorskip("selenium.webdriver")
)
from selenium.webdriver.chromium.webdriver import ChromiumDriver  # noqa: E402 - after the skip
from selenium.webdriver.common.by import By  # noqa: E402 - after the importorskip
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None or shutil.which("chromedriver") is None,
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them; CI fails)",
    ),
]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = Node(node_settings(tmp_path))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CAD_NODE_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_text(driver: WebDriver, element_id: str, text: str, timeout: float = 20) -> None:
    WebDriverWait(driver, timeout).until(
        ec.text_to_be_present_in_element((By.ID, element_id), text)
    )


def wait_loaded(driver: WebDriver, timeout: float = 20) -> None:
    """Wait until the page has fetched everything it shows (``<body data-loaded>``)."""
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true"
    )


def shoot(driver: WebDriver, path: Path, *texts: str) -> None:
    """Save a screenshot and check it: not blank, and the page shows ``texts``."""
    driver.save_screenshot(str(path))
    with Image.open(path) as image:
        assert image.size[0] >= 800
        assert image.size[1] >= 600
        deviation = ImageStat.Stat(image.convert("L")).stddev[0]
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert deviation > 10, f"{path.name} looks blank"
    assert colours is None or len(colours) > 20, f"{path.name} has almost no content"
    body = driver.find_element(By.TAG_NAME, "body").text
    for text in texts:
        assert text in body, f"{text!r} not on the page of {path.name}"


def assert_no_csp_violation(driver: WebDriver) -> None:
    """The browser console since the last call holds no Content-Security-Policy refusal."""
    assert isinstance(driver, ChromiumDriver)  # the console log is Chromium's
    log = driver.get_log("browser")  # type: ignore[no-untyped-call]  # untyped in selenium
    messages = [entry["message"] for entry in log]
    refused = [m for m in messages if "Content Security Policy" in m]
    assert not refused, refused


def set_editor(driver: WebDriver, rule: dict[str, object]) -> None:
    editor = driver.find_element(By.ID, "rule-json")
    editor.clear()
    typed = json.dumps(rule, indent=2)
    editor.send_keys(typed)
    assert editor.get_attribute("value") == typed


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

"""The admin page in a real browser: Debian's chromium, headless, driven by Selenium.

Helpers for every browser test: ``shoot`` (save a screenshot and check it shows what
it should), ``sign_in`` and waits for the page's own ``data-loaded`` signal. The
fixtures ``browser`` (a headless Chromium) and ``screenshots`` (a folder;
``CAD_NODE_SCREENSHOTS`` names one to keep them) are in ``tests/integration/conftest.py``.
A test module sets ``pytestmark = BROWSER_MARKS``.
"""

import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageStat

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
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BROWSER_MARKS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None or shutil.which("chromedriver") is None,
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them; CI fails)",
    ),
]


def sign_in(driver: WebDriver, url: str, token: str) -> None:
    """Open ``url``, enter ``token`` and wait until the page has loaded its data."""
    driver.get(url)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_loaded(driver)


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

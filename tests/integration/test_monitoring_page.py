"""The monitoring page in Chromium (issue 22): a reader picks a model and a period and sees the
figures the API computes, every figure image loaded, the drift table, the shadow-vs-active
comparison and the report command.

The journal is :func:`tests.integration.monitoring_journal.fill_journal`'s. Screenshots:
``monitoring-page.png``, ``monitoring-drift.png`` and ``monitoring-classifier.png``
(``CAD_NODE_SCREENSHOTS=docs/images`` keeps them for the admin guide). The page runs under
the admin app's Content-Security-Policy (figures from ``blob:`` URLs): no violation.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from cad_node.app import Node
from tests.integration.browser import (
    BROWSER_MARKS,
    assert_no_csp_violation,
    shoot,
    sign_in,
    wait_loaded,
    wait_text,
)
from tests.integration.conftest import READ_TOKEN, api_client, base_url
from tests.integration.monitoring_journal import (
    LUNG,
    LUNG_SHADOW,
    MAMMO,
    MonitoringJournal,
    monitored_node,
)

pytestmark = BROWSER_MARKS

LOADED_IMAGES = """return Array.from(document.querySelectorAll(arguments[0] + ' img'))
  .map((img) => [img.dataset.figure, img.naturalWidth, img.src.slice(0, 5)]);"""


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, MonitoringJournal]]:
    with monitored_node(tmp_path_factory.mktemp("monitoring-page")) as running:
        yield running


def estimate(label: str, e: dict[str, Any]) -> str:
    """The page's tile text of an estimate: "Sensitivity 0.83 (0.55-0.95), n = 12"."""
    return f"{label} {e['value']:.2f} ({e['low']:.2f}-{e['high']:.2f}), n = {e['n']}"


def api_view(node: Node, model: str, since: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the page asks the API for ``model`` over the page's default period."""
    with api_client(node, READ_TOKEN) as read:
        performance = read.get(f"/api/monitoring/{model}/performance", params={"since": since})
        figures = read.get(f"/api/monitoring/{model}/figures", params={"since": since})
    return performance.json(), figures.json()


def loaded_figures(browser: WebDriver, section: str) -> dict[str, int]:
    shown = browser.execute_script(LOADED_IMAGES, section)
    assert all(src == "blob:" for _, _, src in shown), shown
    return {name: width for name, width, _ in shown}


def test_a_reader_sees_each_model_s_figures_drift_and_comparison(
    monitored: tuple[Node, MonitoringJournal], browser: WebDriver, screenshots: Path
) -> None:
    node, journal = monitored
    browser.set_window_size(1280, 1400)  # the tiles and the first figures in one screenshot
    sign_in(browser, f"{base_url(node)}/ui/monitoring?model={LUNG}", READ_TOKEN)
    wait_text(browser, "monitoring-title", f"{LUNG}: local performance")
    since = browser.find_element(By.ID, "monitoring-since").get_attribute("value") or ""
    performance, figures = api_view(node, LUNG, since)

    tiles = browser.find_element(By.ID, "monitoring-tiles").text
    detection = performance["detection"]
    assert f"Studies read {len(journal.studies[LUNG])}" in tiles
    assert estimate("Sensitivity", detection["sensitivity"]) in tiles
    assert estimate("PPV", detection["ppv"]) in tiles
    assert estimate("False marks per study", detection["false_marks_per_study"]) in tiles
    shown = loaded_figures(browser, "#performance-figures")
    assert set(shown) == set(figures["performance"])
    assert "weekly" in shown
    assert all(width > 0 for width in shown.values()), shown

    models = browser.find_element(By.ID, "monitoring-models").text
    assert LUNG_SHADOW in models
    assert MAMMO in models
    compared = browser.find_element(By.ID, "compare-table").text
    assert "Studies read 20 20" in compared
    report = browser.find_element(By.ID, "report-command").text
    assert report.startswith(f"cad-node report --model {LUNG} --since {since} --out ")
    shoot(browser, screenshots / "monitoring-page.png", "Sensitivity", "PPV", "Studies read")

    drift_table = browser.find_element(By.ID, "drift-table")
    rows = {
        row.get_attribute("data-feature"): row.text
        for row in drift_table.find_elements(By.CSS_SELECTOR, "tr[data-feature]")
    }
    assert rows["Manufacturer"].endswith("alert")
    assert rows["ConvolutionKernel"].endswith("ok")
    drift_figures = loaded_figures(browser, "#drift-figures")
    assert set(drift_figures) == set(figures["drift"])
    assert "psi" in drift_figures
    assert all(width > 0 for width in drift_figures.values()), drift_figures
    browser.execute_script("document.getElementById('monitoring-drift').scrollIntoView()")
    shoot(browser, screenshots / "monitoring-drift.png", "Model drift", "Manufacturer", "alert")

    Select(browser.find_element(By.ID, "monitoring-model")).select_by_value(MAMMO)
    wait_text(browser, "monitoring-title", f"{MAMMO}: local performance")
    wait_loaded(browser)
    performance, figures = api_view(node, MAMMO, since)
    tiles = browser.find_element(By.ID, "monitoring-tiles").text
    classification = performance["classification"]
    assert estimate("AUC", classification["auc"]) in tiles
    assert estimate("Sensitivity at the operating point", classification["sensitivity"]) in tiles
    shown = loaded_figures(browser, "#performance-figures")
    assert {"roc", "reliability", "confusion"} <= set(shown) == set(figures["performance"])
    assert all(width > 0 for width in shown.values()), shown
    assert browser.find_element(By.ID, "monitoring-compare").get_attribute("hidden") is not None
    browser.execute_script("document.getElementById('monitoring-tiles').scrollIntoView()")
    shoot(browser, screenshots / "monitoring-classifier.png", "AUC", "Specificity")
    assert_no_csp_violation(browser)

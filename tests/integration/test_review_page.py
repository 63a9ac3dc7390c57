"""The review page in a real browser (issue 22): a radiologist's verdicts reach the journal.

A reviewer (review token) opens a synthetic mammography study whose job outputs are in
the journal, sees the four views with the model's two marks, agrees with one finding,
disagrees with the other, clicks on a view to mark a lesion the model missed, and records
the outcome of each breast; the journal holds exactly those verdicts. The screenshot is
``review-page.png`` (``CAD_NODE_SCREENSHOTS=docs/images`` keeps it for the admin guide).
"""

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from cad_node.domain.monitoring import AssessmentOutput, ImagePoint
from cad_node.synth import mammo
from tests.conftest import send
from tests.integration.browser import (
    BROWSER_MARKS,
    assert_no_csp_violation,
    shoot,
    sign_in,
    wait_loaded,
    wait_text,
)
from tests.integration.conftest import READ_TOKEN, api_client, base_url
from tests.integration.peers import wait_for
from tests.integration.test_feedback_api import (
    REVIEW_TOKEN,
    feedback_rows,
    finding,
    finished_job,
    outputs_of,
    review_node,
)

pytestmark = BROWSER_MARKS

MODEL = "mammo_screening"
ROWS, COLUMNS = 256, 192


def test_a_reviewer_gives_verdicts_marks_a_missed_lesion_and_records_the_outcome(
    tmp_path: Path, browser: WebDriver, screenshots: Path
) -> None:
    mammo.write_study(mammo.MammoSpec(seed=5, rows=ROWS, columns=COLUMNS), tmp_path / "mg")
    paths = sorted((tmp_path / "mg").glob("*.dcm"))
    views = {}
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        views[f"{ds.ImageLaterality} {ds.ViewPosition}"] = str(ds.SOPInstanceUID)
    study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    mass, calcification = generate_uid(), generate_uid()

    with review_node(tmp_path / "node") as node, api_client(node, REVIEW_TOKEN) as api:
        assert send(node.scp.port, paths) == [0x0000] * 4
        wait_for(
            lambda: api.get(f"/api/series/{series}").json().get("state") == "unrouted",
            30,
            "the mammography series to be completed",
        )
        findings = [
            finding(mass, "Mass 1", ImagePoint(views["R CC"], 110.0, 70.0), 0.87, "R"),
            finding(calcification, "Mass 2", ImagePoint(views["L MLO"], 150.0, 120.0), 0.41, "L"),
        ]
        assessments = [
            AssessmentOutput("breast_suspicion", "R", 0.87, "suspicious"),
            AssessmentOutput("breast_suspicion", "L", 0.41, "not suspicious"),
        ]
        job_id = finished_job(node, series, outputs_of(study, findings, MODEL, assessments))

        browser.set_window_size(1400, 1900)
        sign_in(browser, f"{base_url(node)}/ui/review", REVIEW_TOKEN)
        wait_text(browser, "who", "carol (review)")
        wait_text(browser, "review-studies", study)
        browser.find_element(By.LINK_TEXT, study).click()
        wait_loaded(browser)
        wait_text(browser, f"findings-{job_id}", "Mass 2")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#review-images img")) == 4
        assert len(browser.find_elements(By.CSS_SELECTOR, "#review-images circle")) == 2

        browser.find_element(By.ID, f"agree-{mass}").click()
        wait_text(browser, "message", "recorded agree with Mass 1: 1 row(s)")
        wait_loaded(browser)
        browser.find_element(By.ID, f"disagree-{calcification}").click()
        wait_text(browser, "message", "recorded disagree with Mass 2: 1 row(s)")
        wait_loaded(browser)
        wait_text(browser, f"findings-{job_id}", "disagree (carol)")

        view = browser.find_element(By.CSS_SELECTOR, "img[alt='R MLO']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", view)
        width, height = view.size["width"], view.size["height"]
        # Selenium 4 offsets are from the element's centre: a quarter down and to the right
        ActionChains(browser).move_to_element_with_offset(
            view, width // 4, height // 4
        ).click().perform()
        wait_text(browser, "missed-pending", "R MLO")
        browser.find_element(By.ID, "send-missed").click()
        wait_text(browser, "message", "recorded 1 missed lesion(s): 1 row(s)")
        wait_loaded(browser)

        Select(browser.find_element(By.ID, "truth-R")).select_by_value("malignant")
        Select(browser.find_element(By.ID, "truth-L")).select_by_value("normal")
        browser.find_element(By.ID, "outcome-note").send_keys("biopsy, follow-up 12 months")
        browser.find_element(By.ID, "send-outcome").click()
        wait_text(browser, "message", "recorded the outcome: 2 row(s)")
        wait_loaded(browser)
        wait_text(browser, "review-feedback", "malignant")
        shoot(
            browser,
            screenshots / "review-page.png",
            "Mass 1",
            "agree (carol)",
            "disagree (carol)",
            "missed",
            "malignant",
        )
        assert_no_csp_violation(browser)

        browser.execute_script("sessionStorage.clear()")  # a read token sees, may not post
        sign_in(browser, f"{base_url(node)}/ui/review?study={study}", READ_TOKEN)
        wait_text(browser, "message", "a review token records verdicts")
        assert not browser.find_element(By.ID, f"agree-{mass}").is_enabled()
        assert not browser.find_element(By.ID, "send-outcome").is_enabled()

        rows = feedback_rows(node, study)
    assert {(r.source, r.reviewer, r.job_id, r.model_name) for r in rows} == {
        ("review", "carol", job_id, MODEL)
    }
    assert [(r.verdict, r.tracking_uid, r.laterality, r.truth) for r in rows] == [
        ("agree", mass, None, None),
        ("disagree", calcification, None, None),
        ("missed", None, "R", None),
        ("outcome", None, "R", "malignant"),
        ("outcome", None, "L", "normal"),
    ]
    location = rows[2].location
    assert location is not None
    assert location["sop_instance_uid"] == views["R MLO"]
    assert location["row"] == pytest.approx(ROWS * 3 / 4, abs=ROWS * 0.03)
    assert location["column"] == pytest.approx(COLUMNS * 3 / 4, abs=COLUMNS * 0.03)
    assert rows[3].note == "biopsy, follow-up 12 months"

"""The study and series browser of a running node: search, timeline, re-route, re-run,
retry a destination's deliveries; over real HTTP (httpx), images by C-STORE (pynetdicom),
results to DCMTK's storescp, and the page in Debian's Chromium.

"Why didn't accession X get CAD?" (issue 24): a rule names a model that fails; the admin
fixes the rule, finds the study by its accession number, reads on the series' timeline
why it got no CAD, re-routes it, and the SEG and SR reach the PACS.
"""

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from pydicom import Dataset, dcmread
from pydicom.uid import Comprehensive3DSRStorage, generate_uid
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from cad_node.app import Node
from cad_node.domain.states import DeliveryState, JobState, ResultKind
from cad_node.store.schema import Delivery, Job, Result
from tests.conftest import send
from tests.integration.browser import (
    BROWSER_MARKS,
    assert_no_csp_violation,
    shoot,
    sign_in,
    wait_text,
)
from tests.integration.conftest import (
    ADMIN_TOKEN,
    UNLOADABLE_MODEL,
    api_client,
    base_url,
    in_process_node,
    node_settings,
)
from tests.integration.peers import storescp, wait_for
from tests.integration.test_admin_api import CT_RULE, ct_series, send_and_wait_routed
from tests.synthetic import write_ct_series

ACCESSION = "ACC-24-0001"
LUNG_MODEL = "lung_nodule_ct"


def described(dataset: Dataset, accession: str = ACCESSION) -> Dataset:
    dataset.AccessionNumber = accession
    dataset.StudyDate = "20261206"
    dataset.StudyDescription = "CT chest low dose"
    return dataset


def wait_job(api: httpx.Client, job_id: int, *states: str) -> dict[str, Any]:
    def ended() -> bool:
        return bool(api.get(f"/api/jobs/{job_id}").json()["state"] in states)

    wait_for(ended, 60, f"job {job_id} to be {' or '.join(states)}")
    job: dict[str, Any] = api.get(f"/api/jobs/{job_id}").json()
    return job


# -- search and role gating ----------------------------------------------------------------


def test_the_admin_finds_a_study_by_accession_number_and_a_reader_sees_uids_only(
    node: Node, admin: httpx.Client, reader: httpx.Client
) -> None:
    series = send_and_wait_routed(node, admin, described(ct_series("admin chest")))
    other = described(ct_series("other"), "ACC-OTHER")
    other.StudyInstanceUID = generate_uid()
    send_and_wait_routed(node, admin, other)
    assert admin.get("/api/browse/studies").json()["total"] == 2
    study_uid = series["study_instance_uid"]

    found = admin.get("/api/browse/studies", params={"q": ACCESSION}).json()
    assert found["total"] == 1
    (study,) = found["items"]
    assert (study["accession_number"], study["study_date"], study["study_description"]) == (
        ACCESSION,
        "20261206",
        "CT chest low dose",
    )
    assert study["study_instance_uid"] == study_uid

    # A read token: no patient data, and no search by accession number.
    assert reader.get("/api/browse/studies", params={"q": ACCESSION}).json()["total"] == 0
    by_series = reader.get("/api/browse/studies", params={"q": series["series_instance_uid"]})
    (seen,) = by_series.json()["items"]
    assert seen["study_instance_uid"] == study_uid
    assert (seen["accession_number"], seen["study_date"], seen["study_description"]) == (
        None,
        None,
        None,
    )
    detail = reader.get(f"/api/browse/studies/{study_uid}").json()
    assert detail["accession_number"] is None
    assert [s["series_instance_uid"] for s in detail["series"]] == [series["series_instance_uid"]]
    timeline = reader.get(f"/api/series/{series['series_instance_uid']}/timeline").json()
    assert timeline["study"] == {
        "accession_number": None,
        "study_date": None,
        "study_description": None,
    }
    assert admin.get(f"/api/browse/studies/{study_uid}").json()["accession_number"] == ACCESSION
    assert admin.get("/api/browse/studies/1.2.3.4").status_code == 404
    assert admin.get("/api/series/1.2.3.4/timeline").status_code == 404


def test_a_read_token_may_not_act(reader: httpx.Client) -> None:
    assert reader.post("/api/series/1.2.3/reroute").status_code == 403
    assert reader.post("/api/series/1.2.3/rerun").status_code == 403
    assert reader.post("/api/destinations/pacs/retry").status_code == 403


# -- timeline, re-route, re-run -------------------------------------------------------------


def test_the_timeline_says_why_and_a_reroute_after_the_fix_queues_the_job(
    node: Node, admin: httpx.Client
) -> None:
    series = send_and_wait_routed(node, admin, described(ct_series("admin chest")))
    uid = series["series_instance_uid"]
    timeline = admin.get(f"/api/series/{uid}/timeline").json()
    kinds = [event["kind"] for event in timeline["timeline"]]
    assert kinds[:3] == ["received", "complete", "routing"]
    routing = timeline["timeline"][2]
    assert routing["summary"] == "no job: unrouted"
    assert any("rule mr-rule" in line for line in routing["details"])

    # Fix: a rule for the series, its model switched off: matched, still no job.
    assert admin.post("/api/rules", json=CT_RULE).status_code == 201
    switched = admin.put(f"/api/models/{UNLOADABLE_MODEL}/mode", json={"mode": "off"})
    assert switched.status_code == 200
    off = admin.post(f"/api/series/{uid}/reroute").json()
    assert (off["state"], off["rule_name"], off["job_id"]) == ("unrouted", "ct-rule", None)
    assert f"model {UNLOADABLE_MODEL} is switched off" in off["message"]

    admin.put(f"/api/models/{UNLOADABLE_MODEL}/mode", json={"mode": "active"})
    routed = admin.post(f"/api/series/{uid}/reroute").json()
    assert (routed["state"], routed["rule_name"], routed["series_revision"]) == (
        "routed",
        "ct-rule",
        1,
    )
    assert routed["message"] == f"rule ct-rule matched: job {routed['job_id']} queued (revision 1)"
    assert "✓ Modality equals CT" in routed["explanation"]
    failed = wait_job(admin, routed["job_id"], "failed")
    assert "unknown family" in failed["error"]

    timeline = admin.get(f"/api/series/{uid}/timeline").json()
    summaries = [event["summary"] for event in timeline["timeline"]]
    assert f"job {routed['job_id']} failed" in summaries
    assert any(s.startswith("series.reroute by alice") for s in summaries)
    (job_end,) = [e for e in timeline["timeline"] if e["summary"].endswith("failed")]
    assert any("unknown family" in line for line in job_end["details"])

    # The same model again on the same revision: the revision is raised (one job per model).
    again = admin.post(f"/api/series/{uid}/reroute").json()
    assert again["series_revision"] == 2
    wait_job(admin, again["job_id"], "failed")

    rerun = admin.post(f"/api/series/{uid}/rerun")
    assert rerun.status_code == 200
    (queued,) = rerun.json()["jobs"]
    assert (queued["series_revision"], queued["model_name"]) == (3, UNLOADABLE_MODEL)
    assert queued["destinations"] == ["pacs"]
    wait_job(admin, queued["id"], "failed")

    audit = admin.get("/api/audit", params={"action": "series.rerun"}).json()["items"]
    assert [event["target"] for event in audit] == [f"series {uid}"]
    reroutes = admin.get("/api/audit", params={"action": "series.reroute"}).json()["items"]
    assert len(reroutes) == 3
    assert all(event["actor"] == "alice" for event in reroutes)


def test_rerun_without_a_job_and_a_busy_series_are_refused(node: Node, admin: httpx.Client) -> None:
    series = send_and_wait_routed(node, admin, described(ct_series("admin chest")))
    uid = series["series_instance_uid"]
    refused = admin.post(f"/api/series/{uid}/rerun")
    assert refused.status_code == 409
    assert "re-route it instead" in refused.json()["detail"]

    with node.sessions.begin() as session:  # a job another worker holds
        session.add(
            Job(
                series_instance_uid=uid,
                series_revision=1,
                rule_name="ct-rule",
                model_name=UNLOADABLE_MODEL,
                destinations=[],
                state=JobState.RUNNING,
                attempts=1,
                created_at=node.clock(),
                lease_expires_at=node.clock() + timedelta(hours=1),
            )
        )
    busy = admin.post(f"/api/series/{uid}/reroute")
    assert busy.status_code == 409
    assert "queued or running" in busy.json()["detail"]
    assert admin.post("/api/series/1.2.3.4/reroute").status_code == 404


# -- retry every delivery of a destination ---------------------------------------------------


def _deliveries(node: Node, uid: str, states: list[DeliveryState]) -> list[int]:
    """Journal a done job on series ``uid`` with one result delivered to "pacs" per state."""
    now = node.clock()
    with node.sessions.begin() as session:
        job = Job(
            series_instance_uid=uid,
            series_revision=1,
            rule_name="ct-rule",
            model_name=UNLOADABLE_MODEL,
            destinations=["pacs"],
            state=JobState.DONE,
            attempts=1,
            created_at=now,
            finished_at=now,
        )
        session.add(job)
        session.flush()
        ids = []
        for number, state in enumerate(states):
            result = Result(
                job_id=job.id,
                kind=ResultKind.SR,
                sop_class_uid=Comprehensive3DSRStorage,
                sop_instance_uid=f"{uid}.9{number}",
                series_instance_uid=f"{uid}.8",
                path=f"results/{number}.dcm",
                created_at=now,
            )
            session.add(result)
            session.flush()
            delivery = Delivery(
                result_id=result.id,
                destination="pacs",
                state=state,
                attempts=5,
                next_attempt_at=now + timedelta(hours=1),
                last_error="association refused",
            )
            session.add(delivery)
            session.flush()
            ids.append(delivery.id)
    return ids


def test_retry_all_deliveries_of_a_destination(node: Node, admin: httpx.Client) -> None:
    series = send_and_wait_routed(node, admin, described(ct_series("admin chest")))
    states = [DeliveryState.PENDING, DeliveryState.FAILED, DeliveryState.DELIVERED]
    pending, failed, delivered = _deliveries(node, series["series_instance_uid"], states)
    now = node.clock()

    answer = admin.post("/api/destinations/pacs/retry")
    assert answer.json() == {"destination": "pacs", "retried": 2}
    with node.sessions() as session:
        rows = {row.id: row for row in session.scalars(select(Delivery))}
    assert rows[delivered].state == DeliveryState.DELIVERED
    assert rows[delivered].attempts == 5
    # Sent at the next export sweep (it may have run already: then its attempt counts 1).
    for delivery_id in (pending, failed):
        assert rows[delivery_id].attempts <= 1
        assert rows[delivery_id].next_attempt_at <= now + timedelta(minutes=10)
    (event,) = admin.get("/api/audit", params={"action": "destination.retry"}).json()["items"]
    assert (event["target"], event["detail"]) == ("destination pacs", {"deliveries": 2})

    timeline = admin.get(f"/api/series/{series['series_instance_uid']}/timeline").json()
    assert len(timeline["deliveries"]) == 3
    assert {d["job_id"] for d in timeline["deliveries"]} == {timeline["jobs"][0]["id"]}


# -- the page, in Chromium ------------------------------------------------------------------


def in_chromium(test: Callable[..., None]) -> Callable[..., None]:
    """The browser tests' marks (slow; skipped without Debian's chromium) on one test."""
    for mark in BROWSER_MARKS:
        test = mark(test)
    return test


@in_chromium
def test_admin_finds_the_study_reads_why_and_reroutes_it_to_the_pacs(
    tmp_path: Path, browser: WebDriver, screenshots: Path
) -> None:
    settings = node_settings(tmp_path)
    pacs = settings.destinations["pacs"]
    chest = write_ct_series(tmp_path / "chest", seed=2424)
    datasets = [described(dcmread(path)) for path in chest.paths]
    with in_process_node(settings) as node:
        with api_client(node, ADMIN_TOKEN) as api, storescp(pacs.port, tmp_path / "pacs"):
            # The rule names a model that is installed but wrong: the job fails, no CAD.
            wrong = {**CT_RULE, "when": {"keyword": "Modality", "equals": "CT"}}
            assert api.post("/api/rules", json=wrong).status_code == 201
            assert send(node.scp.port, datasets) == [0x0000] * len(datasets)
            uid = chest.series_instance_uid
            wait_for(lambda: _job_ended(api, uid), 60, "the first job to fail")

            # The admin fixes the rule ...
            fixed = {**wrong, "model": LUNG_MODEL, "on_out_of_domain": "run_anyway"}  # small CT
            assert api.put("/api/rules/ct-rule", json=fixed).status_code == 200

            # ... finds the study by accession number and reads why it got no CAD.
            sign_in(browser, f"{base_url(node)}/ui/studies", ADMIN_TOKEN)
            browser.find_element(By.ID, "study-q").send_keys(ACCESSION)
            browser.find_element(By.CSS_SELECTOR, "#study-search button").click()
            wait_text(browser, "studies", "CT chest low dose")
            browser.find_element(By.LINK_TEXT, chest.study_instance_uid).click()
            wait_text(browser, "study-series", uid)
            browser.find_element(By.LINK_TEXT, uid).click()
            wait_text(browser, "timeline", "failed")
            wait_text(browser, "timeline", "unknown family")

            browser.find_element(By.ID, "reroute").click()
            WebDriverWait(browser, 10).until(ec.alert_is_present())
            browser.switch_to.alert.accept()
            wait_text(browser, "message", "rule ct-rule matched: job")
            wait_text(browser, "action-result", "✓ Modality equals CT")

            def delivered() -> bool:
                states = [
                    d["state"] for d in api.get(f"/api/series/{uid}/timeline").json()["deliveries"]
                ]
                return len(states) >= 2 and set(states) == {"delivered"}

            wait_for(delivered, 240, "the SEG and SR to reach the PACS")
            browser.refresh()
            wait_text(browser, "timeline", "to pacs, delivered", timeout=30)
            wait_text(browser, "series-destinations", "delivered")
            browser.set_window_size(1280, 1800)  # the whole timeline in the picture
            shoot(
                browser,
                screenshots / "admin-study.png",
                ACCESSION,
                "routed by rule ct-rule",
                "series.reroute by alice",
                "delivered",
            )
            assert_no_csp_violation(browser)

        received = [dcmread(path) for path in (tmp_path / "pacs").iterdir()]
        modalities = sorted(dataset.Modality for dataset in received)
        assert "SEG" in modalities
        assert "SR" in modalities
        assert {dataset.AccessionNumber for dataset in received} == {ACCESSION}

        browser.get(f"{base_url(node)}/ui/jobs")
        wait_text(browser, "jobs", LUNG_MODEL)
        browser.find_element(By.LINK_TEXT, uid)  # the series cell links to the browser
        browser.get(f"{base_url(node)}/ui/deliveries")
        wait_text(browser, "deliveries", "delivered")
        browser.find_elements(By.PARTIAL_LINK_TEXT, "job ")[0].click()
        wait_text(browser, "timeline", "to pacs, delivered")


def _job_ended(api: httpx.Client, series_instance_uid: str) -> bool:
    jobs = api.get("/api/jobs", params={"series_instance_uid": series_instance_uid}).json()
    return any(job["state"] == "failed" for job in jobs["items"])

"""Radiologists' feedback through the admin API (issue 22): roles, matching, 422s, CSV, audit.

One node in this process for the module (tokens: alice admin, bob read, carol review, dave
send); each test stores its own study by C-STORE (pydicom's CT_small under fresh UIDs) and
journals a finished job's outputs with :func:`cad_node.store.outputs.record_outputs`, as the
worker does, without running a model.
"""

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from cad_node.app import Node
from cad_node.domain.monitoring import AssessmentOutput, FindingOutput, ImagePoint, JobOutputs
from cad_node.domain.states import JobState
from cad_node.store.jobs import queue_job
from cad_node.store.outputs import record_outputs
from cad_node.store.schema import FeedbackRow, Series
from tests.integration.conftest import (
    ADMIN_TOKEN,
    READ_TOKEN,
    admin_tokens,
    api_client,
    in_process_node,
    node_settings,
    sha256,
)
from tests.integration.test_admin_api import ct_series, send_and_wait_routed

REVIEW_TOKEN = "review-token-of-carol"
SEND_TOKEN = "send-token-of-dave"
MODEL = "lung_nodule_ct"


def review_tokens() -> list[dict[str, str]]:
    """alice (admin), bob (read), carol (review), dave (send)."""
    return [
        *admin_tokens(),
        {"name": "carol", "role": "review", "sha256": sha256(REVIEW_TOKEN)},
        {"name": "dave", "role": "send", "sha256": sha256(SEND_TOKEN)},
    ]


@contextmanager
def review_node(tmp_path: Path) -> Iterator[Node]:
    with in_process_node(node_settings(tmp_path, tokens=review_tokens())) as running:
        yield running


def finished_job(
    node: Node, series_instance_uid: str, outputs: JobOutputs, revision: int = 1
) -> int:
    """A done job on the series with ``outputs`` journaled, as the worker leaves one."""
    now = datetime.now(UTC)
    with node.sessions.begin() as session:
        job = queue_job(
            session,
            series_instance_uid=series_instance_uid,
            series_revision=revision,
            rule_name="review-test",
            model_name=outputs.model_name,
            destinations=["pacs"],
            now=now,
        )
        job.state = JobState.DONE  # in the same transaction: no worker ever sees it queued
        job.finished_at = now
        record_outputs(session, job.id, outputs, now)
        return job.id


def finding(
    tracking_uid: str, label: str, centre: ImagePoint, p: float, laterality: str | None = None
) -> FindingOutput:
    return FindingOutput(
        tracking_uid=tracking_uid,
        tracking_identifier=label,
        finding_type=label.split(maxsplit=1)[0],
        probability=p,
        centre=centre,
        laterality=laterality,
        diameter_mm=8.0,
    )


def outputs_of(
    study_instance_uid: str,
    findings: Sequence[FindingOutput],
    model: str = MODEL,
    assessments: Sequence[AssessmentOutput] = (),
) -> JobOutputs:
    return JobOutputs(
        model_name=model,
        model_version="1.0",
        weights_sha256="a" * 64,
        study_instance_uid=study_instance_uid,
        mode="active",
        score=max((f.probability or 0.0 for f in findings), default=None),
        findings=tuple(findings),
        assessments=tuple(assessments),
    )


class CtStudy:
    """One CT image stored on the node, and a job's two findings on it."""

    def __init__(self, node: Node, client: httpx.Client) -> None:
        dataset: Dataset = ct_series("review ct")
        dataset.StudyInstanceUID = generate_uid()
        send_and_wait_routed(node, client, dataset)
        self.study = str(dataset.StudyInstanceUID)
        self.sop = str(dataset.SOPInstanceUID)
        self.nodule, self.false_mark = generate_uid(), generate_uid()
        findings = [
            finding(self.nodule, "Nodule 1", ImagePoint(self.sop, 40.0, 60.0), 0.91),
            finding(self.false_mark, "Nodule 2", ImagePoint(self.sop, 90.0, 30.0), 0.55),
        ]
        self.job_id = finished_job(
            node, str(dataset.SeriesInstanceUID), outputs_of(self.study, findings)
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with review_node(tmp_path_factory.mktemp("feedback-node")) as running:
        yield running


@pytest.fixture(scope="module")
def clients(node: Node) -> Iterator[dict[str, httpx.Client]]:
    tokens = {"admin": ADMIN_TOKEN, "read": READ_TOKEN, "review": REVIEW_TOKEN}
    opened = {role: api_client(node, token) for role, token in tokens.items()}
    opened["send"] = api_client(node, SEND_TOKEN)
    opened["anonymous"] = api_client(node)
    try:
        yield opened
    finally:
        for client in opened.values():
            client.close()


@pytest.fixture
def study(node: Node, clients: dict[str, httpx.Client]) -> CtStudy:
    return CtStudy(node, clients["read"])


def feedback_rows(node: Node, study_instance_uid: str) -> list[FeedbackRow]:
    with node.sessions() as session:
        query = select(FeedbackRow).where(FeedbackRow.study_instance_uid == study_instance_uid)
        return list(session.scalars(query.order_by(FeedbackRow.id)))


def post(client: httpx.Client, *items: dict[str, Any], source: str = "api") -> httpx.Response:
    return client.post("/api/feedback", json={"items": list(items), "source": source})


# -- roles ----------------------------------------------------------------------------------


def test_roles_who_may_post_feedback_and_who_may_read_it(
    clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    agree = {"study_instance_uid": study.study, "verdict": "agree", "tracking_uid": study.nodule}
    assert post(clients["anonymous"], agree).status_code == 401
    assert post(clients["read"], agree).status_code == 403
    assert post(clients["send"], agree).status_code == 403
    assert post(clients["review"], agree).status_code == 201
    assert post(clients["admin"], agree).status_code == 201
    csv = {"Content-Type": "text/csv"}
    assert clients["read"].post("/api/feedback/csv", content="x", headers=csv).status_code == 403
    for path in ("/api/review/studies", f"/api/review/studies/{study.study}", "/api/feedback"):
        assert clients["anonymous"].get(path).status_code == 401
        assert clients["send"].get(path).status_code == 403
        for role in ("read", "review", "admin"):
            assert clients[role].get(path).status_code == 200, (role, path)
    me = clients["review"].get("/api/me").json()
    assert me == {"name": "carol", "role": "review"}
    assert clients["review"].get("/api/jobs").status_code == 200  # reads as a read token does


def test_a_reviewer_changes_nothing_of_the_node(
    clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    reviewer = clients["review"]
    rule = {"name": "r", "model": MODEL, "when": {"keyword": "Modality", "equals": "CT"}}
    changes = [
        ("POST", "/api/rules", rule),
        ("PUT", f"/api/models/{MODEL}/mode", {"mode": "off"}),
        ("POST", "/api/destinations/viewer", {"host": "127.0.0.1", "port": 104}),
        ("POST", f"/api/jobs/{study.job_id}/retry", None),
        ("POST", "/dicomweb/studies", None),
    ]
    for method, path, body in changes:
        answer = reviewer.request(method, path, json=body)
        assert answer.status_code in (403, 404), (path, answer.status_code)
        if answer.status_code == 404:  # only the DICOMweb router when it is off
            assert path.startswith("/dicomweb")
    # the accession number stays the admin's
    browse = reviewer.get(f"/api/browse/studies/{study.study}").json()
    assert browse["accession_number"] is None


# -- posting ----------------------------------------------------------------------------------


def test_verdicts_are_matched_to_the_job_and_its_findings(
    node: Node, clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    answer = post(
        clients["review"],
        {"study_instance_uid": study.study, "verdict": "agree", "tracking_uid": study.nodule},
        {
            "study_instance_uid": study.study,
            "verdict": "disagree",
            "tracking_uid": study.false_mark,
        },
        {
            "study_instance_uid": study.study,
            "verdict": "missed",
            "location": {"sop_instance_uid": study.sop, "row": 10, "column": 20.5},
            "note": "posterior",
        },
        {"study_instance_uid": study.study, "verdict": "outcome", "truth": "Malignant"},
        source="review",
    )
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"recorded": 4, "unmatched": [], "replaced": 0}
    rows = feedback_rows(node, study.study)
    assert [row.verdict for row in rows] == ["agree", "disagree", "missed", "outcome"]
    assert {row.job_id for row in rows} == {study.job_id}
    assert {row.model_name for row in rows} == {MODEL}
    assert {row.source for row in rows} == {"review"}
    assert {row.reviewer for row in rows} == {"carol"}
    assert rows[0].finding_output_id is not None
    assert rows[0].tracking_uid == study.nodule
    assert rows[2].location == {
        "sop_instance_uid": study.sop,
        "row": 10.0,
        "column": 20.5,
        "frame_number": None,
    }
    assert rows[3].truth == "malignant"

    detail = clients["read"].get(f"/api/review/studies/{study.study}").json()
    (job,) = detail["jobs"]
    verdicts = {f["tracking_identifier"]: f["verdict"]["verdict"] for f in job["findings"]}
    assert verdicts == {"Nodule 1": "agree", "Nodule 2": "disagree"}
    assert len(detail["feedback"]) == 4


def test_feedback_matching_nothing_is_kept_and_reported(
    node: Node, clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    stranger, unread_study = generate_uid(), generate_uid()
    answer = post(
        clients["admin"],
        {"study_instance_uid": study.study, "verdict": "agree", "tracking_uid": stranger},
        {"study_instance_uid": unread_study, "verdict": "outcome", "truth": "benign"},
    )
    assert answer.status_code == 201
    body = answer.json()
    assert body["recorded"] == 2
    assert body["unmatched"] == [
        f"tracking UID {stranger} is no finding of this node",
        f"study {unread_study} was read by no model here",
    ]
    (row,) = feedback_rows(node, unread_study)
    assert (row.job_id, row.source, row.reviewer) == (None, "api", "alice")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"verdict": "agree"}, "names a finding's Tracking UID"),
        ({"verdict": "outcome"}, "an outcome needs a truth"),
        ({"verdict": "outcome", "truth": "maybe"}, "unknown truth 'maybe'"),
        ({"verdict": "missed"}, "a missed lesion needs a location or a laterality"),
        ({"verdict": "liked"}, "verdict: Input should be"),
        ({"verdict": "missed", "laterality": "X"}, "laterality: Input should be"),
        ({"verdict": "outcome", "truth": "normal", "patient_name": "x"}, "patient_name: Extra"),
        (
            {"verdict": "missed", "location": {"sop_instance_uid": "1.2", "row": -1, "column": 0}},
            "location.row: Input should be greater than or equal to 0",
        ),
    ],
)
def test_an_invalid_item_is_named_and_nothing_is_recorded(
    node: Node, clients: dict[str, httpx.Client], bad: dict[str, Any], reason: str
) -> None:
    uid = generate_uid()
    good = {"study_instance_uid": uid, "verdict": "outcome", "truth": "benign"}
    answer = post(clients["review"], good, {"study_instance_uid": uid, **bad})
    assert answer.status_code == 422, answer.text
    (problem,) = answer.json()["detail"]
    assert problem["item"] == 1
    assert reason in problem["reason"]
    assert feedback_rows(node, uid) == []


def test_a_request_without_items_or_with_a_bad_source_is_refused(
    clients: dict[str, httpx.Client],
) -> None:
    assert clients["review"].post("/api/feedback", json={"items": []}).status_code == 422
    item = {"study_instance_uid": "1.2.3", "verdict": "outcome", "truth": "benign"}
    bad_source = {"items": [item], "source": "dicom"}
    assert clients["review"].post("/api/feedback", json=bad_source).status_code == 422


def test_every_post_is_audited_with_uids_and_counts_only(
    clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    note = "biopsy at the county hospital"
    post(
        clients["review"],
        {"study_instance_uid": study.study, "verdict": "outcome", "truth": "2", "note": note},
    )
    events = clients["admin"].get(
        "/api/audit", params={"action": "feedback.record", "target": f"study {study.study}"}
    )
    (event,) = events.json()["items"]
    assert event["actor"] == "carol"
    assert event["detail"]["verdicts"] == {"outcome": 1}
    assert event["detail"]["recorded"] == 1
    assert note not in events.text


def test_a_csv_of_outcomes_is_recorded_or_refused_by_line(
    node: Node, clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    csv = {"Content-Type": "text/csv"}
    good = (
        "study_instance_uid,verdict,truth,laterality,tracking_uid,model,sop_instance_uid,row,"
        "column,frame_number,note\n"
        f"{study.study},outcome,malignant,L,,,,,,,biopsy\n"
        f"{study.study},agree,,,{study.nodule},,,,,,\n"
        f"{study.study},missed,,R,,,{study.sop},12.5,30,,\n"
    )
    bad = f"study_instance_uid,verdict,truth\n{study.study},outcome,maybe\n{study.study},liked,\n"
    refused = clients["review"].post("/api/feedback/csv", content=bad, headers=csv)
    assert refused.status_code == 400
    assert "line 2: truth 'maybe'" in refused.json()["detail"]
    assert "line 3: verdict 'liked'" in refused.json()["detail"]
    assert feedback_rows(node, study.study) == []

    answer = clients["review"].post("/api/feedback/csv", content=good, headers=csv)
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"recorded": 3, "unmatched": [], "replaced": 0}
    rows = feedback_rows(node, study.study)
    assert [(r.verdict, r.source, r.reviewer, r.job_id) for r in rows] == [
        ("outcome", "csv", "carol", study.job_id),
        ("agree", "csv", "carol", study.job_id),
        ("missed", "csv", "carol", study.job_id),
    ]
    events = clients["admin"].get("/api/audit", params={"action": "feedback.import"}).json()
    assert any(e["target"] == f"study {study.study}" for e in events["items"])
    not_utf8 = clients["review"].post("/api/feedback/csv", content=b"\xff\xfe", headers=csv)
    assert not_utf8.status_code == 400


# -- reading ----------------------------------------------------------------------------------


def test_studies_to_review_and_the_feedback_list(
    node: Node, clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    reader = clients["read"]
    listing = reader.get("/api/review/studies", params={"unreviewed": "true"}).json()
    row = next(s for s in listing["items"] if s["study_instance_uid"] == study.study)
    assert (row["models"], row["modalities"]) == ([MODEL], ["CT"])
    assert (row["finding_count"], row["feedback_count"]) == (2, 0)
    assert "CompressedSamples" not in reader.get("/api/review/studies").text  # PatientName

    post(clients["review"], {"study_instance_uid": study.study, "verdict": "outcome", "truth": "0"})
    listing = reader.get("/api/review/studies", params={"unreviewed": "true"}).json()
    assert study.study not in {s["study_instance_uid"] for s in listing["items"]}
    reviewed = reader.get("/api/review/studies", params={"model": MODEL, "limit": 500}).json()
    row = next(s for s in reviewed["items"] if s["study_instance_uid"] == study.study)
    assert row["feedback_count"] == 1
    assert reader.get("/api/review/studies", params={"model": "other"}).json()["total"] == 0
    later = {"since": "2999-01-01T00:00:00"}
    assert reader.get("/api/review/studies", params=later).json()["total"] == 0

    rows = reader.get("/api/feedback", params={"study": study.study}).json()
    assert [(r["verdict"], r["truth"], r["job_id"]) for r in rows] == [
        ("outcome", "0", study.job_id)
    ]
    assert reader.get("/api/feedback", params={"model": "other"}).json() == []


def test_a_study_shows_its_outputs_and_its_image_as_png(
    node: Node, clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    reader = clients["read"]
    detail = reader.get(f"/api/review/studies/{study.study}").json()
    (job,) = detail["jobs"]
    assert (job["job_id"], job["mode"]) == (study.job_id, "active")
    first = job["findings"][0]
    assert first["tracking_uid"] == study.nodule
    assert (first["sop_instance_uid"], first["row"], first["column"]) == (study.sop, 40.0, 60.0)
    assert first["verdict"] is None
    (image,) = detail["images"]
    assert image["sop_instance_uid"] == study.sop
    assert (image["rows"], image["columns"], image["available"]) == (128, 128, True)

    png = reader.get(f"/api/review/images/{study.sop}.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as picture:
        assert picture.size == (128, 128)
        colours = picture.convert("L").getcolors()
        assert colours is not None
        assert len(colours) > 10  # an image, not a blank
    assert reader.get(f"/api/review/images/{study.sop}.png?frame=2").status_code == 422
    with node.sessions.begin() as session:
        series = session.get(Series, detail["images"][0]["series_instance_uid"])
        assert series is not None
        series.purged_at = datetime.now(UTC)
    (image,) = reader.get(f"/api/review/studies/{study.study}").json()["images"]
    assert image["available"] is False
    purged = reader.get(f"/api/review/images/{study.sop}.png")
    assert purged.status_code == 404
    assert purged.json()["detail"] == "the image was removed by retention"
    assert reader.get(f"/api/review/images/{generate_uid()}.png").status_code == 404
    assert reader.get(f"/api/review/studies/{generate_uid()}").status_code == 404
    assert clients["send"].get(f"/api/review/images/{study.sop}.png").status_code == 403


def test_a_rerun_replaces_the_earlier_job_on_the_review_page(
    node: Node, clients: dict[str, httpx.Client], study: CtStudy
) -> None:
    detail = clients["read"].get(f"/api/review/studies/{study.study}").json()
    series = detail["images"][0]["series_instance_uid"]
    newer = finished_job(node, series, outputs_of(study.study, [], assessments=()), revision=2)
    detail = clients["read"].get(f"/api/review/studies/{study.study}").json()
    assert [job["job_id"] for job in detail["jobs"]] == [newer]

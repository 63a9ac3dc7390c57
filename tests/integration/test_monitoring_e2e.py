"""Issue 22's end-to-end test: synthetic studies through a real node, feedback back as DICOM and
through the API, and the monitoring figures equal those counted by hand.

A node (``cad_node.app.Node`` in this process: SCP, assembly, routing, worker, export, admin
API) reads three synthetic screening mammograms that a pynetdicom SCU sends, with the shipped
``mammo_screening`` model, and sends its results to DCMTK storescp (the PACS). A viewer
answers the first study's SR (as the PACS received it) with a feedback SR
(tests/feedback_sr.py) sent from a pynetdicom SCU, twice (the copy replaces the first); a
radiologist posts verdicts on the other two studies to ``POST /api/feedback`` with a review
token, then corrects one. The test counts TP, FP, FN, reviewed studies and the breasts'
cases from the verdicts it sent, and finds the same figures in :func:`local_performance`
in ``GET /api/monitoring/mammo_screening/performance`` and in ``cad-node report``'s page.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from sqlalchemy import func, select

from cad_node.app import Node
from cad_node.cli import main
from cad_node.config import Settings
from cad_node.domain.monitoring import ImagePoint, Verdict
from cad_node.domain.states import JobState
from cad_node.monitoring.figures import performance_figures
from cad_node.monitoring.performance import ModelPerformance, local_performance
from cad_node.monitoring.stats import garwood_interval, wilson_interval
from cad_node.store.schema import Delivery, FeedbackRow, Job, JobOutput
from cad_node.synth import mammo
from tests.conftest import MAMMO_SEED, send
from tests.dcmtk import NODE_AE_TITLE, free_port
from tests.feedback_sr import feedback_sr
from tests.integration.conftest import READ_TOKEN, admin_tokens, api_client, in_process_node, sha256
from tests.integration.peers import storescp, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "mammo_screening"
SEEDS = (MAMMO_SEED, 14, 16)
"""Three screening mammograms; the model marks 4, 2 and 1 findings on them."""
REVIEW_TOKEN = "review-token-carol"
VIEWER = "VIEWER"
WAIT_S = 60.0
TRACKING_UID = ("112040", "DCM")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Sent:
    """What the test sent and what it counts by hand."""

    studies: list[str] = field(default_factory=list)
    views: dict[str, list[str]] = field(default_factory=dict)
    """Study -> SOP Instance UIDs of its four views."""
    node_srs: dict[str, Dataset] = field(default_factory=dict)
    """Study -> the node's SR, as the PACS received it."""
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    """Tracking UID -> the newest verdict sent on it."""
    missed: int = 0
    outcomes: dict[tuple[str, str], str] = field(default_factory=dict)
    """(study, laterality) -> the truth that applies to that breast."""


@dataclass(frozen=True)
class Run:
    node: Node
    sent: Sent
    since: datetime


def settings_for(folder: Path) -> Settings:
    tokens = [*admin_tokens(), {"name": "carol", "role": "review", "sha256": sha256(REVIEW_TOKEN)}]
    return Settings.model_validate(
        {
            "ae_title": NODE_AE_TITLE,
            "port": 0,
            "bind_address": "127.0.0.1",
            "storage_dir": str(folder / "storage"),
            "quiet_seconds": 0.5,
            "device": "cpu",
            "destinations": {
                "pacs": {"host": "127.0.0.1", "port": free_port(), "ae_title": "PACS"}
            },
            "rules": [
                {
                    "name": "screening-mammography",
                    "mode": "active",
                    "model": MODEL,
                    "destinations": ["pacs"],
                    "when": {"keyword": "Modality", "equals": "MG"},
                }
            ],
            "admin": {"port": free_port(), "tokens": tokens},
        }
    )


def count(node: Node, statement: Any) -> int:
    with node.sessions() as session:
        return int(session.scalar(statement) or 0)


def all_read_and_delivered(node: Node, studies: int) -> bool:
    done = count(node, select(func.count()).select_from(Job).where(Job.state == JobState.DONE))
    outputs = count(node, select(func.count()).select_from(JobOutput))
    deliveries = count(node, select(func.count()).select_from(Delivery))
    pending = count(
        node, select(func.count()).select_from(Delivery).where(Delivery.state != "delivered")
    )
    return done == outputs == studies and deliveries > 0 and pending == 0


def node_srs(pacs: Path) -> dict[str, Dataset]:
    """Study -> the node's SR among what storescp received."""
    received = [dcmread(path) for path in sorted(pacs.iterdir()) if path.is_file()]
    return {str(ds.StudyInstanceUID): ds for ds in received if ds.Modality == "SR"}


def tracking_uids(item: Dataset) -> list[str]:
    """Every Tracking UID (DCM 112040) of an SR's content tree, in order, once each."""
    found: list[str] = []
    for child in item.get("ContentSequence", []):
        names = child.get("ConceptNameCodeSequence") or []
        if names and (names[0].CodeValue, names[0].CodingSchemeDesignator) == TRACKING_UID:
            found.append(str(child.UID))
        found += tracking_uids(child)
    return list(dict.fromkeys(found))


def feedback_rows(node: Node) -> int:
    return count(node, select(func.count()).select_from(FeedbackRow))


def post(client: httpx.Client, items: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post("/api/feedback", json={"items": items})
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    assert answer["unmatched"] == []
    return answer


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Iterator[Run]:
    folder = tmp_path_factory.mktemp("monitoring-e2e")
    settings = settings_for(folder)
    pacs = folder / "pacs"
    since = datetime.now(UTC) - timedelta(minutes=5)
    sent = Sent()
    with (
        in_process_node(settings) as node,
        storescp(settings.destinations["pacs"].port, pacs),
    ):
        for seed in SEEDS:
            truth = mammo.write_study(mammo.MammoSpec(seed=seed), folder / f"mammo-{seed}")
            files = sorted((folder / f"mammo-{seed}").glob("*.dcm"))
            assert set(send(node.scp.port, files)) == {0x0000}
            sent.studies.append(truth.study_instance_uid)
            sent.views[truth.study_instance_uid] = [view.sop_instance_uid for view in truth.views]
        wait_for(
            lambda: all_read_and_delivered(node, len(SEEDS)),
            WAIT_S,
            "three studies read and delivered",
        )
        sent.node_srs = node_srs(pacs)
        assert set(sent.node_srs) == set(sent.studies)
        _viewer_feedback(node, sent)
        _api_feedback(node, sent)
        yield Run(node, sent, since)


def _viewer_feedback(node: Node, sent: Sent) -> None:
    """Study A: a feedback SR from the viewer, sent twice (the second copy replaces the first)."""
    study = sent.studies[0]
    node_sr = sent.node_srs[study]
    first, second, *_ = tracking_uids(node_sr)
    verdicts = {first: Verdict.AGREE, second: Verdict.DISAGREE}
    missed = [ImagePoint(sent.views[study][0], row=60.0, column=40.0)]
    outcomes = [("L", "malignant"), ("R", "benign")]
    sr = feedback_sr(node_sr, verdicts, missed=missed, outcomes=outcomes)
    before = feedback_rows(node)
    for _ in range(2):
        assert send(node.scp.port, [sr], calling_ae=VIEWER) == [0x0000]
        wait_for(
            lambda: (
                count(
                    node,
                    select(func.count())
                    .select_from(FeedbackRow)
                    .where(FeedbackRow.source_sop_instance_uid == str(sr.SOPInstanceUID)),
                )
                == 5
            ),
            WAIT_S,
            "the feedback SR's 5 rows (2 verdicts, 1 missed, 2 outcomes)",
        )
    assert feedback_rows(node) == before + 5
    sent.verdicts.update(verdicts)
    sent.missed += len(missed)
    sent.outcomes.update({(study, side): truth for side, truth in outcomes})


def _api_feedback(node: Node, sent: Sent) -> None:
    """Studies B and C: verdicts, a missed lesion and outcomes posted by a reviewer; one
    verdict corrected afterwards (the newest counts)."""
    study_b, study_c = sent.studies[1], sent.studies[2]
    b_first, b_second, *_ = tracking_uids(sent.node_srs[study_b])
    (c_first, *_) = tracking_uids(sent.node_srs[study_c])
    with api_client(node, REVIEW_TOKEN) as client:
        post(
            client,
            [
                {"study_instance_uid": study_b, "verdict": "agree", "tracking_uid": b_first},
                {"study_instance_uid": study_b, "verdict": "disagree", "tracking_uid": b_second},
                {
                    "study_instance_uid": study_b,
                    "verdict": "outcome",
                    "laterality": "R",
                    "truth": "benign",
                },
                {
                    "study_instance_uid": study_b,
                    "verdict": "outcome",
                    "laterality": "L",
                    "truth": "malignant",
                },
                {"study_instance_uid": study_c, "verdict": "disagree", "tracking_uid": c_first},
                {
                    "study_instance_uid": study_c,
                    "verdict": "missed",
                    "laterality": "L",
                    "location": {
                        "sop_instance_uid": sent.views[study_c][0],
                        "row": 80,
                        "column": 50,
                    },
                },
                {"study_instance_uid": study_c, "verdict": "outcome", "truth": "benign"},
                {
                    "study_instance_uid": study_c,
                    "verdict": "outcome",
                    "laterality": "L",
                    "truth": "malignant",
                },
            ],
        )
        post(
            client, [{"study_instance_uid": study_b, "verdict": "agree", "tracking_uid": b_second}]
        )
    sent.verdicts.update(
        {b_first: Verdict.AGREE, b_second: Verdict.AGREE, c_first: Verdict.DISAGREE}
    )
    sent.missed += 1
    sent.outcomes.update(
        {
            (study_b, "R"): "benign",
            (study_b, "L"): "malignant",
            (study_c, "R"): "benign",  # the study's outcome: no outcome of its own
            (study_c, "L"): "malignant",  # its own outcome wins over the study's
        }
    )


@dataclass(frozen=True)
class ByHand:
    tp: int
    fp: int
    fn: int
    reviewed: int
    cases: list[tuple[float, bool, bool]]
    """(suspicion score, malignant, called suspicious) per breast."""

    @property
    def auc(self) -> float:
        positives = [score for score, malignant, _ in self.cases if malignant]
        negatives = [score for score, malignant, _ in self.cases if not malignant]
        pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
        return sum(pairs) / len(pairs)


def by_hand(run: Run) -> ByHand:
    """The figures from the verdicts the test sent and the scores the model journaled."""
    sent = run.sent
    verdicts = list(sent.verdicts.values())
    cases = []
    with run.node.sessions() as session:
        for output in session.scalars(select(JobOutput)):
            for assessment in output.assessments or []:
                truth = sent.outcomes[(output.study_instance_uid, assessment["laterality"])]
                called = assessment["value"] == "suspicious"
                cases.append((float(assessment["score"]), truth == "malignant", called))
    return ByHand(
        tp=verdicts.count(Verdict.AGREE),
        fp=verdicts.count(Verdict.DISAGREE),
        fn=sent.missed,
        reviewed=len(sent.studies),
        cases=cases,
    )


def test_the_node_read_the_studies_and_journaled_what_its_srs_say(run: Run) -> None:
    with run.node.sessions() as session:
        outputs = list(session.scalars(select(JobOutput)))
    assert sorted(o.study_instance_uid for o in outputs) == sorted(run.sent.studies)
    for output in outputs:
        assert (
            output.sr_sop_instance_uid
            == run.sent.node_srs[output.study_instance_uid].SOPInstanceUID
        )
        assert (output.mode, output.abstained) == ("active", False)


def test_local_performance_equals_the_figures_counted_by_hand(run: Run) -> None:
    hand = by_hand(run)
    with run.node.sessions() as session:
        perf = local_performance(session, MODEL, run.since)

    assert (hand.tp, hand.fp, hand.fn, hand.reviewed) == (3, 2, 2, 3)
    assert (perf.counts.studies_read, perf.counts.abstained, perf.counts.reviewed) == (3, 0, 3)
    detection = perf.detection
    assert detection is not None
    assert (detection.true_positives, detection.false_positives, detection.false_negatives) == (
        hand.tp,
        hand.fp,
        hand.fn,
    )
    assert detection.sensitivity.value == pytest.approx(hand.tp / (hand.tp + hand.fn))
    assert (detection.sensitivity.low, detection.sensitivity.high) == pytest.approx(
        wilson_interval(hand.tp, hand.tp + hand.fn)
    )
    assert detection.ppv.value == pytest.approx(hand.tp / (hand.tp + hand.fp))
    low, high = garwood_interval(hand.fp)
    assert (
        detection.false_marks_per_study.value,
        detection.false_marks_per_study.low,
        detection.false_marks_per_study.high,
    ) == pytest.approx((hand.fp / hand.reviewed, low / hand.reviewed, high / hand.reviewed))

    classification = perf.classification
    assert classification is not None
    malignant = sum(m for _, m, _ in hand.cases)
    assert (classification.cases, classification.positives) == (6, malignant)
    assert classification.auc.value == pytest.approx(hand.auc)
    tp = sum(m and c for _, m, c in hand.cases)
    tn = sum(not m and not c for _, m, c in hand.cases)
    assert classification.confusion == ((tn, 6 - malignant - tn), (malignant - tp, tp))
    assert classification.sensitivity.value == pytest.approx(tp / malignant)
    assert classification.specificity.value == pytest.approx(tn / (6 - malignant))
    assert sum(b.count for b in perf.reliability) == 6

    figures = performance_figures(perf)
    assert set(figures) == {"roc", "reliability", "confusion", "weekly"}
    assert all(png.startswith(PNG_SIGNATURE) for png in figures.values())


def test_the_monitoring_api_shows_the_same_figures(run: Run) -> None:
    with api_client(run.node, READ_TOKEN) as client:
        response = client.get(
            f"/api/monitoring/{MODEL}/performance", params={"since": run.since.isoformat()}
        )
    assert response.status_code == 200, response.text
    shown = response.json()
    with run.node.sessions() as session:
        computed: ModelPerformance = local_performance(session, MODEL, run.since)

    hand = by_hand(run)
    assert shown["counts"]["studies_read"] == 3
    assert shown["detection"]["true_positives"] == hand.tp
    assert shown["detection"]["sensitivity"]["value"] == pytest.approx(
        hand.tp / (hand.tp + hand.fn)
    )
    assert shown["detection"]["sensitivity"]["n"] == hand.tp + hand.fn
    assert shown["classification"]["auc"]["value"] == pytest.approx(hand.auc)
    assert shown["classification"]["auc"]["n"] == 6
    assert computed.classification is not None
    assert shown["classification"]["confusion"] == [
        list(row) for row in computed.classification.confusion
    ]


def test_the_quality_committee_report_shows_the_same_counts(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"storage_dir: {run.node.settings.storage_dir}\n")
    out = tmp_path / "report"
    since = run.since.isoformat()

    assert (
        main(
            [
                "report",
                "--config",
                str(config),
                "--model",
                MODEL,
                "--since",
                since,
                "--out",
                str(out),
            ]
        )
        == 0
    )

    hand = by_hand(run)
    html = (out / "index.html").read_text()
    assert f"TP {hand.tp}, FP {hand.fp}, FN {hand.fn}" in html
    assert f"n = {len(hand.cases)})" in html
    assert (out / "roc.png").read_bytes().startswith(PNG_SIGNATURE)
    for uid in run.sent.studies:  # UIDs, counts and figures only: not even the studies listed
        assert uid not in html

"""The monitoring API on a running node (issue 22): models, performance, comparison, drift and
figures from a journal filled by ``record_outputs`` and ``record_feedback``.

One node for the module (:func:`monitored_node`), its journal written once by
:func:`tests.integration.monitoring_journal.fill_journal`: ten weeks of a detection model
(with a shadow partner and drifted inputs in the last week), a breast classifier and a DR
grader. The API answers what :mod:`cad_node.monitoring` computes, figures are PNGs, an
unknown model or figure is 404, a bad date 422 with its reason; a read token suffices, a
send token or none is refused.
"""

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from cad_node.app import Node
from cad_node.monitoring.drift import model_drift
from cad_node.monitoring.performance import compare_models, local_performance
from tests.integration.conftest import READ_TOKEN, api_client
from tests.integration.monitoring_journal import (
    CURRENT_LUNG_STUDIES,
    FUNDUS,
    LUNG,
    LUNG_SHADOW,
    MAMMO,
    SEND_TOKEN,
    MonitoringJournal,
    monitored_node,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, MonitoringJournal]]:
    with monitored_node(tmp_path_factory.mktemp("monitoring")) as running:
        yield running


@pytest.fixture(scope="module")
def node_of(monitored: tuple[Node, MonitoringJournal]) -> Node:
    return monitored[0]


@pytest.fixture(scope="module")
def journal(monitored: tuple[Node, MonitoringJournal]) -> MonitoringJournal:
    return monitored[1]


@pytest.fixture(scope="module")
def read(node_of: Node) -> Iterator[httpx.Client]:
    with api_client(node_of, READ_TOKEN) as client:
        yield client


def period() -> dict[str, str]:
    """90 days to tomorrow (``until`` is excluded, as in ``cad-node report``)."""
    today = datetime.now(UTC).date()
    since, until = today - timedelta(days=90), today + timedelta(days=1)
    return {"since": since.isoformat(), "until": until.isoformat()}


def since_until() -> tuple[datetime, datetime]:
    """:func:`period` as times."""
    since, until = (date.fromisoformat(day) for day in period().values())
    return (
        datetime(since.year, since.month, since.day, tzinfo=UTC),
        datetime(until.year, until.month, until.day, tzinfo=UTC),
    )


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def test_models_lists_each_model_with_its_counts_mode_drift_and_partner(
    read: httpx.Client, journal: MonitoringJournal
) -> None:
    listing = ok(read.get("/api/monitoring/models"))
    models = {m["name"]: m for m in listing["models"]}
    assert set(models) == {LUNG, LUNG_SHADOW, MAMMO, FUNDUS}
    lung = models[LUNG]
    assert [v["model_version"] for v in lung["versions"]] == ["1.0.0"]
    assert lung["mode"] == "active"
    assert models[LUNG_SHADOW]["mode"] == "shadow"
    assert lung["studies"] == len(journal.studies[LUNG])
    assert lung["abstentions"] == journal.abstained[LUNG] == 1
    assert lung["feedback"] == journal.feedback[LUNG]
    assert lung["drift_level"] == "alert"  # another manufacturer, thicker slices this week
    assert lung["partners"] == [LUNG_SHADOW]
    assert models[LUNG_SHADOW]["partners"] == [LUNG]
    assert models[MAMMO]["partners"] == []
    assert models[MAMMO]["feedback"] == journal.feedback[MAMMO] == 32

    five_days_ago = (datetime.now(UTC) - timedelta(days=5)).isoformat()
    recent = ok(read.get("/api/monitoring/models", params={"since": five_days_ago}))
    counts = {m["name"]: m["studies"] for m in recent["models"]}
    assert counts[MAMMO] == 0  # the last mammography study is 7.5 days old
    assert counts[LUNG] == 17  # 6.9 - 0.28 k days old, k = 7 ... 23


def test_performance_is_the_model_s_local_performance_of_the_period(
    read: httpx.Client, node_of: Node, journal: MonitoringJournal
) -> None:
    since, until = since_until()
    for model in (LUNG, MAMMO, FUNDUS):
        shown = ok(read.get(f"/api/monitoring/{model}/performance", params=period()))
        with node_of.sessions() as session:
            expected = local_performance(session, model, since, until).to_json()
        assert shown == expected
    lung = ok(read.get(f"/api/monitoring/{LUNG}/performance", params=period()))
    assert lung["counts"]["studies_read"] == len(journal.studies[LUNG])
    assert lung["counts"]["abstained"] == 1
    verdicts = journal.verdicts[LUNG]
    detection = lung["detection"]
    assert detection["true_positives"] == verdicts["agree"]
    assert detection["false_positives"] == verdicts["disagree"]
    assert detection["false_negatives"] == verdicts["missed"]
    assert detection["sensitivity"]["n"] == verdicts["agree"] + verdicts["missed"]
    mammo = ok(read.get(f"/api/monitoring/{MAMMO}/performance", params=period()))
    assert mammo["classification"]["cases"] == 32
    fundus = ok(read.get(f"/api/monitoring/{FUNDUS}/performance", params=period()))
    assert fundus["grading"]["cases"] == 16


def test_compare_puts_the_shadow_beside_the_active_model_on_shared_studies(
    read: httpx.Client, node_of: Node
) -> None:
    both = ok(read.get(f"/api/monitoring/{LUNG_SHADOW}/compare", params={"with": LUNG, **period()}))
    since, until = since_until()
    with node_of.sessions() as session:
        mine, theirs = compare_models(session, LUNG_SHADOW, LUNG, since, until)
    assert both == {"model": mine.to_json(), "with": theirs.to_json()}
    assert both["model"]["counts"]["studies_read"] == both["with"]["counts"]["studies_read"] == 20


def test_drift_names_the_inputs_that_moved(read: httpx.Client, node_of: Node) -> None:
    drift = ok(read.get(f"/api/monitoring/{LUNG}/drift"))
    assert drift["alert"] is True
    levels = {f["feature"]: f["level"] for f in drift["features"]}
    assert levels["Manufacturer"] == "alert"
    assert levels["SliceThickness"] == "alert"
    for unchanged in ("ConvolutionKernel", "KVP", "score", "finding_count", "abstained"):
        assert levels[unchanged] == "ok", unchanged
    manufacturer = next(f for f in drift["features"] if f["feature"] == "Manufacturer")
    assert manufacturer["current_count"] == CURRENT_LUNG_STUDIES
    with node_of.sessions() as session:
        settings = node_of.settings.monitoring
        expected = model_drift(session, LUNG, datetime.now(UTC), settings)
    assert [f["psi"] for f in drift["features"]] == [f.psi for f in expected.features]


def test_every_figure_is_a_png_and_an_unknown_one_is_404(read: httpx.Client) -> None:
    names = ok(read.get(f"/api/monitoring/{MAMMO}/figures", params=period()))
    assert {"roc", "reliability", "confusion", "weekly"} <= set(names["performance"])
    lung = ok(read.get(f"/api/monitoring/{LUNG}/figures", params=period()))
    assert "psi" in lung["drift"]
    assert "distribution-Manufacturer" in lung["drift"]
    for model, listed in ((MAMMO, names), (LUNG, lung)):
        for name in listed["performance"] + listed["drift"]:
            response = read.get(f"/api/monitoring/{model}/figures/{name}.png", params=period())
            assert response.status_code == 200, (name, response.text)
            assert response.headers["content-type"] == "image/png"
            assert response.content.startswith(PNG_SIGNATURE)
    missing = read.get(f"/api/monitoring/{MAMMO}/figures/histogram.png")
    assert missing.status_code == 404
    assert "histogram" in missing.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/monitoring/no_such_model/performance",
        "/api/monitoring/no_such_model/drift",
        "/api/monitoring/no_such_model/figures",
        "/api/monitoring/no_such_model/figures/roc.png",
        f"/api/monitoring/{LUNG}/compare?with=no_such_model",
    ],
)
def test_an_unknown_model_is_404(read: httpx.Client, path: str) -> None:
    response = read.get(path)
    assert response.status_code == 404
    assert "no_such_model" in response.json()["detail"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"since": "last tuesday"}, "since: 'last tuesday' is not a day"),
        ({"until": "2026-13-01"}, "until: '2026-13-01' is not a day"),
        ({"since": "2026-12-01", "until": "2026-11-01"}, "must be after since"),
    ],
)
def test_a_bad_date_is_422_with_the_reason(
    read: httpx.Client, query: dict[str, str], reason: str
) -> None:
    for path in ("/api/monitoring/models", f"/api/monitoring/{LUNG}/performance"):
        response = read.get(path, params=query)
        assert response.status_code == 422
        assert reason in response.json()["detail"]


def test_a_read_token_suffices_and_others_are_refused(node_of: Node) -> None:
    with api_client(node_of) as anonymous:
        assert anonymous.get("/api/monitoring/models").status_code == 401
        assert anonymous.get(f"/api/monitoring/{LUNG}/figures/weekly.png").status_code == 401
    with api_client(node_of, SEND_TOKEN) as sender:
        assert sender.get("/api/monitoring/models").status_code == 403
        assert sender.get(f"/api/monitoring/{LUNG}/drift").status_code == 403
    with api_client(node_of, READ_TOKEN) as reader:
        assert reader.post("/api/monitoring/models").status_code == 405

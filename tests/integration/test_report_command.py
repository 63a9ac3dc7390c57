"""``cad-node report``: a model's local performance, comparison and drift as HTML and PNGs,
from a journal the node's own functions filled (issue 22, item 4)."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cad_node.cli import main
from cad_node.monitoring.stats import wilson_interval
from cad_node.store.db import create_schema, make_engine, session_factory, sqlite_url
from tests.integration.monitoring_journal import (
    FUNDUS,
    LUNG,
    LUNG_SHADOW,
    MAMMO,
    MonitoringJournal,
    fill_journal,
)

NOW = datetime.now(UTC).replace(microsecond=0)
SINCE = (NOW - timedelta(days=100)).strftime("%Y-%m-%d")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MonitoringJournal]:
    """A node's config whose journal holds ten weeks of three models' outputs and feedback."""
    folder = tmp_path_factory.mktemp("report")
    storage = folder / "storage"
    storage.mkdir()
    engine = make_engine(sqlite_url(storage / "journal.sqlite"))
    create_schema(engine)
    with session_factory(engine)() as session:
        journal = fill_journal(session, NOW)
        session.commit()
    engine.dispose()
    config = folder / "node.yaml"
    config.write_text(f"storage_dir: {storage}\n")
    return config, journal


def _report(config: Path, out: Path, *argv: str) -> int:
    return main(["report", "--config", str(config), "--out", str(out), *argv])


def _text(html: str) -> str:
    """The page's text, tags dropped, whitespace folded."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_detection_report_shows_the_counts_and_intervals_counted_by_hand(
    node: tuple[Path, MonitoringJournal], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, journal = node
    out = tmp_path / "lung"

    assert _report(config, out, "--model", LUNG, "--since", SINCE) == 0

    studies = len(journal.studies[LUNG])
    abstained = journal.abstained[LUNG]
    tp, fp = journal.verdicts[LUNG]["agree"], journal.verdicts[LUNG]["disagree"]
    fn = journal.verdicts[LUNG]["missed"]
    text = _text((out / "index.html").read_text())
    assert f"Studies read {studies}" in text
    assert f"Abstained (not assessed) {abstained}" in text
    counts = f"TP {tp}, FP {fp}, FN {fn}"
    low, high = wilson_interval(tp, tp + fn)
    assert f"Detection sensitivity {tp / (tp + fn):.3f} (95 % CI {low:.3f}-{high:.3f}, " in text
    assert f"n = {tp + fn}) {counts}" in text
    low, high = wilson_interval(tp, tp + fp)
    assert f"Detection PPV {tp / (tp + fp):.3f} (95 % CI {low:.3f}-{high:.3f}, n = {tp + fp})" in (
        text
    )
    assert "Compared with other models on the same studies" in text
    assert f"{LUNG_SHADOW} (shadow)" in text
    assert f"Studies both read {min(studies, 20)} 20" in text
    assert "Model drift" in text
    assert "1.0.0" in text
    assert "a" * 16 in text  # the weights' hash
    assert (out / "weekly.png").read_bytes().startswith(PNG_SIGNATURE)
    assert list(out.glob("drift-*.png"))
    assert "index.html" in capsys.readouterr().out


def test_classification_report_has_roc_reliability_and_confusion(
    node: tuple[Path, MonitoringJournal], tmp_path: Path
) -> None:
    config, journal = node
    out = tmp_path / "mammo"

    assert _report(config, out, "--model", MAMMO, "--since", SINCE) == 0

    html = (out / "index.html").read_text()
    for name in ("roc", "reliability", "confusion", "weekly"):
        assert (out / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)
        assert f"src='{name}.png'" in html
    breasts = 2 * len(journal.studies[MAMMO])
    text = _text(html)
    assert re.search(
        rf"AUC \(breast_suspicion\) 0\.\d{{3}} \(95 % CI [\d.]+-[\d.]+, n = {breasts}\)", text
    )
    assert "No other model read the same studies in this period." in text


def test_grading_report_has_kappa_and_the_5x5_matrix(
    node: tuple[Path, MonitoringJournal], tmp_path: Path
) -> None:
    config, journal = node
    out = tmp_path / "fundus"

    assert (
        _report(config, out, "--model", FUNDUS, "--since", SINCE, "--until", NOW.isoformat()) == 0
    )

    text = _text((out / "index.html").read_text())
    eyes = 2 * len(journal.studies[FUNDUS])
    assert "Quadratic weighted kappa" in text
    assert f"n = {eyes}) {eyes} graded eyes" in text
    assert "truth \\ model 0 1 2 3 4" in text
    assert (out / "confusion.png").is_file()


def test_a_period_without_studies_writes_an_empty_report(
    node: tuple[Path, MonitoringJournal], tmp_path: Path
) -> None:
    config, _ = node
    out = tmp_path / "old"

    assert (
        _report(config, out, "--model", LUNG, "--since", "2020-01-01", "--until", "2020-02-01") == 0
    )

    text = _text((out / "index.html").read_text())
    assert "Studies read 0" in text
    for name in ("roc", "reliability", "confusion", "weekly"):
        assert not (out / f"{name}.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no_such_model", "--since", SINCE], "no outputs of model 'no_such_model'"),
        (["--model", LUNG, "--since", "2026-13-45"], "not a date: '2026-13-45'"),
        (["--model", LUNG, "--since", SINCE, "--until", SINCE], "is not after --since"),
    ],
    ids=["unknown-model", "bad-date", "empty-period"],
)
def test_an_unknown_model_or_a_bad_date_exits_2_with_one_line(
    node: tuple[Path, MonitoringJournal],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    config, _ = node
    out = tmp_path / "nothing"
    try:
        status = _report(config, out, *argv)
    except SystemExit as exit_:  # argparse's own exit for a value it refuses
        status = int(exit_.code or 0)

    assert status == 2
    error = capsys.readouterr().err
    assert message in error
    assert not (out / "index.html").exists()

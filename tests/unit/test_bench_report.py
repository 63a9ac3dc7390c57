"""The benchmarks' pure helpers: doc sections, log parsing, the 25% regression guard."""

from datetime import datetime

import pytest

from bench import _report
from bench.ingest import NODE, changes
from bench.processing import destination_names, parse_job_done, required_results

JOB_DONE_LINE = (
    "2026-11-25 17:02:03,250 INFO cad_node.pipeline.work: job 7 done: series 1.2.3, "
    "3 findings, 2 objects; load 0.4s inference 21.3s build 0.66s write 0.03s"
)


def test_replace_section_appends_then_replaces_only_its_own_block() -> None:
    document = _report.replace_section("# Benchmarks\n\nIntro.\n", "ingest", "old ingest")
    document = _report.replace_section(document, "processing", "processing figures")

    updated = _report.replace_section(document, "ingest", "new ingest")

    assert "new ingest" in updated
    assert "old ingest" not in updated
    assert "processing figures" in updated
    assert updated.startswith("# Benchmarks\n\nIntro.\n")
    assert _report.replace_section(updated, "ingest", "new ingest") == updated


def test_parse_job_done_reads_every_stage_and_the_log_time() -> None:
    job = parse_job_done(JOB_DONE_LINE)

    assert job is not None
    assert (job.job_id, job.findings, job.objects) == (7, 3, 2)
    assert job.stages == {"load": 0.4, "inference": 21.3, "build": 0.66, "write": 0.03}
    assert job.logged_at == datetime(2026, 11, 25, 17, 2, 3, 250000).timestamp()
    assert parse_job_done("2026-11-25 17:02:03,250 INFO x: job 7 failed: boom") is None


def _figures(
    node: float, storescp: float, orthanc: float
) -> dict[str, dict[str, dict[str, float]]]:
    rates = {NODE: node, "storescp": storescp, "orthanc": orthanc}
    return {"1": {name: {"instances_per_s": rate, "mb_per_s": 0.0} for name, rate in rates.items()}}


def _node_change(before: float, now: float, references_now: float) -> bool:
    found = changes(
        _figures(before, 1000, 400), _figures(now, references_now, references_now * 0.4)
    )
    return next(c for c in found if c.receiver == NODE).regressed


def test_node_more_than_25_percent_slower_is_a_regression() -> None:
    assert _node_change(before=400, now=300, references_now=1000)  # 33% more time per instance


def test_node_slower_with_the_whole_machine_is_not_a_regression() -> None:
    assert not _node_change(before=400, now=300, references_now=750)


def test_node_20_percent_slower_is_within_the_threshold() -> None:
    assert not _node_change(before=400, now=400 / 1.2, references_now=1000)


@pytest.mark.parametrize(
    ("slower", "text"),
    [(0.3, "**30% slower**"), (0.1, "10% slower"), (-0.2, "25% faster")],
)
def test_describe_change(slower: float, text: str) -> None:
    assert _report.describe_change(slower) == text


def test_not_comparable_when_another_series_was_sent() -> None:
    last = {"series": {"instances": 300, "rows": 512, "columns": 512}}

    assert _report.not_comparable(last, {"instances": 300, "rows": 512, "columns": 512}) == ""
    assert "40 instances" in _report.not_comparable(
        last, {"instances": 40, "rows": 512, "columns": 512}
    )


def test_destination_names_are_found_at_any_depth() -> None:
    rules = {
        "rules": [
            {"name": "lung", "destinations": ["pacs"]},
            {"name": "mammo", "action": {"destinations": ["pacs", "archive"]}},
        ]
    }

    assert destination_names(rules) == {"pacs", "archive"}


def test_a_job_without_findings_needs_only_the_sr() -> None:
    nothing_found = parse_job_done(
        JOB_DONE_LINE.replace("3 findings, 2 objects", "0 findings, 1 objects")
    )

    assert required_results(nothing_found) == {"SR"}
    assert required_results(parse_job_done(JOB_DONE_LINE)) == {"SEG", "SR"}
    assert required_results(None) == {"SEG", "SR"}

"""The throughput benchmark's priority scenarios: their pure parts (checks, rules, the job line)."""

from pathlib import Path

import pytest
import yaml

from bench.priority import (
    LANES_MARGIN_S,
    StatResult,
    lanes_figures,
    processing_seconds,
    stat_rules,
)
from bench.throughput import parse_job_lines

REPO = Path(__file__).parents[2]


def test_the_job_line_with_its_warnings_is_read() -> None:
    line = (
        "2026-12-06 17:48:20,957 INFO cad_node.pipeline.work: job 7 done: series 1.2.3, "
        "5 findings, 2 objects, 1 warnings; load 2.9s inference 28.7s build 3.34s write 0.41s"
    )
    job = parse_job_lines([line])["1.2.3"]
    assert (job.job_id, job.findings, job.objects) == (7, 5, 2)


def test_lanes_pass_when_the_2d_p90_is_within_the_margin_of_alone() -> None:
    alone = {
        "families": {"mammography": {"latency_median_s": 2.4}, "fundus": {"latency_median_s": 3.0}}
    }
    lanes = {
        "families": {
            "mammography": {"latency_p90_s": 2.4 + LANES_MARGIN_S},
            "fundus": {"latency_p90_s": 3.0 + LANES_MARGIN_S + 0.1},
            "lung_ct": {"latency_p90_s": 60.0},
        }
    }
    checks = lanes_figures(alone, lanes)["checks"]
    assert {family: check["passed"] for family, check in checks.items()} == {
        "mammography": True,
        "fundus": False,
    }


def test_the_stat_ct_may_wait_for_one_ct_at_most() -> None:
    margin = LANES_MARGIN_S
    assert StatResult((30.0, 60.0), 40.0 + margin, ct_alone_s=20.0).passed
    assert not StatResult((30.0, 60.0), 41.0 + margin, ct_alone_s=20.0).passed
    assert StatResult((30.0, 60.0), 60.0 + margin, ct_alone_s=20.0, ct_processing_s=30.0).passed


def test_each_job_run_time_is_read_from_the_log() -> None:
    line = (
        "2026-12-06 18:00:46,651 INFO cad_node.pipeline.work: job 3 done: series 1.2.9, "
        "5 findings, 2 objects, 0 warnings; load 1.1s inference 27.0s build 1.19s write 0.34s"
    )
    assert processing_seconds([line, "other"]) == {"1.2.9": pytest.approx(29.63)}


def test_the_stat_rules_take_the_chest_class_from_the_calling_ae(tmp_path: Path) -> None:
    rules = yaml.safe_load(stat_rules(REPO / "config" / "rules.yaml", tmp_path).read_text())
    sources = {rule["model"]: rule.get("priority_from") for rule in rules}
    assert sources["lung_nodule_ct"] == "calling_ae"
    assert sources["mammo_screening"] is None

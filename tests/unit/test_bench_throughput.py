"""The throughput benchmark's pure helpers: job lines, completion, quantiles, the guard."""

from pathlib import Path
from typing import Any

import pytest

from bench._series import SeriesFiles
from bench.throughput import (
    PHASES,
    JobLine,
    PhaseResult,
    Study,
    StudyRun,
    compare_with_last,
    done_at,
    interleaved,
    parse_job_lines,
    percentile,
    phase_figures,
)

MACHINE = {"cpu": "AMD EPYC", "cores": "2", "ram": "23.5 GiB"}
MIX = {"studies_per_family": 2, "ct_slices": 300}


def _line(job_id: int, series: str, findings: int, objects: int) -> str:
    return (
        f"2026-12-04 10:00:0{job_id},250 INFO cad_node.pipeline.work: job {job_id} done: "
        f"series {series}, {findings} findings, {objects} objects; load 0.4s inference 2.0s "
        "seg 0.10s sr 0.05s write 0.01s"
    )


def test_parse_job_lines_keys_each_job_by_its_series_and_skips_other_lines() -> None:
    lines = [
        _line(1, "1.2.3", 3, 2),
        "2026-12-04 10:00:03,000 INFO cad_node.pipeline.work: job 2 failed: no slices",
        _line(4, "1.2.4", 0, 1),
    ]

    jobs = parse_job_lines(lines)

    assert set(jobs) == {"1.2.3", "1.2.4"}
    assert (jobs["1.2.3"].job_id, jobs["1.2.3"].findings, jobs["1.2.3"].objects) == (1, 3, 2)
    assert jobs["1.2.4"].objects == 1
    assert jobs["1.2.3"].logged_at is not None


def test_a_study_is_done_only_when_all_its_objects_arrived() -> None:
    job = JobLine(job_id=1, series_instance_uid="1.2.3", findings=2, objects=3, logged_at=None)

    assert done_at(None, [5.0, 6.0, 7.0]) is None
    assert done_at(job, [5.0, 6.0]) is None
    assert done_at(job, [5.0, 7.5, 6.0]) == 7.5


def test_interleaved_sends_one_study_of_each_family_in_turn() -> None:
    assert interleaved(["ct", "mg", "op"], 2) == [
        ("ct", 0),
        ("mg", 0),
        ("op", 0),
        ("ct", 1),
        ("mg", 1),
        ("op", 1),
    ]


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9) == pytest.approx(
        9.1
    )
    assert percentile([4.0], 0.9) == 4.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def _run(family: str, index: int, started: float, acked: float, done: float) -> StudyRun:
    series = SeriesFiles(series_instance_uid=f"1.{index}", files=(Path(f"/x/{index}.dcm"),))
    study = Study(family, f"{family}-{index}", series, f"2.{index}")
    return StudyRun(study, started, acked, done, findings=1, objects=2)


def test_one_at_a_time_adds_each_study_and_the_stream_counts_wall_clock() -> None:
    runs = (
        _run("lung_ct", 1, 0.0, 2.0, 12.0),
        _run("fundus", 2, 12.0, 12.5, 16.5),
        _run("lung_ct", 3, 20.0, 22.0, 30.0),
    )

    alone = phase_figures(PhaseResult(PHASES[0], runs, peak_rss=1_200_000_000))
    streamed = phase_figures(PhaseResult(PHASES[1], runs, peak_rss=1_300_000_000))

    assert alone["busy_s"] == 12.0 + 4.5 + 10.0
    assert streamed["busy_s"] == 30.0
    assert streamed["studies_per_hour"] == 360.0
    assert streamed["families"]["lung_ct"]["studies"] == 2
    assert streamed["families"]["lung_ct"]["studies_per_hour"] == 240.0
    assert streamed["families"]["lung_ct"]["latency_median_s"] == 9.0
    assert streamed["families"]["fundus"]["send_to_results_median_s"] == 4.5
    assert streamed["latency_median_s"] == 8.0
    assert streamed["peak_rss_mb"] == 1300.0


def _recorded(studies_per_hour: float, latency_s: float, mix: dict[str, int]) -> dict[str, Any]:
    stream = {"studies_per_hour": studies_per_hour, "latency_median_s": latency_s}
    return {
        "date": "2026-12-04 10:00 UTC",
        "machine": MACHINE,
        "mix": mix,
        "figures": {"stream": {**stream, "peak_rss_mb": 1200.0}},
    }


def _current(studies_per_hour: float, latency_s: float) -> dict[str, Any]:
    stream = {"studies_per_hour": studies_per_hour, "latency_median_s": latency_s}
    return {"stream": {**stream, "peak_rss_mb": 1100.0}}


@pytest.mark.parametrize(
    ("now_rate", "now_latency", "regressed"),
    [
        (100.0, 10.0, False),  # unchanged
        (85.0, 11.0, False),  # 18% slower, 10% slower: within the threshold
        (75.0, 10.0, True),  # a third more time per study
        (100.0, 13.0, True),  # latency 30% longer
    ],
)
def test_the_guard_flags_more_than_25_percent_slower_on_the_same_machine(
    now_rate: float, now_latency: float, regressed: bool
) -> None:
    text, flagged = compare_with_last(
        _recorded(100.0, 10.0, MIX), _current(now_rate, now_latency), MIX, MACHINE
    )

    assert flagged is regressed
    assert "same machine" in text


def test_the_guard_compares_no_other_mix_and_flags_no_other_machine() -> None:
    other_mix = {"studies_per_family": 1, "ct_slices": 120}
    text, flagged = compare_with_last(
        _recorded(100.0, 10.0, other_mix), _current(50.0, 30.0), MIX, MACHINE
    )
    assert not flagged
    assert "another mix" in text

    other_machine = {**MACHINE, "cores": "16"}
    text, flagged = compare_with_last(
        _recorded(100.0, 10.0, MIX), _current(50.0, 30.0), MIX, other_machine
    )
    assert not flagged
    assert "another machine" in text

    assert compare_with_last(None, _current(50.0, 30.0), MIX, MACHINE) == (
        "No earlier recorded run.\n",
        False,
    )

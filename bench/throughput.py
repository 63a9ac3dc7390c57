"""Throughput benchmark: a mixed stream of chest CTs, 4-view mammograms and fundus pairs.

Starts one ``cad-node serve`` with the shipped rules (``config/rules.yaml``) and a
DCMTK ``storescp`` as the destination, then sends the same mix of synthetic
studies twice, each copy under its own UIDs:

1. **one at a time** (the reference): a study is sent only once the results of
   the one before it have been stored at the destination, so the sum of the
   single-study times is what the node costs per study with nothing else running;
2. **as a stream**: every study is sent back to back with ``storescu`` (one
   association per study, the families interleaved), while the node is already
   working on the earlier ones.

A study is done when the node has logged its job done (``job N done: series S,
F findings, O objects``) and the destination has stored ``O`` objects of that
study (every kind the node made goes there: the SEG and SR kinds are asked for,
and explanation maps go wherever the SR goes).  Peak RSS of the node (and its
children) is measured for each phase: /proc's ``VmHWM`` is reset between them.

Run from the repository root::

    .venv/bin/python -m bench.throughput                 # 2 studies per family
    .venv/bin/python -m bench.throughput --studies 3 --ct-slices 300
"""

import argparse
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from bench import _peers, _report, priority
from bench._cli import (
    add_common_arguments,
    benchmark_session,
    command_line,
    progress,
    run_main,
)
from bench._series import SeriesFiles, copy_with_new_uids, read_series, synthetic_chest_ct
from bench.processing import (
    DEFAULT_RULES,
    failed_job,
    log_time,
    new_lines,
    new_receptions,
    node_and_destination,
    study_and_modality,
)

KEY = "throughput"
SLOWER = "cad-node throughput is more than 25% below the last recorded run"
FAMILIES = ("lung_ct", "mammography", "fundus")
FUNDUS_GRADES = (2, 3)
PHASES = ("one at a time", "stream")
SCENARIOS = ("lanes", "stat")

_JOB_DONE = re.compile(
    r"job (\d+) done: series (\S+), (\d+) findings, (\d+) objects?(?:, \d+ warnings?)?;"
)
"""The node's ``job N done`` log line (:func:`cad_node.pipeline.work._log_done`)."""


# --- the studies ---


@dataclass(frozen=True, slots=True)
class Study:
    """One study of the mix: its family, its files (one series) and its UIDs."""

    family: str
    name: str
    series: SeriesFiles
    study_instance_uid: str


def write_base_studies(scratch: Path, args: argparse.Namespace) -> dict[str, SeriesFiles]:
    """One synthetic study per family; the mix sends copies of them under new UIDs."""
    progress(f"writing a synthetic {args.ct_slices}-slice 512x512 chest CT ...")
    ct = synthetic_chest_ct(
        scratch / "base" / "lung_ct",
        slices=args.ct_slices,
        rows=512,
        seed=args.seed,
        images_in_acquisition=True,
        nodules=3,
    )
    progress("writing a 4-view mammogram and a fundus pair ...")
    return {
        "lung_ct": ct,
        "mammography": read_series(_mammography(scratch / "base" / "mammography", args.seed)),
        "fundus": read_series(_fundus(scratch / "base" / "fundus", args.seed)),
    }


def _mammography(folder: Path, seed: int) -> Path:
    from cad_node.synth.mammo import MammoSpec
    from cad_node.synth.mammo import write_study as write_mammo

    write_mammo(MammoSpec(seed=seed, prevalence=1.0), folder)
    return folder


def _fundus(folder: Path, seed: int) -> Path:
    from cad_node.synth.fundus import FundusSpec, generate_fundus
    from cad_node.synth.fundus import write_study as write_fundus

    write_fundus(generate_fundus(FundusSpec(seed=seed, grades=FUNDUS_GRADES)), folder)
    return folder


def interleaved(families: Sequence[str], per_family: int) -> list[tuple[str, int]]:
    """``(family, index)`` in stream order: one study of each family in turn."""
    return [(family, index) for index in range(per_family) for family in families]


def make_mix(
    bases: Mapping[str, SeriesFiles], per_family: int, phase: str, scratch: Path
) -> list[Study]:
    """Copies of the base studies under UIDs of their own, for one phase."""
    tag = phase.replace(" ", "-")
    studies = []
    for family, index in interleaved(list(bases), per_family):
        name = f"{family}-{index + 1}"
        progress(f"copying {name} for the '{phase}' phase ...")
        series = copy_with_new_uids(bases[family], scratch / tag / name, f"{tag}-{name}")
        uid = str(dcmread(series.files[0], stop_before_pixels=True).StudyInstanceUID)
        studies.append(Study(family, name, series, uid))
    return studies


# --- what the node and the destination say ---


@dataclass(frozen=True, slots=True)
class JobLine:
    """The node's ``job N done`` line: the series, the object count, when it was logged."""

    job_id: int
    series_instance_uid: str
    findings: int
    objects: int
    logged_at: float | None


def parse_job_lines(lines: Iterable[str]) -> dict[str, JobLine]:
    """Every ``job N done`` line, by series UID (the last one of a series wins)."""
    jobs = {}
    for line in lines:
        match = _JOB_DONE.search(line)
        if match is not None:
            job = JobLine(
                job_id=int(match.group(1)),
                series_instance_uid=match.group(2),
                findings=int(match.group(3)),
                objects=int(match.group(4)),
                logged_at=log_time(line),
            )
            jobs[job.series_instance_uid] = job
    return jobs


@dataclass
class Receptions:
    """storescp's reception log, read incrementally: arrival times per Study Instance UID."""

    out_dir: Path
    reception_log: Path
    seen: int = 0
    arrivals: dict[str, list[float]] = field(default_factory=dict)

    def poll(self) -> None:
        stored, self.seen = new_receptions(self.out_dir, self.reception_log, self.seen)
        for stamp, path in stored:
            study, _ = study_and_modality(path)
            self.arrivals.setdefault(study, []).append(stamp)


def done_at(job: JobLine | None, arrivals: Sequence[float]) -> float | None:
    """When a study's last result was stored, once all ``job.objects`` of them are there."""
    if job is None or len(arrivals) < job.objects or not arrivals:
        return None
    return max(arrivals)


# --- one phase ---


@dataclass(frozen=True, slots=True)
class StudyRun:
    """One study through the node: when its last image was acknowledged and results stored."""

    study: Study
    send_started: float
    acknowledged: float
    done: float
    findings: int
    objects: int

    @property
    def latency_s(self) -> float:
        """Last ACK -> last result stored at the destination."""
        return self.done - self.acknowledged


@dataclass(frozen=True, slots=True)
class PhaseResult:
    phase: str
    runs: tuple[StudyRun, ...]
    peak_rss: int

    @property
    def busy_s(self) -> float:
        """First send started -> last result stored (the one-at-a-time phase: their sum)."""
        if self.phase == PHASES[0]:
            return sum(r.done - r.send_started for r in self.runs)
        return max(r.done for r in self.runs) - min(r.send_started for r in self.runs)


@dataclass
class Bench:
    """The node, the destination and what has been read of their logs."""

    node: _peers.Peer
    receptions: Receptions
    scratch: Path
    timeout: float
    log_offset: int = 0

    def send(self, study: Study, calling_ae: str = "SCANNER") -> tuple[float, float]:
        """Send one study with one storescu; (started, last ACK) as Unix times."""
        started = time.time()
        _peers.send(
            self.node.port,
            "CADNODE",
            [list(study.series.files)],
            self.scratch / "senders" / study.name,
            calling_ae=calling_ae,
        )
        return started, time.time()

    def wait(self, studies: Sequence[Study]) -> dict[str, tuple[JobLine, float]]:
        """Wait until every study is done: its job line and its finish time, by study UID."""
        finished: dict[str, tuple[JobLine, float]] = {}

        def all_done() -> bool:
            lines = new_lines(self.node.log_path, self.log_offset)
            failure = failed_job(lines)
            if failure is not None or not self.node.alive():
                raise _peers.PeerError(f"a job did not finish: {failure}\n{self.node.log_tail()}")
            jobs = parse_job_lines(lines)
            self.receptions.poll()
            for study in studies:
                job = jobs.get(study.series.series_instance_uid)
                when = done_at(job, self.receptions.arrivals.get(study.study_instance_uid, []))
                if job is not None and when is not None:
                    finished[study.study_instance_uid] = (job, when)
            return len(finished) == len(studies)

        what = f"the results of {len(studies)} studies at the destination"
        _peers.wait_for(all_done, self.timeout, what, interval=0.1)
        return finished

    def start_phase(self) -> None:
        self.log_offset = self.node.log_path.stat().st_size
        _peers.reset_peak_rss(self.node.pid)


def one_at_a_time(bench: Bench, studies: Sequence[Study]) -> PhaseResult:
    bench.start_phase()
    runs = []
    for study in studies:
        started, acknowledged = bench.send(study)
        job, done = bench.wait([study])[study.study_instance_uid]
        runs.append(StudyRun(study, started, acknowledged, done, job.findings, job.objects))
        progress(f"  {study.name}: {done - acknowledged:.1f} s after its last ACK")
    return PhaseResult(PHASES[0], tuple(runs), _peers.peak_rss_bytes(bench.node.pid))


def stream(bench: Bench, studies: Sequence[Study]) -> PhaseResult:
    bench.start_phase()
    sent = [(study, *bench.send(study)) for study in studies]
    progress(f"  {len(studies)} studies sent; waiting for their results ...")
    finished = bench.wait(studies)
    runs = []
    for study, started, acknowledged in sent:
        job, done = finished[study.study_instance_uid]
        runs.append(StudyRun(study, started, acknowledged, done, job.findings, job.objects))
    return PhaseResult(PHASES[1], tuple(runs), _peers.peak_rss_bytes(bench.node.pid))


# --- figures ---


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile by linear interpolation between order statistics."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def studies_per_hour(count: int, seconds: float) -> float:
    return 3600.0 * count / seconds if seconds > 0 else 0.0


def phase_figures(result: PhaseResult) -> dict[str, Any]:
    """Studies/hour (total, and each family's share), latencies, peak RSS of one phase."""
    busy = result.busy_s
    families: dict[str, Any] = {}
    for family in dict.fromkeys(r.study.family for r in result.runs):
        runs = [r for r in result.runs if r.study.family == family]
        latencies = [r.latency_s for r in runs]
        families[family] = {
            "studies": len(runs),
            "send_to_results_median_s": round(
                percentile([r.done - r.send_started for r in runs], 0.5), 2
            ),
            "studies_per_hour": round(studies_per_hour(len(latencies), busy), 1),
            "latency_median_s": round(percentile(latencies, 0.5), 2),
            "latency_p90_s": round(percentile(latencies, 0.9), 2),
        }
    latencies = [r.latency_s for r in result.runs]
    return {
        "busy_s": round(busy, 2),
        "studies_per_hour": round(studies_per_hour(len(result.runs), busy), 1),
        "latency_median_s": round(percentile(latencies, 0.5), 2),
        "latency_p90_s": round(percentile(latencies, 0.9), 2),
        "peak_rss_mb": round(result.peak_rss / 1e6, 1),
        "families": families,
    }


def figures(reference: PhaseResult, streamed: PhaseResult) -> dict[str, Any]:
    return {"one_at_a_time": phase_figures(reference), "stream": phase_figures(streamed)}


def mix_shape(args: argparse.Namespace) -> dict[str, Any]:
    """What must match for two runs to be compared."""
    return {"studies_per_family": args.studies, "ct_slices": args.ct_slices}


def compare_with_last(
    last: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    shape: Mapping[str, Any],
    machine: Mapping[str, str],
) -> tuple[str, bool]:
    """A markdown comparison with the last recorded run, and whether the stream regressed.

    A regression is the stream's studies/hour, or its median latency, more than 25%
    slower than the last recorded run on the same machine with the same mix.
    """
    if last is None:
        return "No earlier recorded run.\n", False
    if dict(last.get("mix", {})) != dict(shape):
        return (
            f"Last recorded run ({last.get('date', '?')}) not compared: it sent another mix "
            f"({last.get('mix')} then, {dict(shape)} now).\n",
            False,
        )
    same = _report.same_machine(last.get("machine", {}), machine)
    before, now = last["figures"]["stream"], current["stream"]
    rate = _report.rate_slowdown(before["studies_per_hour"], now["studies_per_hour"])
    latency = _report.slowdown(before["latency_median_s"], now["latency_median_s"])
    rows = [
        _change_row("Stream, studies/hour", before["studies_per_hour"], now, rate),
        _change_row("Stream, median latency, s", before["latency_median_s"], now, latency),
        [
            "Stream, peak RSS, MB",
            f"{before['peak_rss_mb']:.0f}",
            f"{now['peak_rss_mb']:.0f}",
            f"{now['peak_rss_mb'] / before['peak_rss_mb'] - 1:+.0%}",
        ],
    ]
    machine_note = "same machine" if same else "**another machine**: not comparable"
    text = f"Last recorded run: {last.get('date', '?')} ({machine_note}).\n\n"
    text += _report.table(["Figure", "Then", "Now", "Change"], rows)
    text += "\nMore than 25% slower is flagged as a regression.\n"
    regressed = same and (_report.is_regression(rate) or _report.is_regression(latency))
    return text, regressed


def _change_row(label: str, before: float, now: Mapping[str, Any], slower: float) -> list[str]:
    key = "studies_per_hour" if "studies" in label else "latency_median_s"
    return [label, f"{before:.1f}", f"{now[key]:.1f}", _report.describe_change(slower)]


# --- the section ---


def phase_table(current: Mapping[str, Any]) -> str:
    rows = []
    for label, key in (("One at a time (reference)", "one_at_a_time"), ("Stream", "stream")):
        phase = current[key]
        rows.append(
            [
                f"**{label}**" if key == "stream" else label,
                f"{phase['busy_s']:.1f}",
                f"**{phase['studies_per_hour']:.0f}**",
                f"{phase['latency_median_s']:.1f} / {phase['latency_p90_s']:.1f}",
                f"{phase['peak_rss_mb']:.0f}",
            ]
        )
    headers = [
        "Phase",
        "Busy, s",
        "Studies/hour",
        "Last ACK → last result, s (median / p90)",
        "Peak RSS, MB",
    ]
    return _report.table(headers, rows)


def family_table(current: Mapping[str, Any]) -> str:
    rows = []
    for family, one in current["one_at_a_time"]["families"].items():
        streamed = current["stream"]["families"][family]
        rows.append(
            [
                family,
                str(one["studies"]),
                f"{one['send_to_results_median_s']:.1f}",
                f"{one['latency_median_s']:.1f}",
                f"{studies_per_hour(1, one['send_to_results_median_s']):.0f}",
                f"{streamed['studies_per_hour']:.0f}",
                f"{streamed['latency_median_s']:.1f} / {streamed['latency_p90_s']:.1f}",
            ]
        )
    headers = [
        "Family",
        "Studies",
        "Alone: send → results, s (median)",
        "Alone: last ACK → results, s (median)",
        "Alone: studies/hour, this family only",
        "Stream: this family's studies/hour",
        "Stream: last ACK → results, s (median / p90)",
    ]
    return _report.table(headers, rows)


def study_table(reference: PhaseResult, streamed: PhaseResult) -> str:
    alone = {r.study.name: r for r in reference.runs}
    rows = [
        [
            r.study.name,
            f"{len(r.study.series.files)}",
            f"{alone[r.study.name].findings} / {alone[r.study.name].objects}",
            f"{alone[r.study.name].latency_s:.1f}",
            f"{r.latency_s:.1f}",
        ]
        for r in streamed.runs
    ]
    headers = ["Study", "Instances", "Findings / objects", "Alone, s", "In the stream, s"]
    return _report.table(headers, rows)


GPU_NOTE = (
    "With a GPU: a lane with `batch_size` over 1 puts the views of several queued MG/OP "
    "jobs of one model into one forward pass (each job completed or failed on its own). "
    "On this CPU it gains little: the 2D networks take under 0.1 s of a study's time "
    "(bench:inference), the rest is DICOM I/O and result building. No GPU was lent to "
    "measure it."
)


def section(
    args: argparse.Namespace,
    phases: tuple[PhaseResult, PhaseResult],
    current: Mapping[str, Any],
    environment: Mapping[str, Any],
    comparison: str,
) -> str:
    gain = current["stream"]["studies_per_hour"] / current["one_at_a_time"]["studies_per_hour"]
    lines = [
        "## Throughput: a mixed stream of CT, mammography and fundus studies",
        "",
        f"Recorded {environment['date']} with `{environment['command']}`.",
        "",
        f"One `cad-node serve` with the rules in `config/rules.yaml` (`quiet_seconds` "
        f"{args.quiet_seconds:g} s, which ends the fundus series; the CT and the mammograms "
        f"complete by count) and a DCMTK `storescp` as the destination. The mix: "
        f"{environment['mix_text']}. The same studies, under other UIDs, are sent first "
        "one at a time (the next one only once the results of the one before were stored: "
        "the reference), then as a stream (back to back, one `storescu` association each, "
        "the families interleaved). A study is done when the node logged its job done and "
        "the destination stored every object of it. Busy time: the one-at-a-time phase adds "
        "each study's send + processing time; the stream counts from the first send to the "
        "last result. Peak RSS: the node and its children, reset between the phases.",
        "",
        phase_table(current),
        f"The stream delivers {gain:.2f}x the studies/hour of the same studies one at a time "
        "(sending overlaps processing; the node runs one job at a time).",
        "",
        family_table(current),
        "Jobs run one at a time in the order their series completed (`workers: 1`, the "
        "default), so in the stream a mammogram or a fundus pair queued behind a chest CT "
        "waits for it: its latency is mostly the CT's.",
        "",
        study_table(*phases),
        *priority.section_lines(args, current),
        GPU_NOTE,
        "",
        *_report.conditions(environment, args.nice, comparison),
    ]
    return "\n".join(lines)


def mix_text(bases: Mapping[str, SeriesFiles], per_family: int) -> str:
    parts = {
        "lung_ct": "chest CT, {n} x 512x512 (3 nodules)",
        "mammography": "4-view mammogram, {n} MG images (a lesion in each breast)",
        "fundus": "fundus pair, {n} OP images (ICDR 2 and 3)",
    }
    return ", ".join(
        f"{per_family} x " + parts[family].format(n=len(series.files))
        for family, series in bases.items()
    )


# --- main ---


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--studies", type=int, default=2, help="studies per family (default 2)")
    parser.add_argument("--ct-slices", type=int, default=300, help="slices of each chest CT")
    parser.add_argument("--seed", type=int, default=11, help="seed of the synthetic studies")
    parser.add_argument("--quiet-seconds", type=float, default=3.0, help="the node's quiet_seconds")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait per phase")
    parser.add_argument(
        "--scenarios",
        nargs="*",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="priority scenarios after the reference: lanes (a), stat (b); none: only it",
    )
    parser.add_argument("--routine-cts", type=int, default=5, help="routine CTs before the stat")
    parser.add_argument("--batch-size", type=int, default=4, help="the 2D lane's batch_size")
    parser.add_argument("--ct-threads", type=int, default=1, help="the CT lane's torch threads")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.rules, args.models_dir = DEFAULT_RULES, None  # what node_config reads
    if args.studies < 1:
        parser.error("--studies must be at least 1")
    return args


def run_phases(
    args: argparse.Namespace, bases: Mapping[str, SeriesFiles], scratch: Path
) -> tuple[PhaseResult, PhaseResult]:
    reference_mix = make_mix(bases, args.studies, PHASES[0], scratch)
    stream_mix = make_mix(bases, args.studies, PHASES[1], scratch)
    with ExitStack() as stack:
        receptions = Receptions(scratch / "destination", scratch / "destination-received.log")
        node = node_and_destination(
            stack, scratch, args, receptions.out_dir, receptions.reception_log
        )
        bench = Bench(node, receptions, scratch, args.timeout)
        progress("sending the studies one at a time ...")
        reference = one_at_a_time(bench, reference_mix)
        progress("sending the studies as a stream ...")
        streamed = stream(bench, stream_mix)
        return reference, streamed


def run_scenarios(
    args: argparse.Namespace,
    bases: Mapping[str, SeriesFiles],
    scratch: Path,
    current: Mapping[str, Any],
) -> dict[str, Any]:
    """The priority scenarios asked for (:mod:`bench.priority`), each on a node of its own."""
    extra: dict[str, Any] = {}
    if "lanes" in args.scenarios:
        mix = make_mix(bases, args.studies, "lanes", scratch)
        laned = phase_figures(priority.run_lanes(args, mix, scratch, Bench))
        extra["lanes"] = priority.lanes_figures(current["one_at_a_time"], laned)
    if "stat" in args.scenarios:
        cts = priority.ct_copies(bases["lung_ct"], args.routine_cts + 1, scratch)
        ct_alone = current["one_at_a_time"]["families"]["lung_ct"]["latency_median_s"]
        extra["stat"] = priority.run_stat(args, cts, scratch, Bench, ct_alone).figures()
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    environment: dict[str, Any] = {
        "date": _report.utc_now_text(),
        "command": command_line("bench.throughput", argv),
        "machine": _report.machine_info(),
        "versions": _report.versions(
            ["cad-node", "pynetdicom", "pydicom", "highdicom", "torch", "numpy"]
        ),
        "load_before": _report.load_average(),
        "notes": _report.notes(args.note),
    }
    with benchmark_session("cad-node-bench-throughput-", nice=args.nice, keep=args.keep) as scratch:
        bases = write_base_studies(scratch, args)
        environment["mix_text"] = mix_text(bases, args.studies)
        reference, streamed = run_phases(args, bases, scratch)
        current = figures(reference, streamed)
        current |= run_scenarios(args, bases, scratch, current)
    environment["load_after"] = _report.load_average()
    shape = mix_shape(args)
    last = _report.load_last(KEY)
    comparison, regressed = compare_with_last(last, current, shape, environment["machine"])
    entry = {key: environment[key] for key in ("date", "command", "machine", "versions")}
    return _report.publish(
        KEY,
        section(args, (reference, streamed), current, environment, comparison),
        {**entry, "mix": shape, "figures": current},
        record=not args.no_record,
        regression=SLOWER if regressed else None,
        fail_on_regression=args.fail_on_regression,
    )


if __name__ == "__main__":
    run_main(main)

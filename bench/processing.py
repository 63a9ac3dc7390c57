"""Processing benchmark: from "series complete" to SEG + SR accepted by the destination.

Starts ``cad-node serve`` with the shipped lung rule (``config/rules.yaml``) and a
DCMTK ``storescp`` as the destination, sends a synthetic 300-slice 512x512
chest CT with ``storescu``, and measures from the series being complete to the
moment both the SEG and the SR have been stored by ``storescp``.  The series
is complete when the last image is acknowledged if it carries
ImagesInAcquisition (``--completion count``, the default), or ``quiet_seconds``
after that (``--completion quiet``).  The node's own log line
``job N done: ... load Xs inference Ys seg Zs sr Ws write Vs`` gives the stage
breakdown; the node's peak RSS comes from /proc (``VmHWM``).

Run 1 is the first job after the node started; later runs send copies of the
series under new UIDs into the same, warm node.

Run from the repository root::

    .venv/bin/python -m bench.processing            # 2 runs
    .venv/bin/python -m bench.processing --completion quiet --quiet-seconds 2
"""

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from bench import _peers, _report
from bench._cli import (
    add_common_arguments,
    benchmark_session,
    command_line,
    progress,
    run_main,
)
from bench._series import (
    SeriesFiles,
    copy_with_new_uids,
    describe,
    read_series,
    synthetic_chest_ct,
)
from tests import dcmtk

KEY = "processing"
EXIT_REGRESSION = 3
DEFAULT_RULES = _peers.REPO_ROOT / "config" / "rules.yaml"
DESTINATION_AE = "PACS"
RESULT_MODALITIES = ("SEG", "SR")
TARGET_CPU_S = 60.0
TARGET_GPU_S = 5.0
TARGET_RSS_BYTES = 1.5e9

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_JOB_DONE = re.compile(r"job (\d+) done: .*?(\d+) findings, (\d+) objects?; (.*)$")
_STAGE = re.compile(r"([a-z_]+) ([0-9.]+)s\b")
_SERIES_COMPLETE = re.compile(r"series (\S+) revision \d+ complete")
_JOB_FAILED = re.compile(r"job \d+ (failed|crashed)")


# --- the node's log ---


@dataclass(frozen=True, slots=True)
class JobDone:
    """The node's ``job N done`` line: when it was logged, and its stage seconds."""

    logged_at: float | None
    job_id: int
    findings: int
    objects: int
    stages: dict[str, float]

    @property
    def busy_s(self) -> float:
        return sum(self.stages.values())


def log_time(line: str) -> float | None:
    """Unix time of a log line stamped by ``logging``'s default ``asctime`` (local time)."""
    match = _LOG_TIME.match(line)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_job_done(line: str) -> JobDone | None:
    """Parse ``job N done: series S, F findings, O objects; load Xs inference Ys ...``."""
    match = _JOB_DONE.search(line)
    if match is None:
        return None
    stages = {name: float(value) for name, value in _STAGE.findall(match.group(4))}
    return JobDone(
        logged_at=log_time(line),
        job_id=int(match.group(1)),
        findings=int(match.group(2)),
        objects=int(match.group(3)),
        stages=stages,
    )


def series_complete_time(lines: Sequence[str]) -> float | None:
    for line in lines:
        if _SERIES_COMPLETE.search(line):
            return log_time(line)
    return None


def _about_series(lines: Sequence[str], series_instance_uid: str) -> list[str]:
    """The lines naming the series, or all of them if the node logs no UIDs."""
    naming = [line for line in lines if series_instance_uid in line]
    return naming or list(lines)


def failed_job(lines: Sequence[str]) -> str | None:
    return next((line for line in lines if _JOB_FAILED.search(line)), None)


def new_lines(path: Path, offset: int) -> list[str]:
    """The lines written to ``path`` after byte ``offset`` (a log read as it grows)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace").splitlines()


# --- the destination ---


@dataclass
class Destination:
    """storescp's reception log: one ``<unix time> <file name>`` line per stored instance.

    Only results in the study being measured count: a result of an earlier run
    (sent to a second destination name, say) arriving late is not taken for this one.
    """

    out_dir: Path
    reception_log: Path
    study_instance_uid: str = ""
    seen: int = 0
    arrivals: dict[str, float] = field(default_factory=dict)

    def expect(self, study_instance_uid: str) -> None:
        self.study_instance_uid = study_instance_uid
        self.arrivals = {}

    def poll(self) -> None:
        """Record the arrival time of the first SEG and the first SR of the study."""
        stored, self.seen = new_receptions(self.out_dir, self.reception_log, self.seen)
        for stamp, path in stored:
            study, modality = study_and_modality(path)
            if study == self.study_instance_uid and modality in RESULT_MODALITIES:
                self.arrivals.setdefault(modality, stamp)

    def done(self, required: Iterable[str]) -> bool:
        return all(modality in self.arrivals for modality in required)


def new_receptions(
    out_dir: Path, reception_log: Path, seen: int
) -> tuple[list[tuple[float, Path]], int]:
    """The instances storescp logged after the first ``seen`` lines: (Unix time, stored file)
    each, and the number of lines now read."""
    if not reception_log.exists():
        return [], seen
    lines = reception_log.read_text().splitlines()
    stored = []
    for line in lines[seen:]:
        stamp, _, name = line.partition(" ")
        stored.append((float(stamp), out_dir / name.strip()))
    return stored, len(lines)


def study_and_modality(path: Path) -> tuple[str, str]:
    """Study Instance UID and Modality of a received file; empty for one not (yet) readable."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError):
        return "", ""
    return str(ds.get("StudyInstanceUID", "")), str(ds.get("Modality", ""))


# --- one run ---


@dataclass(frozen=True, slots=True)
class RunResult:
    """One series through the node: the end-to-end time and where it went."""

    run: int
    send_s: float
    total_s: float
    node_saw_complete_s: float | None
    job: JobDone | None
    export_s: float | None
    arrivals: dict[str, float]

    def breakdown(self) -> dict[str, float]:
        """Seconds per stage; they add up to ``total_s`` when the job line was found."""
        if self.job is None or self.export_s is None:
            return {}
        waiting = self.total_s - self.export_s - self.job.busy_s
        return {"wait for job start": waiting, **self.job.stages, "send": self.export_s}


def run_once(
    run: int,
    series: SeriesFiles,
    *,
    node: _peers.Peer,
    destination: Destination,
    args: argparse.Namespace,
    scratch: Path,
) -> RunResult:
    """Send ``series``, wait for its SEG and SR at the destination, read the node's log."""
    log_offset = node.log_path.stat().st_size
    destination.expect(series.study_instance_uid)
    send_s = _peers.send(
        node.port, "CADNODE", [list(series.files)], scratch / f"senders-{run}", calling_ae="SCANNER"
    )
    acknowledged = time.time()
    complete = acknowledged + (args.quiet_seconds if args.completion == "quiet" else 0.0)
    _wait_for_results(node, destination, log_offset, series, args.timeout)
    done = max(destination.arrivals.values())
    lines = _about_series(new_lines(node.log_path, log_offset), series.series_instance_uid)
    job = _job_done(lines)
    seen = series_complete_time(lines)
    return RunResult(
        run=run,
        send_s=send_s,
        total_s=done - complete,
        node_saw_complete_s=None if seen is None else seen - acknowledged,
        job=job,
        export_s=None if job is None or job.logged_at is None else done - job.logged_at,
        arrivals=dict(destination.arrivals),
    )


def _job_done(lines: Sequence[str]) -> JobDone | None:
    return next((job for job in map(parse_job_done, lines) if job is not None), None)


def required_results(job: JobDone | None) -> set[str]:
    """The SR always; the SEG unless the node logged a job with no finding (no mask to send)."""
    if job is not None and job.findings == 0:
        return {"SR"}
    return set(RESULT_MODALITIES)


def _wait_for_results(
    node: _peers.Peer,
    destination: Destination,
    log_offset: int,
    series: SeriesFiles,
    timeout: float,
) -> None:
    def arrived() -> bool:
        lines = new_lines(node.log_path, log_offset)
        failure = failed_job(lines)
        if failure is not None or not node.alive():
            raise _peers.PeerError(f"the job did not finish: {failure}\n{node.log_tail()}")
        destination.poll()
        job = _job_done(_about_series(lines, series.series_instance_uid))
        return destination.done(required_results(job))

    _peers.wait_for(arrived, timeout, "the SEG and the SR at the destination", interval=0.1)


# --- the node and its rules ---


def destination_names(rules: object) -> set[str]:
    """Every name listed under a ``destinations`` key anywhere in the rules."""
    names: set[str] = set()
    for key, value in _walk(rules):
        if key == "destinations" and isinstance(value, list):
            names |= {str(name) for name in value}
    return names


def _walk(node: object) -> Iterator[tuple[object, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def node_config(work: Path, *, port: int, destination_port: int, args: argparse.Namespace) -> Path:
    """A node config routing by ``args.rules``, every destination they name -> storescp."""
    names = destination_names(yaml.safe_load(args.rules.read_text())) or {"pacs"}
    destination = {"host": "127.0.0.1", "port": destination_port, "ae_title": DESTINATION_AE}
    config: dict[str, Any] = {
        "ae_title": "CADNODE",
        "port": port,
        "bind_address": "127.0.0.1",
        "allowed_calling_aets": [],
        "storage_dir": str(work / "storage"),
        "database_url": f"sqlite:///{work / 'journal.sqlite'}",
        "quiet_seconds": args.quiet_seconds,
        "destinations": {name: dict(destination) for name in sorted(names)},
        "rules": str(args.rules.resolve()),
    }
    if args.models_dir is not None:
        config["models_dir"] = str(args.models_dir.resolve())
    path = work / "node.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- reporting ---


def figures(results: Sequence[RunResult], peak_rss: int) -> dict[str, Any]:
    """What last.json keeps: the median total, each run, the median run's stages, peak RSS."""
    middle = sorted(results, key=lambda r: r.total_s)[(len(results) - 1) // 2]
    return {
        "total_s": round(_report.median([r.total_s for r in results]), 2),
        "each_run_s": [round(r.total_s, 2) for r in results],
        "stages_s": {name: round(value, 2) for name, value in middle.breakdown().items()},
        "peak_rss_mb": round(peak_rss / 1e6, 1),
    }


def results_table(results: Sequence[RunResult]) -> str:
    rows = [
        [
            str(r.run) + (" (first job)" if r.run == 1 else " (warm)"),
            f"{r.send_s:.1f}",
            "?" if r.node_saw_complete_s is None else f"{r.node_saw_complete_s:.2f}",
            f"{r.total_s:.1f}",
            "?" if r.job is None else f"{r.job.findings} / {r.job.objects}",
        ]
        for r in results
    ]
    headers = [
        "Run",
        "Send, s",
        "Node saw the series complete, s after last ACK",
        "**Complete → SEG + SR accepted, s**",
        "Findings / objects",
    ]
    return _report.table(headers, rows)


def stages_table(results: Sequence[RunResult]) -> str:
    names: list[str] = []
    for result in results:
        names += [name for name in result.breakdown() if name not in names]
    rows = [[name, *(_seconds(r.breakdown().get(name)) for r in results)] for name in names]
    rows.append(["**total**", *(f"**{r.total_s:.2f}**" for r in results)])
    return _report.table(["Stage", *(f"run {r.run}, s" for r in results)], rows)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def section_key(machine: dict[str, str]) -> str:
    """``processing`` on a CPU-only machine, ``processing-gpu`` where a GPU is found."""
    return f"{KEY}-gpu" if "gpu" in machine else KEY


def targets(current: dict[str, Any], machine: dict[str, str]) -> str:
    gpu = "gpu" in machine
    limit = TARGET_GPU_S if gpu else TARGET_CPU_S
    where = "on one GPU" if gpu else f"on this {machine['cores']}-core CPU"
    time_ok = "met" if current["total_s"] <= limit else "**not met**"
    rss_ok = "met" if current["peak_rss_mb"] * 1e6 <= TARGET_RSS_BYTES else "**not met**"
    return (
        f"- Complete → results {where}: {current['total_s']:.1f} s (median), target "
        f"≤ {limit:.0f} s: {time_ok}.\n"
        f"- Peak RSS of the node process and its children together (polled every 50 ms, "
        f"at least the node's own VmHWM), ingest included: "
        f"{current['peak_rss_mb']:.0f} MB, target ≤ {TARGET_RSS_BYTES / 1e6:.0f} MB: {rss_ok}.\n"
    )


def compare_with_last(
    last: dict[str, Any] | None, current: dict[str, Any], environment: dict[str, Any]
) -> tuple[str, bool]:
    """A markdown comparison with the last recorded run, and whether cad-node regressed."""
    if last is None:
        return "No earlier recorded run.\n", False
    reason = _report.not_comparable(last, environment["series"])
    if reason:
        return f"Last recorded run ({last.get('date', '?')}) not compared: {reason}.\n", False
    machine = environment["machine"]
    before = last.get("figures", {})
    slower = _report.slowdown(before["total_s"], current["total_s"])
    same = _report.same_machine(last.get("machine", {}), machine)
    machine_note = "same machine" if same else "**another machine**: not comparable"
    rows = [
        [
            "Complete → results, s (median)",
            f"{before['total_s']:.1f}",
            f"{current['total_s']:.1f}",
            _report.describe_change(slower),
        ],
        [
            "Peak RSS, MB",
            f"{before['peak_rss_mb']:.0f}",
            f"{current['peak_rss_mb']:.0f}",
            f"{current['peak_rss_mb'] / before['peak_rss_mb'] - 1:+.0%}",
        ],
    ]
    text = f"Last recorded run: {last.get('date', '?')} ({machine_note}).\n\n"
    text += _report.table(["Figure", "Then", "Now", "Change"], rows)
    text += "\nMore than 25% slower is flagged as a regression.\n"
    return text, _report.is_regression(slower) and same


def section(
    args: argparse.Namespace,
    results: Sequence[RunResult],
    current: dict[str, Any],
    environment: dict[str, Any],
    comparison: str,
) -> str:
    completion = (
        "the last image is acknowledged (the series carries ImagesInAcquisition, so the node "
        "can complete it by count)"
        if args.completion == "count"
        else f"`quiet_seconds` ({args.quiet_seconds:g} s) after the last image is acknowledged"
    )
    gpu = environment["machine"].get("gpu")
    lines = [
        "## Processing: series complete → SEG + SR accepted by the destination"
        + (f" (GPU: {gpu})" if gpu else ""),
        "",
        f"Recorded {environment['date']} with `{environment['command']}`.",
        "",
        f"`cad-node serve` with the rules in `{environment['rules']}` and a DCMTK `storescp` as "
        f"every destination they name; the series ({environment['series']['text']}; "
        f"{environment['truth']}) is sent with `storescu` (one association). The series "
        f"is complete when {completion}; the clock stops when storescp has stored both the SEG "
        "and the SR (`--exec-on-reception`; the SR alone when the job found nothing, as the "
        "node sends no empty SEG). Run 1 is the node's first job after start; later runs send "
        "copies of the series under new UIDs into the same node. The last ACK is taken as the "
        "moment storescu exits.",
        "",
        results_table(results),
        "Stages, from the node's `job N done` log line (wait = complete → job start, send = job "
        "done → the later of SEG and SR stored at the destination):",
        "",
        stages_table(results),
        targets(current, environment["machine"]),
        "No reference runs beside it: no other open CAD node does this job on a CPU in a "
        "minute. For scale only (not measured in this run): a MONAI model-zoo bundle run by "
        "`python -m monai.bundle run` on a CPU of this kind, beside the node running the same "
        'bundle, is in the section "Site model" (`bench/bench_bundle.py`).',
        "",
        *_report.conditions(environment, args.nice, comparison),
    ]
    return "\n".join(lines)


# --- main ---


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.processing", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=2, help="series sent one after another")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--seed", type=int, default=11, help="seed of the synthetic CT")
    parser.add_argument("--nodules", type=int, default=3, help="nodules in the synthetic CT")
    parser.add_argument(
        "--series", type=Path, default=None, help="send this folder's series instead"
    )
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES, help="rules YAML for the node")
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="the node's models_dir (site models)"
    )
    parser.add_argument("--completion", choices=["count", "quiet"], default="count")
    parser.add_argument(
        "--quiet-seconds", type=float, default=10.0, help="the node's quiet_seconds"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait per run")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def prepare_series(args: argparse.Namespace, scratch: Path) -> list[SeriesFiles]:
    if args.series is not None:
        base = read_series(args.series)
        if args.completion == "count" and not _announces_count(base):
            raise SystemExit(f"{args.series} has no ImagesInAcquisition: use --completion quiet")
    else:
        progress(f"writing a synthetic {args.slices}-slice {args.rows}x{args.rows} chest CT ...")
        base = synthetic_chest_ct(
            scratch / "series-1",
            slices=args.slices,
            rows=args.rows,
            seed=args.seed,
            images_in_acquisition=args.completion == "count",
            nodules=args.nodules,
        )
    copies = [base]
    for run in range(2, args.runs + 1):
        progress(f"copying the series with new UIDs for run {run} ...")
        copies.append(copy_with_new_uids(base, scratch / f"series-{run}", f"run-{run}"))
    return copies


def ground_truth_note(series: SeriesFiles) -> str:
    """How many nodules ``ground_truth.json`` beside the series lists, when it is there."""
    path = series.files[0].parent / "ground_truth.json"
    if not path.exists():
        return "no ground truth beside it"
    nodules = json.loads(path.read_text()).get("nodules", [])
    return f"synthetic chest CT with {len(nodules)} nodules in its ground truth"


def _announces_count(series: SeriesFiles) -> bool:
    header = dcmread(series.files[0], stop_before_pixels=True)
    return int(header.get("ImagesInAcquisition", 0) or 0) == len(series.files)


def node_and_destination(
    stack: ExitStack,
    scratch: Path,
    args: argparse.Namespace,
    out_dir: Path,
    reception_log: Path,
) -> _peers.Peer:
    """``cad-node serve`` (:func:`node_config`) sending every result to a storescp
    (``DESTINATION_AE``) that stores in ``out_dir`` and logs each arrival to
    ``reception_log``; both stop when ``stack`` closes."""
    destination = stack.enter_context(
        _peers.storescp(
            out_dir, scratch / "storescp.log", ae_title=DESTINATION_AE, reception_log=reception_log
        )
    )
    port = dcmtk.free_port()
    config = node_config(scratch, port=port, destination_port=destination.port, args=args)
    progress("starting cad-node ...")
    return stack.enter_context(_peers.cad_node(config, port, scratch / "node.log"))


def run_all(
    args: argparse.Namespace, series: Sequence[SeriesFiles], scratch: Path
) -> tuple[list[RunResult], int]:
    """Every run through one node; returns the results and the node's peak RSS."""
    if not args.rules.exists():
        raise SystemExit(f"no rules file at {args.rules}: pass --rules PATH")
    with ExitStack() as stack:
        destination = Destination(scratch / "destination", scratch / "destination-received.log")
        node = node_and_destination(
            stack, scratch, args, destination.out_dir, destination.reception_log
        )
        memory = stack.enter_context(_peers.TreeRssSampler(node.pid))
        results = []
        for run, files in enumerate(series, start=1):
            result = run_once(
                run, files, node=node, destination=destination, args=args, scratch=scratch
            )
            progress(f"run {run}: complete → SEG + SR accepted in {result.total_s:.1f} s")
            results.append(result)
        memory.stop()
        return results, memory.peak_bytes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    environment: dict[str, Any] = {
        "date": _report.utc_now_text(),
        "command": command_line("bench.processing", argv),
        "machine": _report.machine_info(),
        "versions": _report.versions(
            ["cad-node", "pynetdicom", "pydicom", "highdicom", "torch", "numpy"]
        ),
        "rules": _display_path(args.rules),
        "load_before": _report.load_average(),
        "notes": _report.notes(args.note),
    }
    with benchmark_session("cad-node-bench-processing-", nice=args.nice, keep=args.keep) as scratch:
        series = prepare_series(args, scratch)
        environment["series"] = describe(series[0])
        environment["truth"] = ground_truth_note(series[0])
        results, peak_rss = run_all(args, series, scratch)
    environment["load_after"] = _report.load_average()
    current = figures(results, peak_rss)
    key = section_key(environment["machine"])
    last = _report.load_last(key)
    comparison, regressed = compare_with_last(last, current, environment)
    text = section(args, results, current, environment, comparison)
    print(text)
    if not args.no_record:
        _report.write_section(key, text)
        entry = {key: environment[key] for key in ("date", "command", "machine", "versions")}
        shape = {key: environment["series"][key] for key in _report.SERIES_KEYS}
        _report.save_last(key, {**entry, "series": shape, "runs": args.runs, "figures": current})
    if regressed:
        print(
            "cad-node processing is more than 25% slower than the last recorded run",
            file=sys.stderr,
        )
        if args.fail_on_regression:
            return EXIT_REGRESSION
    return 0


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(_peers.REPO_ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    run_main(main)

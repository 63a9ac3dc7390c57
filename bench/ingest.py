"""Ingest benchmark: DCMTK ``storescu`` into cad-node, DCMTK ``storescp`` and Orthanc, same run.

Sends one 300-slice 512x512 CT series (0.5 MB per instance) with one sender, then
with 4 and 8 concurrent senders (each its own copy of the series, distinct UIDs),
into every receiver, N times, interleaved.  Each receiver starts empty for each
measurement, and the benchmark checks that it stored every instance it
acknowledged.  Prints and records instances/s and MB/s (medians) and the ratio
of cad-node to each reference.

Run from the repository root::

    .venv/bin/python -m bench.ingest                 # 3 runs, 1/4/8 senders
    .venv/bin/python -m bench.ingest --runs 5 --senders 1,4
    .venv/bin/python -m bench.ingest --runs 1 --senders 1 --memory-instances 0   # no memory figure

Then sends one long series of small images over one association into a fresh
node and samples its resident set (``bench/_ingest_memory.py``): ingest memory
must stay flat as a series grows.
"""

import argparse
import shutil
import sqlite3
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bench import _ingest_memory, _peers, _report
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

RECEIVERS = ("storescp", "orthanc", "cad-node")
REFERENCES = ("storescp", "orthanc")
NODE = "cad-node"
KEY = "ingest"
EXIT_REGRESSION = 3

RECEIVER_NOTES = {
    "storescp": "DCMTK `storescp --fork --promiscuous`, one file per instance, no fsync",
    "orthanc": "Orthanc from Debian with its default settings: 4 DICOM threads, files plus "
    "a SQLite index, `SyncStorageArea` (fsync) on; no plugins",
    NODE: "`cad-node serve` with an empty rule list: spool file fsynced and journal row "
    "committed before each 0x0000",
}


@dataclass(frozen=True, slots=True)
class Measurement:
    """One transfer: ``senders`` storescu processes into one fresh receiver."""

    receiver: str
    senders: int
    run: int
    instances: int
    size_bytes: int
    seconds: float
    peak_rss_bytes: int | None

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.size_bytes / self.seconds / 1e6


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians over the runs of one receiver and one sender count."""

    receiver: str
    senders: int
    instances: int
    instances_per_s: float
    mb_per_s: float
    all_instances_per_s: tuple[float, ...]
    peak_rss_mb: float | None
    """The receiver's largest peak RSS over the runs (None where not measured)."""


# --- receivers ---


@dataclass(frozen=True, slots=True)
class Transfer:
    """What a receiver function measured: the seconds, and the receiver's peak RSS if known."""

    seconds: float
    peak_rss_bytes: int | None = None


Receiver = Callable[[Sequence[SeriesFiles], Path], Transfer]
"""Sends the series (one sender each) into a fresh receiver in the folder."""


def _groups(series: Sequence[SeriesFiles]) -> list[list[Path]]:
    return [list(s.files) for s in series]


def _expect(receiver: str, stored: int, expected: int, where: str) -> None:
    if stored != expected:
        raise _peers.PeerError(
            f"{receiver} acknowledged {expected} instances, {where} holds {stored}"
        )


def into_storescp(series: Sequence[SeriesFiles], work: Path) -> Transfer:
    out_dir = work / "received"
    with _peers.storescp(out_dir, work / "storescp.log") as peer:
        seconds = _peers.send(peer.port, "STORESCP", _groups(series), work / "senders")
    stored = sum(1 for path in out_dir.rglob("*") if path.is_file())
    _expect("storescp", stored, sum(len(s.files) for s in series), "its output folder")
    # No RSS: with --fork each association is served by a child that is gone by now.
    return Transfer(seconds)


def into_orthanc(series: Sequence[SeriesFiles], work: Path) -> Transfer:
    with _peers.orthanc(work) as peer:
        seconds = _peers.send(peer.port, "ORTHANC", _groups(series), work / "senders")
        stored = peer.count_instances()
        peak = _peers.peak_rss_bytes(peer.pid)
    _expect("Orthanc", stored, sum(len(s.files) for s in series), "/statistics")
    return Transfer(seconds, peak)


def node_config(work: Path, port: int, **overrides: Any) -> Path:
    """A cad-node config in ``work``: its own port, storage and SQLite journal."""
    config: dict[str, Any] = {
        "ae_title": "CADNODE",
        "port": port,
        "bind_address": "127.0.0.1",
        "allowed_calling_aets": [],
        "storage_dir": str(work / "storage"),
        "database_url": f"sqlite:///{work / 'journal.sqlite'}",
        "quiet_seconds": 10,
        "destinations": {},
        "rules": [],
    }
    config.update(overrides)
    path = work / "node.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def journal_instances(database: Path) -> int:
    """Rows in the journal's ``instances`` table."""
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM instances").fetchone()
    return int(count)


def spool_files(storage_dir: Path) -> int:
    return sum(1 for _ in (storage_dir / "spool").rglob("*.dcm"))


def into_node(series: Sequence[SeriesFiles], work: Path, ingest_processes: int = 1) -> Transfer:
    port = dcmtk.free_port()
    config = node_config(work, port, ingest_processes=ingest_processes)
    with _peers.cad_node(config, port, work / "node.log") as peer:
        seconds = _peers.send(peer.port, "CADNODE", _groups(series), work / "senders")
        in_journal = journal_instances(work / "journal.sqlite")
        peak = _peers.peak_rss_bytes(peer.pid)
    expected = sum(len(s.files) for s in series)
    _expect(NODE, in_journal, expected, "its journal")
    _expect(NODE, spool_files(work / "storage"), expected, "its spool")
    return Transfer(seconds, peak)


RECEIVER_FUNCTIONS: dict[str, Receiver] = {
    "storescp": into_storescp,
    "orthanc": into_orthanc,
    NODE: into_node,
}


# --- running ---


def prepare_series(args: argparse.Namespace, scratch: Path) -> list[SeriesFiles]:
    """The source series and one copy per further concurrent sender."""
    if args.series is not None:
        base = read_series(args.series)
    else:
        progress(f"writing a synthetic {args.slices}-slice {args.rows}x{args.rows} CT ...")
        base = synthetic_chest_ct(
            scratch / "series-0",
            slices=args.slices,
            rows=args.rows,
            seed=7,
            images_in_acquisition=False,
        )
    copies = [base]
    for index in range(1, max(args.senders)):
        progress(f"copying the series with new UIDs for sender {index + 1} ...")
        copies.append(copy_with_new_uids(base, scratch / f"series-{index}", f"sender-{index}"))
    return copies


def measure_all(
    args: argparse.Namespace, series: list[SeriesFiles], scratch: Path
) -> list[Measurement]:
    """Every receiver for every sender count, run after run (interleaved, so drift hits all)."""
    measurements = []
    functions: dict[str, Receiver] = {
        **RECEIVER_FUNCTIONS,
        NODE: partial(into_node, ingest_processes=args.ingest_processes),
    }
    for run in range(1, args.runs + 1):
        for senders in args.senders:
            for receiver in args.receivers:
                work = scratch / "runs" / f"{receiver}-{senders}-{run}"
                work.mkdir(parents=True)
                chosen = series[:senders]
                transfer = functions[receiver](chosen, work)
                seconds = transfer.seconds
                measurement = Measurement(
                    receiver=receiver,
                    senders=senders,
                    run=run,
                    instances=sum(len(s.files) for s in chosen),
                    size_bytes=sum(s.size_bytes for s in chosen),
                    seconds=seconds,
                    peak_rss_bytes=transfer.peak_rss_bytes,
                )
                progress(
                    f"run {run}/{args.runs}, {senders} sender(s), {receiver}: "
                    f"{measurement.instances} instances in {seconds:.2f} s = "
                    f"{measurement.instances_per_s:.0f}/s, {measurement.mb_per_s:.0f} MB/s"
                )
                _remove_received(work)
                measurements.append(measurement)
    return measurements


def _remove_received(work: Path) -> None:
    # The logs stay (for --keep); the stored instances would fill the disk over many runs.
    for name in ("received", "storage", "index"):
        shutil.rmtree(work / name, ignore_errors=True)


def summarise(measurements: Sequence[Measurement]) -> list[Summary]:
    keys = sorted({(m.senders, m.receiver) for m in measurements}, key=_order)
    summaries = []
    for senders, receiver in keys:
        chosen = [m for m in measurements if (m.senders, m.receiver) == (senders, receiver)]
        summaries.append(
            Summary(
                receiver=receiver,
                senders=senders,
                instances=chosen[0].instances,
                instances_per_s=_report.median([m.instances_per_s for m in chosen]),
                mb_per_s=_report.median([m.mb_per_s for m in chosen]),
                all_instances_per_s=tuple(m.instances_per_s for m in chosen),
                peak_rss_mb=_largest_mb([m.peak_rss_bytes for m in chosen]),
            )
        )
    return summaries


def _largest_mb(values: Sequence[int | None]) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) / 1e6 if known else None


def _order(key: tuple[int, str]) -> tuple[int, int]:
    senders, receiver = key
    return senders, RECEIVERS.index(receiver)


# --- reporting ---


def figures(summaries: Sequence[Summary]) -> "Figures":
    """``{senders: {receiver: {instances_per_s, mb_per_s}}}`` as stored in last.json."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for s in summaries:
        figure = {"instances_per_s": round(s.instances_per_s, 1), "mb_per_s": round(s.mb_per_s, 1)}
        if s.peak_rss_mb is not None:
            figure["peak_rss_mb"] = round(s.peak_rss_mb, 1)
        result.setdefault(str(s.senders), {})[s.receiver] = figure
    return result


def _node_ratio(s: Summary, current: dict[str, dict[str, dict[str, float]]]) -> str:
    node = current.get(str(s.senders), {}).get(NODE)
    if node is None or s.receiver == NODE:
        return ""
    return f"{node['instances_per_s'] / s.instances_per_s:.2f}"


def results_table(summaries: Sequence[Summary]) -> str:
    current = figures(summaries)
    rows = [
        [
            str(s.senders),
            s.receiver,
            str(s.instances),
            f"{s.instances_per_s:.0f}",
            f"{s.mb_per_s:.0f}",
            ", ".join(f"{rate:.0f}" for rate in s.all_instances_per_s),
            _node_ratio(s, current),
            "" if s.peak_rss_mb is None else f"{s.peak_rss_mb:.0f}",
        ]
        for s in summaries
    ]
    headers = [
        "Senders",
        "Receiver",
        "Instances",
        "Instances/s (median)",
        "MB/s (median)",
        "Each run, instances/s",
        "cad-node ÷ this",
        "Peak RSS, MB",
    ]
    return _report.table(headers, rows)


Figures = dict[str, dict[str, dict[str, float]]]
"""``{senders: {receiver: {"instances_per_s": ..., "mb_per_s": ...}}}``."""


@dataclass(frozen=True, slots=True)
class Change:
    """One receiver and sender count, then and now."""

    senders: str
    receiver: str
    before: float
    now: float
    slower: float
    """Time per instance grew by this fraction (negative: faster)."""
    slower_than_references: float | None = None
    """cad-node's ``slower`` with the references' mean change divided out."""

    @property
    def regressed(self) -> bool:
        """cad-node more than 25% slower, and so even relative to the references."""
        relative = self.slower_than_references
        return (
            self.receiver == NODE
            and _report.is_regression(self.slower)
            and (relative is None or _report.is_regression(relative))
        )


def changes(before: Figures, now: Figures) -> list[Change]:
    """Every receiver and sender count measured both times, cad-node also relative to the refs."""
    found = []
    for senders, receivers in now.items():
        then = before.get(senders, {})
        slower = {
            receiver: _report.rate_slowdown(
                then[receiver]["instances_per_s"], figure["instances_per_s"]
            )
            for receiver, figure in receivers.items()
            if receiver in then
        }
        references = [slower[name] for name in REFERENCES if name in slower]
        for receiver, fraction in slower.items():
            relative = None
            if receiver == NODE and references:
                relative = (1 + fraction) / statistics.geometric_mean(
                    [1 + r for r in references]
                ) - 1
            found.append(
                Change(
                    senders=senders,
                    receiver=receiver,
                    before=then[receiver]["instances_per_s"],
                    now=receivers[receiver]["instances_per_s"],
                    slower=fraction,
                    slower_than_references=relative,
                )
            )
    return found


def targets(current: Figures) -> str:
    """Issue 7's ingest target: cad-node at least as many instances/s as Orthanc."""
    lines = []
    for senders, receivers in current.items():
        if NODE in receivers and "orthanc" in receivers:
            ratio = receivers[NODE]["instances_per_s"] / receivers["orthanc"]["instances_per_s"]
            verdict = "met" if ratio >= 1.0 else "**not met**"
            lines.append(
                f"- {senders} sender(s): cad-node at {ratio:.2f}x Orthanc's instances/s "
                f"(target ≥ 1.00, with fsync before the ACK): {verdict}.\n"
            )
    return "".join(lines)


def compare_with_last(
    last: dict[str, Any] | None, current: Figures, environment: dict[str, Any]
) -> tuple[str, bool]:
    """A markdown comparison with the last recorded run, and whether cad-node regressed."""
    if last is None:
        return "No earlier recorded run.\n", False
    reason = _report.not_comparable(last, environment["series"])
    if reason:
        return f"Last recorded run ({last.get('date', '?')}) not compared: {reason}.\n", False
    found = changes(last.get("figures", {}), current)
    rows = [
        [
            c.senders,
            c.receiver,
            f"{c.before:.0f}",
            f"{c.now:.0f}",
            _report.describe_change(c.slower),
            ""
            if c.slower_than_references is None
            else _report.describe_change(c.slower_than_references),
            "**yes**" if c.regressed else "",
        ]
        for c in found
    ]
    same = _report.same_machine(last.get("machine", {}), environment["machine"])
    machine_note = "same machine" if same else "**another machine**"
    text = f"Last recorded run: {last.get('date', '?')} ({machine_note}).\n\n"
    headers = [
        "Senders",
        "Receiver",
        "Then, instances/s",
        "Now",
        "Change",
        "Relative to refs",
        "Regression",
    ]
    text += _report.table(headers, rows)
    text += (
        "\ncad-node is flagged when it is more than 25% slower than last time, both in "
        "instances/s and relative to the references measured in the same runs (the geometric "
        "mean of their changes divided out), so a busier machine alone does not raise it.\n"
    )
    return text, any(c.regressed for c in found)


def measure_memory(args: argparse.Namespace, scratch: Path) -> _ingest_memory.MemoryFigure | None:
    if args.memory_instances <= 0:
        return None
    progress(f"writing a {args.memory_instances}-image series for the memory figure ...")
    series = _ingest_memory.prepare(scratch, args.memory_instances, args.memory_rows)
    work = scratch / "memory"
    work.mkdir()
    port = dcmtk.free_port()
    progress("sending it into cad-node over one association ...")
    return _ingest_memory.measure(series, work, node_config(work, port), port)


def section(
    args: argparse.Namespace,
    summaries: Sequence[Summary],
    environment: dict[str, Any],
    comparison: str,
    memory: _ingest_memory.MemoryFigure | None = None,
) -> str:
    receivers = {name: RECEIVER_NOTES[name] for name in args.receivers}
    if NODE in receivers:
        receivers[NODE] += (
            f"; `ingest_processes: {args.ingest_processes}` "
            f"({args.ingest_processes} process(es) receiving on its port)"
        )
    lines = [
        "## Ingest: DCMTK storescu into cad-node, storescp and Orthanc",
        "",
        f"Recorded {environment['date']} with `{environment['command']}`.",
        "",
        f"One series ({environment['series']['text']}, Explicit VR Little Endian) sent by DCMTK "
        "`storescu -R` with `TCP_NODELAY=1`, one association per sender. With k senders, k "
        "storescu processes each send their own copy of the series (distinct UIDs, same bytes) "
        "at the same time. Each receiver starts empty for each measurement (a fresh process and "
        "folder), and every stored instance is counted afterwards: storescp's output files, "
        "Orthanc's `/statistics`, cad-node's journal rows and spool files. Median of "
        f"{args.runs} runs, interleaved (run 1 of every receiver, then run 2 ...); time from the "
        "first storescu start to the last storescu exit; MB = 10^6 bytes. Peak RSS: `VmHWM` of "
        "the receiver process (and its children) just before it stops, the largest over the "
        "runs; not measured for storescp, which serves each association in a child that is gone "
        "by then.",
        "",
        results_table(summaries),
        targets(figures(summaries)),
        *([] if memory is None else _ingest_memory.section_lines(memory)),
        "Receivers:",
        "",
        _report.key_values(receivers),
        *_report.conditions(environment, args.nice, comparison),
    ]
    return "\n".join(lines)


# --- main ---


def _csv_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _csv_receivers(text: str) -> list[str]:
    names = [part for part in text.split(",") if part]
    unknown = sorted(set(names) - set(RECEIVERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown receivers {unknown}; choose from {RECEIVERS}")
    return sorted(names, key=RECEIVERS.index)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per receiver and sender count")
    parser.add_argument("--senders", type=_csv_ints, default=[1, 4, 8], help="e.g. 1,4,8")
    parser.add_argument(
        "--receivers", type=_csv_receivers, default=list(RECEIVERS), help=",".join(RECEIVERS)
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument(
        "--series",
        type=Path,
        default=None,
        help="send this folder's series instead (e.g. cad-node synth ct)",
    )
    parser.add_argument(
        "--memory-instances",
        type=int,
        default=2000,
        help="images in the long series sent for the memory figure (0: skip it)",
    )
    parser.add_argument("--memory-rows", type=int, default=64, help="rows and columns of those")
    parser.add_argument(
        "--ingest-processes",
        type=int,
        default=1,
        help="cad-node's ingest_processes: processes receiving on its port (SO_REUSEPORT)",
    )
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    environment: dict[str, Any] = {
        "date": _report.utc_now_text(),
        "command": command_line("bench.ingest", argv),
        "machine": _report.machine_info(),
        "versions": _report.versions(
            ["cad-node", "pynetdicom", "pydicom"], orthanc="orthanc" in args.receivers
        ),
        "load_before": _report.load_average(),
        "notes": _report.notes(args.note),
    }
    with benchmark_session("cad-node-bench-ingest-", nice=args.nice, keep=args.keep) as scratch:
        series = prepare_series(args, scratch)
        environment["series"] = describe(series[0])
        measurements = measure_all(args, series, scratch)
        memory = measure_memory(args, scratch) if NODE in args.receivers else None
    environment["load_after"] = _report.load_average()
    summaries = summarise(measurements)
    current = figures(summaries)
    comparison, regressed = compare_with_last(_report.load_last(KEY), current, environment)
    text = section(args, summaries, environment, comparison, memory)
    print(text)
    if not args.no_record:
        _report.write_section(KEY, text)
        _report.save_last(KEY, _last_entry(args, environment, current))
    if regressed:
        print("cad-node ingest is more than 25% slower than the last recorded run", file=sys.stderr)
        if args.fail_on_regression:
            return EXIT_REGRESSION
    return 0


def _last_entry(
    args: argparse.Namespace,
    environment: dict[str, Any],
    current: dict[str, dict[str, dict[str, float]]],
) -> dict[str, Any]:
    keys = ("date", "command", "machine", "versions")
    series = {key: value for key, value in environment["series"].items() if key != "text"}
    return {
        **{key: environment[key] for key in keys},
        "series": series,
        "runs": args.runs,
        "figures": current,
    }


if __name__ == "__main__":
    run_main(main)

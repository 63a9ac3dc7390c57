"""The throughput benchmark's clinical-priority scenarios (issue 21), each on a node of its own.

(a) **lanes**: the mixed stream again, on a node with two lanes (``queue.lanes``: the
    chest CT model in one, the mammography and fundus models in the other, batching
    ``--batch-size`` queued 2D jobs of one model): a 2D study no longer waits behind a CT.
    Passes when each 2D family's p90 "last ACK -> results" is within
    :data:`LANES_MARGIN_S` of its time alone (the reference phase of the same run).
(b) **stat**: ``--routine-cts`` chest CTs sent back to back as ``routine``, then one
    chest CT sent by the AE title ``ED_CT``, which ``queue.calling_ae_classes`` makes
    ``stat`` (the chest rule says ``priority_from: calling_ae``), on a node with one
    worker. Passes when the stat CT's results arrive no later than one CT's processing
    time (alone) after its own: it waits for the CT in hand at most, never the queue.

Both reuse :mod:`bench.throughput`'s studies, sending and completion detection.
"""

import argparse
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import _peers, _report
from bench._cli import progress
from bench._series import SeriesFiles
from bench.processing import DESTINATION_AE, new_lines, node_config
from tests import dcmtk

LANES_MARGIN_S = 5.0
"""(a) passes when the 2D studies' p90 in the stream is within this of their time alone."""
STAT_AE = "ED_CT"
"""The AE title that sends the stat chest CT (``queue.calling_ae_classes``)."""
PLANAR_FAMILIES = ("mammography", "fundus")


def lanes_queue(args: argparse.Namespace) -> dict[str, Any]:
    """``queue.lanes`` of scenario (a): the CT lane and the 2D lane, with their thread budgets."""
    return {
        "lanes": {
            "ct": {"models": ["lung_nodule_ct"], "threads": args.ct_threads},
            "planar": {
                "models": ["mammo_screening", "fundus_dr"],
                "threads": 1,
                "batch_size": args.batch_size,
            },
        }
    }


def stat_queue() -> dict[str, Any]:
    """``queue`` of scenario (b): the emergency CT scanner's AE title is ``stat``."""
    return {"calling_ae_classes": {STAT_AE: "stat"}}


def stat_rules(rules: Path, folder: Path) -> Path:
    """The rules file with the chest CT rule taking its class from the calling AE title."""
    loaded = yaml.safe_load(rules.read_text())
    for rule in loaded:
        if rule.get("model") == "lung_nodule_ct":
            rule["priority_from"] = "calling_ae"
    path = folder / "rules-stat.yaml"
    path.write_text(yaml.safe_dump(loaded, sort_keys=False))
    return path


def node_with_queue(
    stack: ExitStack,
    work: Path,
    args: argparse.Namespace,
    receptions: Any,
    queue: Mapping[str, Any],
) -> _peers.Peer:
    """``cad-node serve`` in ``work`` with the ``queue`` settings, sending to a storescp."""
    work.mkdir(parents=True, exist_ok=True)
    destination = stack.enter_context(
        _peers.storescp(
            receptions.out_dir,
            work / "storescp.log",
            ae_title=DESTINATION_AE,
            reception_log=receptions.reception_log,
        )
    )
    port = dcmtk.free_port()
    config = node_config(work, port=port, destination_port=destination.port, args=args)
    settings = yaml.safe_load(config.read_text())
    settings["queue"] = dict(queue)
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    progress(f"starting cad-node with queue settings {dict(queue)} ...")
    return stack.enter_context(_peers.cad_node(config, port, work / "node.log"))


_JOB_STAGES = re.compile(
    r"job \d+ done: series (\S+), .*; load ([\d.]+)s inference ([\d.]+)s "
    r"build ([\d.]+)s write ([\d.]+)s"
)


def processing_seconds(lines: Sequence[str]) -> dict[str, float]:
    """Each job's run time (load + inference + build + write) from the node's log, by series."""
    found = {}
    for line in lines:
        match = _JOB_STAGES.search(line)
        if match is not None:
            found[match.group(1)] = sum(float(match.group(n)) for n in range(2, 6))
    return found


@dataclass(frozen=True, slots=True)
class StatResult:
    """Scenario (b): the routine CTs' and the stat CT's last ACK -> results, a CT alone (the
    reference phase), and the longest CT run of this phase (its node's log)."""

    routine_latencies_s: tuple[float, ...]
    stat_latency_s: float
    ct_alone_s: float
    ct_processing_s: float = 0.0
    """The longest run (load to write) of this phase's CT jobs; 0: not logged."""

    @property
    def passed(self) -> bool:
        """The stat CT's results came within one CT's processing time of its own: it waited
        for the CT in hand at most (both runs as long as this phase's longest, plus
        :data:`LANES_MARGIN_S` for completion and delivery)."""
        one_ct = self.ct_processing_s or self.ct_alone_s
        return self.stat_latency_s <= 2 * one_ct + LANES_MARGIN_S

    def figures(self) -> dict[str, Any]:
        return {
            "routine_cts": len(self.routine_latencies_s),
            "routine_latency_s": [round(s, 2) for s in self.routine_latencies_s],
            "stat_latency_s": round(self.stat_latency_s, 2),
            "ct_alone_s": round(self.ct_alone_s, 2),
            "ct_processing_s": round(self.ct_processing_s, 2),
            "passed": self.passed,
        }


def lanes_figures(
    alone: Mapping[str, Any], lanes: Mapping[str, Any], margin: float = LANES_MARGIN_S
) -> dict[str, Any]:
    """Scenario (a)'s check per 2D family: p90 in the stream with lanes vs the median alone."""
    checks = {}
    for family in PLANAR_FAMILIES:
        if family not in lanes["families"]:
            continue
        alone_s = alone["families"][family]["latency_median_s"]
        p90 = lanes["families"][family]["latency_p90_s"]
        checks[family] = {
            "alone_s": alone_s,
            "lanes_p90_s": p90,
            "passed": p90 <= alone_s + margin,
        }
    return {**lanes, "checks": checks}


def lanes_table(current: Mapping[str, Any]) -> str:
    """Scenario (a): each family alone, in the stream one at a time, and with lanes."""
    rows = []
    for family, one in current["one_at_a_time"]["families"].items():
        streamed = current["stream"]["families"][family]
        laned = current["lanes"]["families"].get(family)
        check = current["lanes"]["checks"].get(family)
        rows.append(
            [
                family,
                f"{one['latency_median_s']:.1f}",
                f"{streamed['latency_median_s']:.1f} / {streamed['latency_p90_s']:.1f}",
                "?"
                if laned is None
                else f"{laned['latency_median_s']:.1f} / {laned['latency_p90_s']:.1f}",
                "" if check is None else ("yes" if check["passed"] else "**no**"),
            ]
        )
    headers = [
        "Family",
        "Alone, s (median)",
        "Stream, one job at a time, s (median / p90)",
        "Stream with lanes, s (median / p90)",
        f"p90 within {LANES_MARGIN_S:g} s of alone",
    ]
    return _report.table(headers, rows)


def stat_table(stat: Mapping[str, Any]) -> str:
    rows = [[f"routine CT {n}", f"{s:.1f}"] for n, s in enumerate(stat["routine_latency_s"], 1)]
    rows.append(["**stat CT** (sent last)", f"**{stat['stat_latency_s']:.1f}**"])
    rows.append(["a CT alone (reference phase)", f"{stat['ct_alone_s']:.1f}"])
    rows.append(["longest CT run in this phase (log)", f"{stat['ct_processing_s']:.1f}"])
    return _report.table(["Study", "Last ACK → results, s"], rows)


def section_lines(args: argparse.Namespace, current: Mapping[str, Any]) -> list[str]:
    """The benchmark section's lines for the scenarios that ran."""
    lines: list[str] = []
    if "lanes" in current:
        lines += [
            "### (a) The mixed stream with lanes",
            "",
            f"The same stream on a node with two lanes (`queue.lanes`): `lung_nodule_ct` with "
            f"{args.ct_threads} torch thread(s), and `mammo_screening` + `fundus_dr` with 1 "
            f"thread, batching up to {args.batch_size} queued jobs of one model in one forward "
            "pass (on the CPU). A 2D study runs beside a CT instead of behind it.",
            "",
            lanes_table(current),
        ]
    if "stat" in current:
        stat = current["stat"]
        verdict = "met" if stat["passed"] else "**not met**"
        lines += [
            "### (b) A stat chest CT behind routine ones",
            "",
            f"{stat['routine_cts']} routine chest CTs sent back to back, then one chest CT "
            f"from `{STAT_AE}` (`queue.calling_ae_classes`: stat; the chest rule says "
            "`priority_from: calling_ae`), one worker. The stat job is claimed next, after "
            "the CT in hand: its results should arrive within one CT's processing time of its "
            f"own (≤ 2 × the longest CT run of this phase + {LANES_MARGIN_S:g} s): {verdict}.",
            "",
            stat_table(stat),
        ]
    if current.get("lanes") is not None or current.get("stat") is not None:
        lines += [
            "Batching on a GPU: not measured (no GPU was lent); the batch path ran on the CPU.",
            "",
        ]
    return lines


def run_lanes(
    args: argparse.Namespace, studies: Sequence[Any], scratch: Path, bench_type: Any
) -> Any:
    """Scenario (a) on a fresh node: the stream of ``studies``; its PhaseResult."""
    from bench.throughput import Receptions, stream

    work = scratch / "lanes"
    with ExitStack() as stack:
        receptions = Receptions(work / "destination", work / "destination-received.log")
        node = node_with_queue(stack, work, args, receptions, lanes_queue(args))
        bench = bench_type(node, receptions, work, args.timeout)
        progress("sending the studies as a stream, to the node with lanes ...")
        return stream(bench, studies)


def run_stat(
    args: argparse.Namespace,
    cts: Sequence[Any],
    scratch: Path,
    bench_type: Any,
    ct_alone_s: float,
) -> StatResult:
    """Scenario (b) on a fresh node: ``cts[:-1]`` routine, then ``cts[-1]`` stat."""
    from bench.throughput import Receptions

    work = scratch / "stat"
    work.mkdir(parents=True, exist_ok=True)
    stat_args = argparse.Namespace(**{**vars(args), "rules": stat_rules(args.rules, work)})
    with ExitStack() as stack:
        receptions = Receptions(work / "destination", work / "destination-received.log")
        node = node_with_queue(stack, work, stat_args, receptions, stat_queue())
        bench = bench_type(node, receptions, work, args.timeout)
        bench.start_phase()
        progress(f"sending {len(cts) - 1} routine chest CTs, then a stat one ...")
        sent = [(study, *bench.send(study)) for study in cts[:-1]]
        sent.append((cts[-1], *bench.send(cts[-1], calling_ae=STAT_AE)))
        finished = bench.wait(cts)
        runs = processing_seconds(new_lines(node.log_path, bench.log_offset))
    latencies = [finished[s.study_instance_uid][1] - acked for s, _, acked in sent]
    longest = max(runs.values(), default=0.0)
    return StatResult(tuple(latencies[:-1]), latencies[-1], ct_alone_s, longest)


def ct_copies(base: SeriesFiles, count: int, scratch: Path) -> list[Any]:
    """``count`` copies of the base chest CT under UIDs of their own (scenario (b))."""
    from bench.throughput import make_mix

    return make_mix({"lung_ct": base}, count, "stat", scratch)

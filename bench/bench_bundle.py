"""Site-model benchmark: a MONAI bundle through the node's BundleRunner beside MONAI's own runner.

The bundle is ``tests/data/model-zoo/spleen_ct_segmentation`` as the zoo ships it, with weights
of its own ``network_def`` (seeded, :func:`tests.bundles.zoo_bundle`). The input is one
synthetic chest CT (``cad_node.synth``) written as DICOM and read with the node's
``load_volume`` (as the worker reads a series), then written as NIfTI the way DESIGN16
"Geometry" says, for MONAI. Each run starts two fresh interpreters, one after the other:

- the node: imports :mod:`cad_node.models.site.bundle`, builds a :class:`BundleRunner` (config,
  network, weights: what the node's warm child does once per model), then ``report``\\ s the
  in-memory volume ``--series`` times;
- MONAI: ``monai.bundle run`` of the bundle's ``configs/inference.json`` with a datalist of
  ``--series`` copies of the NIfTI file (its ``run`` split into ``create_workflow`` and
  ``workflow.run``, the two calls ``python -m monai.bundle run`` makes, so that its phases can
  be timed apart), overriding only the datalist, output folder, device and dataloader workers.

Per series: the node's ``report`` (volume in memory -> findings on the source grid); MONAI's
iteration from ``GET_BATCH_STARTED`` to ``ITERATION_COMPLETED`` (read the NIfTI, preprocess,
infer, invert, write the label NIfTI). Runs alternate (node then MONAI, MONAI then node ...).

Run from the repository root::

    .venv/bin/python -m bench.bench_bundle                   # 3 runs of 3 series, 64 x 256x256
    .venv/bin/python -m bench.bench_bundle --runs 3 --slices 120 --rows 512
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import _report
from bench._cli import add_common_arguments, benchmark_session, command_line, progress, run_main
from bench._peers import REPO_ROOT

KEY = "bundle"
BUNDLE = "spleen_ct_segmentation"
EXIT_REGRESSION = 3
CHILD_FLAG = "--child"


# --- the two children (heavy imports inside, so the child times them) -------------------------


def _node_child(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import numpy as np

    from cad_node.models.site.bundle import BundleRunner
    from tests.bundles import SPLEEN_LABELS, site_manifest, volume_from_npz, volume_grid

    imported = time.perf_counter()
    folder = Path(spec["bundle"])
    manifest = site_manifest("spleen", folder, _segmentation(), SPLEEN_LABELS)
    runner = BundleRunner(folder, manifest, spec["device"])
    built = time.perf_counter()
    grid = volume_grid(volume_from_npz(Path(spec["volume"])))
    series = []
    for index in range(spec["series"]):
        before = time.perf_counter()
        report = runner.report(grid)
        series.append(time.perf_counter() - before)
        if index == 0:
            np.save(spec["labels"], _label_map(report, grid.volume))
    return _figures(started, imported, built, series)


def _segmentation() -> Any:
    from cad_node.models.manifest import Task

    return Task.SEGMENTATION


def _label_map(report: Any, volume: Any) -> Any:
    import numpy as np

    labels = np.zeros(volume.shape, dtype=np.uint8)
    for finding in report.findings:
        for mask in finding.masks:
            labels[mask.image_index][mask.paste(volume.shape[1:])] = 1
    return labels


def _monai_child(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    from ignite.engine import Events
    from monai.bundle.scripts import create_workflow

    imported = time.perf_counter()
    workflow = create_workflow(config_file=spec["config"], **spec["overrides"])
    built = time.perf_counter()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    marks: list[float] = []
    evaluator.add_event_handler(
        Events.GET_BATCH_STARTED, lambda _: marks.append(time.perf_counter())
    )
    series: list[float] = []
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda _: series.append(time.perf_counter() - marks[-1])
    )
    workflow.run()
    workflow.finalize()
    return _figures(started, imported, built, series)


def _figures(started: float, imported: float, built: float, series: list[float]) -> dict[str, Any]:
    return {
        "imports_s": imported - started,
        "build_s": built - imported,
        "series_s": series,
        "child_s": time.perf_counter() - started,
    }


def child_main(kind: str, spec_text: str) -> int:
    spec = json.loads(spec_text)
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    figures = _node_child(spec) if kind == "node" else _monai_child(spec)
    print("FIGURES " + json.dumps(figures), flush=True)
    return 0


# --- the parent ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One fresh interpreter's figures."""

    wall_s: float
    imports_s: float
    build_s: float
    series_s: tuple[float, ...]
    child_s: float

    @property
    def start_s(self) -> float:
        """Interpreter start and exit: the wall time the child's own clock did not see."""
        return self.wall_s - self.child_s

    @property
    def without_start_s(self) -> float:
        """Build and every series: the whole run less interpreter start, exit and imports."""
        return self.build_s + sum(self.series_s)


def run_child(kind: str, spec: dict[str, Any], cwd: Path) -> Run:
    argv = [sys.executable, "-m", "bench.bench_bundle", CHILD_FLAG, kind, json.dumps(spec)]
    env_path = f"{REPO_ROOT}:{cwd}"  # bench/ and tests/ from the checkout; scripts/ from the bundle
    before = time.perf_counter()
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, check=False, env=_env(env_path)
    )
    wall = time.perf_counter() - before
    lines = [line for line in done.stdout.splitlines() if line.startswith("FIGURES ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(lines[-1].removeprefix("FIGURES "))
    return Run(
        wall,
        figures["imports_s"],
        figures["build_s"],
        tuple(figures["series_s"]),
        figures["child_s"],
    )


def _env(python_path: str) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": python_path}


@dataclass(frozen=True, slots=True)
class Setup:
    bundle: Path
    volume_npz: Path
    niftis: tuple[Path, ...]
    description: str
    shape: tuple[int, int, int]


def prepare(scratch: Path, args: argparse.Namespace) -> Setup:
    """The bundle with seeded weights, the synthetic series as DICOM -> volume -> NIfTI."""
    from pydicom import dcmread

    from bench._series import synthetic_chest_ct
    from cad_node.imaging.volume import load_volume
    from tests.bundles import save_volume_npz, write_nifti, zoo_bundle

    bundle = zoo_bundle(BUNDLE, scratch / "bundle", seed=args.seed)
    series = synthetic_chest_ct(
        scratch / "dicom",
        slices=args.slices,
        rows=args.rows,
        seed=args.seed,
        images_in_acquisition=False,
    )
    volume = load_volume([dcmread(path) for path in series.files])
    first = write_nifti(volume, scratch / "series0.nii.gz")
    niftis = [first]
    for index in range(1, args.series):
        niftis.append(Path(shutil.copyfile(first, scratch / f"series{index}.nii.gz")))
    spacing = " x ".join(f"{s:g}" for s in volume.spacing_mm)
    description = (
        f"synthetic chest CT, {args.slices} x {args.rows}x{args.rows} ({spacing} mm), "
        f"seed {args.seed}"
    )
    return Setup(
        bundle,
        save_volume_npz(volume, scratch / "volume.npz"),
        tuple(niftis),
        description,
        volume.shape,
    )


def measure(setup: Setup, scratch: Path, args: argparse.Namespace) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {"node": [], "monai": []}
    config = setup.bundle / "configs" / "inference.json"
    for run in range(args.runs):
        out = scratch / f"monai-{run}"
        node_spec = {
            "bundle": str(setup.bundle),
            "volume": str(setup.volume_npz),
            "series": args.series,
            "device": args.device,
            "threads": args.threads,
            "labels": str(scratch / "node-labels.npy"),
        }
        monai_spec = {
            "config": str(config),
            "threads": args.threads,
            "overrides": {
                "bundle_root": str(setup.bundle),
                "datalist": [str(p) for p in setup.niftis],  # instead of the Decathlon's glob
                "output_dir": str(out),  # instead of <bundle>/eval
                "device": f"$torch.device('{args.device}')",
                "dataloader#num_workers": 0,  # as the node: no worker processes
            },
        }
        specs = {"node": node_spec, "monai": monai_spec}
        order = ("node", "monai") if run % 2 == 0 else ("monai", "node")
        for kind in order:  # who goes first alternates: a machine getting busier hurts both
            progress(f"run {run + 1}/{args.runs}: {kind} ...")
            runs[kind].append(run_child(kind, specs[kind], setup.bundle))
    return runs


def agreement(setup: Setup, scratch: Path) -> float:
    """Dice of the spleen label, node vs MONAI, on the first series (source grid)."""
    import numpy as np

    from tests.bundles import source_grid_of, volume_from_npz

    volume = volume_from_npz(setup.volume_npz)
    theirs = source_grid_of(scratch / "monai-0" / "series0" / "series0_trans.nii.gz", volume) == 1
    ours = np.load(scratch / "node-labels.npy") == 1
    total = int(ours.sum() + theirs.sum())
    return 1.0 if total == 0 else 2.0 * int((ours & theirs).sum()) / total


# --- the figures -----------------------------------------------------------------------------


def figures(runs: dict[str, list[Run]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for kind, measured in runs.items():
        series = [s for run in measured for s in run.series_s]
        found[kind] = {
            "wall_s": round(_report.median([r.wall_s for r in measured]), 3),
            "start_s": round(_report.median([r.start_s for r in measured]), 3),
            "imports_s": round(_report.median([r.imports_s for r in measured]), 3),
            "build_s": round(_report.median([r.build_s for r in measured]), 3),
            "series_median_s": round(_report.median(series), 3),
            "series_first_s": round(_report.median([r.series_s[0] for r in measured]), 3),
            "without_start_s": round(_report.median([r.without_start_s for r in measured]), 3),
        }
    return found


def _row(name: str, figure: dict[str, Any]) -> list[str]:
    return [
        name,
        f"{figure['wall_s']:.1f}",
        f"{figure['start_s']:.1f}",
        f"{figure['imports_s']:.1f}",
        f"{figure['build_s']:.1f}",
        f"{figure['without_start_s']:.1f}",
        f"**{figure['series_median_s']:.2f}** ({figure['series_first_s']:.2f})",
    ]


def section(
    args: argparse.Namespace,
    setup: Setup,
    *,
    current: dict[str, Any],
    dice: float,
    environment: dict[str, Any],
    comparison: str,
) -> str:
    node, monai = current["node"], current["monai"]
    headers = [
        "Runner",
        "Whole process, s",
        "Interpreter start + exit, s",
        "Imports, s",
        "Build (config, network, weights), s",
        f"Build + {args.series} series (no start, no imports), s",
        "**Per series, s** median (first)",
    ]
    rows = [
        _row("cad-node `BundleRunner` (volume in memory)", node),
        _row("`monai.bundle run` (NIfTI in, NIfTI out)", monai),
    ]
    ratio = node["series_median_s"] / monai["series_median_s"]
    whole = node["wall_s"] / monai["wall_s"]
    lines = [
        f"## Site model: a MONAI bundle through the node and through `monai.bundle run` "
        f"({args.device})",
        "",
        f"Recorded {environment['date']} with `{environment['command']}`.",
        "",
        f"Bundle `{BUNDLE}` from the MONAI model zoo, unchanged, with seeded weights of its own "
        f"`network_def` (UNet); input: one {setup.description}, read as the worker reads a "
        "series (`dcmread` + `load_volume`), then written as NIfTI for MONAI (not timed: a "
        "site would convert its DICOM first). Each run starts two fresh interpreters, "
        f"one after the other (who goes first alternates); {args.runs} runs of "
        f"{args.series} series each; figures are medians "
        "over runs (per series: over every series of every run). Node per series: "
        "`BundleRunner.report` on the in-memory volume, to findings on the source grid (the "
        "bundle's own preprocessing, sliding-window inferer, `Activationsd` and `Invertd`; its "
        "`SaveImaged` dropped). MONAI per series: one evaluator iteration from "
        "`GET_BATCH_STARTED` to `ITERATION_COMPLETED` (read the NIfTI, the same transforms, "
        "write the label NIfTI). Imports: `cad_node.models.site.bundle` (torch and MONAI "
        "included) or `monai.bundle.scripts`; build: `BundleRunner(...)` or MONAI's "
        "`create_workflow` (parse, network, `CheckpointLoader`). Interpreter start + exit = "
        "the wall time less the child's own clock.",
        "",
        _report.table(headers, rows),
        f"- Per series, node ÷ MONAI: **{ratio:.2f}** (target ≤ 1.00: the node costs no more): "
        f"{'met' if ratio <= 1.0 else '**not met**'}.",
        f"- Whole process, node ÷ MONAI: {whole:.2f} (the node pays start, imports and build "
        "once per model, in its warm child, not per series).",
        f"- The same answer: Dice {dice:.4f} between the node's spleen mask and MONAI's saved "
        "one on the source grid (first series).",
        "",
        *_report.conditions(environment, args.nice, comparison),
    ]
    return "\n".join(lines)


def compare_with_last(
    last: dict[str, Any] | None, current: dict[str, Any], study: str, environment: dict[str, Any]
) -> tuple[str, bool]:
    """The node's per-series median then and now, also relative to MONAI's beside it."""
    if last is None:
        return "No earlier recorded run.\n", False
    if last.get("study") != study:
        return f"Last recorded run ({last.get('date', '?')}) not compared: another input.\n", False
    before, now = last["figures"], current
    slower = _report.slowdown(before["node"]["series_median_s"], now["node"]["series_median_s"])
    reference = _report.slowdown(
        before["monai"]["series_median_s"], now["monai"]["series_median_s"]
    )
    relative = (1 + slower) / (1 + reference) - 1
    same = _report.same_machine(last.get("machine", {}), environment["machine"])
    text = (
        f"Last recorded run: {last.get('date', '?')} "
        f"({'same machine' if same else '**another machine**: not comparable'}). Node per "
        f"series {before['node']['series_median_s']:.2f} s then, "
        f"{now['node']['series_median_s']:.2f} s now: {_report.describe_change(slower)}; "
        f"relative to MONAI's beside it: {_report.describe_change(relative)}.\n"
    )
    return text, same and _report.is_regression(slower) and _report.is_regression(relative)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_bundle", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each runner (default 3)")
    parser.add_argument("--series", type=int, default=3, help="series per run (default 3)")
    parser.add_argument("--slices", type=int, default=64, help="slices of the synthetic CT")
    parser.add_argument("--rows", type=int, default=256, help="rows (= columns) of the CT")
    parser.add_argument("--seed", type=int, default=11, help="seed of the CT and the weights")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.series < 1:
        parser.error("--runs and --series must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    environment: dict[str, Any] = {
        "date": _report.utc_now_text(),
        "command": command_line("bench.bench_bundle", argv),
        "machine": _report.machine_info(),
        "versions": _report.versions(["cad-node", "torch", "monai", "numpy"], dcmtk=False),
        "load_before": _report.load_average(),
        "notes": _report.notes(args.note),
    }
    with benchmark_session("cad-node-bench-bundle-", nice=args.nice, keep=args.keep) as scratch:
        progress("writing the bundle and the series ...")
        setup = prepare(scratch, args)
        runs = measure(setup, scratch, args)
        dice = agreement(setup, scratch)
    environment["load_after"] = _report.load_average()
    current = figures(runs)
    key = KEY if args.device == "cpu" else f"{KEY}-gpu"
    last = _report.load_last(key)
    comparison, regressed = compare_with_last(last, current, setup.description, environment)
    text = section(
        args, setup, current=current, dice=dice, environment=environment, comparison=comparison
    )
    print(text)
    if not args.no_record:
        _report.write_section(key, text)
        entry = {k: environment[k] for k in ("date", "command", "machine", "versions")}
        _report.save_last(
            key, {**entry, "study": setup.description, "dice": dice, "figures": current}
        )
    if regressed:
        print("the node's bundle run is more than 25% slower than last time", file=sys.stderr)
        if args.fail_on_regression:
            return EXIT_REGRESSION
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == CHILD_FLAG:
        sys.exit(child_main(sys.argv[2], sys.argv[3]))
    run_main(main)

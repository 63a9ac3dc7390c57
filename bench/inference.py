"""Inference benchmark: seconds per study for each model family, beside its TorchScript export.

For each shipped model family (lung CT, mammography, fundus) it writes one
synthetic study with ``cad_node.synth``, loads the shipped model through
:class:`~cad_node.models.registry.ModelRegistry`, reads the study with the node's
own loaders (``load_volume`` / ``load_image_set``, as the worker does), and times:

- load: ``dcmread`` of every instance + the loader (DICOM -> volume or image set);
- predict: ``model.predict(...)`` after one warm-up call, ``--repeats`` times
  (median and min), and the share of it spent in the network's forward calls;
- results: every result object the worker sends to a SEG/SR destination (SEGs, SR,
  Parametric Maps, explanation images, KOS) from ``build_volume_objects`` /
  ``build_planar_objects``, with ``result_uids("bench/...")`` and ``ResultOptions()``;
- peak RSS of this process while the family was measured (``VmHWM``, reset
  through ``/proc/self/clear_refs`` before each family), and peak GPU memory on CUDA.

The reference, measured in the same run on the same study: the same network
exported to TorchScript (``torch.jit.script``, else ``torch.jit.trace`` on the
study's own inputs), dropped in a model folder with a ``format: torchscript``
manifest and loaded through the registry like a site's model.  Native and
TorchScript calls alternate, so a machine that gets busier hurts both alike.

Run from the repository root::

    .venv/bin/python -m bench.inference                 # 3 repeats, every family
    .venv/bin/python -m bench.inference --device cuda --families lung_ct
"""

import argparse
import copy
import gc
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from pydicom import Dataset, dcmread
from torch import nn

from bench import _report
from bench._cli import add_common_arguments, benchmark_session, command_line, progress, run_main
from bench._series import synthetic_chest_ct
from cad_node.domain.findings import ModelResult
from cad_node.domain.image_sets import ImageSet, PlanarResult
from cad_node.domain.imaging import ImageVolume
from cad_node.errors import CadNodeError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.volume import load_volume
from cad_node.models.base import CadModel, reads_image_sets, reads_volumes
from cad_node.models.manifest import MANIFEST_NAME, WeightsFormat, sha256_of
from cad_node.models.registry import ModelRegistry
from cad_node.models.runtime import default_device, is_cuda
from cad_node.results import (
    ResultObjects,
    ResultOptions,
    build_planar_objects,
    build_volume_objects,
    result_uids,
)

KEY = "inference"
SLOWER = "inference is more than 25% slower than the last recorded run"
FAMILIES = ("lung_ct", "mammography", "fundus")
FUNDUS_GRADES = (2, 3)
"""ICDR grades (OD, OS) of the fundus study: lesions and Grad-CAM maps, so every stage runs."""
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

ModelInput = ImageVolume | ImageSet
Prediction = ModelResult | PlanarResult


class ExportError(Exception):
    """The network of a model cannot be exported to TorchScript."""


# --- the studies ---


@dataclass(frozen=True, slots=True)
class Study:
    """One synthetic study on disk and how it reads in the report."""

    family: str
    files: tuple[Path, ...]
    description: str


def write_study(family: str, folder: Path, args: argparse.Namespace) -> Study:
    """Write the synthetic study of ``family`` under ``folder``."""
    writers: dict[str, Callable[[Path, argparse.Namespace], Study]] = {
        "lung_ct": _ct_study,
        "mammography": _mammo_study,
        "fundus": _fundus_study,
    }
    return writers[family](folder / family, args)


def _ct_study(folder: Path, args: argparse.Namespace) -> Study:
    series = synthetic_chest_ct(
        folder, slices=args.slices, rows=args.rows, seed=args.seed, images_in_acquisition=False
    )
    shape = f"{args.slices} x {args.rows}x{args.rows}"
    return Study("lung_ct", series.files, f"chest CT, {shape}, seed {args.seed}")


def _mammo_study(folder: Path, args: argparse.Namespace) -> Study:
    from cad_node.synth.mammo import MammoSpec
    from cad_node.synth.mammo import write_study as write_mammo

    spec = MammoSpec(seed=args.seed, prevalence=1.0)
    write_mammo(spec, folder)
    files = tuple(sorted(folder.glob("*.dcm")))
    text = f"4 views {spec.rows}x{spec.columns}, a lesion in each breast, seed {args.seed}"
    return Study("mammography", files, text)


def _fundus_study(folder: Path, args: argparse.Namespace) -> Study:
    from cad_node.synth.fundus import FundusSpec, generate_fundus
    from cad_node.synth.fundus import write_study as write_fundus

    spec = FundusSpec(seed=args.seed, grades=FUNDUS_GRADES)
    files = tuple(write_fundus(generate_fundus(spec), folder))
    text = f"OD + OS {spec.size}x{spec.size} RGB, ICDR {FUNDUS_GRADES[0]}/{FUNDUS_GRADES[1]}"
    return Study("fundus", files, f"{text}, seed {args.seed}")


def read_study(model: CadModel, files: Sequence[Path]) -> tuple[ModelInput, list[Dataset]]:
    """The model's input and the headers the results need, read as the worker reads them."""
    datasets: list[Dataset] = [dcmread(path) for path in files]
    model_input: ModelInput
    if reads_volumes(model):
        model_input = load_volume(datasets)
    elif reads_image_sets(model):
        model_input = load_image_set(datasets)
    else:
        raise ValueError(f"model {model.identity.name}: unknown input kind {model.input_kind}")
    for dataset in datasets:  # as the worker does: results need headers only
        for keyword in PIXEL_KEYWORDS:
            if keyword in dataset:
                delattr(dataset, keyword)
    return model_input, datasets


def predict(model: CadModel, model_input: ModelInput) -> Prediction:
    if reads_volumes(model) and isinstance(model_input, ImageVolume):
        return model.predict(model_input)
    if reads_image_sets(model) and isinstance(model_input, ImageSet):
        return model.predict(model_input)
    raise ValueError(f"model {model.identity.name} does not read a {type(model_input).__name__}")


def build_results(
    headers: Sequence[Dataset], model_input: ModelInput, prediction: Prediction, model_name: str
) -> int:
    """Build the job's DICOM objects as the worker does (no burned-in images or presentation
    states); returns how many."""
    uids = result_uids(f"bench/inference/{model_name}")
    options = ResultOptions().for_model(model_name)
    built: ResultObjects
    if isinstance(prediction, PlanarResult) and isinstance(model_input, ImageSet):
        built = build_planar_objects(headers, model_input, prediction, uids, options)
    elif isinstance(prediction, ModelResult) and isinstance(model_input, ImageVolume):
        built = build_volume_objects(headers, model_input, prediction, uids, options)
    else:
        raise ValueError("the prediction does not match the model input")
    return object_count(built)


def object_count(objects: ResultObjects) -> int:
    """How many DICOM objects one run built."""
    return (
        len(objects.segs)
        + 1
        + len(objects.parametric_maps)
        + len(objects.explanations)
        + (objects.kos is not None)
        + len(objects.overlays)
        + len(objects.states)
    )


def output_signature(prediction: Prediction) -> tuple[float, ...]:
    """Finding probabilities and assessment scores (3 decimals): equal for equal outputs."""
    values = [finding.probability for finding in prediction.findings]
    if isinstance(prediction, PlanarResult):
        values += [assessment.score for assessment in prediction.assessments]
    return tuple(round(value, 3) for value in values)


def explanation_count(prediction: Prediction) -> int:
    return len(prediction.explanations) if isinstance(prediction, PlanarResult) else 0


# --- the network inside a model ---


class NetworkClock(nn.Module):
    """A model's network, wrapped to add up the seconds its forward calls take.

    Put in place of the model's ``_net``: what the model's predict path calls
    goes through it.  Grad-CAM keeps its own reference to the network, so the
    explanation maps are not counted as network time.  The first call's inputs
    are kept (``torch.jit.trace`` needs example inputs).
    """

    def __init__(self, net: nn.Module, device: str) -> None:
        super().__init__()
        self.net = net
        self.device = device
        self.seconds = 0.0
        self.example_inputs: tuple[Any, ...] | None = None

    def forward(self, *inputs: Any) -> Any:
        if self.example_inputs is None:
            self.example_inputs = tuple(_detached(value) for value in inputs)
        started = time.perf_counter()
        output = self.net(*inputs)
        synchronize(self.device)
        self.seconds += time.perf_counter() - started
        return output


def _detached(value: Any) -> Any:
    """A plain copy of ``value`` (outside inference mode, so that tracing may use it)."""
    if not isinstance(value, torch.Tensor):
        return value
    with torch.inference_mode(False):
        return value.detach().clone()


def attach_clock(model: CadModel, device: str) -> NetworkClock | None:
    """Wrap the model's network (``_net``, as every shipped family keeps it) in a clock."""
    net = getattr(model, "_net", None)
    if not isinstance(net, nn.Module):
        return None
    clock = NetworkClock(net, device)
    setattr(model, "_net", clock)  # noqa: B010  # a private attribute, on purpose: bench only
    return clock


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a clock read after it counts all of it."""
    if is_cuda(device):
        torch.cuda.synchronize(device)


def without_hooks(net: nn.Module) -> nn.Module:
    """A CPU copy of ``net`` without Python hooks (Grad-CAM's), which TorchScript cannot hold."""
    clean = copy.deepcopy(net).cpu()
    for module in clean.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            getattr(module, hooks).clear()
        getattr(module, "_backward_pre_hooks", {}).clear()
    return clean.eval()


def export_torchscript(net: nn.Module, example_inputs: tuple[Any, ...] | None) -> tuple[Any, str]:
    """``net`` as TorchScript: scripted, else traced on ``example_inputs``; and which of the two.

    Raises
    ------
    ExportError
        Neither works.
    """
    clean = without_hooks(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates TorchScript authoring
        try:
            return torch.jit.script(clean), "torch.jit.script"
        except (RuntimeError, torch.jit.frontend.NotSupportedError) as exc:
            script_error = _first_line(exc)
        if example_inputs is None:
            raise ExportError(f"script failed ({script_error}); no inputs to trace with")
        cpu_inputs = tuple(v.cpu() if isinstance(v, torch.Tensor) else v for v in example_inputs)
        try:
            with torch.no_grad():
                traced = torch.jit.trace(clean, cpu_inputs, check_trace=False)  # type: ignore[no-untyped-call]  # trace has no annotations
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ExportError(f"script: {script_error}; trace: {_first_line(exc)}") from exc
    return traced, "torch.jit.trace (script failed: " + script_error + ")"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def torchscript_model(
    registry: ModelRegistry, model_name: str, scripted: Any, site: Path, device: str
) -> CadModel:
    """Save ``scripted`` as a site model folder (``format: torchscript``) and load it."""
    name = f"{model_name}_torchscript"
    folder = site / name
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.ts"
    torch.jit.save(scripted, str(weights))
    manifest = replace(
        registry.entries()[model_name].manifest,
        name=name,
        format=WeightsFormat.TORCHSCRIPT,
        weights_file=weights.name,
        sha256=sha256_of(weights),
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return ModelRegistry(extra_dirs=[site], device=device).get(name)


# --- timing ---


@dataclass(frozen=True, slots=True)
class Timing:
    """Repeated predictions of one model variant on one study."""

    predict_s: tuple[float, ...]
    network_s: tuple[float, ...]
    """The network's forward calls within each prediction (empty: not measured)."""
    findings: int
    explanations: int
    stable: bool = True
    """Whether every prediction (warm-up included) gave the same output on the same study."""

    @property
    def median_s(self) -> float:
        return _report.median(self.predict_s)

    @property
    def min_s(self) -> float:
        return min(self.predict_s)

    @property
    def network_median_s(self) -> float | None:
        return _report.median(self.network_s) if self.network_s else None


@dataclass
class Variant:
    """A loaded model and what has been measured on it so far."""

    model: CadModel
    clock: NetworkClock | None
    device: str
    predict_s: list[float]
    network_s: list[float]
    last: Prediction | None = None
    signatures: set[tuple[float, ...]] = field(default_factory=set)

    @classmethod
    def of(cls, model: CadModel, device: str) -> "Variant":
        return cls(model, attach_clock(model, device), device, [], [])

    def run(self, model_input: ModelInput, *, record: bool = True) -> Prediction:
        """One prediction, timed (and kept in the figures when ``record``)."""
        if self.clock is not None:
            self.clock.seconds = 0.0
        started = time.perf_counter()
        self.last = predict(self.model, model_input)
        self.signatures.add(output_signature(self.last))
        synchronize(self.device)
        if record:
            self.predict_s.append(time.perf_counter() - started)
            if self.clock is not None:
                self.network_s.append(self.clock.seconds)
        return self.last

    def timing(self) -> Timing:
        if self.last is None:
            raise ValueError("no prediction was run")
        return Timing(
            predict_s=tuple(self.predict_s),
            network_s=tuple(self.network_s),
            findings=len(self.last.findings),
            explanations=explanation_count(self.last),
            stable=len(self.signatures) == 1,
        )


@dataclass(frozen=True, slots=True)
class FamilyResult:
    """Everything measured for one model family."""

    family: str
    model_name: str
    study: str
    load_s: float
    native: Timing
    build_s: float
    objects: int
    peak_rss_bytes: int
    peak_rss_reset: bool
    """Whether VmHWM was reset before this family (else it is the process' peak so far)."""
    peak_gpu_bytes: int | None = None
    torchscript: Timing | None = None
    export_method: str = ""
    export_error: str = ""

    @property
    def ratio(self) -> float | None:
        """Native median ÷ TorchScript median: above 1, the native network is slower."""
        if self.torchscript is None:
            return None
        return self.native.median_s / self.torchscript.median_s


def timed(action: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median seconds of ``repeats`` calls of ``action``, and the last call's value."""
    seconds, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = action()
        seconds.append(time.perf_counter() - started)
    return _report.median(seconds), value


def reset_peak_rss() -> bool:
    """Reset this process' VmHWM to its current RSS (Linux ``clear_refs`` value 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def shipped_model(registry: ModelRegistry, family: str) -> str:
    """The name of the shipped model of ``family`` (the first by name)."""
    names = sorted(n for n, e in registry.entries().items() if e.manifest.family == family)
    if not names:
        raise SystemExit(f"no shipped model of family {family!r}")
    return names[0]


def measure_family(study: Study, args: argparse.Namespace, site: Path) -> FamilyResult:
    """Load, predict (native and TorchScript, alternating), build results, for one study."""
    gc.collect()
    reset = reset_peak_rss()
    if is_cuda(args.device):
        torch.cuda.reset_peak_memory_stats(args.device)
    registry = ModelRegistry(device=args.device)
    name = shipped_model(registry, study.family)
    native = Variant.of(registry.get(name), args.device)
    load_s, (model_input, headers) = timed(
        lambda: read_study(native.model, study.files), args.repeats
    )
    progress(f"{study.family}: warm-up of {name} ...")
    prediction = native.run(model_input, record=False)
    reference, method, error = _reference(registry, name, native, site, args.device)
    if reference is not None:
        reference.run(model_input, record=False)
    for repeat in range(1, args.repeats + 1):
        native.run(model_input)
        if reference is not None:
            reference.run(model_input)
        progress(f"{study.family}: repeat {repeat} of {args.repeats} done")
    build_s, objects = timed(
        lambda: build_results(headers, model_input, prediction, name), args.repeats
    )
    return FamilyResult(
        family=study.family,
        model_name=name,
        study=study.description,
        load_s=load_s,
        native=native.timing(),
        build_s=build_s,
        objects=objects,
        peak_rss_bytes=peak_rss_bytes(),
        peak_rss_reset=reset,
        peak_gpu_bytes=torch.cuda.max_memory_allocated(args.device)
        if is_cuda(args.device)
        else None,
        torchscript=None if reference is None else reference.timing(),
        export_method=method,
        export_error=error,
    )


def _reference(
    registry: ModelRegistry, name: str, native: Variant, site: Path, device: str
) -> tuple[Variant | None, str, str]:
    """The TorchScript variant of the native model, or why there is none."""
    if native.clock is None:
        return None, "", "the model does not expose its network (`_net`)"
    try:
        scripted, method = export_torchscript(native.clock.net, native.clock.example_inputs)
    except ExportError as exc:
        return None, "", str(exc)
    return Variant.of(torchscript_model(registry, name, scripted, site, device), device), method, ""


# --- reporting ---


def figures(results: Sequence[FamilyResult]) -> dict[str, dict[str, Any]]:
    """What last.json keeps, per family."""
    return {r.family: _family_figures(r) for r in results}


def _family_figures(result: FamilyResult) -> dict[str, Any]:
    found: dict[str, Any] = {
        "model": result.model_name,
        "study": result.study,
        "load_s": round(result.load_s, 3),
        "predict_median_s": round(result.native.median_s, 3),
        "predict_min_s": round(result.native.min_s, 3),
        "network_median_s": _rounded(result.native.network_median_s),
        "results_s": round(result.build_s, 3),
        "peak_rss_mb": round(result.peak_rss_bytes / 1e6, 1),
    }
    if result.torchscript is not None:
        found["torchscript_predict_median_s"] = round(result.torchscript.median_s, 3)
        found["torchscript_network_median_s"] = _rounded(result.torchscript.network_median_s)
    if result.peak_gpu_bytes is not None:
        found["peak_gpu_mb"] = round(result.peak_gpu_bytes / 1e6, 1)
    return found


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _s(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def study_table(results: Sequence[FamilyResult]) -> str:
    gpu = any(r.peak_gpu_bytes is not None for r in results)
    headers = [
        "Family (model)",
        "Study",
        "Load (DICOM → input), s",
        "**Predict, s** median (min)",
        "of which network, s",
        "Results (SEG + SR ...), s",
        "Findings / objects",
        "Peak RSS, MB",
    ]
    rows = [_study_row(r) for r in results]
    if gpu:
        headers.append("Peak GPU memory, MB")
        rows = [
            [*row, f"{(r.peak_gpu_bytes or 0) / 1e6:.0f}"]
            for row, r in zip(rows, results, strict=True)
        ]
    return _report.table(headers, rows)


def _study_row(result: FamilyResult) -> list[str]:
    rss = f"{result.peak_rss_bytes / 1e6:.0f}" + ("" if result.peak_rss_reset else " (process)")
    return [
        f"{result.family} (`{result.model_name}`)",
        result.study,
        _s(result.load_s),
        f"**{result.native.median_s:.2f}** ({result.native.min_s:.2f})",
        _s(result.native.network_median_s),
        _s(result.build_s),
        f"{result.native.findings} / {result.objects}{_unstable(result.native)}",
        rss,
    ]


def reference_table(results: Sequence[FamilyResult]) -> str:
    headers = [
        "Family",
        "Native predict, s",
        "TorchScript predict, s",
        "**Ratio native ÷ TorchScript**",
        "Network native / TorchScript, s",
        "Network ratio",
        "Findings / maps, native vs TorchScript",
        "Export",
    ]
    return _report.table(headers, [_reference_row(r) for r in results])


def _reference_row(result: FamilyResult) -> list[str]:
    native = result.native
    reference = result.torchscript
    if reference is None:
        not_exported = f"not exported: {result.export_error}"
        return [result.family, _s(native.median_s), "—", "—", "—", "—", "—", not_exported]
    network_ratio = _ratio(native.network_median_s, reference.network_median_s)
    return [
        result.family,
        _s(native.median_s),
        _s(reference.median_s),
        f"**{result.ratio:.2f}**",
        f"{_s(native.network_median_s)} / {_s(reference.network_median_s)}",
        network_ratio,
        f"{native.findings} / {native.explanations}{_unstable(native)} vs "
        f"{reference.findings} / {reference.explanations}{_unstable(reference)}",
        result.export_method,
    ]


def _unstable(timing: Timing) -> str:
    return "" if timing.stable else " (**output changed between runs**)"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "?"
    return f"{numerator / denominator:.2f}"


@dataclass(frozen=True, slots=True)
class Change:
    """One family's native predict median, then and now."""

    family: str
    before_s: float
    now_s: float
    slower: float
    slower_than_reference: float | None
    """``slower`` with the TorchScript reference's change divided out (None: no reference)."""

    @property
    def regressed(self) -> bool:
        """More than 25% slower, and so even relative to the reference measured beside it."""
        relative = self.slower_than_reference
        return _report.is_regression(self.slower) and (
            relative is None or _report.is_regression(relative)
        )


def changes(before: dict[str, Any], now: dict[str, Any]) -> list[Change]:
    """Each family measured both times on the same study, native predict medians compared."""
    found = []
    for family, figure in now.items():
        then = before.get(family)
        if not then or then.get("study") != figure["study"]:
            continue
        slower = _report.slowdown(then["predict_median_s"], figure["predict_median_s"])
        relative = None
        key = "torchscript_predict_median_s"
        if key in then and key in figure:
            reference = _report.slowdown(then[key], figure[key])
            relative = (1 + slower) / (1 + reference) - 1
        found.append(
            Change(family, then["predict_median_s"], figure["predict_median_s"], slower, relative)
        )
    return found


def compare_with_last(
    last: dict[str, Any] | None, current: dict[str, Any], environment: dict[str, Any]
) -> tuple[str, bool]:
    """A markdown comparison with the last recorded run, and whether a family regressed."""
    if last is None:
        return "No earlier recorded run.\n", False
    found = changes(last.get("figures", {}), current)
    if not found:
        return f"Last recorded run ({last.get('date', '?')}) not compared: other studies.\n", False
    same = _report.same_machine(last.get("machine", {}), environment["machine"])
    machine_note = "same machine" if same else "**another machine**: not comparable"
    rows = [
        [
            c.family,
            f"{c.before_s:.2f}",
            f"{c.now_s:.2f}",
            _report.describe_change(c.slower),
            "?"
            if c.slower_than_reference is None
            else _report.describe_change(c.slower_than_reference),
        ]
        for c in found
    ]
    headers = [
        "Family",
        "Predict then, s",
        "Predict now, s",
        "Change",
        "Change relative to TorchScript",
    ]
    text = f"Last recorded run: {last.get('date', '?')} ({machine_note}).\n\n"
    text += _report.table(headers, rows)
    text += (
        "\nMore than 25% slower, and so relative to the TorchScript reference measured "
        "beside it, is flagged as a regression.\n"
    )
    return text, same and any(c.regressed for c in found)


def section(
    args: argparse.Namespace,
    results: Sequence[FamilyResult],
    environment: dict[str, Any],
    comparison: str,
) -> str:
    lines = [
        f"## Inference: seconds per study for each model family ({environment['device']})",
        "",
        f"Recorded {environment['date']} with `{environment['command']}`.",
        "",
        f"Device `{environment['device']}`, {environment['threads']} torch thread(s). Each "
        "shipped model is loaded through the `ModelRegistry`, the synthetic study is read "
        "with the node's loaders (`dcmread` + `load_volume` / `load_image_set`, as the worker "
        f"does), one warm-up prediction runs, then {args.repeats} timed ones. Load and results "
        f"are medians of {args.repeats}. Network = the model's forward calls inside predict "
        "(no Grad-CAM); predict also holds candidate search / preprocessing, post-processing "
        "and the Grad-CAM maps. Peak RSS: this process while the family ran (VmHWM reset "
        "before each family; it includes torch itself).",
        "",
        study_table(results),
        "Reference, measured in the same run on the same study: the same network exported to "
        "TorchScript (scripted, else traced on the study's inputs), saved with a `format: "
        "torchscript` manifest and loaded through the registry as a site model. Native and "
        "TorchScript predictions alternate. A TorchScript network has no Python hooks, so the "
        "mammography and fundus models make no Grad-CAM maps with it: compare the network "
        'columns for like with like (maps = Grad-CAM explanation maps). "Output changed between '
        'runs": the same study gave other findings or scores on a later prediction (warm-up '
        "included), i.e. a prediction changed the model's state.",
        "",
        reference_table(results),
        *_report.conditions(environment, args.nice, comparison),
    ]
    return "\n".join(lines)


# --- main ---


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed predictions per model")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda when usable)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated, of {', '.join(FAMILIES)} (default: all)",
    )
    parser.add_argument("--slices", type=int, default=120, help="slices of the synthetic CT")
    parser.add_argument("--rows", type=int, default=512, help="rows (= columns) of the CT")
    parser.add_argument("--seed", type=int, default=11, help="seed of every synthetic study")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.device = args.device or default_device()
    args.families = parse_families(args.families)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def parse_families(text: str) -> tuple[str, ...]:
    """``"lung_ct,fundus"`` -> ``("lung_ct", "fundus")``, checked against :data:`FAMILIES`."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown or not names:
        raise SystemExit(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    return names


def section_key(device: str) -> str:
    """``inference`` on the CPU, ``inference-cuda`` on a GPU: each keeps its own figures."""
    return KEY if not is_cuda(device) else f"{KEY}-cuda"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    environment: dict[str, Any] = {
        "date": _report.utc_now_text(),
        "command": command_line("bench.inference", argv),
        "machine": _report.machine_info(),
        "versions": _report.versions(
            ["cad-node", "torch", "monai", "highdicom", "numpy"], dcmtk=False
        ),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "load_before": _report.load_average(),
        "notes": _report.notes(args.note),
    }
    with benchmark_session("cad-node-bench-inference-", nice=args.nice, keep=args.keep) as scratch:
        results = []
        for family in args.families:
            progress(f"{family}: writing the synthetic study ...")
            study = write_study(family, scratch / "studies", args)
            try:
                results.append(measure_family(study, args, scratch / "site-models"))
            except CadNodeError as exc:  # a model that does not load, a study it refuses
                raise SystemExit(f"{family}: {exc}") from exc
    environment["load_after"] = _report.load_average()
    current = figures(results)
    key = section_key(args.device)
    last = _report.load_last(key)
    comparison, regressed = compare_with_last(last, current, environment)
    entry = {k: environment[k] for k in ("date", "command", "machine", "versions", "device")}
    return _report.publish(
        key,
        section(args, results, environment, comparison),
        {**entry, "repeats": args.repeats, "figures": current},
        record=not args.no_record,
        regression=SLOWER if regressed else None,
        fail_on_regression=args.fail_on_regression,
    )


if __name__ == "__main__":
    run_main(main)

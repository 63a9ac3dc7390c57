"""Subcommands of ``cad-node`` for the models: synth, train, evaluate, models.

``synth ct|mammo|fundus`` writes synthetic studies with ground truth; ``train
lung|mammo|fundus`` trains a family's network on them; ``evaluate MODEL`` runs
the evaluator of the model's family (its manifest's ``family``) on held-out
studies and writes a report; ``models`` lists what the registry holds and
whether each model's files still match their sha256; ``models add PATH --name NAME
[--domain FILE]`` installs a site's MONAI bundle or nnU-Net v2 folder and ``models remove
NAME`` takes it out; ``models show NAME`` prints one model's manifest (its validated domain,
OOD score and calibration included); ``models calibrate NAME --data DIR`` fits a site
model's OOD score on the site's own cases.

Family modules are imported only when their command runs. ``synth``, ``train`` and
``evaluate`` are the lab's: without the ``lab`` extra they stop with one line naming it
(:mod:`cad_node.lab`).
"""

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeAlias

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.errors import CadNodeError, ModelError, WeightsIntegrityError
from cad_node.lab import lab_command
from cad_node.models.base import CadModel
from cad_node.models.manifest import Manifest, Task, verified_weights

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

PLANAR_FAMILIES = {"mammo": "mammography", "fundus": "fundus"}
"""Command word -> manifest ``family`` for the planar families."""

FAMILY_ALIASES = {"lung": "lung_ct", **PLANAR_FAMILIES}
"""``evaluate lung`` (and mammo, fundus): the shipped model of that family."""

SHORT_SHA = 12
"""Hex digits of the sha256 that ``models`` prints (enough to tell weights apart)."""
SHOWN_LABELS = 6
"""Labels ``models`` prints of a site model; more are counted."""


@dataclass(frozen=True, slots=True)
class Evaluator:
    """Where a family's evaluation lives and the line that sums its result up."""

    module: str
    function: str
    headline: Callable[[Any], str]


EVALUATORS: dict[str, Evaluator] = {
    "lung_ct": Evaluator(
        "cad_node.evaluation.lung",
        "evaluate_lung",
        lambda r: f"CPM {r.froc.cpm:.3f} on {r.scans} scans",
    ),
    "mammography": Evaluator(
        "cad_node.evaluation.mammo",
        "evaluate_mammo",
        lambda r: f"breast AUC {r.roc.auc:.3f} on {r.studies} studies",
    ),
    "fundus": Evaluator(
        "cad_node.evaluation.fundus",
        "evaluate_fundus",
        lambda r: f"quadratic kappa {r.kappa:.3f} on {len(r.eyes)} eyes",
    ),
}
"""Manifest ``family`` -> its evaluator ``(model, data_dir, report_dir) -> result``."""


# --- synth -------------------------------------------------------------------------------


def _synth_ct(args: argparse.Namespace) -> int:
    from cad_node.synth.dataset import write_dataset

    folders = write_dataset(
        args.out,
        args.count,
        args.seed,
        rows=args.rows,
        slices=args.slices,
        slice_thickness_mm=args.slice_thickness,
        images_in_acquisition=args.images_in_acquisition,
    )
    print(f"wrote {len(folders)} synthetic CT series under {args.out}")
    return 0


def _synth_planar(args: argparse.Namespace) -> int:
    """``synth mammo|fundus``: ``cad_node.synth.<kind>.write_dataset(out, count, seed)``."""
    module = importlib.import_module(f"cad_node.synth.{args.synth_kind}")
    folders: list[Path] = module.write_dataset(args.out, args.count, args.seed)
    print(f"wrote {len(folders)} synthetic {args.synth_kind} studies under {args.out}")
    return 0


# --- train -------------------------------------------------------------------------------


def _train_lung(args: argparse.Namespace) -> int:
    from cad_node.models.lung.train import TrainConfig, refit, train

    percentile = {} if args.ood_percentile is None else {"ood_percentile": args.ood_percentile}
    config = TrainConfig(
        epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        batch_size=args.batch_size,
        width=args.width,
        patience=args.patience,
        max_minutes=args.max_minutes,
        seed=args.seed,
        threads=args.threads,
        validation_data=args.validation_data,
        **percentile,
    )
    manifest = (refit if args.refit_only else train)(args.data, args.out, config)
    _print_trained(args.out, manifest)
    return 0


TRAIN_OPTIONS = ("epochs", "patience", "max_minutes", "seed", "threads", "batch_size")
"""TrainConfig fields every planar family has; an option left out keeps the family default."""

OPTIONAL_TRAIN_OPTIONS = ("samples_per_epoch", "ood_percentile", "validation_data")
"""TrainConfig fields some families have; asking one of the others for it is an error."""


def _train_config(config_class: type[Any], args: argparse.Namespace) -> Any:
    """The family's TrainConfig from the options given on the command line."""
    given = {
        name: getattr(args, name)
        for name in TRAIN_OPTIONS + OPTIONAL_TRAIN_OPTIONS
        if getattr(args, name) is not None
    }
    known = {f.name for f in fields(config_class)}
    for name in given.keys() - known:
        option = "--" + name.replace("_", "-")
        raise CadNodeError(f"`train {args.train_kind}` has no {option} option")
    return config_class(**given)


def _train_planar(args: argparse.Namespace) -> int:
    """``train mammo|fundus``: ``cad_node.models.<kind>.train.train(data, out, TrainConfig)``."""
    module = importlib.import_module(f"cad_node.models.{args.train_kind}.train")
    config = _train_config(module.TrainConfig, args)
    fit = module.refit if args.refit_only else module.train
    manifest = fit(args.data, args.out, config)
    _print_trained(args.out, manifest)
    return 0


def _print_trained(out: Path, manifest: Any) -> None:
    print(f"wrote {out}/{manifest.weights_file} sha256={manifest.sha256}")
    print(f"operating threshold {manifest.operating_threshold}")
    if manifest.ood:
        print(f"OOD threshold {manifest.ood['threshold']} ({manifest.ood['file']})")
    if manifest.calibration:
        print(f"temperature {manifest.calibration['temperature']}")


# --- evaluate ----------------------------------------------------------------------------


def _load_model(name_or_dir: str, device: str | None) -> CadModel:
    """A model folder (when ``name_or_dir`` is a directory) or a registry model, loaded."""
    from cad_node.models.registry import ModelRegistry, default_device, load_folder

    path = Path(name_or_dir)
    if path.is_dir():
        return load_folder(path, device or default_device())
    return ModelRegistry(device=device).get(name_or_dir)


def _shipped_model_of(family: str) -> str:
    """The name of the one shipped model of ``family`` (``evaluate lung`` and its kin)."""
    from cad_node.models.registry import ModelRegistry

    names = [n for n, e in ModelRegistry().entries().items() if e.manifest.family == family]
    if len(names) != 1:
        raise ModelError(f"{len(names)} shipped models of family {family!r}: name one with --model")
    return names[0]


def _model_to_evaluate(args: argparse.Namespace) -> str:
    family = FAMILY_ALIASES.get(args.target)
    if family is None:
        if args.model is not None:
            raise ModelError("--model goes with `evaluate lung|mammo|fundus`; name the model once")
        return str(args.target)
    return str(args.model) if args.model is not None else _shipped_model_of(family)


def _evaluate(args: argparse.Namespace) -> int:
    """Load the model, pick its family's evaluator, write the report."""
    model = _load_model(_model_to_evaluate(args), args.device)
    family = model.identity.family
    expected = FAMILY_ALIASES.get(args.target)
    if expected is not None and family != expected:
        raise ModelError(f"model {model.identity.name} is a {family} model, not {expected}")
    evaluator = EVALUATORS.get(family)
    if evaluator is None:
        raise ModelError(f"model {model.identity.name}: no evaluator for family {family!r}")
    evaluate = getattr(importlib.import_module(evaluator.module), evaluator.function)
    try:
        result = evaluate(model, args.data, args.report)
    except ValueError as exc:  # the evaluators' word for data they cannot use
        raise CadNodeError(f"cannot evaluate on {args.data}: {exc}") from exc
    print(f"{model.identity.name}: {evaluator.headline(result)}; report in {args.report}")
    return 0


# --- models ------------------------------------------------------------------------------


def _weights_state(folder: Path, manifest: Manifest) -> tuple[str, str | None]:
    """OK when the files match the manifest's sha256, else TAMPERED or MISSING, and why.

    A shipped model's weights file is checked; a site model's every file (configs and
    scripts are code).
    """
    if manifest.is_site_model:
        from cad_node.models.site.folder import check_files, verify_files

        try:
            verify_files(folder, manifest)
        except WeightsIntegrityError as exc:
            state = check_files(folder, manifest).state
            return ("TAMPERED" if state == "OK" else state), str(exc)
        return "OK", None
    try:
        verified_weights(folder, manifest)
    except WeightsIntegrityError as exc:
        missing = not (folder / manifest.weights_file).is_file()
        return ("MISSING" if missing else "TAMPERED"), str(exc)
    return "OK", None


def _labels_column(manifest: Manifest) -> str:
    """``1:spleen,2:liver``: a site model's output values and labels (the first few)."""
    names = [f"{value}:{entry.get('label', '?')}" for value, entry in manifest.labels.items()]
    if len(names) > SHOWN_LABELS:
        return ",".join(names[:SHOWN_LABELS]) + f",...({len(names)})"
    return ",".join(names) or "-"


def _models_dirs(args: argparse.Namespace) -> list[Path]:
    """The configured site models folder, then each ``--model-dir``."""
    from cad_node.config import load_settings

    return [load_settings(args.config).resolved_models_dir, *args.model_dir]


def _list_models(args: argparse.Namespace) -> int:
    """One line per model; exit status 1 when any model's files fail their sha256."""
    from cad_node.models.registry import ModelRegistry

    registry = ModelRegistry(extra_dirs=_models_dirs(args), device=args.device)
    refused = []
    for name, entry in sorted(registry.entries().items()):
        m = entry.manifest
        state, why = _weights_state(entry.folder, m)
        if why is not None:
            refused.append(why)
        print(
            f"{name}\tversion={m.version}\tfamily={m.family}\tmodality={m.modality}"
            f"\tformat={m.format}\tsha256={m.sha256[:SHORT_SHA]}\tdevice={registry.device}"
            f"\tweights={state}\tcard={m.model_card or '-'}\ttask={m.task or '-'}"
            f"\tlabels={_labels_column(m)}\t{_domain_lines(m)[0]}\t{_ood_line(m)}"
            f"\t{m.clinical_use}"
        )
    for why in refused:
        print(f"error: {why}", file=sys.stderr)
    if refused:
        print(
            f"error: {len(refused)} model(s) would be refused: files fail sha256", file=sys.stderr
        )
    return 1 if refused else 0


def _add_model(args: argparse.Namespace) -> int:
    from cad_node.config import load_settings
    from cad_node.models.site.install import add_model, read_domain

    models_dir = load_settings(args.config).resolved_models_dir
    task = None if args.task is None else Task(args.task)
    domain = None if args.domain is None else read_domain(args.domain)
    m = add_model(args.path, args.name, models_dir, args.labels, task, domain=domain)
    print(
        f"added {m.name}: {m.format}, {m.task}, labels {_labels_column(m)}, "
        f"{len(m.files)} files hashed, in {models_dir / m.name}"
    )
    for line in _domain_lines(m):
        print(line)
    print(f"a routing rule runs it with `model: {m.name}`; a running node picks it up")
    return 0


def _remove_model(args: argparse.Namespace) -> int:
    from cad_node.config import load_settings
    from cad_node.models.site.install import remove_model

    folder = remove_model(args.name, load_settings(args.config).resolved_models_dir)
    print(f"removed {args.name} ({folder}); jobs of rules naming it now fail")
    return 0


def _domain_lines(manifest: Manifest) -> list[str]:
    """The validated domain in words: its description, then each declared constraint."""
    domain = manifest.domain()
    if domain is None:
        return ["validated domain: not declared - every input accepted"]
    lines = [f"validated domain: {domain.description}"]
    for key, value in domain.to_mapping().items():
        if key != "description":
            shown = getattr(domain, key).describe() if isinstance(value, dict) else value
            lines.append(f"  {key}: {shown if isinstance(shown, str) else ', '.join(shown)}")
    return lines


def _ood_line(manifest: Manifest) -> str:
    """Whether an OOD score is fitted: its method and threshold, or none."""
    entry = manifest.ood
    if not entry:
        return "OOD score: not fitted - no input is scored"
    line = f"OOD score: {entry.get('method', '?')}, threshold {entry.get('threshold', '?')}"
    if "percentile" in entry:
        line += f" (percentile {entry['percentile']})"
    if "false_abstention_rate" in entry:
        line += f", false abstention rate {entry['false_abstention_rate']}"
    return line


def _calibration_line(manifest: Manifest) -> str:
    entry = manifest.calibration
    if not entry:
        return "calibration: none - probabilities as the model gives them"
    shown = ", ".join(
        f"{key} {value}" for key, value in entry.items() if isinstance(value, str | int | float)
    )
    return f"calibration: {shown}"


def _show_model(args: argparse.Namespace) -> int:
    """``models show NAME``: one model's manifest in words; status 1 when its files fail."""
    from cad_node.models.registry import ModelRegistry

    entry = (
        ModelRegistry(extra_dirs=_models_dirs(args), device=args.device).entries().get(args.name)
    )
    if entry is None:
        raise ModelError(f"no model named {args.name}")
    m = entry.manifest
    state, why = _weights_state(entry.folder, m)
    print(f"{m.name} {m.version} ({m.family}, {m.format}) in {entry.folder}")
    print(f"modality: {m.modality}; task: {m.task or '-'}; input: {m.input_kind}")
    print(f"labels: {_labels_column(m)}")
    print(f"files: {state} (sha256 {m.sha256[:SHORT_SHA]} of {m.weights_file})")
    print(f"intended use: {m.intended_use}")
    print(f"model card: {m.model_card or '-'}")
    for line in (*_domain_lines(m), _ood_line(m), _calibration_line(m)):
        print(line)
    print(m.clinical_use)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
    return 0 if why is None else 1


def _calibrate_model(args: argparse.Namespace) -> int:
    from cad_node.config import load_settings
    from cad_node.models.registry import default_device
    from cad_node.models.site.calibrate import calibrate_model
    from cad_node.models.site.ood import DEFAULT_PERCENTILE

    models_dir = load_settings(args.config).resolved_models_dir
    device = args.device or default_device()
    percentile = DEFAULT_PERCENTILE if args.percentile is None else args.percentile
    done = calibrate_model(args.name, models_dir, args.data, percentile, device=device)
    for skipped in done.skipped:
        print(f"skipped {skipped}", file=sys.stderr)
    fit = done.calibration
    print(
        f"calibrated {args.name} on {len(done.cases)} cases: {_ood_line(done.manifest)}; "
        f"leave-one-out scores {fit.leave_one_out.min():.2f} to {fit.leave_one_out.max():.2f}"
    )
    print(f"a running node picks it up: inputs scoring over {fit.threshold:.4g} are not assessed")
    return 0


def _models(args: argparse.Namespace) -> int:
    """``models``: list; ``models add``, ``models remove``: change the site models; ``models
    show``: one model; ``models calibrate``: a site model's OOD score."""
    action = {
        "add": _add_model,
        "remove": _remove_model,
        "show": _show_model,
        "calibrate": _calibrate_model,
    }.get(args.models_action, _list_models)
    return action(args)


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report our own errors as one line and exit status 1, without a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CadNodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


# --- parsers -----------------------------------------------------------------------------


def _add_synth(subparsers: Subparsers) -> None:
    synth = subparsers.add_parser("synth", help="write synthetic DICOM data")
    kinds = synth.add_subparsers(dest="synth_kind", required=True)
    ct = kinds.add_parser("ct", help="synthetic chest CT series with nodule ground truth")
    ct.add_argument("--out", type=Path, required=True)
    ct.add_argument("--count", type=int, default=1)
    ct.add_argument("--seed", type=int, default=0)
    ct.add_argument("--rows", type=int, default=None, help="matrix (default: varies 256-512)")
    ct.add_argument("--slices", type=int, default=None)
    ct.add_argument("--slice-thickness", type=float, default=None, help="mm")
    ct.add_argument("--images-in-acquisition", action="store_true")
    ct.set_defaults(func=_guarded(lab_command("synth", _synth_ct)))
    for kind, what in (("mammo", "4-view mammography studies"), ("fundus", "OD/OS fundus exams")):
        planar = kinds.add_parser(kind, help=f"synthetic {what} with truth.json")
        planar.add_argument("--out", type=Path, required=True)
        planar.add_argument("--count", type=int, default=1)
        planar.add_argument("--seed", type=int, default=0)
        planar.set_defaults(func=_guarded(lab_command("synth", _synth_planar)))


def _add_train_lung(kinds: Subparsers) -> None:
    lung = kinds.add_parser("lung", help="train lung_nodule_ct")
    lung.add_argument("--data", type=Path, required=True)
    lung.add_argument("--out", type=Path, required=True)
    lung.add_argument("--epochs", type=int, default=30)
    lung.add_argument("--samples-per-epoch", type=int, default=768)
    lung.add_argument("--batch-size", type=int, default=32)
    lung.add_argument("--width", type=int, default=10)
    lung.add_argument("--patience", type=int, default=5)
    lung.add_argument("--max-minutes", type=float, default=21.0)
    lung.add_argument("--seed", type=int, default=0)
    lung.add_argument("--threads", type=int, default=2)
    _add_refit_options(lung)
    lung.set_defaults(func=_guarded(lab_command("train", _train_lung)))


def _add_train_planar(kinds: Subparsers, kind: str) -> None:
    planar = kinds.add_parser(kind, help=f"train the {PLANAR_FAMILIES[kind]} model")
    planar.add_argument("--data", type=Path, required=True, help=f"studies from `synth {kind}`")
    planar.add_argument("--out", type=Path, required=True, help="writes model.pt + manifest.json")
    planar.add_argument("--epochs", type=int, default=None)
    planar.add_argument("--patience", type=int, default=None, help="epochs without improvement")
    planar.add_argument("--max-minutes", type=float, default=None, help="time cap")
    planar.add_argument("--seed", type=int, default=None)
    planar.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    planar.add_argument("--batch-size", type=int, default=None)
    planar.add_argument(
        "--samples-per-epoch", type=int, default=None, help="where the family has it"
    )
    _add_refit_options(planar)
    planar.set_defaults(func=_guarded(lab_command("train", _train_planar)))


def _add_refit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--refit-only",
        action="store_true",
        help="keep the weights in --out; fit only the OOD score and the calibration",
    )
    parser.add_argument(
        "--ood-percentile", type=float, default=None, help="OOD threshold: validation percentile"
    )
    parser.add_argument(
        "--validation-data",
        type=Path,
        default=None,
        help="more studies never trained on, added to the validation set of the OOD threshold "
        "and the calibration (where the family has it)",
    )


def _add_train(subparsers: Subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model on synthetic data")
    kinds = train.add_subparsers(dest="train_kind", required=True)
    _add_train_lung(kinds)
    for kind in PLANAR_FAMILIES:
        _add_train_planar(kinds, kind)


def _add_evaluate(subparsers: Subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="measure a model on synthetic data and write a report",
        description="MODEL is a model name or folder; its manifest's family picks the "
        "evaluator.  `evaluate lung|mammo|fundus` is the shipped model of that family "
        "(or --model).",
    )
    evaluate.add_argument(
        "target", metavar="MODEL", help="model name or folder, or lung|mammo|fundus"
    )
    evaluate.add_argument("--data", type=Path, required=True, help="held-out synthetic studies")
    evaluate.add_argument("--report", type=Path, required=True, help="report folder")
    evaluate.add_argument(
        "--model", default=None, metavar="NAME_OR_DIR", help="with lung|mammo|fundus"
    )
    evaluate.add_argument("--device", default=None, help="cpu, cuda (default: cuda when present)")
    evaluate.set_defaults(func=_guarded(lab_command("evaluate", _evaluate)))


def _config_option(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help="node YAML config: its models_dir (default: <storage_dir>/models)",
    )


def _add_models(subparsers: Subparsers) -> None:
    models = subparsers.add_parser(
        "models",
        help="list, add and remove models; check their files' sha256",
        description=f"Every model with its files' sha256 check. {NOT_FOR_CLINICAL_USE}.",
    )
    models.add_argument("--model-dir", type=Path, action="append", default=[])
    models.add_argument("--device", default=None)
    _config_option(models)
    models.set_defaults(func=_guarded(_models), models_action=None)
    actions = models.add_subparsers(dest="models_action")
    add = actions.add_parser(
        "add",
        help="check a MONAI bundle or nnU-Net v2 folder and install it (docs/models.md)",
    )
    add.add_argument("path", type=Path, metavar="PATH", help="bundle or nnU-Net v2 folder")
    add.add_argument("--name", required=True, help="the name routing rules give as `model:`")
    add.add_argument(
        "--labels", type=Path, default=None, metavar="LABELS.yaml", help="each output's concept"
    )
    add.add_argument(
        "--task",
        choices=[t.value for t in Task],
        default=None,
        help="where configs/metadata.json does not say it",
    )
    add.add_argument(
        "--domain",
        type=Path,
        default=None,
        metavar="DOMAIN.yaml",
        help="the validated domain (YAML or JSON); without it every input is accepted",
    )
    _config_option(add, argparse.SUPPRESS)  # given before `add`, it is not reset
    remove = actions.add_parser("remove", help="remove a model added with `models add`")
    remove.add_argument("name", metavar="NAME")
    _config_option(remove, argparse.SUPPRESS)
    show = actions.add_parser(
        "show", help="one model: its manifest, validated domain, OOD score and calibration"
    )
    show.add_argument("name", metavar="NAME")
    _config_option(show, argparse.SUPPRESS)
    _add_calibrate(actions)


def _add_calibrate(actions: Subparsers) -> None:
    calibrate = actions.add_parser(
        "calibrate",
        help="fit a site model's OOD score on the site's own cases",
        description="Runs site model NAME on every series (or study, for planar images) "
        "under DIR and fits its out-of-distribution score (a Mahalanobis distance of a "
        "descriptor of the input and the output, docs/models.md); inputs scoring over the "
        "threshold are then not assessed. 4 cases at least; a few dozen give a steadier "
        "threshold.",
    )
    calibrate.add_argument("name", metavar="NAME")
    calibrate.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="folders of DICOM series"
    )
    calibrate.add_argument(
        "--percentile",
        type=float,
        default=None,
        help="the threshold: this percentile of the cases' leave-one-out scores (default 99)",
    )
    _config_option(calibrate, argparse.SUPPRESS)


def add_commands(subparsers: Subparsers) -> None:
    """Add ``synth``, ``train``, ``evaluate`` and ``models``."""
    _add_synth(subparsers)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_models(subparsers)


__all__ = ["EVALUATORS", "add_commands"]

"""Subcommands of ``cad-node`` for the models: synth ct, train lung, evaluate lung, models."""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from cad_node.errors import CadNodeError


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


def _train_lung(args: argparse.Namespace) -> int:
    from cad_node.models.lung.train import TrainConfig, train

    config = TrainConfig(
        epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        batch_size=args.batch_size,
        width=args.width,
        patience=args.patience,
        max_minutes=args.max_minutes,
        seed=args.seed,
        threads=args.threads,
    )
    manifest = train(args.data, args.out, config)
    print(f"wrote {args.out}/{manifest.weights_file} sha256={manifest.sha256}")
    print(f"operating threshold {manifest.operating_threshold}")
    return 0


def _load_model(name_or_dir: str, device: str | None) -> object:
    from cad_node.models.registry import ModelRegistry, default_device, load_folder

    path = Path(name_or_dir)
    if path.is_dir():
        return load_folder(path, device or default_device())
    return ModelRegistry(device=device).get(name_or_dir)


def _evaluate_lung(args: argparse.Namespace) -> int:
    from cad_node.evaluation.lung import DetectingModel, evaluate_lung

    model = _load_model(args.model, args.device)
    if not hasattr(model, "detect"):
        print(f"model {args.model} cannot be evaluated as a lung detector")
        return 2
    detector: DetectingModel = model  # type: ignore[assignment]  # checked with hasattr above
    result = evaluate_lung(detector, args.data, args.report)
    print(f"CPM {result.froc.cpm:.3f} on {result.scans} scans; report in {args.report}/report.md")
    return 0


def _models(args: argparse.Namespace) -> int:
    from cad_node.models.registry import ModelRegistry

    registry = ModelRegistry(extra_dirs=args.model_dir, device=args.device)
    for name, entry in sorted(registry.entries().items()):
        m = entry.manifest
        print(
            f"{name}\tversion={m.version}\tsha256={m.sha256}\tdevice={registry.device}"
            f"\tcard={m.model_card}\t{m.clinical_use}"
        )
    return 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report our own errors as one line and exit status 1, without a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CadNodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _add_synth(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
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
    ct.set_defaults(func=_guarded(_synth_ct))


def _add_train(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    train = subparsers.add_parser("train", help="train a model on synthetic data")
    kinds = train.add_subparsers(dest="train_kind", required=True)
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
    lung.set_defaults(func=_guarded(_train_lung))


def _add_evaluate(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    evaluate = subparsers.add_parser("evaluate", help="measure a model on synthetic data")
    kinds = evaluate.add_subparsers(dest="evaluate_kind", required=True)
    lung = kinds.add_parser("lung", help="FROC / CPM of the lung nodule model")
    lung.add_argument("--data", type=Path, required=True)
    lung.add_argument("--report", type=Path, required=True)
    lung.add_argument("--model", default="lung_nodule_ct", help="model name or folder")
    lung.add_argument("--device", default=None)
    lung.set_defaults(func=_guarded(_evaluate_lung))


def add_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``synth ct``, ``train lung``, ``evaluate lung`` and ``models``."""
    _add_synth(subparsers)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    models = subparsers.add_parser("models", help="list the installed models")
    models.add_argument("--model-dir", type=Path, action="append", default=[])
    models.add_argument("--device", default=None)
    models.set_defaults(func=_guarded(_models))


__all__ = ["add_commands"]

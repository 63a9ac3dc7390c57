"""Train the tiny nnU-Net v2 model the tests run, with nnunetv2's own planner and trainer.

Run outside CI, from the repository root (5 to 15 minutes on 2 CPU cores)::

    .venv/bin/python tests/data/nnunet/train_tiny.py

It writes a synthetic CT-like dataset in nnU-Net's raw format (``Dataset990_CadNodeSynthetic``:
one bright ellipsoid "organ", label 1, on a noisy soft-tissue background, anisotropic
spacing), runs nnunetv2's fingerprint extraction, experiment planning and preprocessing, trains
``3d_fullres`` fold 0 on the CPU with ``nnUNetTrainerNoMirroring`` for 10 epochs of 30 iterations
(no test-time mirroring either: one pass per window keeps the tests short), and copies
the trained-model folder (``dataset.json``, ``plans.json``, ``fold_0/checkpoint_final.pth``
without the optimiser state) next to this script with a ``SHA256SUMS``.

The planner is nnunetv2's ``ExperimentPlanner`` with fewer feature maps (8 to 64 instead of
32 to 320), so the weights stay small; the plans it writes carry the architecture, so the
predictor needs nothing from this script. ``synthetic_case`` is also used by the tests to draw
fresh cases the model has never seen.
"""

import argparse
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID:03d}_CadNodeSynthetic"
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainerNoMirroring"
EPOCHS = 10
PLANS = "nnUNetPlans"
FOLD = 0
TRAINING_CASES = 14
ITERATIONS_PER_EPOCH = 30
VALIDATION_ITERATIONS_PER_EPOCH = 5
SHAPE_ZYX = (32, 48, 48)
HERE = Path(__file__).resolve().parent
MODEL_FOLDER = HERE / DATASET_NAME
DATASET_JSON: dict[str, Any] = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "organ": 1},
    "numTraining": TRAINING_CASES,
    "file_ending": ".nii.gz",
    "name": DATASET_NAME,
    "description": "cad-node test data: a bright ellipsoid organ on noise (synthetic)",
}


def synthetic_case(
    seed: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8], tuple[float, float, float]]:
    """(image[z, y, x] in HU, label[z, y, x], spacing (z, y, x) in mm) of one synthetic case.

    The organ is an ellipsoid of random size and position in mm, so the model learns a
    physical size; the spacing varies around 2.5 x 0.8 x 0.8 mm like a thick-slice CT.
    """
    rng = np.random.default_rng(seed)
    in_plane = float(rng.uniform(0.72, 0.88))
    spacing = (float(rng.uniform(2.2, 2.8)), in_plane, in_plane)
    grid = np.stack(
        np.meshgrid(
            *[np.arange(n) * s for n, s in zip(SHAPE_ZYX, spacing, strict=True)], indexing="ij"
        )
    )
    extent = np.array([n * s for n, s in zip(SHAPE_ZYX, spacing, strict=True)])
    centre = extent * rng.uniform(0.35, 0.65, size=3)
    semi_axes = rng.uniform([16.0, 7.0, 7.0], [24.0, 11.0, 11.0])
    inside = (((grid - centre[:, None, None, None]) / semi_axes[:, None, None, None]) ** 2).sum(
        0
    ) <= 1
    ramp = rng.uniform(-30, 30) * grid[2] / extent[2]
    image = rng.normal(0.0, 25.0, SHAPE_ZYX) + ramp + 130.0 * inside
    return image.astype(np.float32), inside.astype(np.uint8), spacing


def write_nifti(
    array: npt.NDArray[Any], spacing_zyx: tuple[float, float, float], path: Path
) -> None:
    """Write ``array[z, y, x]`` as NIfTI; nnU-Net's SimpleITK reader gives it back as it is.

    NIfTI stores ``(x, y, z)``: SimpleITK reads that into ``(z, y, x)`` arrays, spacing reversed.
    """
    import nibabel as nib

    affine = np.diag([*reversed(spacing_zyx), 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)  # type: ignore[no-untyped-call]  # nibabel's constructor has no hints
    image.to_filename(path)


def write_raw_dataset(raw: Path) -> None:
    """The dataset in nnU-Net's raw layout: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz."""
    import json

    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for index in range(TRAINING_CASES):
        image, label, spacing = synthetic_case(seed=index)
        case = f"synthetic_{index:03d}"
        write_nifti(image, spacing, folder / "imagesTr" / f"{case}_0000.nii.gz")
        write_nifti(label, spacing, folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=2) + "\n")


def plan_and_preprocess() -> None:
    """nnunetv2's own fingerprint, plan (with fewer feature maps) and preprocessing steps."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiment_dataset,
        preprocess,
    )

    class TinyPlanner(ExperimentPlanner):  # type: ignore[misc]  # nnunetv2 has no type hints
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.UNet_base_num_features = 8
            self.UNet_max_features_3d = 64
            self.UNet_max_features_2d = 64

    extract_fingerprints([DATASET_ID], num_processes=2, check_dataset_integrity=True)
    plan_experiment_dataset(DATASET_ID, TinyPlanner)
    preprocess([DATASET_ID], PLANS, configurations=(CONFIGURATION,), num_processes=(2,))


def train() -> Path:
    """Train fold 0 on the CPU with nnunetv2's own trainer; return its output folder."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(
        str(DATASET_ID), CONFIGURATION, FOLD, TRAINER, PLANS, device=torch.device("cpu")
    )
    trainer.num_epochs = EPOCHS
    trainer.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
    trainer.num_val_iterations_per_epoch = VALIDATION_ITERATIONS_PER_EPOCH
    trainer.run_training()
    trainer.perform_actual_validation()
    return Path(trainer.output_folder).parent


def copy_model(trained: Path, target: Path) -> None:
    """Copy what the predictor reads, dropping the optimiser state from the checkpoint."""
    import torch

    if target.exists():
        shutil.rmtree(target)
    (target / f"fold_{FOLD}").mkdir(parents=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copyfile(trained / name, target / name)
    checkpoint = torch.load(
        trained / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu", weights_only=False
    )
    checkpoint.pop("optimizer_state", None)
    checkpoint.pop("grad_scaler_state", None)
    torch.save(checkpoint, target / f"fold_{FOLD}" / "checkpoint_final.pth")
    write_sha256sums(target)


def write_sha256sums(folder: Path) -> None:
    """``SHA256SUMS`` of every file in ``folder`` (``sha256sum -c`` reads it)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}"
        for p in files
    ]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/cad-node-nnunet"),
        help="scratch folder for nnUNet_raw, nnUNet_preprocessed and nnUNet_results (emptied)",
    )
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = str(args.work / variable)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    started = time.monotonic()
    write_raw_dataset(args.work / "nnUNet_raw")
    plan_and_preprocess()
    trained = train()
    copy_model(trained, MODEL_FOLDER)
    print(f"trained in {time.monotonic() - started:.0f} s; model folder {MODEL_FOLDER}")


if __name__ == "__main__":
    main()

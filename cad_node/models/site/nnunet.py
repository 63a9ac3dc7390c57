"""An nnU-Net v2 trained-model folder, run by nnunetv2's own predictor.

The folder is what nnU-Net's trainer writes (``dataset.json``, ``plans.json``,
``fold_N/checkpoint_final.pth``); :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`
builds the network from the plans, ensembles the manifest's folds and does its own
preprocessing (cropping, resampling to the plans' spacing, normalisation), sliding-window
inference with test-time mirroring, and the export back onto the input's grid.

nnU-Net's arrays are SimpleITK's: ``(z, y, x)`` with the spacing in the same, reversed, order.
A series read by SimpleITK's DICOM reader is ``[slice, row, column]``, so the node's volume
goes in as it is, ``voxels[None]`` with ``spacing_mm`` (between slices, rows, columns), and the
label map comes back on the source grid.
"""

import contextlib
import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import LabelConcept, ModelReport, ResultGrid
from cad_node.errors import ModelError
from cad_node.models.manifest import Manifest, Task
from cad_node.models.site.findings import OutputError, segmentation_findings
from cad_node.models.site.labels import default_labels, manifest_labels, nnunet_output_names
from cad_node.models.site.runner import site_report

CHECKPOINT = "checkpoint_final.pth"
MODEL_FILES = ("dataset.json", "plans.json")

_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError)
"""What reading a folder nnunetv2 cannot use raises: missing or unreadable files, JSON that is
not, a checkpoint that is not one or lacks a key, weights that do not fit the plans' network."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """nnunetv2 prints its progress and settings to stdout: keep them out of the node's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class NnUNetRunner:
    """An nnU-Net v2 segmentation model, loaded; ``report`` segments one series volume.

    Raises
    ------
    ModelError
        From the constructor: a file of the folder is missing, or nnunetv2 cannot build the
        network from the plans and load the folds' checkpoints (the message names the folder
        and nnunetv2's reason).
    """

    def __init__(self, folder: Path, manifest: Manifest, device: str) -> None:
        self.folder = folder
        self.manifest = manifest
        self.folds = self._folds()
        self._check_files()
        self._predictor = self._load(device)
        self.labels = self._labels()

    def _folds(self) -> tuple[int, ...]:
        """The manifest's folds; without any, every ``fold_N`` holding a final checkpoint."""
        if self.manifest.folds:
            return self.manifest.folds
        found = (
            p.parent.name.removeprefix("fold_") for p in self.folder.glob(f"fold_*/{CHECKPOINT}")
        )
        return tuple(sorted(int(n) for n in found if n.isdecimal()))

    def _check_files(self) -> None:
        if not self.folds:
            raise ModelError(
                f"model {self.manifest.name}: no fold_N/{CHECKPOINT} in the nnU-Net folder"
            )
        needed = [*MODEL_FILES, *(f"fold_{f}/{CHECKPOINT}" for f in self.folds)]
        for name in needed:
            if not (self.folder / name).is_file():
                raise ModelError(
                    f"model {self.manifest.name}: {name}: missing from the nnU-Net folder"
                )

    def _load(self, device: str) -> Any:
        import torch  # the runner runs in the model's child process: torch and nnunetv2 load there
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        try:
            with _quiet():
                predictor = nnUNetPredictor(
                    device=torch.device(device),
                    perform_everything_on_device=device.startswith("cuda"),
                    allow_tqdm=False,
                )
                predictor.initialize_from_trained_model_folder(
                    str(self.folder), use_folds=self.folds, checkpoint_name=CHECKPOINT
                )
        except _LOAD_ERRORS as exc:
            raise ModelError(
                f"model {self.manifest.name}: {self.folder.name}: nnU-Net cannot load it: {exc}"
            ) from exc
        return predictor

    def _labels(self) -> dict[int, LabelConcept]:
        """The manifest's labels; without any, ``dataset.json``'s names with generic concepts."""
        if self.manifest.labels:
            return manifest_labels(self.manifest)
        dataset = self._predictor.dataset_json
        names = nnunet_output_names(dataset, f"model {self.manifest.name}: dataset.json")
        return default_labels(names, Task.SEGMENTATION)

    def segment(self, volume: ImageVolume) -> npt.NDArray[np.integer]:
        """nnU-Net's label map of ``volume``, ``(k, r, c)`` on its grid.

        Raises
        ------
        ModelError
            nnunetv2 raised (its message), or returned a map not of the volume's shape.
        """
        image = np.ascontiguousarray(volume.voxels[None], dtype=np.float32)
        properties = {"spacing": [float(s) for s in volume.spacing_mm]}
        try:
            with _quiet():
                label_map = self._predictor.predict_single_npy_array(image, properties)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelError(f"model {self.manifest.name}: nnU-Net failed: {exc}") from exc
        if label_map.shape != volume.shape:
            raise ModelError(
                f"model {self.manifest.name}: nnU-Net returned a label map of shape "
                f"{label_map.shape} for a volume of shape {volume.shape}"
            )
        return np.asarray(label_map)

    def report(self, grid: ResultGrid) -> ModelReport:
        """One finding per label nnU-Net segments on the grid's volume.

        Raises
        ------
        ModelError
            The grid has no volume, nnunetv2 failed, or it segmented a label the model's
            labels do not name.
        """
        if grid.volume is None:
            raise ModelError(
                f"model {self.manifest.name}: nnU-Net segments a series volume; the grid has none"
            )
        label_map = self.segment(grid.volume)
        try:
            findings = segmentation_findings(label_map, grid.volume, self.labels)
        except OutputError as exc:
            raise ModelError(f"model {self.manifest.name}: {exc}") from exc
        return site_report(self.manifest, grid, findings)


__all__ = ["NnUNetRunner"]

"""``cad-node models calibrate NAME --data DIR``: a site model's OOD score fitted on the site's
own cases.

The model is run, as the worker runs it (its warm child process), on every case under
``DIR``: each folder's DICOM files, one case per series (a volume model) or per study (a
model of planar image sets).  The descriptors of the cases give the statistics and the
threshold (:mod:`cad_node.models.site.ood`); the statistics file goes into the model folder
and the manifest gains it in ``files`` and ``ood``.  Both are renamed into place, the
statistics first, so a running node's registry reloads the model with its new score.
"""

import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from cad_node.domain.results import ResultGrid, planar_grid, volume_grid
from cad_node.errors import CadNodeError, ModelError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.volume import load_volume
from cad_node.models.base import InputKind
from cad_node.models.manifest import MANIFEST_NAME, Manifest, sha256_of
from cad_node.models.registry import ModelEntry, ModelRegistry
from cad_node.models.site import ood
from cad_node.models.site.process import RunnerFactory, SiteModel
from cad_node.models.site.runner import make_runner
from cad_node.results.build import study_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Case:
    """One calibration input: a series (or a study's planar images) from one folder."""

    folder: Path
    datasets: tuple[Dataset, ...]

    @property
    def name(self) -> str:
        """The folder and the case's UID's last digits (no patient data)."""
        uid = str(self.datasets[0].get("SeriesInstanceUID", ""))
        return f"{self.folder} (series ...{uid[-8:]})"


@dataclass(frozen=True, slots=True)
class Calibrated:
    """What ``calibrate`` did: the new manifest, the fit, and the cases it could not use."""

    manifest: Manifest
    calibration: ood.Calibration
    cases: tuple[str, ...]
    skipped: tuple[str, ...]


def calibrate_model(
    name: str,
    models_dir: Path,
    data_dir: Path,
    percentile: float = ood.DEFAULT_PERCENTILE,
    *,
    device: str = "cpu",
    runner_factory: RunnerFactory = make_runner,
) -> Calibrated:
    """Fit the OOD score of site model ``name`` on the cases under ``data_dir``.

    Raises
    ------
    ModelError
        No such site model, fewer usable cases than :data:`~.ood.MIN_CASES`, a bad
        percentile, or the model cannot be loaded.
    """
    entry = _site_entry(name, models_dir)
    if not 0.0 < percentile <= 100.0:
        raise ModelError(f"--percentile {percentile:g}: must be within (0, 100]")
    per_study = entry.manifest.input_kind == InputKind.IMAGE_SET
    cases = list(find_cases(data_dir, per_study=per_study))
    _check_count(data_dir, len(cases), len(cases))
    labels = ood.label_keys(entry.manifest)
    model = SiteModel(entry.folder, entry.manifest, runner_factory)
    descriptors, used, skipped = [], [], []
    try:
        model.load(device)
        for case in cases:
            try:
                report = model.report(_grid(case, per_study=per_study))
            except (CadNodeError, ValueError) as exc:
                skipped.append(f"{case.name}: {exc}")
                continue
            descriptors.append(ood.describe(report, labels))
            used.append(case.name)
    finally:
        model.close()
    _check_count(data_dir, len(descriptors), len(cases))
    calibration = ood.calibrate(np.array(descriptors), ood.feature_names(labels), percentile)
    manifest = _install(entry, calibration)
    logger.info("model %s calibrated on %d cases", name, len(used))
    return Calibrated(manifest, calibration, tuple(used), tuple(skipped))


def _check_count(data_dir: Path, usable: int, found: int) -> None:
    if usable < ood.MIN_CASES:
        raise ModelError(
            f"{data_dir}: {usable} usable case(s) of {found}; calibration needs "
            f"{ood.MIN_CASES} at least (a few dozen give a steadier threshold)"
        )


def _site_entry(name: str, models_dir: Path) -> ModelEntry:
    entries = ModelRegistry([models_dir], device="cpu").entries()
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(sorted(entries)) or "none"
        raise ModelError(f"no model named {name}; known: {known}")
    if not entry.manifest.is_site_model or entry.folder.resolve().parent != models_dir.resolve():
        raise ModelError(
            f"model {name} is not a site model in {models_dir}: a shipped model's OOD score "
            "is fitted by `cad-node train` (docs/models.md)"
        )
    return entry


# --- the cases --------------------------------------------------------------------------------


def find_cases(data_dir: Path, *, per_study: bool) -> Iterator[Case]:
    """Every folder under ``data_dir`` (itself included) that holds DICOM files directly: one
    case per series in it, or per study where ``per_study``.

    Raises
    ------
    ModelError
        ``data_dir`` is not a folder.
    """
    if not data_dir.is_dir():
        raise ModelError(f"--data {data_dir}: not a folder")
    folders = [data_dir, *sorted(p for p in data_dir.rglob("*") if p.is_dir())]
    for folder in folders:
        keyword = "StudyInstanceUID" if per_study else "SeriesInstanceUID"
        groups: dict[str, list[Dataset]] = defaultdict(list)
        for dataset in _datasets_in(folder):
            groups[str(dataset.get(keyword, ""))].append(dataset)
        for uid in sorted(groups):
            yield Case(folder, tuple(groups[uid]))


def _datasets_in(folder: Path) -> Iterator[Dataset]:
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            dataset = dcmread(path)
        except (InvalidDicomError, OSError, ValueError):
            continue  # not DICOM (a README, truth.json): not a case
        if "PixelData" in dataset or "FloatPixelData" in dataset:
            yield dataset


def _grid(case: Case, *, per_study: bool) -> ResultGrid:
    if per_study:
        return planar_grid(load_image_set(case.datasets))
    volume = load_volume(case.datasets)
    return volume_grid(volume, study_of(case.datasets, volume))


# --- the files --------------------------------------------------------------------------------


def _install(entry: ModelEntry, calibration: ood.Calibration) -> Manifest:
    """Rename the statistics, then the manifest naming them, into the model folder."""
    folder = entry.folder
    statistics = _temporary(folder.parent, ".npz")
    written = _temporary(folder.parent, ".json")
    try:
        calibration.statistics.save(statistics)
        sha256 = sha256_of(statistics)
        manifest = replace(
            entry.manifest,
            files={**entry.manifest.files, ood.OOD_FILE: sha256},
            ood=calibration.manifest_entry(sha256),
        )
        written.write_text(manifest.to_json())
        _fsync(statistics, written)
        os.replace(statistics, folder / ood.OOD_FILE)
        os.replace(written, folder / MANIFEST_NAME)
    finally:
        statistics.unlink(missing_ok=True)
        written.unlink(missing_ok=True)
    return manifest


def _temporary(directory: Path, suffix: str) -> Path:
    """A fresh file beside the model folders (never inside one: it would be an unlisted
    file there), on the same file system for the rename."""
    descriptor, name = tempfile.mkstemp(dir=directory, prefix=".calibrate-", suffix=suffix)
    os.close(descriptor)
    return Path(name)


def _fsync(*paths: Path) -> None:
    for path in paths:
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


__all__ = ["Calibrated", "Case", "calibrate_model", "find_cases"]

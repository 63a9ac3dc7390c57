"""A site model's folder: which kind it is, what it must hold, and the sha256 of every file.

A MONAI bundle holds ``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``) and
``models/model.pt`` (or ``model.ts``), and may hold ``scripts/``; an nnU-Net v2 trained-model
folder holds ``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth`` per fold.
Configs and scripts are code, so every file is hashed, not only the weights.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.models.manifest import MANIFEST_NAME, Manifest, WeightsFormat, sha256_of

BUNDLE_METADATA = "configs/metadata.json"
BUNDLE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
BUNDLE_WEIGHTS = ("models/model.pt", "models/model.ts")
NNUNET_FILES = ("dataset.json", "plans.json")
NNUNET_CHECKPOINT = "checkpoint_final.pth"
SKIPPED_DIRS = frozenset({"__pycache__"})
"""Folders never hashed: Python writes bytecode there when a bundle's scripts are imported."""

_FOLD = re.compile(r"fold_(\d+)")


@dataclass(frozen=True, slots=True)
class SiteFolder:
    """What a site model's folder is and where its parts are (paths relative to it)."""

    format: WeightsFormat
    weights_file: str
    """Bundle: ``models/model.pt`` or ``.ts``; nnU-Net: the first fold's checkpoint."""
    config: str | None = None
    """Bundle: the inference config."""
    folds: tuple[int, ...] = ()
    """nnU-Net: every ``fold_N`` with a ``checkpoint_final.pth``."""


def inspect_folder(folder: Path) -> SiteFolder:
    """The kind of ``folder`` (a MONAI bundle or an nnU-Net v2 folder) and its parts.

    Raises
    ------
    ModelError
        ``folder`` is neither, or lacks a file its kind needs (the message names it).
    """
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a folder")
    if (folder / "configs").is_dir():
        return _bundle(folder)
    if any((folder / name).exists() for name in NNUNET_FILES):
        return _nnunet(folder)
    raise ModelError(
        f"{folder}: neither a MONAI bundle ({BUNDLE_METADATA}, {BUNDLE_CONFIGS[0]}, "
        f"{BUNDLE_WEIGHTS[0]}) nor an nnU-Net v2 folder ({', '.join(NNUNET_FILES)}, "
        f"fold_0/{NNUNET_CHECKPOINT})"
    )


def _first(folder: Path, candidates: tuple[str, ...], what: str) -> str:
    for name in candidates:
        if (folder / name).is_file():
            return name
    raise ModelError(f"{folder}: {' or '.join(candidates)} missing ({what})")


def _bundle(folder: Path) -> SiteFolder:
    _first(folder, (BUNDLE_METADATA,), "the bundle's metadata")
    config = _first(folder, BUNDLE_CONFIGS, "the bundle's inference config")
    weights = _first(folder, BUNDLE_WEIGHTS, "the bundle's weights")
    return SiteFolder(WeightsFormat.MONAI_BUNDLE, weights, config=config)


def _nnunet(folder: Path) -> SiteFolder:
    for name in NNUNET_FILES:
        _first(folder, (name,), "an nnU-Net v2 trained-model folder needs it")
    folds = sorted(
        int(match.group(1))
        for path in folder.iterdir()
        if path.is_dir() and (match := _FOLD.fullmatch(path.name))
    )
    if not folds:
        raise ModelError(f"{folder}: fold_0/{NNUNET_CHECKPOINT} missing (no fold_N folder)")
    for fold in folds:
        _first(folder, (f"fold_{fold}/{NNUNET_CHECKPOINT}",), "each fold's final weights")
    weights = f"fold_{folds[0]}/{NNUNET_CHECKPOINT}"
    return SiteFolder(WeightsFormat.NNUNET_V2, weights, folds=tuple(folds))


# -- hashes -----------------------------------------------------------------------------


def hash_files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (POSIX path relative to it) -> its sha256.

    Skips ``manifest.json`` at the top and ``__pycache__`` folders.
    """
    return {
        path.relative_to(folder).as_posix(): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and _hashed(path.relative_to(folder))
    }


def _hashed(relative: Path) -> bool:
    if relative.as_posix() == MANIFEST_NAME:
        return False
    return not SKIPPED_DIRS.intersection(relative.parts[:-1])


@dataclass(frozen=True, slots=True)
class FileCheck:
    """How a site model's files differ from its manifest's ``files``."""

    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unlisted: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.unlisted)

    @property
    def state(self) -> str:
        """OK, MISSING (a listed file is gone) or TAMPERED (one changed or was added)."""
        return "OK" if self.ok else "MISSING" if self.missing else "TAMPERED"


def check_files(folder: Path, manifest: Manifest) -> FileCheck:
    """Compare the files under ``folder`` with ``manifest.files``."""
    actual = hash_files(folder)
    listed = manifest.files
    return FileCheck(
        changed=tuple(p for p in listed if p in actual and actual[p] != listed[p]),
        missing=tuple(p for p in listed if p not in actual),
        unlisted=tuple(p for p in actual if p not in listed),
    )


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check every file of a site model against its manifest before it is loaded.

    Raises
    ------
    WeightsIntegrityError
        The manifest lists no files, or a file changed, is missing or is not listed (its
        path is named).
    """
    name = manifest.name
    if not manifest.files:
        raise WeightsIntegrityError(f"model {name}: the manifest lists no files to check")
    check = check_files(folder, manifest)
    if check.changed:
        raise WeightsIntegrityError(
            f"model {name}: {check.changed[0]} has changed since it was added "
            "(sha256 differs from the manifest's); refusing to load altered files"
        )
    if check.missing:
        raise WeightsIntegrityError(f"model {name}: {check.missing[0]} is missing")
    if check.unlisted:
        raise WeightsIntegrityError(
            f"model {name}: {check.unlisted[0]} is not in the manifest (added after "
            "`cad-node models add`); refusing to load unlisted files"
        )
    if manifest.files.get(manifest.weights_file) != manifest.sha256:
        raise WeightsIntegrityError(
            f"model {name}: the manifest's sha256 of {manifest.weights_file} disagrees "
            "with its files list"
        )


__all__ = [
    "FileCheck",
    "SiteFolder",
    "check_files",
    "hash_files",
    "inspect_folder",
    "verify_files",
]

"""A site model's folder: its kind, the files it must hold, and the sha256 of every file."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.models.manifest import Manifest, WeightsFormat, sha256_of
from cad_node.models.site.folder import (
    check_files,
    hash_files,
    inspect_folder,
    verify_files,
)

SPLEEN = Path(__file__).parents[1] / "data" / "model-zoo" / "spleen_ct_segmentation"


def _bundle(tmp_path: Path, weights: str = "model.pt") -> Path:
    folder = tmp_path / "spleen"
    shutil.copytree(SPLEEN, folder)
    (folder / "models").mkdir()
    (folder / "models" / weights).write_bytes(b"weights")
    return folder


def _nnunet(tmp_path: Path, folds: tuple[int, ...] = (0, 1)) -> Path:
    folder = tmp_path / "Dataset001_Liver"
    folder.mkdir()
    for name in ("dataset.json", "plans.json"):
        (folder / name).write_text("{}")
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(bytes([fold]))
    return folder


def _manifest(folder: Path, weights_file: str = "models/model.pt") -> Manifest:
    files = hash_files(folder)
    return Manifest(
        name="spleen",
        version="1",
        family="site",
        modality="CT",
        weights_file=weights_file,
        sha256=files[weights_file],
        operating_threshold=0.5,
        intended_use="test",
        format=WeightsFormat.MONAI_BUNDLE,
        files=files,
    )


def test_a_bundle_is_recognised(tmp_path: Path) -> None:
    site = inspect_folder(_bundle(tmp_path))
    assert site.format is WeightsFormat.MONAI_BUNDLE
    assert site.weights_file == "models/model.pt"
    assert site.config == "configs/inference.json"


def test_a_torchscript_bundle_with_a_yaml_config(tmp_path: Path) -> None:
    folder = _bundle(tmp_path, "model.ts")
    (folder / "configs" / "inference.json").rename(folder / "configs" / "inference.yaml")
    site = inspect_folder(folder)
    assert (site.weights_file, site.config) == ("models/model.ts", "configs/inference.yaml")


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("models/model.pt", r"models/model.pt or models/model.ts missing"),
        ("configs/metadata.json", r"configs/metadata.json missing"),
        ("configs/inference.json", r"configs/inference.json or configs/inference.yaml"),
    ],
)
def test_a_bundle_missing_a_file_is_refused_naming_it(
    tmp_path: Path, missing: str, named: str
) -> None:
    folder = _bundle(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(ModelError, match=named):
        inspect_folder(folder)


def test_an_nnunet_folder_is_recognised_with_its_folds(tmp_path: Path) -> None:
    site = inspect_folder(_nnunet(tmp_path, folds=(3, 0, 1)))
    assert site.format is WeightsFormat.NNUNET_V2
    assert site.folds == (0, 1, 3)
    assert site.weights_file == "fold_0/checkpoint_final.pth"


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("plans.json", r"plans.json missing"),
        ("dataset.json", r"dataset.json missing"),
        ("fold_1/checkpoint_final.pth", r"fold_1/checkpoint_final.pth missing"),
    ],
)
def test_an_nnunet_folder_missing_a_file_is_refused(
    tmp_path: Path, remove: str, named: str
) -> None:
    folder = _nnunet(tmp_path)
    (folder / remove).unlink()
    with pytest.raises(ModelError, match=named):
        inspect_folder(folder)


def test_an_nnunet_folder_without_folds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"fold_0/checkpoint_final.pth missing \(no fold_N"):
        inspect_folder(_nnunet(tmp_path, folds=()))


def test_a_folder_of_neither_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"neither a MONAI bundle .* nor an nnU-Net v2 folder"):
        inspect_folder(tmp_path)
    with pytest.raises(ModelError, match="not a folder"):
        inspect_folder(tmp_path / "nothing")


def test_every_file_is_hashed_but_bytecode_and_the_manifest(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / "scripts" / "__pycache__").mkdir(parents=True)
    (folder / "scripts" / "__pycache__" / "net.cpython-312.pyc").write_bytes(b"pyc")
    (folder / "scripts" / "net.py").write_text("X = 1\n")
    (folder / "manifest.json").write_text("{}")
    (folder / "docs" / "manifest.json").write_text("{}")  # not the model's manifest: hashed
    files = hash_files(folder)
    assert files["models/model.pt"] == sha256_of(folder / "models" / "model.pt")
    assert files["scripts/net.py"] == sha256_of(folder / "scripts" / "net.py")
    assert "configs/inference.json" in files
    assert "docs/manifest.json" in files
    assert "manifest.json" not in files
    assert not any("__pycache__" in path for path in files)
    expected = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(files) == expected - {"manifest.json", "scripts/__pycache__/net.cpython-312.pyc"}


def test_unchanged_files_verify(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    manifest = _manifest(folder)
    verify_files(folder, manifest)
    (folder / "scripts" / "__pycache__").mkdir(parents=True)
    (folder / "scripts" / "__pycache__" / "x.pyc").write_bytes(b"written by an import")
    verify_files(folder, manifest)
    assert check_files(folder, manifest).state == "OK"


def test_a_changed_config_is_refused_naming_it(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    manifest = _manifest(folder)
    config = folder / "configs" / "inference.json"
    config.write_text(config.read_text().replace("0.5", "0.4"))
    with pytest.raises(
        WeightsIntegrityError, match=r"model spleen: configs/inference.json has changed"
    ):
        verify_files(folder, manifest)
    assert check_files(folder, manifest).state == "TAMPERED"


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    manifest = _manifest(folder)
    (folder / "LICENSE").unlink()
    with pytest.raises(WeightsIntegrityError, match=r"model spleen: LICENSE is missing"):
        verify_files(folder, manifest)
    assert check_files(folder, manifest).state == "MISSING"


def test_an_unlisted_file_is_refused_naming_it(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    manifest = _manifest(folder)
    (folder / "scripts").mkdir()
    (folder / "scripts" / "__init__.py").write_text("import os\n")
    with pytest.raises(WeightsIntegrityError, match=r"scripts/__init__.py is not in the manifest"):
        verify_files(folder, manifest)
    assert check_files(folder, manifest).unlisted == ("scripts/__init__.py",)


def test_a_manifest_without_files_or_with_another_weights_hash_is_refused(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    manifest = _manifest(folder)
    with pytest.raises(WeightsIntegrityError, match="lists no files"):
        verify_files(folder, replace(manifest, files={}))
    with pytest.raises(WeightsIntegrityError, match=r"sha256 of models/model\.pt disagrees"):
        verify_files(folder, replace(manifest, sha256="1" * 64))

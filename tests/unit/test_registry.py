"""The model registry: manifests, sha256 at load, warm models, refusal of altered weights."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.models.base import CadModel
from cad_node.models.manifest import Manifest, sha256_of
from cad_node.models.registry import FACTORIES, SHIPPED_DIR, ModelRegistry, default_device
from cad_node.models.runtime import default_device as runtime_default_device

SHIPPED = SHIPPED_DIR / "lung_nodule_ct"


def _site_copy(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    shutil.copytree(SHIPPED, site / "lung_nodule_ct")
    return site


def test_shipped_manifest_matches_its_weights() -> None:
    manifest = Manifest.read(SHIPPED)
    assert manifest.name == "lung_nodule_ct"
    assert manifest.clinical_use == NOT_FOR_CLINICAL_USE
    assert NOT_FOR_CLINICAL_USE in manifest.intended_use
    weights = SHIPPED / manifest.weights_file
    assert sha256_of(weights) == manifest.sha256
    assert weights.stat().st_size < 5_000_000
    assert 0.0 < manifest.operating_threshold < 1.0


def test_registry_finds_and_keeps_the_model_warm() -> None:
    registry = ModelRegistry(device="cpu")
    assert "lung_nodule_ct" in registry.entries()
    model = registry.get("lung_nodule_ct")
    assert isinstance(model, CadModel)
    assert model.identity.weights_sha256 == Manifest.read(SHIPPED).sha256
    assert model.modalities == ("CT",)
    assert registry.get("lung_nodule_ct") is model


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    site = _site_copy(tmp_path)
    weights = site / "lung_nodule_ct" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    registry = ModelRegistry(extra_dirs=[site], device="cpu")
    assert registry.entries()["lung_nodule_ct"].folder == site / "lung_nodule_ct"
    with pytest.raises(WeightsIntegrityError, match="refusing to load altered weights"):
        registry.get("lung_nodule_ct")


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    site = _site_copy(tmp_path)
    (site / "lung_nodule_ct" / "model.pt").unlink()
    with pytest.raises(WeightsIntegrityError, match="missing"):
        ModelRegistry(extra_dirs=[site], device="cpu").get("lung_nodule_ct")


def test_unknown_model_and_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model named"):
        ModelRegistry(device="cpu").get("nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the model manifest"):
        ModelRegistry(extra_dirs=[bad], device="cpu").entries()


def _renamed_copy(site: Path, name: str) -> Path:
    folder = site / name
    shutil.copytree(SHIPPED, folder)
    manifest = replace(Manifest.read(folder), name=name)
    (folder / "manifest.json").write_text(manifest.to_json())
    return folder


def test_a_refused_model_does_not_stop_the_others(tmp_path: Path) -> None:
    tampered = _renamed_copy(tmp_path, "lung_tampered") / "model.pt"
    data = tampered.read_bytes()
    tampered.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    _renamed_copy(tmp_path, "lung_site")
    registry = ModelRegistry(extra_dirs=[tmp_path], device="cpu")

    with pytest.raises(WeightsIntegrityError, match=r"model lung_tampered: weights file model.pt"):
        registry.get("lung_tampered")
    assert registry.get("lung_site").identity.name == "lung_site"
    assert registry.get("lung_nodule_ct").identity.name == "lung_nodule_ct"
    with pytest.raises(WeightsIntegrityError):  # still refused: never kept as loaded
        registry.get("lung_tampered")


@pytest.mark.parametrize(
    ("family", "class_path"),
    [
        ("lung_ct", "cad_node.models.lung.detector.LungNoduleModel"),
        ("mammography", "cad_node.models.mammo.model.MammoModel"),
        ("fundus", "cad_node.models.fundus.model.FundusModel"),
    ],
)
def test_each_family_has_a_factory(family: str, class_path: str) -> None:
    manifest = replace(Manifest.read(SHIPPED), family=family)
    model = FACTORIES[family](SHIPPED, manifest)
    assert f"{type(model).__module__}.{type(model).__qualname__}" == class_path
    assert model.identity.family == family


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    folder = _renamed_copy(tmp_path, "lung_other")
    manifest = replace(Manifest.read(folder), family="dermatology")
    (folder / "manifest.json").write_text(manifest.to_json())
    with pytest.raises(ModelError, match="unknown family 'dermatology'"):
        ModelRegistry(extra_dirs=[tmp_path], device="cpu").get("lung_other")


def test_default_device_is_the_runtime_one() -> None:
    assert default_device() == runtime_default_device()
    assert default_device() in {"cpu", "cuda"}


def test_the_registry_sets_torch_threads_when_it_loads_a_model() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        ModelRegistry(device="cpu", threads=1).get("lung_nodule_ct")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

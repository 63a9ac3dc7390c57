"""Weights formats: the lung model as TorchScript and as a MONAI bundle, through the registry.

Each format is made here from the shipped ``lung_nodule_ct`` weights, dropped in a
site folder with its manifest, loaded by :class:`ModelRegistry` and run on a fresh
synthetic CT (seed 9201, never used in training): the findings must be those of
the shipped (native) model.  Altered weights are refused in every format.
"""

import json
import shutil
import socket
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import monai.apps
import monai.bundle
import numpy as np
import pytest
import torch
from torch import nn

from cad_node.domain.findings import ModelResult
from cad_node.domain.imaging import ImageVolume
from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.imaging.volume import load_volume
from cad_node.models.formats import WeightsFormat, is_torchscript, load_network
from cad_node.models.lung.detector import LungNoduleModel
from cad_node.models.lung.network import NoduleNet
from cad_node.models.manifest import MANIFEST_NAME, Manifest, sha256_of
from cad_node.models.registry import SHIPPED_DIR, ModelRegistry
from cad_node.models.runtime import inference, is_cuda
from tests.synthetic import write_ct_series

SHIPPED = SHIPPED_DIR / "lung_nodule_ct"
SHIPPED_MANIFEST = Manifest.read(SHIPPED)
WIDTH = int(SHIPPED_MANIFEST.architecture["width"])
NETWORK_TARGET = "cad_node.models.lung.network.NoduleNet"


def _native_net() -> NoduleNet:
    net = NoduleNet(width=WIDTH)
    net.load_state_dict(torch.load(SHIPPED / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def _save_torchscript(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch deprecates jit authoring
        scripted = torch.jit.script(_native_net())
        torch.jit.save(scripted, str(path))


def _write_manifest(folder: Path, name: str, fmt: WeightsFormat, weights_file: str) -> Manifest:
    manifest = replace(
        SHIPPED_MANIFEST,
        name=name,
        format=fmt,
        weights_file=weights_file,
        sha256=sha256_of(folder / weights_file),
        ood={},  # the formats' test folders hold no OOD statistics
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def _native_folder(root: Path) -> Path:
    folder = root / "lung_native"
    shutil.copytree(SHIPPED, folder)
    _write_manifest(folder, "lung_native", WeightsFormat.NATIVE, "model.pt")
    return folder


def _torchscript_folder(root: Path) -> Path:
    folder = root / "lung_ts"
    _save_torchscript(folder / "model.ts")
    _write_manifest(folder, "lung_ts", WeightsFormat.TORCHSCRIPT, "model.ts")
    return folder


def _bundle_configs(folder: Path, target: str) -> None:
    configs = folder / "configs"
    configs.mkdir(parents=True)
    metadata = {
        "version": "0.1.0",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__,
        "numpy_version": np.__version__,
        "task": "Lung nodule detection on synthetic CT patches (test bundle)",
        "description": "NoduleNet from cad-node; NOT FOR CLINICAL USE",
        "authors": "cad-node tests",
        "copyright": "none",
        "network_data_format": {"inputs": {}, "outputs": {}},
    }
    inference_config = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": target, "width": WIDTH},
        "network": "$@network_def.to(@device)",
    }
    (configs / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (configs / "inference.json").write_text(json.dumps(inference_config, indent=2))


def _bundle_folder(root: Path, weights: str = "model.pt", target: str = NETWORK_TARGET) -> Path:
    """An unzipped MONAI bundle holding the shipped network, with a manifest beside it."""
    folder = root / f"lung_bundle_{Path(weights).suffix[1:]}"
    _bundle_configs(folder, target)
    (folder / "models").mkdir()
    if weights.endswith(".ts"):
        _save_torchscript(folder / "models" / weights)
    else:
        shutil.copyfile(SHIPPED / "model.pt", folder / "models" / weights)
    _write_manifest(folder, folder.name, WeightsFormat.MONAI_BUNDLE, f"models/{weights}")
    return folder


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a model load tried to reach the network")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything opens a connection or calls MONAI's bundle download."""
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    for name in ("download", "load", "load_bundle_config"):
        monkeypatch.setattr(monai.bundle, name, _no_network)
    monkeypatch.setattr(monai.apps, "download_url", _no_network)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> ImageVolume:
    series = write_ct_series(tmp_path_factory.mktemp("ct"), seed=9201, nodule_count=2)
    return load_volume(series.paths)


@pytest.fixture(scope="module")
def native_result(volume: ImageVolume) -> ModelResult:
    model = ModelRegistry(device="cpu").get("lung_nodule_ct")
    assert isinstance(model, LungNoduleModel)
    return model.predict(volume)


def _assert_same_findings(result: ModelResult, native: ModelResult) -> None:
    assert len(native.findings) > 0
    assert len(result.findings) == len(native.findings)
    for found, expected in zip(result.findings, native.findings, strict=True):
        assert found.probability == pytest.approx(expected.probability, abs=1e-4)
        assert found.centre_index == pytest.approx(expected.centre_index, abs=1e-3)
        assert found.diameter_mm == pytest.approx(expected.diameter_mm, abs=1e-3)
        assert found.mask is not None
        assert expected.mask is not None
        assert found.mask.offset == expected.mask.offset
        assert np.array_equal(found.mask.mask, expected.mask.mask)


def _registry_model(site: Path, name: str) -> LungNoduleModel:
    model = ModelRegistry(extra_dirs=[site], device="cpu").get(name)
    assert isinstance(model, LungNoduleModel)
    return model


@pytest.mark.slow
def test_torchscript_model_gives_the_native_findings(
    tmp_path: Path, volume: ImageVolume, native_result: ModelResult
) -> None:
    _torchscript_folder(tmp_path)
    model = _registry_model(tmp_path, "lung_ts")
    assert is_torchscript(model._net)  # type: ignore[arg-type]  # loaded, so not None
    result = model.predict(volume)
    assert result.model.name == "lung_ts"
    _assert_same_findings(result, native_result)


@pytest.mark.slow
@pytest.mark.usefixtures("offline")
def test_monai_bundle_model_gives_the_native_findings(
    tmp_path: Path, volume: ImageVolume, native_result: ModelResult
) -> None:
    _bundle_folder(tmp_path)
    model = _registry_model(tmp_path, "lung_bundle_pt")
    assert isinstance(model._net, NoduleNet)
    assert not model._net.training
    _assert_same_findings(model.predict(volume), native_result)


@pytest.mark.usefixtures("offline")
def test_monai_bundle_with_torchscript_weights_matches_the_native_network(tmp_path: Path) -> None:
    folder = _bundle_folder(tmp_path, weights="model.ts")
    manifest = Manifest.read(folder)
    net = load_network(folder, manifest, "cpu", build=nn.Identity)
    assert is_torchscript(net)
    patches = torch.randn(4, 1, 32, 32, 32, generator=torch.Generator().manual_seed(5))
    scale = torch.zeros(4, 1)
    with inference("cpu"):
        logits, masks = net(patches, scale)
        native_logits, native_masks = _native_net()(patches, scale)
    assert torch.allclose(logits, native_logits, atol=1e-5)
    assert torch.allclose(masks, native_masks, atol=1e-5)


def test_old_manifests_are_native() -> None:
    raw = json.loads((SHIPPED / MANIFEST_NAME).read_text())
    raw.pop("format", None)
    assert Manifest(**raw).format is WeightsFormat.NATIVE


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    folder = _native_folder(tmp_path)
    raw = json.loads((folder / MANIFEST_NAME).read_text())
    (folder / MANIFEST_NAME).write_text(json.dumps({**raw, "format": "onnx"}))
    with pytest.raises(ModelError, match="unknown weights format 'onnx'"):
        Manifest.read(folder)


@pytest.mark.parametrize(
    ("make", "name", "weights_name"),
    [
        (_native_folder, "lung_native", "model.pt"),
        (_torchscript_folder, "lung_ts", "model.ts"),
        (_bundle_folder, "lung_bundle_pt", "model.pt"),
        (lambda root: _bundle_folder(root, weights="model.ts"), "lung_bundle_ts", "model.ts"),
    ],
)
def test_tampered_weights_are_refused_in_every_format(
    tmp_path: Path, make: Any, name: str, weights_name: str
) -> None:
    folder: Path = make(tmp_path)
    registry = ModelRegistry(extra_dirs=[tmp_path], device="cpu")
    assert isinstance(registry.get(name), LungNoduleModel)  # loads before the change
    _tamper(folder / Manifest.read(folder).weights_file)
    with pytest.raises(WeightsIntegrityError, match=rf"{weights_name} has sha256 .* refusing"):
        ModelRegistry(extra_dirs=[tmp_path], device="cpu").get(name)


@pytest.mark.usefixtures("offline")
def test_a_bundle_naming_a_missing_network_class_is_a_clear_error(tmp_path: Path) -> None:
    folder = _bundle_folder(tmp_path, target="cad_node.models.lung.network.NoSuchNet")
    with pytest.raises(ModelError, match="cannot build 'network_def'") as raised:
        ModelRegistry(extra_dirs=[tmp_path], device="cpu").get("lung_bundle_pt")
    assert str(folder) in str(raised.value)
    assert "NoSuchNet" in str(raised.value)


def test_a_folder_without_bundle_metadata_is_not_a_bundle(tmp_path: Path) -> None:
    folder = _bundle_folder(tmp_path)
    (folder / "configs" / "metadata.json").unlink()
    with pytest.raises(ModelError, match=r"not a MONAI bundle: configs/metadata.json is missing"):
        load_network(folder, Manifest.read(folder), "cpu", build=nn.Identity)


def test_native_weights_that_do_not_fit_the_network_are_a_clear_error(tmp_path: Path) -> None:
    folder = _native_folder(tmp_path)
    manifest = Manifest.read(folder)
    with pytest.raises(ModelError, match=r"model.pt does not fit the network"):
        load_network(folder, manifest, "cpu", build=lambda: NoduleNet(width=WIDTH + 2))


def test_torchscript_format_refuses_a_state_dict(tmp_path: Path) -> None:
    folder = tmp_path / "wrong"
    shutil.copytree(SHIPPED, folder)
    manifest = _write_manifest(folder, "wrong", WeightsFormat.TORCHSCRIPT, "model.pt")
    with pytest.raises(ModelError, match="is not a TorchScript archive"):
        load_network(folder, manifest, "cpu", build=nn.Identity)


def test_inference_context_on_cpu_is_plain_inference_mode() -> None:
    assert not is_cuda("cpu")
    assert is_cuda("cuda:1")
    with inference("cpu"):
        assert torch.is_inference_mode_enabled()
        assert not torch.is_autocast_enabled("cuda")
        out = nn.Linear(2, 2)(torch.ones(1, 2))
    assert out.dtype == torch.float32
    assert not out.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inference_context_on_cuda_autocasts_to_float16() -> None:
    with inference("cuda"):
        assert torch.is_autocast_enabled("cuda")
        out = nn.Linear(8, 8).cuda()(torch.ones(2, 8, device="cuda"))
    assert out.dtype == torch.float16

"""``cad-node models add / remove / list`` through the real console script, on a zoo bundle.

The bundle is tests/data/model-zoo/spleen_ct_segmentation copied to a temporary folder with
seeded weights of its own ``network_def`` (tests/bundles.py); the node config names only a
``storage_dir``, so the models go to ``<storage_dir>/models``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cad_node.config import load_settings
from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.models.manifest import Manifest, Task, WeightsFormat
from cad_node.models.registry import ModelRegistry
from cad_node.models.site.folder import hash_files
from tests.bundles import zoo_bundle

CAD_NODE = Path(sys.executable).parent / "cad-node"
SPLEEN = "spleen_ct_segmentation"
NNUNET = Path(__file__).parents[1] / "data" / "nnunet" / "Dataset990_CadNodeSynthetic"

BAD_LABELS = """\
1:
  label: spleen
  code: 78961009
  scheme: SCT
  meaning: Spleen
  category: {code: "123037004", scheme: SCT, meaning: Anatomical structure}
"""


def _cad_node(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(CAD_NODE), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def spleen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zoo_bundle(SPLEEN, tmp_path_factory.mktemp("bundle"), seed=0)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(f"storage_dir: {tmp_path / 'data'}\n")
    return path


def _models_dir(config: Path) -> Path:
    return load_settings(config).resolved_models_dir


def _listing(config: Path) -> tuple[int, dict[str, str], str]:
    listed = _cad_node("models", "--config", config, "--device", "cpu")
    lines = {line.split("\t", 1)[0]: line for line in listed.stdout.splitlines()}
    return listed.returncode, lines, listed.stderr


def test_add_list_tamper_remove_with_a_running_registry(spleen: Path, config: Path) -> None:
    registry = ModelRegistry([_models_dir(config)], device="cpu")  # a running node's
    assert "spleen" not in registry.entries()
    added = _cad_node("models", "add", spleen, "--name", "spleen", "--config", config)
    assert added.returncode == 0, added.stderr
    assert "added spleen: monai_bundle, segmentation, labels 1:spleen" in added.stdout
    folder = _models_dir(config) / "spleen"
    _check_manifest(Manifest.read(folder), spleen, folder)
    assert [p.name for p in folder.parent.iterdir()] == ["spleen"]  # no staging left

    status, lines, _ = _listing(config)
    assert status == 0
    assert "\tweights=OK\t" in lines["spleen"]
    assert "\tformat=monai_bundle\t" in lines["spleen"]
    assert "\ttask=segmentation\tlabels=1:spleen\t" in lines["spleen"]
    assert "lung_nodule_ct" in lines
    _check_found(registry)

    inference = folder / "configs" / "inference.json"
    inference.write_text(inference.read_text() + "\n")  # one byte more: a changed file
    status, lines, err = _listing(config)
    assert status == 1
    assert "\tweights=TAMPERED\t" in lines["spleen"]
    assert "model spleen: configs/inference.json has changed" in err
    assert "\tweights=OK\t" in lines["lung_nodule_ct"]
    with pytest.raises(WeightsIntegrityError, match=r"configs/inference\.json has changed"):
        ModelRegistry([_models_dir(config)], device="cpu").get("spleen")  # files checked at load

    removed = _cad_node("models", "remove", "spleen", "--config", config)
    assert removed.returncode == 0, removed.stderr
    assert not folder.exists()
    status, lines, _ = _listing(config)
    assert (status, "spleen" in lines) == (0, False)
    with pytest.raises(ModelError, match="no model named spleen"):
        registry.get("spleen")


def _check_manifest(manifest: Manifest, source: Path, folder: Path) -> None:
    """DESIGN16 "Manifest written by add" for the spleen bundle without LABELS.yaml."""
    assert (manifest.family, manifest.format, manifest.task) == (
        "site",
        WeightsFormat.MONAI_BUNDLE,
        Task.SEGMENTATION,
    )
    assert manifest.files == hash_files(source) == hash_files(folder)
    assert manifest.sha256 == manifest.files["models/model.pt"]
    assert (manifest.version, manifest.modality, manifest.input_kind) == ("0.5.9", "CT", "volume")
    assert list(manifest.labels) == ["1"]
    assert manifest.labels["1"]["label"] == "spleen"
    assert manifest.labels["1"]["meaning"] == "Tissue"  # generic: no LABELS.yaml given
    assert manifest.timeout_seconds == 600


def _check_found(registry: ModelRegistry) -> None:
    """The model added since the registry was made is found and loads (its warm child)."""
    model = registry.get("spleen")
    try:
        assert (model.identity.name, model.identity.family) == ("spleen", "site")
    finally:
        getattr(model, "close", lambda: None)()


def _refusal(config: Path, *argv: str | Path) -> str:
    refused = _cad_node("models", "add", *argv, "--config", config)
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.startswith("error: ")
    assert "Traceback" not in refused.stderr
    models_dir = _models_dir(config)
    assert not models_dir.exists() or not any(models_dir.iterdir())
    return refused.stderr


def test_add_refuses_missing_weights(tmp_path: Path, config: Path) -> None:
    bundle = zoo_bundle(SPLEEN, tmp_path / "in")
    (bundle / "models" / "model.pt").unlink()
    err = _refusal(config, bundle, "--name", "spleen")
    assert f"{bundle}: models/model.pt or models/model.ts missing" in err


def test_add_refuses_weights_of_another_shape(tmp_path: Path, config: Path) -> None:
    bundle = zoo_bundle(SPLEEN, tmp_path / "in")
    weights = bundle / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    torch.save(state, weights)
    err = _refusal(config, bundle, "--name", "spleen")
    assert "model spleen: models/model.pt: does not fit the network" in err
    assert first in err


def test_add_refuses_a_bundle_whose_task_is_unknown(tmp_path: Path, config: Path) -> None:
    bundle = zoo_bundle(SPLEEN, tmp_path / "in")
    metadata_path = bundle / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["network_data_format"]["outputs"]["pred"].update(type="object", format="dict")
    metadata_path.write_text(json.dumps(metadata))
    err = _refusal(config, bundle, "--name", "spleen")
    assert "configs/metadata.json: network_data_format.outputs.pred" in err
    assert "give --task segmentation|detection|classification" in err


def test_add_refuses_a_bad_labels_file(spleen: Path, tmp_path: Path, config: Path) -> None:
    labels = tmp_path / "LABELS.yaml"
    labels.write_text(BAD_LABELS)
    err = _refusal(config, spleen, "--name", "spleen", "--labels", labels)
    assert f"error: {labels}: entry 1: code must be a non-empty string" in err


def test_add_refuses_an_unknown_task_word(spleen: Path, config: Path) -> None:
    refused = _cad_node("models", "add", spleen, "--name", "x", "--task", "regression")
    assert refused.returncode == 2
    assert "invalid choice: 'regression'" in refused.stderr


def test_remove_refuses_a_shipped_model(config: Path) -> None:
    refused = _cad_node("models", "remove", "lung_nodule_ct", "--config", config)
    assert refused.returncode == 1
    assert "models shipped with cad-node cannot be removed" in refused.stderr


def test_add_an_nnunet_folder(tmp_path: Path, config: Path) -> None:
    folder = tmp_path / "in" / NNUNET.name
    shutil.copytree(NNUNET, folder)
    wrong = _cad_node(
        "models", "add", folder, "--name", "organ", "--task", "detection", "--config", config
    )
    assert (wrong.returncode, wrong.stderr) == (
        1,
        "error: --task detection: an nnU-Net v2 model segments\n",
    )

    added = _cad_node("models", "add", folder, "--name", "organ", "--config", config)
    assert added.returncode == 0, added.stderr
    manifest = Manifest.read(_models_dir(config) / "organ")
    assert (manifest.format, manifest.task, manifest.folds) == (
        WeightsFormat.NNUNET_V2,
        Task.SEGMENTATION,
        (0,),
    )
    assert (manifest.modality, manifest.input_kind, manifest.version) == ("CT", "volume", "1")
    assert manifest.weights_file == "fold_0/checkpoint_final.pth"
    assert manifest.files == hash_files(folder)
    assert [(v, e["label"]) for v, e in manifest.labels.items()] == [("1", "organ")]
    status, lines, _ = _listing(config)
    assert status == 0
    assert "\tformat=nnunet_v2\t" in lines["organ"]
    assert "\tweights=OK\t" in lines["organ"]

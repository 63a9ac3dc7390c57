"""``models add`` refusals that need no model run, ``models remove``, and the live registry.

The add that builds a bundle (and its refusals of weights that do not fit) runs the real
console script in tests/integration/test_models_cli.py.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cad_node.config import Settings
from cad_node.errors import ModelError
from cad_node.models.manifest import MANIFEST_NAME, Manifest, Task
from cad_node.models.registry import SHIPPED_DIR, ModelRegistry
from cad_node.models.site.install import add_model, declared_task, remove_model

ZOO = Path(__file__).parents[1] / "data" / "model-zoo"
SHIPPED = SHIPPED_DIR / "lung_nodule_ct"

LIVER_YAML = """\
1:
  label: liver
  code: "10200004"
  scheme: SCT
  meaning: Liver
  category: {code: "123037004", scheme: SCT, meaning: Anatomical structure}
"""


def _unweighted(tmp_path: Path, name: str) -> Path:
    """A zoo bundle with a weights file that no network could load (never reached here)."""
    folder = tmp_path / "in" / name
    shutil.copytree(ZOO / name, folder)
    (folder / "models").mkdir()
    (folder / "models" / "model.pt").write_bytes(b"not weights")
    return folder


def _lung_copy(models_dir: Path, name: str) -> Path:
    folder = models_dir / name
    shutil.copytree(SHIPPED, folder)
    manifest = replace(Manifest.read(folder), name=name)
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def _refused(tmp_path: Path, bundle: Path, name: str, match: str, **options: object) -> None:
    models_dir = tmp_path / "models"
    with pytest.raises(ModelError, match=match):
        add_model(bundle, name, models_dir, **options)  # type: ignore[arg-type]
    assert not models_dir.exists() or not any(models_dir.iterdir())  # nothing left behind


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("bad name", r"--name: 'bad name' is not a model name"),
        ("-x", r"is not a model name"),
        ("lung_nodule_ct", r"a model named lung_nodule_ct exists .*models remove"),
    ],
)
def test_a_bad_or_taken_name_is_refused(tmp_path: Path, name: str, match: str) -> None:
    _refused(tmp_path, _unweighted(tmp_path, "spleen_ct_segmentation"), name, match)


def test_a_name_taken_by_a_site_model_is_refused(tmp_path: Path) -> None:
    _lung_copy(tmp_path / "models", "mine")
    with pytest.raises(ModelError, match=r"a model named mine exists"):
        add_model(_unweighted(tmp_path, "spleen_ct_segmentation"), "mine", tmp_path / "models")


def test_a_detection_bundle_needs_its_task_and_labels(tmp_path: Path) -> None:
    lung = _unweighted(tmp_path, "lung_nodule_ct_detection")
    _refused(
        tmp_path, lung, "nodules", r"configs/metadata.json: .*type 'object', format 'dict'.* --task"
    )
    _refused(
        tmp_path,
        lung,
        "nodules",
        r"names none of the model's outputs.*--labels",
        task=Task.DETECTION,
    )


def test_a_task_against_the_metadata_is_refused(tmp_path: Path) -> None:
    spleen = _unweighted(tmp_path, "spleen_ct_segmentation")
    _refused(
        tmp_path,
        spleen,
        "spleen",
        r"--task classification, but configs/metadata.json says segmentation",
        task=Task.CLASSIFICATION,
    )


def test_labels_that_miss_a_declared_output_are_refused(tmp_path: Path) -> None:
    labels = tmp_path / "LABELS.yaml"
    labels.write_text(LIVER_YAML.replace("1:", "2:"))
    spleen = _unweighted(tmp_path, "spleen_ct_segmentation")
    _refused(
        tmp_path, spleen, "spleen", rf"{labels}: no entry for output 1 \(spleen\)", labels=labels
    )


def test_a_folder_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    spleen = _unweighted(tmp_path, "spleen_ct_segmentation")
    (spleen / "models" / "model.pt").unlink()
    _refused(tmp_path, spleen, "spleen", r"models/model.pt or models/model.ts missing")


def test_the_task_a_bundle_declares() -> None:
    def metadata(name: str) -> dict[str, object]:
        data: dict[str, object] = json.loads((ZOO / name / "configs" / "metadata.json").read_text())
        return data

    assert declared_task(metadata("spleen_ct_segmentation")) is Task.SEGMENTATION
    assert declared_task(metadata("classification_template")) is Task.CLASSIFICATION
    assert declared_task(metadata("breast_density_classification")) is Task.CLASSIFICATION
    assert declared_task(metadata("lung_nodule_ct_detection")) is None


def test_remove_refuses_shipped_and_unknown_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no model named nope; known: .*lung_nodule_ct"):
        remove_model("nope", tmp_path)
    with pytest.raises(ModelError, match=r"models shipped with cad-node cannot be removed"):
        remove_model("lung_nodule_ct", tmp_path)
    assert (SHIPPED / MANIFEST_NAME).is_file()


def test_the_models_dir_defaults_to_the_storage_dir(tmp_path: Path) -> None:
    assert Settings(storage_dir=tmp_path).resolved_models_dir == tmp_path / "models"
    elsewhere = tmp_path / "site-models"
    assert Settings(storage_dir=tmp_path, models_dir=elsewhere).resolved_models_dir == elsewhere


def test_a_live_registry_finds_added_models_and_drops_removed_ones(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    registry = ModelRegistry([models_dir], device="cpu")
    with pytest.raises(ModelError, match="no model named lung_site"):
        registry.get("lung_site")

    _lung_copy(models_dir, "lung_site")  # added while the registry is alive
    model = registry.get("lung_site")
    assert model.identity.name == "lung_site"
    assert registry.get("lung_site") is model  # kept warm

    assert remove_model("lung_site", models_dir) == (models_dir / "lung_site").resolve()
    assert not (models_dir / "lung_site").exists()
    assert list(models_dir.iterdir()) == []  # no staging folder left behind
    with pytest.raises(ModelError, match="no model named lung_site"):
        registry.get("lung_site")
    assert registry.get("lung_nodule_ct").identity.name == "lung_nodule_ct"


def test_a_live_registry_reloads_a_model_whose_manifest_changed(tmp_path: Path) -> None:
    folder = _lung_copy(tmp_path / "models", "lung_site")
    registry = ModelRegistry([tmp_path / "models"], device="cpu")
    before = registry.get("lung_site")
    manifest = replace(Manifest.read(folder), version="2.0.0")
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    after = registry.get("lung_site")
    assert after is not before
    assert after.identity.version == "2.0.0"
    assert registry.get("lung_site") is after

"""LABELS.yaml: parsing, refusals naming the file, entry and reason, manifest form, defaults."""

from dataclasses import replace
from pathlib import Path

import pytest

from cad_node.domain.results import Concept, LabelConcept
from cad_node.errors import ModelError
from cad_node.models.manifest import Manifest, Task
from cad_node.models.site.labels import (
    GENERIC_CONCEPTS,
    bundle_output_names,
    check_declared,
    default_labels,
    labels_for_manifest,
    manifest_labels,
    nnunet_output_names,
    read_labels,
)

SPLEEN_YAML = """\
1:
  label: spleen                  # segment label shown in viewers
  code: "78961009"
  scheme: SCT
  meaning: Spleen
  category: {code: "123037004", scheme: SCT, meaning: Anatomical structure}
2:
  label: nodule
  code: "27925004"
  scheme: SCT
  meaning: Nodule
  category: {code: "49755003", scheme: SCT, meaning: Morphologically abnormal structure}
  threshold: 0.3
"""

ANATOMY = Concept("123037004", "SCT", "Anatomical structure")
SPLEEN = LabelConcept("spleen", Concept("78961009", "SCT", "Spleen"), ANATOMY)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "LABELS.yaml"
    path.write_text(text)
    return path


def _manifest(labels: dict[str, dict[str, object]]) -> Manifest:
    return Manifest(
        name="spleen",
        version="1",
        family="site",
        modality="CT",
        weights_file="models/model.pt",
        sha256="0" * 64,
        operating_threshold=0.5,
        intended_use="test",
        labels=labels,
    )


def test_labels_yaml_is_read_into_concepts(tmp_path: Path) -> None:
    labels = read_labels(_write(tmp_path, SPLEEN_YAML))
    assert list(labels) == [1, 2]
    assert labels[1] == SPLEEN
    assert labels[2].threshold == 0.3
    assert labels[2].category.meaning == "Morphologically abnormal structure"


def test_manifest_form_round_trips(tmp_path: Path) -> None:
    labels = read_labels(_write(tmp_path, SPLEEN_YAML))
    form = labels_for_manifest(labels)
    assert form["1"] == {
        "label": "spleen",
        "code": "78961009",
        "scheme": "SCT",
        "meaning": "Spleen",
        "category": {"code": "123037004", "scheme": "SCT", "meaning": "Anatomical structure"},
    }
    assert form["2"]["threshold"] == 0.3
    assert manifest_labels(_manifest(form)) == labels


def test_a_manifest_without_labels_is_refused() -> None:
    with pytest.raises(ModelError, match=r"model spleen: manifest.json labels: must map"):
        manifest_labels(_manifest({}))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1: spleen\n", r"entry 1: must be a mapping with label, code"),
        ("[1, 2]\n", r"must map each output value"),
        ("-1:\n  label: x\n", r"entry -1: an entry's key is an output value"),
        ("1: {label: [\n", r"invalid YAML"),
    ],
)
def test_bad_labels_yaml_is_refused(tmp_path: Path, text: str, reason: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ModelError, match=reason) as refused:
        read_labels(path)
    assert str(refused.value).startswith(f"{path}:")


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ('  code: "78961009"\n', "", r"entry 1: code missing"),
        ('"78961009"', "78961009", r"entry 1: code must be .*write a code in quotes"),
        ("meaning: Spleen", "meaning: ''", r"entry 1: meaning must be a non-empty"),
        ("  label: spleen ", "  colour: red\n  label: spleen ", r"entry 1: unknown key colour"),
        ("threshold: 0.3", "threshold: 3", r"entry 2: threshold must be .*\[0, 1\], got 3"),
        ("threshold: 0.3", "threshold: yes", r"entry 2: threshold must be a number"),
        ('{code: "123037004", scheme: SCT, ', "{scheme: SCT, ", r"entry 1: category: code missing"),
        (
            "scheme: SCT\n  meaning: Sp",
            f"scheme: {'S' * 17}\n  meaning: Sp",
            "scheme has at most 16",
        ),
    ],
)
def test_a_bad_entry_is_refused_naming_file_entry_and_reason(
    tmp_path: Path, old: str, new: str, reason: str
) -> None:
    assert old in SPLEEN_YAML
    path = _write(tmp_path, SPLEEN_YAML.replace(old, new, 1))
    with pytest.raises(ModelError, match=reason) as refused:
        read_labels(path)
    assert str(refused.value).startswith(f"{path}: entry")


def test_a_missing_labels_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"LABELS.yaml: cannot read"):
        read_labels(tmp_path / "LABELS.yaml")


def test_segmentation_defaults_skip_the_background_and_are_generic() -> None:
    names = bundle_output_names(
        {
            "network_data_format": {
                "outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen"}}}
            }
        }
    )
    assert names == {0: "background", 1: "spleen"}
    labels = default_labels(names, Task.SEGMENTATION)
    assert list(labels) == [1]
    assert labels[1].label == "spleen"
    tissue = Concept("85756007", "SCT", "Tissue")
    assert (
        labels[1].property_type
        == labels[1].category
        == tissue
        == GENERIC_CONCEPTS[Task.SEGMENTATION]
    )


def test_classification_defaults_keep_every_class_index() -> None:
    names = {0: "background", 1: "circle", 2: "triangle", 3: "rectangle"}
    labels = default_labels(names, Task.CLASSIFICATION)
    assert [c.label for c in labels.values()] == ["background", "circle", "triangle", "rectangle"]
    assert labels[0].property_type == Concept("404684003", "SCT", "Finding")


def test_a_bundle_without_channel_def_declares_nothing() -> None:
    assert (
        bundle_output_names({"network_data_format": {"outputs": {"pred": {"type": "object"}}}})
        == {}
    )
    assert bundle_output_names({}) == {}


def test_nnunet_dataset_labels_by_value() -> None:
    dataset = {"labels": {"background": 0, "liver": 1, "tumour": 2}}
    assert nnunet_output_names(dataset, "dataset.json") == {
        0: "background",
        1: "liver",
        2: "tumour",
    }
    with pytest.raises(ModelError, match=r"dataset.json: label 'tumour' is \[1, 2\].*--labels"):
        nnunet_output_names({"labels": {"background": 0, "tumour": [1, 2]}}, "dataset.json")
    with pytest.raises(ModelError, match=r"dataset.json: no \"labels\""):
        nnunet_output_names({}, "dataset.json")


def test_labels_must_cover_what_the_model_declares() -> None:
    declared = {0: "background", 1: "spleen", 2: "liver"}
    with pytest.raises(ModelError, match=r"L.yaml: no entry for output 2 \(liver\)"):
        check_declared({1: SPLEEN}, declared, Task.SEGMENTATION, "L.yaml")
    with pytest.raises(ModelError, match=r"L.yaml: entry 7: the model declares no output 7"):
        check_declared({1: SPLEEN, 2: SPLEEN, 7: SPLEEN}, declared, Task.SEGMENTATION, "L.yaml")
    with pytest.raises(ModelError, match=r"no entry for output 0 \(background\)"):
        check_declared({1: SPLEEN, 2: SPLEEN}, declared, Task.CLASSIFICATION, "L.yaml")
    check_declared(
        {1: SPLEEN, 2: replace(SPLEEN, label="liver")}, declared, Task.SEGMENTATION, "L.yaml"
    )
    check_declared({5: SPLEEN}, {}, Task.DETECTION, "L.yaml")  # declares nothing: any value

"""What a site model's output values mean: LABELS.yaml, its manifest form, and the defaults.

LABELS.yaml maps each output value (a segmentation label, a detection box label, a class
index) to a coded concept::

    1:
      label: spleen                  # segment label shown in viewers
      code: "78961009"               # concept code of the structure or finding
      scheme: SCT
      meaning: Spleen
      category: {code: "123037004", scheme: SCT, meaning: Anatomical structure}
      threshold: 0.5                 # detection only, optional

The codes go into the SEG's Segmented Property Category and Type (PS3.3 C.8.20.2) and the
SR's findings (PS3.16 TID 1500); their lengths are bounded by the DICOM value
representations they end up in (PS3.5 Table 6.2-1).

Without LABELS.yaml the node names the outputs after the model's own declaration (a bundle's
``channel_def``, an nnU-Net ``dataset.json``'s ``labels``) and codes them with a generic concept
(:data:`GENERIC_CONCEPTS`) that claims nothing the model did not say.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cad_node.domain.results import Concept, LabelConcept
from cad_node.errors import ModelError
from cad_node.models.manifest import Manifest, Task

ENTRY_KEYS = ("label", "code", "scheme", "meaning", "category")
"""The keys every LABELS.yaml entry has."""
OPTIONAL_KEYS = ("threshold",)
CATEGORY_KEYS = ("code", "scheme", "meaning")

MAX_LENGTHS = {"label": 64, "code": 64, "scheme": 16, "meaning": 64}
"""Segment Label and Code Meaning are LO (64), Coding Scheme Designator SH (16); a code over
16 characters goes into Long Code Value (64 in practice: highdicom's bound)."""

TISSUE = Concept("85756007", "SCT", "Tissue")
FINDING = Concept("404684003", "SCT", "Finding")

GENERIC_CONCEPTS: dict[Task, Concept] = {
    Task.SEGMENTATION: TISSUE,
    Task.DETECTION: FINDING,
    Task.CLASSIFICATION: FINDING,
}
"""The category and type given to an output no LABELS.yaml codes.

A segment is "Tissue" (SCT 85756007, in CID 7150 Segmentation Property Categories), what 3D
Slicer and highdicom's examples give an uncoded segment: true of any segmented region, so it
never claims an organ or a disease the model's authors did not code. A box or a class is a
"Finding" (SCT 404684003, also in CID 7150) for the same reason. The label (Segment Label, the
class's name) carries the model's own name for the output, e.g. "spleen"; write LABELS.yaml to
code it properly.
"""


def read_labels(path: Path) -> dict[int, LabelConcept]:
    """The entries of the LABELS.yaml file ``path``, by output value.

    Raises
    ------
    ModelError
        The file cannot be read, is not YAML, or an entry is invalid: the message names the
        file, the entry and the reason.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: invalid YAML: {exc}") from exc
    return parse_labels(data, str(path))


def parse_labels(data: object, source: str) -> dict[int, LabelConcept]:
    """``data`` (the mapping of a LABELS.yaml) as label concepts; ``source`` names its origin."""
    if not isinstance(data, dict) or not data:
        raise ModelError(f"{source}: must map each output value (0, 1, ...) to its concept")
    labels = {_value(key, source): _entry(key, entry, source) for key, entry in data.items()}
    return dict(sorted(labels.items()))


def _value(key: object, source: str) -> int:
    if isinstance(key, str) and key.isdecimal():
        return int(key)
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key
    raise ModelError(f"{source}: entry {key!r}: an entry's key is an output value (0, 1, ...)")


def _entry(key: object, entry: object, source: str) -> LabelConcept:
    where = f"{source}: entry {key}"
    if not isinstance(entry, dict):
        raise ModelError(f"{where}: must be a mapping with {', '.join(ENTRY_KEYS)}")
    _check_keys(entry, ENTRY_KEYS, OPTIONAL_KEYS, where)
    try:
        return LabelConcept(
            label=_text(entry, "label", where),
            property_type=_concept(entry, where),
            category=_category(entry.get("category"), where),
            threshold=_threshold(entry.get("threshold"), where),
        )
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}") from exc


def _check_keys(
    entry: dict[Any, Any], required: tuple[str, ...], optional: tuple[str, ...], where: str
) -> None:
    missing = [k for k in required if k not in entry]
    if missing:
        raise ModelError(f"{where}: {', '.join(missing)} missing")
    unknown = [str(k) for k in entry if k not in required + optional]
    if unknown:
        known = ", ".join(required + optional)
        raise ModelError(f"{where}: unknown key {', '.join(unknown)} (known: {known})")


def _text(entry: dict[Any, Any], key: str, where: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        hint = ' (write a code in quotes, e.g. code: "78961009")' if key == "code" else ""
        raise ModelError(f"{where}: {key} must be a non-empty string, got {value!r}{hint}")
    if len(value) > MAX_LENGTHS[key] or "\\" in value:
        raise ModelError(f"{where}: {key} has at most {MAX_LENGTHS[key]} characters, no backslash")
    return value


def _concept(entry: dict[Any, Any], where: str) -> Concept:
    return Concept(
        _text(entry, "code", where), _text(entry, "scheme", where), _text(entry, "meaning", where)
    )


def _category(category: object, where: str) -> Concept:
    where = f"{where}: category"
    if not isinstance(category, dict):
        raise ModelError(f"{where}: must be a mapping with {', '.join(CATEGORY_KEYS)}")
    _check_keys(category, CATEGORY_KEYS, (), where)
    return _concept(category, where)


def _threshold(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ModelError(f"{where}: threshold must be a number within [0, 1], got {value!r}")
    return float(value)


# -- the manifest's form ----------------------------------------------------------------


def labels_for_manifest(labels: Mapping[int, LabelConcept]) -> dict[str, dict[str, Any]]:
    """``labels`` as the manifest's ``labels``: output value (a string) -> LABELS.yaml entry."""
    return {str(value): _entry_dict(concept) for value, concept in sorted(labels.items())}


def _entry_dict(concept: LabelConcept) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "label": concept.label,
        "code": concept.property_type.value,
        "scheme": concept.property_type.scheme,
        "meaning": concept.property_type.meaning,
        "category": {
            "code": concept.category.value,
            "scheme": concept.category.scheme,
            "meaning": concept.category.meaning,
        },
    }
    if concept.threshold is not None:
        entry["threshold"] = concept.threshold
    return entry


def manifest_labels(manifest: Manifest) -> dict[int, LabelConcept]:
    """The label concepts of a site model's manifest, by output value.

    Raises
    ------
    ModelError
        The manifest has no labels, or an entry is invalid.
    """
    return parse_labels(manifest.labels, f"model {manifest.name}: manifest.json labels")


# -- defaults ---------------------------------------------------------------------------


def default_labels(names: Mapping[int, str], task: Task) -> dict[int, LabelConcept]:
    """Generic concepts named after the model's own output names (:data:`GENERIC_CONCEPTS`).

    Segmentation skips the background (value 0); classification keeps every class index.
    """
    concept = GENERIC_CONCEPTS[task]
    kept = {v: n for v, n in names.items() if task is not Task.SEGMENTATION or v != 0}
    return {
        v: LabelConcept(label=n[:64], property_type=concept, category=concept)
        for v, n in kept.items()
    }


def bundle_output_names(metadata: Mapping[str, Any]) -> dict[int, str]:
    """A bundle's ``network_data_format.outputs.pred.channel_def``, by value; {} when absent."""
    pred = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    channels = pred.get("channel_def") if isinstance(pred, dict) else None
    if not isinstance(channels, dict):
        return {}
    return {int(k): str(v) for k, v in channels.items() if str(k).isdecimal()}


def nnunet_output_names(dataset: Mapping[str, Any], source: str) -> dict[int, str]:
    """An nnU-Net v2 ``dataset.json``'s ``labels`` (name -> value), by value.

    Raises
    ------
    ModelError
        Region-based labels (a list of values per name): their output values are not the
        names' values, so the site writes LABELS.yaml.
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict):
        raise ModelError(f'{source}: no "labels" mapping of names to values')
    names: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(
                f"{source}: label {name!r} is {json.dumps(value)}, not one value "
                "(region-based training): give --labels LABELS.yaml"
            )
        names[value] = str(name)
    return names


def check_declared(
    labels: Mapping[int, LabelConcept], declared: Mapping[int, str], task: Task, source: str
) -> None:
    """Refuse LABELS.yaml that misses or invents an output the model declares.

    ``declared`` is the model's own list of outputs (empty: it declares none, nothing to
    check); a segmentation's background (0) needs no entry.

    Raises
    ------
    ModelError
        Naming ``source`` (the LABELS.yaml) and the first value missing or unknown.
    """
    if not declared:
        return
    needed = set(default_labels(declared, task))
    missing = sorted(needed - labels.keys())
    if missing:
        value = missing[0]
        raise ModelError(
            f"{source}: no entry for output {value} ({declared[value]}), which the model declares"
        )
    unknown = sorted(labels.keys() - declared.keys())
    if unknown:
        raise ModelError(
            f"{source}: entry {unknown[0]}: the model declares no output {unknown[0]} "
            f"(it declares {', '.join(map(str, sorted(declared)))})"
        )


__all__ = [
    "GENERIC_CONCEPTS",
    "bundle_output_names",
    "check_declared",
    "default_labels",
    "labels_for_manifest",
    "manifest_labels",
    "nnunet_output_names",
    "parse_labels",
    "read_labels",
]

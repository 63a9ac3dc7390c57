"""``cad-node models add`` and ``remove``: a site model checked and copied in, or taken out.

``add`` refuses anything it cannot run: the folder's kind and files (:mod:`.folder`), the
task, the labels (:mod:`.labels`), and the model itself, built on the CPU by its runner
(the config parses, the network builds, the weights fit). The copy is made in a staging
folder inside ``models_dir`` and renamed into place with its manifest, so a running node's
registry sees the whole model or none of it.
"""

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.results import LabelConcept
from cad_node.domain.validated_domain import ValidatedDomain
from cad_node.errors import ModelError
from cad_node.models.manifest import MANIFEST_NAME, SITE_FAMILY, Manifest, Task, WeightsFormat
from cad_node.models.registry import ModelRegistry
from cad_node.models.site.folder import (
    BUNDLE_CONFIGS,
    BUNDLE_METADATA,
    SKIPPED_DIRS,
    SiteFolder,
    check_files,
    hash_files,
    inspect_folder,
)
from cad_node.models.site.labels import (
    bundle_output_names,
    check_declared,
    default_labels,
    labels_for_manifest,
    nnunet_output_names,
    read_labels,
)
from cad_node.routing.rules import _check_model_name

DEFAULT_TIMEOUT_SECONDS = 600.0
"""A site model's wall time per job (``timeout_seconds`` in its manifest; edit it there)."""

IMAGE_MODALITIES = frozenset({
    "CR", "CT", "DX", "ES", "GM", "IO", "IVOCT", "IVUS", "MG", "MR", "NM", "OCT",
    "OP", "OPT", "OT", "PT", "PX", "RF", "RG", "SM", "US", "XA", "XC",
})  # fmt: skip
"""DICOM Modality defined terms of images (PS3.3 C.7.3.1.1.1) a model may read."""
MODALITY_ALIASES = {"MRI": "MR", "PET": "PT", "MAMMOGRAM": "MG", "MAMMOGRAPHY": "MG"}
"""Words bundles write for a modality; anything else unknown is OT (other)."""

NNUNET_DATASET = "dataset.json"
SITE_INTENDED_USE = "A site's own model, added with `cad-node models add`"
"""``intended_use`` of a model whose metadata says none."""
STAGING_PREFIX = ".staging-"
"""Staging folders in ``models_dir``: a model is copied (or moved out) there, then renamed."""


def add_model(
    path: Path,
    name: str,
    models_dir: Path,
    labels: Path | None = None,
    task: Task | None = None,
    *,
    device: str = "cpu",
    domain: ValidatedDomain | None = None,
) -> Manifest:
    """Check the site model in ``path`` and install it as ``models_dir/NAME``.

    ``labels``: a LABELS.yaml (default: the model's own output names, generic concepts);
    ``task``: needed where the model does not say it; ``device``: where it is test-built;
    ``domain``: what the site validated it on (:func:`read_domain`); None: not declared,
    every input is accepted.

    Raises
    ------
    ModelError
        A bad or taken name, a folder that is not a model, an unknown task, bad labels, or a
        model that does not build or load; the message names the file and the reason.
    """
    _check_name(name, models_dir)
    site = inspect_folder(path)
    description = _description(path, site)
    chosen = _task(site, description, task)
    concepts = _labels(site, description, chosen, labels)
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=models_dir))
    try:
        copy = staging / name
        shutil.copytree(path, copy, ignore=_not_copied(path))
        manifest = _manifest(
            copy, site, name=name, description=description, task=chosen, labels=concepts
        )
        if domain is not None:
            manifest = replace(manifest, validated_domain=domain.to_mapping())
        _build(copy, manifest, device)
        (copy / MANIFEST_NAME).write_text(manifest.to_json())
        _move(copy, models_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def remove_model(name: str, models_dir: Path) -> Path:
    """Remove the site model ``name`` from ``models_dir``; the folder it was in.

    Raises
    ------
    ModelError
        No such model, a model shipped with cad-node, or one that is not a sub-folder of
        ``models_dir``.
    """
    entries = ModelRegistry([models_dir], device="cpu").entries()
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(sorted(entries)) or "none"
        raise ModelError(f"no model named {name}; known: {known}")
    folder = entry.folder.resolve()
    if folder.parent != models_dir.resolve():
        raise ModelError(
            f"model {name} is not a site model in {models_dir} (it is in {entry.folder}): "
            "models shipped with cad-node cannot be removed"
        )
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=models_dir))
    folder.rename(staging / name)  # gone for the registry at once, then deleted
    shutil.rmtree(staging)
    return folder


def read_domain(path: Path) -> ValidatedDomain:
    """The validated domain in the YAML or JSON file ``path`` (``validated_domain``'s form:
    docs/models.md).

    Raises
    ------
    ModelError
        The file cannot be read, is not a mapping, or a key or value is wrong (named).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not YAML or JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: must hold a mapping (description:, modalities:, ...)")
    try:
        return ValidatedDomain.from_mapping(data)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from exc


# -- checks -------------------------------------------------------------------------------


def _check_name(name: str, models_dir: Path) -> None:
    try:
        _check_model_name(name)
    except ValueError as exc:
        raise ModelError(f"--name: {exc}") from None
    entry = ModelRegistry([models_dir], device="cpu").entries().get(name)
    if entry is not None:
        raise ModelError(
            f"a model named {name} exists ({entry.folder}): choose another --name, "
            "or `cad-node models remove` it first"
        )
    if (models_dir / name).exists():
        raise ModelError(f"{models_dir / name} exists: choose another --name")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: must hold a JSON object")
    return data


def _description(path: Path, site: SiteFolder) -> dict[str, Any]:
    """The bundle's metadata.json or the nnU-Net folder's dataset.json."""
    if site.format is WeightsFormat.MONAI_BUNDLE:
        return _read_json(path / BUNDLE_METADATA)
    return _read_json(path / NNUNET_DATASET)


def _pred(metadata: Mapping[str, Any]) -> dict[str, Any]:
    pred = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    return pred if isinstance(pred, dict) else {}


def declared_task(metadata: Mapping[str, Any]) -> Task | None:
    """The task a bundle's ``network_data_format.outputs.pred`` says, or None."""
    pred = _pred(metadata)
    if pred.get("format") == "segmentation":
        return Task.SEGMENTATION
    if pred.get("type") == "probabilities" or pred.get("format") in ("classes", "labels"):
        return Task.CLASSIFICATION
    return None


def _task(site: SiteFolder, description: Mapping[str, Any], given: Task | None) -> Task:
    if site.format is WeightsFormat.NNUNET_V2:
        if given not in (None, Task.SEGMENTATION):
            raise ModelError(f"--task {given}: an nnU-Net v2 model segments")
        return Task.SEGMENTATION
    declared = declared_task(description)
    if declared is not None and given is not None and declared != given:
        raise ModelError(f"--task {given}, but {BUNDLE_METADATA} says {declared}")
    task = given or declared
    if task is None:
        pred = _pred(description)
        raise ModelError(
            f"{BUNDLE_METADATA}: network_data_format.outputs.pred (type "
            f"{pred.get('type')!r}, format {pred.get('format')!r}) does not say the model's "
            "task: give --task segmentation|detection|classification"
        )
    return task


def _labels(
    site: SiteFolder, description: Mapping[str, Any], task: Task, labels: Path | None
) -> dict[int, LabelConcept]:
    """The LABELS.yaml's concepts, checked against the model's own outputs, or the defaults."""
    if site.format is WeightsFormat.NNUNET_V2:
        declared = nnunet_output_names(description, NNUNET_DATASET)
    else:
        declared = bundle_output_names(description)
    if labels is not None:
        concepts = read_labels(labels)
        check_declared(concepts, declared, task, str(labels))
        return concepts
    if not declared:
        source = NNUNET_DATASET if site.format is WeightsFormat.NNUNET_V2 else BUNDLE_METADATA
        raise ModelError(
            f"{source} names none of the model's outputs (network_data_format.outputs.pred."
            "channel_def): give --labels LABELS.yaml saying what each output value is"
        )
    return default_labels(declared, task)


# -- the manifest -------------------------------------------------------------------------


def _manifest(
    copy: Path,
    site: SiteFolder,
    *,
    name: str,
    description: Mapping[str, Any],
    task: Task,
    labels: Mapping[int, LabelConcept],
) -> Manifest:
    files = hash_files(copy)
    bundle = site.format is WeightsFormat.MONAI_BUNDLE
    intended = description.get("intended_use") if bundle else None
    return Manifest(
        name=name,
        version=str(description.get("version") or "1") if bundle else "1",
        family=SITE_FAMILY,
        modality=_modality(description, bundle),
        weights_file=site.weights_file,
        sha256=files[site.weights_file],
        operating_threshold=0.5,
        intended_use=str(intended)
        if intended
        else f"Site model added with `cad-node models add`; {NOT_FOR_CLINICAL_USE}",
        clinical_use=NOT_FOR_CLINICAL_USE,
        format=site.format,
        bundle_config=site.config or BUNDLE_CONFIGS[0],
        task=task,
        labels=labels_for_manifest(labels),
        files=files,
        folds=site.folds,
        input_kind=_input_kind(description) if bundle else "volume",
        timeout_seconds=DEFAULT_TIMEOUT_SECONDS,
    )


def _input_image(metadata: Mapping[str, Any]) -> dict[str, Any]:
    image = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
    return image if isinstance(image, dict) else {}


def _modality(description: Mapping[str, Any], bundle: bool) -> str:
    """The DICOM modality the model reads (bundle: its input's; nnU-Net: its first channel's)."""
    if bundle:
        word = _input_image(description).get("modality")
    else:
        channels = description.get("channel_names") or description.get("modality") or {}
        word = channels.get("0") if isinstance(channels, dict) else None
    code = str(word or "").strip().upper()
    code = MODALITY_ALIASES.get(code, code)
    return code if code in IMAGE_MODALITIES else "OT"


def _input_kind(metadata: Mapping[str, Any]) -> str:
    """ "image_set" for a network of 2D images (its input's spatial_shape has two axes)."""
    shape = _input_image(metadata).get("spatial_shape")
    return "image_set" if isinstance(shape, list) and len(shape) == 2 else "volume"


# -- copy, build, move --------------------------------------------------------------------


def _not_copied(source: Path) -> Any:
    """``copytree``'s ``ignore``: bytecode folders, and a manifest at the top (ours replaces it)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(SKIPPED_DIRS.intersection(names))
        if Path(directory) == source and MANIFEST_NAME in names:
            skipped.add(MANIFEST_NAME)
        return skipped

    return ignore


def _build(copy: Path, manifest: Manifest, device: str) -> None:
    """Build the model's runner once (config, network, weights), and keep the files as hashed."""
    from cad_node.models.site.runner import make_runner

    try:
        make_runner(copy, manifest, device)
    except ModelError:
        raise
    except Exception as exc:  # a bundle is third-party code: whatever it raises is a refusal
        raise ModelError(
            f"model {manifest.name}: cannot be built: {type(exc).__name__}: {exc}"
        ) from exc
    check = check_files(copy, manifest)
    if not check.ok:
        path = (check.changed + check.unlisted + check.missing)[0]
        raise ModelError(
            f"model {manifest.name}: loading it wrote {path} into its own folder; "
            "its files could never be verified"
        )


def _move(copy: Path, target: Path) -> None:
    if target.exists():
        raise ModelError(f"{target} exists: choose another --name")
    copy.rename(target)


__all__ = ["DEFAULT_TIMEOUT_SECONDS", "add_model", "declared_task", "read_domain", "remove_model"]

"""The manifest of a model folder: what the weights are, for what, and their sha256."""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.findings import ModelIdentity
from cad_node.domain.validated_domain import ValidatedDomain
from cad_node.errors import ModelError, WeightsIntegrityError

MANIFEST_NAME = "manifest.json"


class WeightsFormat(StrEnum):
    """How a model folder stores its network (``format`` in ``manifest.json``).

    Re-exported by :mod:`cad_node.models.formats`, which loads each of them.
    """

    NATIVE = "native"
    """The project's own: a ``state_dict`` saved with ``torch.save``; the family builds the net."""
    TORCHSCRIPT = "torchscript"
    """A TorchScript archive (``torch.jit.save``): the network travels with its weights."""
    MONAI_BUNDLE = "monai_bundle"
    """An unzipped MONAI bundle: ``configs/`` + ``models/model.pt`` or ``models/model.ts``."""
    NNUNET_V2 = "nnunet_v2"
    """An nnU-Net v2 trained-model folder: ``dataset.json``, ``plans.json``,
    ``fold_*/checkpoint_final.pth`` (site models only)."""


SITE_FAMILY = "site"
"""The ``family`` of a model a site added (``cad-node models add``): a MONAI bundle run with its
own transforms, inferer and post-processing, or an nnU-Net v2 folder run by nnunetv2."""


class Task(StrEnum):
    """What a site model does, and so which result objects it gets (``task`` in the manifest)."""

    SEGMENTATION = "segmentation"
    DETECTION = "detection"
    CLASSIFICATION = "classification"


@dataclass(frozen=True, slots=True)
class Manifest:
    """``manifest.json`` of a model folder."""

    name: str
    version: str
    family: str
    modality: str
    weights_file: str
    sha256: str
    operating_threshold: float
    intended_use: str
    input_spec: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    model_card: str = ""
    clinical_use: str = NOT_FOR_CLINICAL_USE
    format: WeightsFormat = WeightsFormat.NATIVE
    """How ``weights_file`` is stored; manifests written before formats existed are native."""
    bundle_config: str = "configs/inference.json"
    """MONAI bundle only: the config, relative to the model folder, that defines the network."""
    bundle_network_id: str = "network_def"
    """MONAI bundle only: the id of the network in ``bundle_config``."""
    remote: bool = False
    """The model's code or host is outside the hospital's trust boundary (a vendor model, a
    remote service): the worker de-identifies its input (docs/security.md)."""
    task: Task | None = None
    """Site models: segmentation, detection or classification."""
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Site models: output value (as a string) -> its LABELS.yaml entry (label, code, scheme,
    meaning, category, optional threshold)."""
    files: dict[str, str] = field(default_factory=dict)
    """Site models: every file of the folder but this manifest (POSIX path relative to the
    folder) -> its sha256; configs and scripts are code, so all are checked before loading."""
    folds: tuple[int, ...] = ()
    """nnU-Net v2: the folds whose ``checkpoint_final.pth`` are ensembled."""
    input_kind: str = "volume"
    """Site models: "volume" (one series) or "image_set" (a study's planar images)."""
    timeout_seconds: float = 600.0
    """Site models: the wall time one job's inference may take before the job fails."""
    validated_domain: dict[str, Any] = field(default_factory=dict)
    """What the model was validated on (:class:`ValidatedDomain`'s JSON form); empty: not
    declared, so every input is inside (a site model added without a domain)."""
    ood: dict[str, Any] = field(default_factory=dict)
    """The learned out-of-distribution score: ``method``, ``file`` (its statistics, in the
    folder, hashed like the weights: ``sha256``), ``threshold``, ``percentile`` and the
    measured false abstention rate; empty: the model has none."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """How the reported probabilities were calibrated: ``method`` ("temperature"), its
    parameters, and the expected calibration error before and after; empty: none."""

    def __post_init__(self) -> None:
        try:
            fmt = WeightsFormat(self.format)
        except ValueError:
            known = ", ".join(f.value for f in WeightsFormat)
            raise ValueError(f"unknown weights format {self.format!r} (known: {known})") from None
        object.__setattr__(self, "format", fmt)  # frozen: normalise the JSON string once
        if self.task is not None:
            try:
                object.__setattr__(self, "task", Task(self.task))
            except ValueError:
                known = ", ".join(t.value for t in Task)
                raise ValueError(f"unknown task {self.task!r} (known: {known})") from None
        object.__setattr__(self, "folds", tuple(self.folds))
        if self.timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {self.timeout_seconds}")
        if not isinstance(self.remote, bool):
            raise ValueError(f"remote must be true or false, got {self.remote!r}")
        if self.validated_domain:
            ValidatedDomain.from_mapping(self.validated_domain)  # a bad domain fails on reading

    def domain(self) -> ValidatedDomain | None:
        """The declared validated domain; None when the manifest declares none."""
        if not self.validated_domain:
            return None
        return ValidatedDomain.from_mapping(self.validated_domain)

    @property
    def is_site_model(self) -> bool:
        """Whether a site added it (``cad-node models add``), rather than the project shipped it."""
        return self.family == SITE_FAMILY

    def identity(self) -> ModelIdentity:
        return ModelIdentity(
            name=self.name, version=self.version, weights_sha256=self.sha256, family=self.family
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = folder / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(f"cannot read the model manifest {path}: {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_weights(folder: Path, manifest: Manifest) -> Path:
    """The weights file, after checking its sha256 against the manifest.

    Raises
    ------
    WeightsIntegrityError
        The file is missing or its sha256 differs from the manifest's.
    """
    path = folder / manifest.weights_file
    if not path.is_file():
        raise WeightsIntegrityError(f"model {manifest.name}: weights file {path} is missing")
    actual = sha256_of(path)
    if actual != manifest.sha256:
        raise WeightsIntegrityError(
            f"model {manifest.name}: weights file {path.name} has sha256 {actual}, "
            f"the manifest says {manifest.sha256}; refusing to load altered weights"
        )
    return path

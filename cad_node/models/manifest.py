"""The manifest of a model folder: what the weights are, for what, and their sha256."""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.findings import ModelIdentity
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

    def __post_init__(self) -> None:
        try:
            fmt = WeightsFormat(self.format)
        except ValueError:
            known = ", ".join(f.value for f in WeightsFormat)
            raise ValueError(f"unknown weights format {self.format!r} (known: {known})") from None
        object.__setattr__(self, "format", fmt)  # frozen: normalise the JSON string once
        if not isinstance(self.remote, bool):
            raise ValueError(f"remote must be true or false, got {self.remote!r}")

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

"""The manifest of a model folder: what the weights are, for what, and their sha256."""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.findings import ModelIdentity
from cad_node.errors import ModelError, WeightsIntegrityError

MANIFEST_NAME = "manifest.json"


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

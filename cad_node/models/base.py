"""The interface every model family implements."""

from typing import Protocol, runtime_checkable

from cad_node.domain.findings import ModelIdentity, ModelResult
from cad_node.domain.imaging import ImageVolume


@runtime_checkable
class CadModel(Protocol):
    """A computer-aided detection model that stays loaded (warm) between jobs.

    ``load(device)`` checks the weights against the manifest's sha256 and puts
    the network on ``device`` ("cuda" or "cpu"); ``predict`` runs on one series.
    """

    identity: ModelIdentity
    modalities: tuple[str, ...]

    def load(self, device: str) -> None:
        """Load the weights onto ``device`` and keep them there."""
        ...

    def predict(self, volume: ImageVolume) -> ModelResult:
        """Findings for one series volume."""
        ...

"""The interface every model family implements.

A model reads either one series as a volume (lung CT) or a set of planar
images of one study (the four mammography views, a fundus pair); its
``input_kind`` says which, and the worker hands it the matching input.
"""

from enum import StrEnum
from typing import Protocol, TypeGuard, runtime_checkable

from cad_node.domain.findings import ModelIdentity, ModelResult
from cad_node.domain.image_sets import ImageSet, PlanarResult
from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import ModelReport, ResultGrid


class InputKind(StrEnum):
    """What a model reads."""

    VOLUME = "volume"
    """One series, sorted into a 3D volume (:class:`ImageVolume`)."""
    IMAGE_SET = "image_set"
    """The planar images of one study, from one or more series (:class:`ImageSet`)."""


@runtime_checkable
class CadModel(Protocol):
    """A computer-aided detection model that stays loaded (warm) between jobs.

    ``load(device)`` checks the weights against the manifest's sha256 and puts
    the network on ``device`` ("cuda" or "cpu"); ``predict`` runs on one input.
    """

    identity: ModelIdentity
    modalities: tuple[str, ...]
    input_kind: InputKind

    def load(self, device: str) -> None:
        """Load the weights onto ``device`` and keep them there."""
        ...


class VolumeModel(CadModel, Protocol):
    """A model of one series volume (``input_kind`` VOLUME)."""

    def predict(self, volume: ImageVolume) -> ModelResult:
        """Findings for one series volume."""
        ...


class ImageSetModel(CadModel, Protocol):
    """A model of a study's planar images (``input_kind`` IMAGE_SET)."""

    def predict(self, images: ImageSet) -> PlanarResult:
        """Findings, assessments and explanations for one image set."""
        ...


class ReportingModel(CadModel, Protocol):
    """A model that answers with a :class:`ModelReport` on the grid it is given (site models).

    The worker builds the grid from the series volume (``input_kind`` VOLUME: ``grid.volume``
    holds the voxels and their patient geometry) or from the study's planar images
    (IMAGE_SET), and the model reports findings and classifications on that grid.
    """

    def report(self, grid: ResultGrid) -> ModelReport:
        """Findings and classifications on ``grid``."""
        ...


def reports_directly(model: CadModel) -> TypeGuard[ReportingModel]:
    return callable(getattr(model, "report", None))


def reads_volumes(model: CadModel) -> TypeGuard[VolumeModel]:
    return model.input_kind is InputKind.VOLUME


def reads_image_sets(model: CadModel) -> TypeGuard[ImageSetModel]:
    return model.input_kind is InputKind.IMAGE_SET

"""A ``remote`` model behind de-identification: it sees pseudonyms, the node keeps originals.

The worker asks :func:`behind_deidentification` for the model of a job. For a
model whose manifest says ``remote: true`` it gets a wrapper that hands the
model the job's input under the pseudonym UIDs of the de-identified datasets
(:mod:`cad_node.security.deid`), and maps every UID of the model's result back
before the node builds its SEG, SR and overlays from the original datasets.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset

from cad_node.domain.findings import ModelIdentity, ModelResult
from cad_node.domain.image_sets import ImageSet, PlanarResult
from cad_node.domain.imaging import ImageVolume
from cad_node.models.base import (
    CadModel,
    ImageSetModel,
    InputKind,
    VolumeModel,
    reads_image_sets,
    reads_volumes,
)
from cad_node.models.registry import ModelRegistry
from cad_node.security.deid import (
    DeidentificationError,
    DeidentifiedJob,
    ReadsDeidentifiedDatasets,
    deidentify,
    pseudonymised_image_set,
    pseudonymised_volume,
    reidentified_planar_result,
    reidentified_result,
    write_reidentification_map,
)

logger = logging.getLogger(__name__)

REIDENTIFICATION_DIR = "deid"
"""Under the storage folder: one re-identification map per job of a remote model."""


def is_remote(registry: ModelRegistry, model_name: str) -> bool:
    """Whether the manifest of ``model_name`` marks it as outside the trust boundary."""
    entry = registry.entries().get(model_name)
    return entry is not None and entry.manifest.remote


def behind_deidentification(
    registry: ModelRegistry,
    model: CadModel,
    datasets: Sequence[Dataset],
    storage_dir: Path,
    job_id: int,
) -> CadModel:
    """``model`` itself, or, when it is remote, ``model`` behind de-identification.

    The re-identification map is written (mode 0600) to
    ``storage_dir/deid/job-<id>.json`` before the model sees anything.

    Raises
    ------
    DeidentificationError
        The datasets may not be released (burned-in annotation).
    StorageError
        The map cannot be written.
    """
    if not is_remote(registry, model.identity.name):
        return model
    job = deidentify(datasets)
    path = storage_dir / REIDENTIFICATION_DIR / f"job-{job_id}.json"
    write_reidentification_map(job.reidentification, path)
    logger.info(
        "job %d: %d instances de-identified for remote model %s (%d UIDs pseudonymised)",
        job_id,
        len(job.datasets),
        model.identity.name,
        len(job.reidentification.originals),
    )
    return deidentifying_model(model, job)


def deidentifying_model(model: CadModel, job: DeidentifiedJob) -> CadModel:
    """``model`` wrapped so that it reads the de-identified ``job`` (see module docstring)."""
    if reads_volumes(model):
        return DeidentifyingVolumeModel(model, job)
    if reads_image_sets(model):
        return DeidentifyingImageSetModel(model, job)
    raise DeidentificationError(
        f"model {model.identity.name}: unknown input kind {model.input_kind!r}"
    )


class _Deidentifying:
    """What both wrappers share: the inner model's identity, and the datasets it may read."""

    def __init__(self, model: CadModel, job: DeidentifiedJob) -> None:
        self._model = model
        self._job = job
        self.identity: ModelIdentity = model.identity
        self.modalities: tuple[str, ...] = model.modalities
        self.input_kind: InputKind = model.input_kind

    def load(self, device: str) -> None:
        self._model.load(device)

    def _hand_over_datasets(self) -> None:
        if isinstance(self._model, ReadsDeidentifiedDatasets):
            self._model.receive_datasets(self._job.datasets)


class DeidentifyingVolumeModel(_Deidentifying):
    """A remote volume model: pseudonym UIDs in, original Series Instance UID out."""

    def __init__(self, model: VolumeModel, job: DeidentifiedJob) -> None:
        super().__init__(model, job)
        self._volume_model = model

    def predict(self, volume: ImageVolume) -> ModelResult:
        self._hand_over_datasets()
        result = self._volume_model.predict(pseudonymised_volume(volume, self._job.pseudonyms))
        return reidentified_result(result, self._job.reidentification)


class DeidentifyingImageSetModel(_Deidentifying):
    """A remote image-set model: pseudonym UIDs in, original image references out."""

    def __init__(self, model: ImageSetModel, job: DeidentifiedJob) -> None:
        super().__init__(model, job)
        self._image_set_model = model

    def predict(self, images: ImageSet) -> PlanarResult:
        self._hand_over_datasets()
        result = self._image_set_model.predict(
            pseudonymised_image_set(images, self._job.pseudonyms)
        )
        return reidentified_planar_result(result, self._job.reidentification)

"""Runs a MONAI bundle as its authors wrote it, on the node's images in memory.

From the bundle's own ``configs/inference.json`` (or ``.yaml``) and ``configs/metadata.json``,
parsed with MONAI's :class:`~monai.bundle.ConfigParser` with ``bundle_root`` set to the folder:

- ``network_def`` / ``network`` with its weights loaded as the bundle's ``CheckpointLoader``
  does (the ``model`` entry of a checkpoint, or a plain state_dict; strict), or the TorchScript
  ``models/model.ts``;
- ``preprocessing`` without its reader transforms (``LoadImaged``, also in nested ``Compose``):
  the removed ``LoadImaged`` itself is called with an in-memory reader, so the volume arrives
  as the MetaTensor its own reader would make of a NIfTI file of the series (exact affine, see
  :mod:`cad_node.models.site.geometry`), or a 2D image as ``PILReader`` gives a PNG of it;
- ``inferer``, after whatever the evaluator ``_requires_`` (a detection bundle's
  ``detector_ops``); a detection inferer is given a list of images, as the bundle's
  ``DetectionEvaluator`` does;
- ``postprocessing`` without its writer transforms (``SaveImaged``), applied as its evaluator
  applies it; a classifier's probabilities are taken before its first ``AsDiscreted``.

Whatever comes out is put on the source grid (the bundle's ``Invertd`` or the node's nearest
resampling) and becomes findings (:mod:`cad_node.models.site.findings`).

The ``initialize`` and ``run`` sections, the dataset, dataloader, handlers and evaluator are
never built: the node has no files for them.  The config's ``device`` is the node's, and a
``network_def`` asking for ``pretrained`` weights is built without them (the bundle's own
weights replace every parameter, and the node does not reach the internet).

A bundle's ``scripts/`` package is importable as ``scripts`` while its runner parses or runs,
and only then (:class:`BundleScripts`): two bundles in one process each see their own.
"""

import copy
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.apps.detection.transforms.dictionary import (
    AffineBoxToWorldCoordinated,
    ConvertBoxModed,
)
from monai.bundle.config_parser import ConfigParser
from monai.data.box_utils import convert_box_mode
from monai.data.image_reader import ImageReader
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import decollate_batch, list_data_collate
from monai.transforms.compose import Compose
from monai.transforms.io.array import LoadImage, SaveImage
from monai.transforms.io.dictionary import LoadImaged, SaveImaged
from monai.transforms.post.array import AsDiscrete
from monai.transforms.post.dictionary import AsDiscreted
from torch import nn

from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import (
    ClassScores,
    LabelConcept,
    ModelReport,
    RegionFinding,
    ResultGrid,
    SourceImage,
)
from cad_node.errors import ModelError
from cad_node.models.manifest import Manifest, Task
from cad_node.models.runtime import inference
from cad_node.models.site import findings as site_findings
from cad_node.models.site import geometry
from cad_node.models.site.runner import site_report

log = logging.getLogger(__name__)

CONFIG_NAMES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
"""Where a bundle's inference config is, in the order looked for (after the manifest's)."""
METADATA = "configs/metadata.json"
SCRIPTS = "scripts"
PRED = "pred"
"""The key the evaluator stores the inferer's output under (``CommonKeys.PRED``)."""
TORCHSCRIPT_SUFFIX = ".ts"

READERS = (LoadImaged, LoadImage)
WRITERS = (SaveImaged, SaveImage)
DISCRETISERS = (AsDiscreted, AsDiscrete)

DEFAULT_DETECTION_KEYS = ("box", "label", "label_scores")
"""(box, label, score) keys of a detector that does not name its own."""

Data = dict[Any, Any]
Transform = Callable[[Data], Any]


# --- scripts/ --------------------------------------------------------------------------------

_SCRIPTS_LOCK = threading.RLock()


class _ScriptsFinder(importlib.abc.MetaPathFinder):
    """Finds ``scripts`` as one bundle's ``scripts/`` package, or refuses it (no other's)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != SCRIPTS:
            return None  # its submodules are found on the package's own __path__
        if not self._folder.is_dir():
            raise ModuleNotFoundError("No module named 'scripts': the bundle has no scripts/")
        init = self._folder / "__init__.py"
        if init.is_file():
            return importlib.util.spec_from_file_location(
                SCRIPTS, init, submodule_search_locations=[str(self._folder)]
            )
        spec = importlib.machinery.ModuleSpec(SCRIPTS, None, is_package=True)
        spec.submodule_search_locations = [str(self._folder)]
        return spec


def _take_scripts_modules() -> dict[str, ModuleType]:
    """Remove ``scripts`` and its submodules from ``sys.modules``, and return them."""
    names = [name for name in sys.modules if name == SCRIPTS or name.startswith(SCRIPTS + ".")]
    return {name: sys.modules.pop(name) for name in names}


class BundleScripts:
    """A bundle's ``scripts/`` package: importable as ``scripts`` only inside :meth:`active`.

    Its modules are imported on first use (as ``$import scripts...`` or a ``_target_`` names
    them) and kept for the next :meth:`active`; outside it, ``sys.modules`` holds whatever
    ``scripts`` it held before (another bundle's is never seen).
    """

    def __init__(self, folder: Path) -> None:
        self._finder = _ScriptsFinder(folder / SCRIPTS)
        self._modules: dict[str, ModuleType] = {}

    @contextmanager
    def active(self) -> Iterator[None]:
        with _SCRIPTS_LOCK:
            outside = _take_scripts_modules()
            sys.modules.update(self._modules)
            sys.meta_path.insert(0, self._finder)
            try:
                yield
            finally:
                sys.meta_path.remove(self._finder)
                self._modules = _take_scripts_modules()
                sys.modules.update(outside)


# --- the in-memory reader --------------------------------------------------------------------


class _MemoryReader(ImageReader):
    """A MONAI reader whose "file" is an array and metadata already in memory."""

    def __init__(self, data: npt.NDArray[Any], meta: Mapping[str, Any]) -> None:
        super().__init__()
        self._data = data
        self._meta = dict(meta)

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        return True

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> npt.NDArray[Any]:
        return self._data

    def get_data(self, img: Any) -> tuple[npt.NDArray[Any], dict[str, Any]]:
        return self._data, dict(self._meta)  # LoadImage adds to the metadata: a fresh copy


# --- transforms --------------------------------------------------------------------------------


def _flat(transform: Any) -> list[Any]:
    """The transforms of ``transform``, nested ``Compose``\\ s opened, in order."""
    if isinstance(transform, Compose):
        return [leaf for inner in transform.transforms for leaf in _flat(inner)]
    if isinstance(transform, list | tuple):
        return [leaf for inner in transform for leaf in _flat(inner)]
    return [transform]


def _strip(compose: Compose, kinds: tuple[type, ...]) -> list[Any]:
    """Remove the transforms of ``kinds`` from ``compose`` and its nested ``Compose``\\ s, in
    place (an ``Invertd`` refers to this very object), and return them."""
    removed: list[Any] = []
    kept: list[Any] = []
    for transform in compose.transforms:
        if isinstance(transform, kinds):
            removed.append(transform)
            continue
        if type(transform) is Compose:  # OneOf and others weigh their transforms: left whole
            removed.extend(_strip(transform, kinds))
        kept.append(transform)
    compose.transforms = tuple(kept)
    return removed


def _as_compose(transform: Any) -> Compose:
    return transform if isinstance(transform, Compose) else Compose(_flat(transform))


# --- the runner ------------------------------------------------------------------------------


class BundleRunner:
    """A MONAI bundle, parsed, built and loaded on ``device``; :meth:`report` runs it.

    Parameters
    ----------
    folder
        The bundle folder (``configs/``, ``models/``, optional ``scripts/``).
    manifest
        Its manifest: ``task``, ``input_kind``, ``weights_file`` and the labels.
    device
        "cpu", "cuda" or "cuda:N".
    labels
        Output value -> concept; by default the manifest's (:func:`site.labels.manifest_labels`).

    Raises
    ------
    ModelError
        The config is missing or cannot build a part, or the weights do not fit the network;
        the message names the model, the file and the reason.
    """

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        device: str,
        labels: Mapping[int, LabelConcept] | None = None,
    ) -> None:
        if manifest.task is None:
            raise ModelError(f"model {manifest.name}: the manifest names no task")
        self._manifest = manifest
        self._task = manifest.task
        self._device = device
        self._labels = dict(labels) if labels is not None else _manifest_labels(manifest)
        self._folder = folder
        self._config = _config_path(folder, manifest)
        self._scripts = BundleScripts(folder)
        with self._scripts.active():
            self._build()
        log.info("model %s: bundle loaded (%s, %s)", manifest.name, self._task, device)

    @property
    def network(self) -> nn.Module:
        """The bundle's network, weights loaded, in eval mode (as its inferer runs it)."""
        return self._network

    # --- building ---------------------------------------------------------------------------

    def _build(self) -> None:
        parser = self._parser()
        self._network = self._load_network(parser)
        self._preprocessing = _as_compose(self._part(parser, "preprocessing"))
        readers = _strip(self._preprocessing, READERS)
        self._loader = _image_loader(readers)
        self._key = str(self._loader.keys[0])
        self._channels = _declared_channels(parser, self._key)
        for requirement in _requirements(parser):
            self._part(parser, requirement)
        self._inferer = self._part(parser, "inferer")
        self._postprocessing = self._post(parser)

    def _parser(self) -> ConfigParser:
        parser = ConfigParser()
        try:
            parser.read_meta(str(self._folder / METADATA))
            parser.read_config(str(self._config))
        except (OSError, ValueError) as exc:
            raise self._error(f"cannot read the config: {exc}") from exc
        parser["bundle_root"] = str(self._folder)
        if "device" in parser:
            parser["device"] = torch.device(self._device)
        if parser.get("network_def#pretrained") is True:
            parser["network_def#pretrained"] = False
        if self._manifest.weights_file.endswith(TORCHSCRIPT_SUFFIX):
            parser["network_def"] = self._torchscript()
        return parser

    def _part(self, parser: ConfigParser, id: str) -> Any:
        """The parsed (built) config entry ``id``."""
        if id not in parser:
            raise self._error(f"has no {id!r}")
        try:
            return parser.get_parsed_content(id)
        except Exception as exc:  # the bundle's own code (scripts, _target_s) may raise anything
            raise self._error(f"cannot build {id!r}: {_message(exc)}") from exc

    def _load_network(self, parser: ConfigParser) -> nn.Module:
        network = self._part(parser, "network" if "network" in parser else "network_def")
        if not isinstance(network, nn.Module):
            raise self._error(f"'network' is a {type(network).__name__}, not a torch network")
        if not self._manifest.weights_file.endswith(TORCHSCRIPT_SUFFIX):
            self._load_state(network)
        return network.to(self._device).eval()

    def _load_state(self, network: nn.Module) -> None:
        """The ``CheckpointLoader`` of a bundle: a ``model`` entry, else the whole file (strict)."""
        path = self._folder / self._manifest.weights_file
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(checkpoint, Mapping):
                raise ValueError(f"it holds a {type(checkpoint).__name__}, not a state_dict")
            state = checkpoint.get("model", checkpoint)
            network.load_state_dict(state, strict=True)
        except Exception as exc:  # torch's unpickler and load_state_dict raise many kinds
            raise ModelError(
                f"model {self._manifest.name}: {self._manifest.weights_file}: does not fit the "
                f"network: {_message(exc)}"
            ) from exc

    def _torchscript(self) -> nn.Module:
        path = self._folder / self._manifest.weights_file
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*")
                net: nn.Module = torch.jit.load(str(path), map_location=self._device)  # type: ignore[no-untyped-call]  # torch.jit.load has no annotations
                return net
        except Exception as exc:  # torch.jit raises its own and runtime errors
            raise ModelError(
                f"model {self._manifest.name}: {self._manifest.weights_file}: is not a "
                f"TorchScript archive: {_message(exc)}"
            ) from exc

    def _post(self, parser: ConfigParser) -> Compose | None:
        if "postprocessing" not in parser:
            return None
        post = _as_compose(self._part(parser, "postprocessing"))
        _strip(post, WRITERS)
        if self._task is not Task.CLASSIFICATION:
            return post
        transforms = _flat(post)
        cut = next((i for i, t in enumerate(transforms) if isinstance(t, DISCRETISERS)), None)
        return Compose(transforms[:cut])

    def _error(self, reason: str) -> ModelError:
        relative = self._config.relative_to(self._folder).as_posix()
        return ModelError(f"model {self._manifest.name}: {relative}: {reason}")

    # --- running ------------------------------------------------------------------------------

    def report(self, grid: ResultGrid) -> ModelReport:
        """Run the bundle on ``grid`` (its volume, or each of its images).

        Raises
        ------
        ModelError
            The bundle raised (its own message), or returned what the task cannot be.
        """
        with self._scripts.active(), inference(self._device):
            try:
                found, scores = self._answer(grid)
            except ModelError:
                raise
            except Exception as exc:  # the bundle's code: its failure is this job's, told as is
                raise ModelError(f"model {self._manifest.name}: {_message(exc)}") from exc
        return site_report(self._manifest, grid, found, scores)

    def _answer(
        self, grid: ResultGrid
    ) -> tuple[tuple[RegionFinding, ...], tuple[ClassScores, ...]]:
        if self._manifest.input_kind == "image_set":
            if self._task is not Task.CLASSIFICATION:
                raise ModelError(
                    f"model {self._manifest.name}: a 2D bundle's {self._task} is not supported"
                )
            return (), tuple(self._classify(image, i) for i, image in enumerate(grid.images))
        if grid.volume is None:
            raise ModelError(f"model {self._manifest.name}: needs a volume, the grid has none")
        volume = grid.volume
        if self._task is Task.SEGMENTATION:
            return self._segment(volume), ()
        if self._task is Task.DETECTION:
            return self._detect(volume), ()
        output = self._run(self._item(*geometry.volume_reader_output(volume)))
        return (), (self._scores(output, None),)

    def _item(self, data: npt.NDArray[Any], meta: Mapping[str, Any]) -> Data:
        """What the bundle's ``LoadImaged`` makes of the image (its dtype, channel, metadata)."""
        loader = copy.copy(self._loader)
        loader.keys = (self._key,)
        item: Data = loader({self._key: str(meta["filename_or_obj"])}, _MemoryReader(data, meta))
        return item

    def _run(self, item: Data) -> Data:
        """Preprocessing, inferer and postprocessing, as ``SupervisedEvaluator`` runs them."""
        data = self._preprocessing(item)
        if not isinstance(data, dict):
            raise ModelError(
                f"model {self._manifest.name}: its preprocessing gave a "
                f"{type(data).__name__}, not one item"
            )
        batch = list_data_collate([data])
        images = batch[self._key].to(self._device)
        pred = self._inferer(images, self._network)
        output: Data = decollate_batch({**batch, self._key: images, PRED: pred}, detach=True)[0]
        if self._postprocessing is not None:
            output = self._postprocessing(output)
        return output

    def _segment(self, volume: ImageVolume) -> tuple[RegionFinding, ...]:
        output = self._run(self._item(*geometry.volume_reader_output(volume)))
        labels, affine = _label_array(output, self._key)
        label_map = geometry.labels_on_source(labels, affine, volume)
        return site_findings.segmentation_findings(label_map, volume, self._labels)

    def _detect(self, volume: ImageVolume) -> tuple[RegionFinding, ...]:
        """As the bundle's ``DetectionEvaluator`` and ``DetectionSaver`` run it."""
        data = self._preprocessing(self._item(*geometry.volume_reader_output(volume)))
        image = data[self._key].to(self._device)
        pred = self._inferer([image], self._network)[0]
        output = {**pred, self._key: image}
        if self._postprocessing is not None:
            output = self._postprocessing(output)
        boxes = self._boxes(output, image)
        return site_findings.box_findings(boxes, volume, self._labels)

    def _boxes(self, output: Data, image: MetaTensor) -> list[geometry.PatientBox]:
        box_key, label_key, score_key = _detection_keys(self._inferer)
        corners = np.asarray(
            convert_box_mode(
                _numpy(output[box_key]).reshape(-1, 6),
                src_mode=_box_mode(self._postprocessing),
                dst_mode="xyzxyz",
            ),
            dtype=np.float64,
        )
        labels = _numpy(output[label_key]).reshape(-1)
        scores = _numpy(output[score_key]).reshape(-1)
        if not len(corners) == len(labels) == len(scores):
            raise ModelError(
                f"model {self._manifest.name}: {len(corners)} boxes, {len(labels)} labels "
                f"and {len(scores)} scores"
            )
        space = _box_space(self._postprocessing)
        placed = (
            geometry.index_boxes(corners, _affine(image))
            if space is None
            else geometry.world_boxes(corners, space)
        )
        return [
            geometry.PatientBox(centre, extent, float(score), int(label))
            for (centre, extent), score, label in zip(placed, scores, labels, strict=True)
        ]

    def _classify(self, image: SourceImage, index: int) -> ClassScores:
        data, meta = geometry.image_reader_output(image, self._channels)
        return self._scores(self._run(self._item(data, meta)), index)

    def _scores(self, output: Data, image_index: int | None) -> ClassScores:
        probabilities = _numpy(output[PRED]).astype(np.float64).reshape(-1).tolist()
        return site_findings.class_scores(probabilities, self._labels, image_index)


# --- helpers ---------------------------------------------------------------------------------


def _manifest_labels(manifest: Manifest) -> dict[int, LabelConcept]:
    from cad_node.models.site.labels import manifest_labels  # H-admin's LABELS.yaml parsing

    return dict(manifest_labels(manifest))


def _config_path(folder: Path, manifest: Manifest) -> Path:
    for relative in (manifest.bundle_config, *CONFIG_NAMES):
        if (folder / relative).is_file():
            return folder / relative
    raise ModelError(
        f"model {manifest.name}: {folder} has no inference config ({', '.join(CONFIG_NAMES)})"
    )


def _image_loader(readers: Sequence[Any]) -> LoadImaged:
    """The bundle's ``LoadImaged`` (the first), or the default one on the key ``image``."""
    for reader in readers:
        if isinstance(reader, LoadImaged):
            return reader
    return LoadImaged(keys="image")


def _declared_channels(parser: ConfigParser, key: str) -> int | None:
    channels = parser.get(f"_meta_#network_data_format#inputs#{key}#num_channels")
    return int(channels) if isinstance(channels, int | float) else None


def _requirements(parser: ConfigParser) -> list[str]:
    """The ids the evaluator ``_requires_`` (a detector's ``detector_ops``), in order."""
    raw = parser.get("evaluator#_requires_")
    wanted = [r for r in (raw if isinstance(raw, list) else [raw]) if isinstance(r, str)]
    ids = [r.removeprefix("@") for r in wanted if r.startswith("@")]
    if "detector_ops" in parser and "detector_ops" not in ids:
        ids.append("detector_ops")
    return ids


def _detection_keys(inferer: Any) -> tuple[str, str, str]:
    detector = getattr(inferer, "detector", None)
    names = ("target_box_key", "target_label_key", "pred_score_key")
    keys = tuple(getattr(detector, name, None) for name in names)
    if all(isinstance(k, str) for k in keys):
        return (str(keys[0]), str(keys[1]), str(keys[2]))
    return DEFAULT_DETECTION_KEYS


def _box_mode(post: Compose | None) -> Any:
    """The mode boxes leave the postprocessing in: its last ``ConvertBoxModed``'s, else xyzxyz."""
    converters = [t for t in _flat(post) if isinstance(t, ConvertBoxModed)] if post else []
    return converters[-1].converter.dst_mode if converters else "xyzxyz"


def _box_space(post: Compose | None) -> str | None:
    """Where the boxes are: "LPS" or "RAS" world mm, None: the preprocessed image's indexes.

    ``AffineBoxToWorldCoordinated`` maps them with the image's RAS affine, or, with
    ``affine_lps_to_ras``, with that affine turned back to LPS (LUNA16's world space).
    """
    worlds = [t for t in _flat(post) if isinstance(t, AffineBoxToWorldCoordinated)] if post else []
    if not worlds:
        return None
    return "LPS" if worlds[-1].affine_lps_to_ras else "RAS"


def _label_array(output: Data, key: str) -> tuple[npt.NDArray[np.int64], geometry.FloatArray]:
    """The label array ``(i, j, k)`` and its RAS affine from the postprocessed prediction."""
    pred = output[PRED]
    reference = pred if isinstance(pred, MetaTensor) else output.get(key)
    if not isinstance(reference, MetaTensor):
        raise site_findings.OutputError("the prediction carries no affine")
    array = _numpy(pred).astype(np.float64)
    if array.ndim == 4 and array.shape[0] > 1:
        return np.argmax(array, axis=0).astype(np.int64), _affine(reference)
    if array.ndim == 4:
        array = array[0]
    if array.ndim != 3 or not np.all(np.equal(np.mod(array, 1.0), 0.0)):
        raise site_findings.OutputError(
            f"the prediction of shape {array.shape} is not a 3D label map"
        )
    return array.astype(np.int64), _affine(reference)


def _affine(tensor: MetaTensor) -> geometry.FloatArray:
    return np.asarray(tensor.affine.detach().cpu().numpy(), dtype=np.float64)


def _numpy(value: Any) -> npt.NDArray[Any]:
    if isinstance(value, torch.Tensor):
        tensor = value.as_tensor() if isinstance(value, MetaTensor) else value
        return np.asarray(tensor.detach().float().cpu().numpy())
    return np.asarray(value)


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


__all__ = ["BundleRunner", "BundleScripts"]

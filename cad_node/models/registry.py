"""Finds model folders (manifest.json + weights), checks their hash and keeps models warm.

The folders are looked at again on every :meth:`ModelRegistry.get`, so a running node picks
up a model added (``cad-node models add``), removed or changed without a restart.
"""

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cad_node.errors import ModelError
from cad_node.models.base import CadModel
from cad_node.models.manifest import MANIFEST_NAME, SITE_FAMILY, Manifest

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "weights"


def _lung_factory(folder: Path, manifest: Manifest) -> CadModel:
    from cad_node.models.lung.detector import LungNoduleModel

    return LungNoduleModel(folder, manifest)


def _mammography_factory(folder: Path, manifest: Manifest) -> CadModel:
    from cad_node.models.mammo.model import MammoModel

    return MammoModel(folder, manifest)


def _fundus_factory(folder: Path, manifest: Manifest) -> CadModel:
    from cad_node.models.fundus.model import FundusModel

    return FundusModel(folder, manifest)


def _site_factory(folder: Path, manifest: Manifest) -> CadModel:
    from cad_node.models.site.process import SiteModel

    return SiteModel(folder, manifest)


FACTORIES: dict[str, Callable[[Path, Manifest], CadModel]] = {
    "lung_ct": _lung_factory,
    "mammography": _mammography_factory,
    "fundus": _fundus_factory,
    SITE_FAMILY: _site_factory,
}
"""Model family (manifest ``family``) -> constructor; a new family registers itself here.

Imports are lazy: listing models needs no torch, and one family's import trouble
does not stop the others.
"""


def default_device() -> str:
    """ "cuda" when a GPU is usable, else "cpu" (:func:`cad_node.models.runtime.default_device`).

    Kept here for the registry's callers; torch is imported only when it is asked.
    """
    from cad_node.models.runtime import default_device as runtime_default_device

    return runtime_default_device()


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model folder found on disk (not loaded)."""

    folder: Path
    manifest: Manifest


def _scan(directory: Path) -> list[ModelEntry]:
    if not directory.is_dir():
        return []
    folders = [directory] if (directory / MANIFEST_NAME).is_file() else []
    folders += sorted(p.parent for p in directory.glob(f"*/{MANIFEST_NAME}"))
    return [ModelEntry(folder, Manifest.read(folder)) for folder in folders]


class ModelRegistry:
    """The shipped models plus site folders; ``get`` loads a model once and keeps it.

    A site folder may hold one model (a manifest.json directly in it) or several
    (one sub-folder each).  A later folder overrides an earlier model of the same name.
    """

    def __init__(
        self,
        extra_dirs: Iterable[Path] = (),
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        """``device`` None: a GPU when usable; ``threads`` None: torch's default (one per core)."""
        self._dirs = [SHIPPED_DIR, *extra_dirs]
        self._device = device
        self._threads = threads
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = default_device()
        return self._device

    def entries(self) -> dict[str, ModelEntry]:
        """Every model found, by name."""
        found: dict[str, ModelEntry] = {}
        for directory in self._dirs:
            for entry in _scan(directory):
                found[entry.manifest.name] = entry
        return found

    def get(self, name: str) -> CadModel:
        """The named model, loaded (its files checked) on first use and kept warm.

        The folders are scanned on every call: a model added since is found, a removed one
        is dropped, and one whose manifest changed is loaded again.

        Raises
        ------
        ModelError
            No such model, or no factory for its family.
        WeightsIntegrityError
            The weights (a site model: any file) do not match the manifest's sha256.
        """
        with self._lock:
            entries = self.entries()
            entry = entries.get(name)
            held = self._loaded.get(name)
            if held is not None and held.entry != entry:
                del self._loaded[name]
                _close(held.model)
                log.info("model %s was removed or changed on disk; dropped", name)
            if entry is None:
                # Unquoted: job errors withhold quoted values, and model names are no patient data.
                known = ", ".join(sorted(entries)) or "none"
                raise ModelError(f"no model named {name}; known: {known}")
            if name not in self._loaded:
                self._loaded[name] = _Loaded(entry, self._load(entry))
            return self._loaded[name].model

    def close(self) -> None:
        """Let every loaded model free what it holds (site models' child processes)."""
        with self._lock:
            held, self._loaded = list(self._loaded.values()), {}
        for loaded in held:
            _close(loaded.model)

    def _load(self, entry: ModelEntry) -> CadModel:
        if self._threads is not None:
            from cad_node.models.runtime import set_cpu_threads

            set_cpu_threads(self._threads)
        return load_folder(entry.folder, self.device, entry.manifest)


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A model kept warm, with the folder and manifest it was loaded from."""

    entry: ModelEntry
    model: CadModel


def _close(model: CadModel) -> None:
    """Let a dropped model free what it holds (a site model's child process), if it can."""
    close = getattr(model, "close", None)
    if callable(close):
        close()


def load_folder(folder: Path, device: str, manifest: Manifest | None = None) -> CadModel:
    """Load the model in ``folder`` (manifest.json + weights) onto ``device``."""
    manifest = manifest or Manifest.read(folder)
    factory = FACTORIES.get(manifest.family)
    if factory is None:
        raise ModelError(f"model {manifest.name}: unknown family {manifest.family!r}")
    model = factory(folder, manifest)
    model.load(device)
    log.info("loaded model %s %s on %s", manifest.name, manifest.version, device)
    return model

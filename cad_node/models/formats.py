"""Loads a model folder's network from any of the weights formats a site may bring.

Every format is checked the same way first: the file named by the manifest's
``weights_file`` must have the manifest's sha256 (:func:`verified_weights`).
Then, by the manifest's ``format``:

``native``
    The project's own: ``build()`` makes the family's network and the file is its
    ``state_dict`` (``torch.load(weights_only=True)``, no pickled code).
``torchscript``
    A TorchScript archive (``torch.jit.save``); the network travels with it.
``monai_bundle``
    An unzipped MONAI bundle in the model folder, beside ``manifest.json``::

        configs/metadata.json
        configs/inference.json     # defines "network_def" (manifest: bundle_network_id)
        models/model.pt            # its state_dict (manifest: weights_file), or
        models/model.ts            # a TorchScript archive

    The network is built from the bundle's LOCAL config with
    :class:`monai.bundle.ConfigParser` (only the network's own entry is resolved);
    nothing is downloaded: the bundle is never fetched or loaded by name.

Errors from torch and MONAI become :class:`~cad_node.errors.ModelError` naming the
folder and the reason.

Example::

    net = load_network(folder, manifest, "cuda", build=lambda: MyNet(width=16))
"""

import logging
import pickle
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cad_node.errors import ModelError
from cad_node.models.manifest import Manifest, WeightsFormat, verified_weights

log = logging.getLogger(__name__)

BUNDLE_METADATA = "configs/metadata.json"
"""Every MONAI bundle has it (MONAI Bundle specification)."""

TORCHSCRIPT_SUFFIX = ".ts"
"""A bundle's ``models/model.ts`` is TorchScript; ``models/model.pt`` a state_dict."""

_LOAD_ERRORS = (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError)
"""What torch raises for a file that is not the expected weights."""

_BUILD_ERRORS = (ImportError, AttributeError, RuntimeError, KeyError, TypeError, ValueError)
"""What ``ConfigParser.get_parsed_content`` raises for a network it cannot build."""

NetworkBuilder = Callable[[], nn.Module]
"""Makes the family's network, untrained (native and bundle ``.pt`` weights go into it)."""


def load_network(folder: Path, manifest: Manifest, device: str, build: NetworkBuilder) -> nn.Module:
    """The network of a model folder, weights loaded, in eval mode, on ``device``.

    Parameters
    ----------
    folder
        The model folder (``manifest.json`` and the weights).
    manifest
        Its manifest; ``format`` picks the loader, ``weights_file`` and ``sha256`` the file.
    device
        "cpu", "cuda" or "cuda:N".
    build
        Makes the family's network; used for the native format only (a TorchScript
        archive and a MONAI bundle define their own network).

    Raises
    ------
    WeightsIntegrityError
        The weights file is missing or its sha256 differs from the manifest's.
    ModelError
        The file cannot be loaded, or the bundle's network cannot be built.
    """
    path = verified_weights(folder, manifest)
    loader = _LOADERS[manifest.format]
    net = loader(folder, manifest, path, build)
    log.debug("model %s: %s network from %s", manifest.name, manifest.format, path.name)
    return _placed(net, manifest, device)


def is_torchscript(net: nn.Module) -> bool:
    """Whether ``net`` is TorchScript (no Python hooks: Grad-CAM cannot run on it)."""
    return isinstance(net, torch.jit.ScriptModule)


def _native(folder: Path, manifest: Manifest, path: Path, build: NetworkBuilder) -> nn.Module:
    return _with_state(build(), manifest, path)


def _torchscript(folder: Path, manifest: Manifest, path: Path, build: NetworkBuilder) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript loading in favour of torch.export (a
            # DeprecationWarning in 2.13, a FutureWarning from 2.14), but TorchScript is a
            # format sites hand us (issue 3): say it once in the docs, not in every
            # worker's log at every load.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*")
            net: nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]  # torch.jit.load has no annotations
    except _LOAD_ERRORS as exc:
        raise _load_error(manifest, path, "is not a TorchScript archive", exc) from exc
    return net


def _monai_bundle(folder: Path, manifest: Manifest, path: Path, build: NetworkBuilder) -> nn.Module:
    if path.suffix == TORCHSCRIPT_SUFFIX:
        _bundle_config(folder, manifest)  # still a bundle: its configs must be there
        return _torchscript(folder, manifest, path, build)
    net = _bundle_network(folder, manifest)
    return _with_state(net, manifest, path)


_LOADERS: Mapping[WeightsFormat, Callable[[Path, Manifest, Path, NetworkBuilder], nn.Module]] = {
    WeightsFormat.NATIVE: _native,
    WeightsFormat.TORCHSCRIPT: _torchscript,
    WeightsFormat.MONAI_BUNDLE: _monai_bundle,
}


def _bundle_config(folder: Path, manifest: Manifest) -> Path:
    """The bundle's network config, after checking the folder is a bundle."""
    for relative in (BUNDLE_METADATA, manifest.bundle_config):
        if not (folder / relative).is_file():
            raise ModelError(
                f"model {manifest.name}: {folder} is not a MONAI bundle: {relative} is missing"
            )
    return folder / manifest.bundle_config


def _bundle_network(folder: Path, manifest: Manifest) -> nn.Module:
    """Instantiate the bundle's network entry from its local config files."""
    from monai.bundle.config_parser import ConfigParser  # MONAI is imported only for bundles

    config = _bundle_config(folder, manifest)
    parser = ConfigParser()
    try:
        parser.read_meta(str(folder / BUNDLE_METADATA))
        parser.read_config(str(config))
        parser["bundle_root"] = str(folder)  # bundles refer to their files as @bundle_root
        net = parser.get_parsed_content(manifest.bundle_network_id)
    except _BUILD_ERRORS as exc:
        raise ModelError(
            f"model {manifest.name}: the MONAI bundle in {folder} cannot build "
            f"{manifest.bundle_network_id!r} from {manifest.bundle_config}: {exc}"
        ) from exc
    if not isinstance(net, nn.Module):
        raise ModelError(
            f"model {manifest.name}: {manifest.bundle_network_id!r} in {config} is a "
            f"{type(net).__name__}, not a torch network"
        )
    return net


def _with_state(net: nn.Module, manifest: Manifest, path: Path) -> nn.Module:
    """``net`` with the state_dict in ``path`` loaded (strictly: every key must match)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(_state_dict_of(state))
    except _LOAD_ERRORS as exc:
        raise _load_error(manifest, path, "does not fit the network", exc) from exc
    return net


def _state_dict_of(saved: Any) -> Mapping[str, Any]:
    """A saved state_dict, or the ``"model"`` entry of a training checkpoint (MONAI's habit)."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"it holds a {type(saved).__name__}, not a state_dict")
    inner = saved.get("model")
    return inner if isinstance(inner, Mapping) else saved


def _placed(net: nn.Module, manifest: Manifest, device: str) -> nn.Module:
    try:
        return net.eval().to(device)
    except (RuntimeError, AssertionError) as exc:  # torch raises AssertionError without CUDA
        raise ModelError(f"model {manifest.name}: cannot move it to {device}: {exc}") from exc


def _load_error(manifest: Manifest, path: Path, what: str, exc: BaseException) -> ModelError:
    return ModelError(f"model {manifest.name}: {path} {what}: {exc}")


__all__ = ["NetworkBuilder", "WeightsFormat", "is_torchscript", "load_network"]

"""The lab's optional extra: what ``synth``, ``train``, ``evaluate`` and ``demo`` need
beyond a production node.

A node (``serve``, ``worker``, ``status``, ``rules``, ``models``, ``purge``, ``config``,
the shipped models' inference, every result object) imports none of :data:`LAB_MODULES`:
``pip install cad-node`` leaves them out, ``pip install 'cad-node[lab]'`` (and ``[dev]``)
brings them. A lab command checks for them before it starts, so that it stops at once
with one line naming the extra, not with a traceback after an hour of training.
"""

import argparse
import importlib.util
from collections.abc import Callable

from cad_node.errors import CadNodeError

LAB_EXTRA = "pip install 'cad-node[lab]'"
"""What to run where a lab command finds its packages missing."""

LAB_MODULES = {
    "sklearn": "scikit-learn",
    "markdown_it": "markdown-it-py",
}
"""Module -> the distribution that brings it (the ``lab`` extra in pyproject.toml).

matplotlib is a dependency of every install since the monitoring page and ``cad-node
report`` draw plots (issue 22); it is imported only when a figure is drawn."""

Command = Callable[[argparse.Namespace], int]
"""A subcommand: parsed arguments in, exit status out."""


class LabNotInstalledError(CadNodeError):
    """A lab command on an install without the ``lab`` extra."""


def missing_lab_distributions() -> list[str]:
    """The ``lab`` extra's distributions whose module does not import here, in order."""
    return [dist for module, dist in LAB_MODULES.items() if not _importable(module)]


def _importable(module: str) -> bool:
    """Whether ``module`` is found, without importing it (matplotlib alone takes 0.3 s)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a module set to None
        return False


def require_lab(command: str) -> None:
    """Raise :class:`LabNotInstalledError`, one line, when the ``lab`` extra is not installed."""
    missing = missing_lab_distributions()
    if missing:
        raise LabNotInstalledError(
            f"`cad-node {command}` is a lab command and needs {', '.join(missing)}, "
            f"not installed here: {LAB_EXTRA}"
        )


def lab_command(command: str, func: Command) -> Command:
    """``func``, run after :func:`require_lab` has found the ``lab`` extra."""

    def run(args: argparse.Namespace) -> int:
        require_lab(command)
        return func(args)

    return run


__all__ = ["LAB_EXTRA", "LAB_MODULES", "LabNotInstalledError", "lab_command", "require_lab"]

"""What runs a site model's folder: a MONAI bundle's own workflow, or nnunetv2's predictor.

A runner is built once per model (it parses, builds and loads everything that needs no input)
and then answers each job's grid with a report; :class:`~cad_node.models.site.process.SiteModel`
keeps it warm in a child process.
"""

from pathlib import Path
from typing import Protocol

from cad_node.domain.results import ClassScores, ModelReport, Procedure, RegionFinding, ResultGrid
from cad_node.errors import ModelError
from cad_node.models.manifest import Manifest, WeightsFormat


class SiteRunner(Protocol):
    """A site model, loaded: ``report`` runs it on one grid (a series volume or planar images)."""

    def report(self, grid: ResultGrid) -> ModelReport:
        """Findings and classifications on ``grid``.

        Raises
        ------
        ModelError
            The model raised, or returned what its task cannot be (with its own message).
        """
        ...


def site_report(
    manifest: Manifest,
    grid: ResultGrid,
    findings: tuple[RegionFinding, ...],
    classifications: tuple[ClassScores, ...] = (),
) -> ModelReport:
    """A site model's answer on ``grid``: its findings and per-class scores, no region or
    assessment of the node's own (the model says what it found, nothing more)."""
    return ModelReport(
        model=manifest.identity(),
        grid=grid,
        findings=findings,
        region=None,
        procedure=Procedure.IMAGING,
        classifications=classifications,
    )


def make_runner(folder: Path, manifest: Manifest, device: str) -> SiteRunner:
    """The runner of the site model in ``folder``, built and loaded onto ``device``.

    Raises
    ------
    ModelError
        The folder's format is not a site format, or the model cannot be built or loaded.
    """
    if manifest.format is WeightsFormat.MONAI_BUNDLE:
        from cad_node.models.site.bundle import BundleRunner  # MONAI only for bundles

        return BundleRunner(folder, manifest, device)
    if manifest.format is WeightsFormat.NNUNET_V2:
        from cad_node.models.site.nnunet import NnUNetRunner  # nnunetv2 only for its folders

        return NnUNetRunner(folder, manifest, device)
    raise ModelError(f"model {manifest.name}: {manifest.format} is not a site model format")


__all__ = ["SiteRunner", "make_runner", "site_report"]

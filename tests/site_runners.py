"""Tiny site-model runners for the tests of the warm child process (tests/integration/
test_site_process.py): importable by name, since the child builds them from a pickled reference.

:func:`scripted_runner` answers each grid as its study instance UID's last component says
(:data:`BEHAVIOURS`), so one warm child can be told to answer, raise, hang or misreport, and the
answers prove that the pixels arrived whole: a volume's brightest voxel is the finding, an
image's mean brightness the probability of its first class.

:func:`write_scripted_bundle` writes a tiny MONAI bundle whose own ``scripts/`` network raises,
answers a misshapen array or hangs when the volume's first voxel says so, for the node's real
bundle runner.
"""

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import (
    ClassScores,
    Concept,
    ImageMask,
    LabelConcept,
    ModelReport,
    RegionFinding,
    ResultGrid,
    SourceImage,
    volume_grid,
)
from cad_node.errors import ModelError
from cad_node.models.manifest import Manifest
from cad_node.models.site.runner import site_report

ANSWER, RAISE, MISFIT, HANG = "1", "2", "3", "4"
BEHAVIOURS = {ANSWER: "answer", RAISE: "raise", MISFIT: "misfit", HANG: "hang"}
"""The last component of a grid's study instance UID -> what the runner does with it."""

HANG_SECONDS = 120.0
UNLOADABLE = "unloadable"
"""A model of this name cannot be built: its runner raises the message of :data:`LOAD_ERROR`."""
LOAD_ERROR = "configs/inference.json: cannot build 'network_def': no such network"

SPOT = LabelConcept(
    label="spot",
    property_type=Concept("49755003", "SCT", "Morphologically abnormal structure"),
    category=Concept("49755003", "SCT", "Morphologically abnormal structure"),
)
BRIGHT = LabelConcept(
    label="bright",
    property_type=Concept("371861004", "SCT", "Mild intensity"),
    category=Concept("246464006", "SCT", "Function"),
)
DARK = LabelConcept(
    label="dark",
    property_type=Concept("371862006", "SCT", "Moderate intensity"),
    category=Concept("246464006", "SCT", "Function"),
)


class ScriptedRunner:
    """Answers as the grid's study instance UID says (:data:`BEHAVIOURS`)."""

    def __init__(self, manifest: Manifest, device: str) -> None:
        self.manifest = manifest
        self.device = device

    def report(self, grid: ResultGrid) -> ModelReport:
        behaviour = grid.study_instance_uid.rsplit(".", 1)[-1]
        if behaviour == RAISE:
            raise ValueError("bundle says no")
        if behaviour == HANG:
            time.sleep(HANG_SECONDS)
        if grid.volume is None:
            scores = tuple(_brightness(grid, index) for index in range(len(grid.images)))
            return self._report(grid, (), scores)
        return self._report(grid, (self._brightest(grid, misfit=behaviour == MISFIT),), ())

    def _brightest(self, grid: ResultGrid, misfit: bool) -> RegionFinding:
        """A one-voxel finding on the brightest voxel of the volume (or beyond its last row)."""
        assert grid.volume is not None, "a volume grid"
        k, r, c = (
            int(i) for i in np.unravel_index(int(np.argmax(grid.volume.voxels)), grid.volume.shape)
        )
        if misfit:
            r = grid.volume.shape[1]
        mask = ImageMask(k, (r, c), np.ones((1, 1), dtype=np.bool_))
        return RegionFinding(
            finding_type=None,
            masks=(mask,),
            centre=(float(k), float(r), float(c)),
            probability=None,
            concept=SPOT,
            label=SPOT.label,
        )

    def _report(
        self,
        grid: ResultGrid,
        findings: tuple[RegionFinding, ...],
        classifications: tuple[ClassScores, ...],
    ) -> ModelReport:
        return site_report(self.manifest, grid, findings, classifications)


def _brightness(grid: ResultGrid, index: int) -> ClassScores:
    """P(bright) = the image's mean value (its pixels lie within [0, 1])."""
    bright = float(np.mean(grid.images[index].pixels))
    return ClassScores((BRIGHT, DARK), (bright, 1.0 - bright), image_index=index)


def scripted_runner(folder: Path, manifest: Manifest, device: str) -> ScriptedRunner:
    """The runner factory the tests hand :class:`~cad_node.models.site.process.SiteModel`."""
    if manifest.name == UNLOADABLE:
        raise ModelError(f"model {manifest.name}: {LOAD_ERROR}")
    if not (folder / manifest.weights_file).is_file():
        raise ModelError(f"model {manifest.name}: {manifest.weights_file} is missing")
    return ScriptedRunner(manifest, device)


def volume_grid_of(behaviour: str, seed: int = 0) -> ResultGrid:
    """A small CT-like volume grid (8 x 16 x 12, values in [0, 1)) the runner treats as told."""
    voxels = np.random.default_rng(seed).random((8, 16, 12), dtype=np.float32)
    volume = ImageVolume(
        voxels=voxels,
        spacing_mm=(2.5, 0.7, 0.7),
        affine=np.array(
            [[0, 0, 0.7, 0], [0, 0.7, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
        ),
        sop_instance_uids=tuple(f"2.25.{seed}.{k + 1}" for k in range(8)),
        series_instance_uid=f"2.25.{seed}",
        frame_of_reference_uid=f"2.25.{seed}.0",
    )
    return volume_grid(volume, f"2.25.{seed}.9.{behaviour}")


def image_grid_of(behaviour: str, brightness: tuple[float, ...] = (0.2, 0.7)) -> ResultGrid:
    """Planar images of uniform ``brightness`` (one each) the runner treats as told."""
    images = tuple(
        SourceImage(
            sop_instance_uid=f"2.25.77.{index + 1}",
            series_instance_uid="2.25.77",
            frame_number=None,
            pixels=np.full((20, 24), value, dtype=np.float32),
        )
        for index, value in enumerate(brightness)
    )
    return ResultGrid(f"2.25.77.9.{behaviour}", "MG", images)


# --- a MONAI bundle whose own scripts/ raise, misshape or hang ---

MARKERS = {"raise": 1000.0, "misshape": 2000.0, "hang": 3000.0}
"""The value of voxel (0, 0, 0) that makes the scripted bundle's network do each."""

NETWORK_SCRIPT = '''\
"""A network that answers the marker in its first voxel (tests/site_runners.py)."""

import time

import torch
from torch import nn


class Scripted(nn.Module):
    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marker = float(x[0, 0, 0, 0, 0])
        if self.refuse or marker == {raise}:
            raise ValueError("bundle says no")
        if marker == {misshape}:
            return x[:, :, 0, 0, :]  # a 1D answer where a 3D label map is due
        if marker == {hang}:
            time.sleep(120)
        bright = (x > 0.5).float() * self.scale
        return torch.cat([1.0 - bright, bright], dim=1)
'''.format(**MARKERS)

NETWORK_DEF = {"_target_": "scripts.net.Scripted"}
BUNDLE_CONFIG: dict[str, Any] = {
    "image_key": "image",
    "network_def": NETWORK_DEF,
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        ],
    },
    "inferer": {"_target_": "SimpleInferer"},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}],
    },
}


def write_scripted_bundle(folder: Path, refuse: bool = False) -> Path:
    """A MONAI bundle whose ``scripts/net.py`` network does what voxel (0, 0, 0) says
    (:data:`MARKERS`), or refuses every input; it labels 1 the voxels above 0.5."""
    import torch  # the bundle's weights; torch only where a bundle is written

    config = {**BUNDLE_CONFIG, "network_def": {**NETWORK_DEF, "refuse": refuse}}
    for part in ("configs", "scripts", "models"):
        (folder / part).mkdir(parents=True)
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1"}))
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (folder / "scripts" / "__init__.py").write_text("")
    (folder / "scripts" / "net.py").write_text(NETWORK_SCRIPT)
    torch.save({"scale": torch.ones(1)}, folder / "models" / "model.pt")
    return folder

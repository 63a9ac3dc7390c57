"""MONAI bundles run by the node: a bundle with a known answer, and the zoo's own bundles.

The known-answer bundle is written here, in the spleen bundle's style (``LoadImaged``, a
nested ``Compose``, ``Orientationd`` RAS, ``Spacingd``, ``SlidingWindowInferer``, softmax,
``Invertd``, ``AsDiscreted``, ``SaveImaged``); its ``scripts/net.py`` makes channel 1 high where
the input exceeds 0.  The source is a smooth field, positive inside an off-centre ellipsoid, so
a flipped or swapped axis anywhere on the way moves the answer off the thresholded source.
"""

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from cad_node.domain.imaging import ImageVolume, slice_affine
from cad_node.domain.results import ModelReport
from cad_node.errors import ModelError
from cad_node.models.manifest import Task
from cad_node.models.site.bundle import BundleRunner
from tests.bundles import (
    image_grid,
    label_entry,
    orientation_cosines,
    planar_image,
    retinanet_scores,
    site_manifest,
    synthetic_volume,
    volume_grid,
    zoo_bundle,
)

NET = '''"""A network with a known answer: channel 1 is high where the input exceeds THRESHOLD."""
import torch
from torch import nn

THRESHOLD = 0.0
SIGN = {sign}


class ThresholdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = SIGN * self.gain * (x - THRESHOLD)
        return torch.cat([-logit, logit], dim=1)


class Failing(ThresholdNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the bundle's own failure")
'''

INVERT = {
    "_target_": "Invertd",
    "keys": "pred",
    "transform": "@preprocessing",
    "orig_keys": "@image_key",
    "nearest_interp": False,
    "to_tensor": True,
}


def _config(network: str, invert: bool) -> dict[str, Any]:
    key = "@image_key"
    post: list[dict[str, Any]] = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
    post += [INVERT] if invert else []
    post += [
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"},
    ]
    return {
        "imports": ["$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": f"scripts.net.{network}"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "Compose",
                    "transforms": [
                        {"_target_": "LoadImaged", "keys": key},
                        {"_target_": "EnsureChannelFirstd", "keys": key},
                    ],
                },
                {"_target_": "Orientationd", "keys": key, "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": key, "pixdim": [1.5, 1.5, 2.0]},
                {"_target_": "EnsureTyped", "keys": key},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32]},
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }


SPLEEN = label_entry("spleen", "78961009", "Spleen")


def _bundle(
    folder: Path,
    *,
    sign: int = 1,
    network: str = "ThresholdNet",
    invert: bool = True,
    checkpoint: bool = False,
) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "scripts").mkdir()
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    config = _config(network, invert)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (folder / "scripts" / "__init__.py").write_text("")
    (folder / "scripts" / "net.py").write_text(NET.format(sign=sign))
    state = {"gain": torch.tensor(0.05)}
    torch.save({"model": state, "epoch": 3} if checkpoint else state, folder / "models/model.pt")
    return folder


def _runner(folder: Path) -> BundleRunner:
    manifest = site_manifest(folder.name, folder, Task.SEGMENTATION, {1: SPLEEN})
    return BundleRunner(folder, manifest, "cpu")


CENTRE = np.array([15.0, -25.0, 40.0])
BLOB = CENTRE + np.array([3.0, -2.0, 3.0])
SEMI_AXES = np.array([16.0, 11.0, 14.0])
"""Large beside the voxels: the boundary voxels that linear interpolation (to the bundle's
grid and back) may flip stay under 1% of the ellipsoid's."""


def _field_volume(orientation: str, head_first: bool) -> ImageVolume:
    """48 x 48 x 24 voxels centred on CENTRE: 100 at BLOB, 0 on the ellipsoid, negative out."""
    shape, spacing = (24, 48, 48), (2.0, 0.9, 0.9)
    cosines = orientation_cosines(orientation, head_first)
    affine = slice_affine(np.zeros(3), cosines, np.cross(cosines[:3], cosines[3:]), spacing)
    affine[:3, 3] = CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    patient = np.moveaxis(np.indices(shape), 0, -1) @ affine[:3, :3].T + affine[:3, 3]
    radius = np.linalg.norm((patient - BLOB) / SEMI_AXES, axis=-1)
    uid = f"2.25.5{len(orientation)}{int(head_first)}"
    return ImageVolume(
        voxels=(100.0 * (1.0 - radius)).astype(np.float32),
        spacing_mm=spacing,
        affine=affine,
        sop_instance_uids=tuple(f"{uid}.{k + 1}" for k in range(shape[0])),
        series_instance_uid=uid,
        frame_of_reference_uid=f"{uid}.0",
    )


def _label_map(report: ModelReport, shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    found = np.zeros(shape, dtype=np.bool_)
    for finding in report.findings:
        for mask in finding.masks:
            found[mask.image_index] |= mask.paste(shape[1:])
    return found


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float(2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b)))


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> BundleRunner:
    return _runner(_bundle(tmp_path_factory.mktemp("bundles") / "known"))


ACQUISITIONS = [
    (orientation, head_first)
    for orientation in ("axial", "coronal", "oblique")
    for head_first in (True, False)
]


@pytest.mark.parametrize(("orientation", "head_first"), ACQUISITIONS)
def test_the_label_map_is_the_thresholded_source(
    known: BundleRunner, orientation: str, head_first: bool
) -> None:
    volume = _field_volume(orientation, head_first)
    report = known.report(volume_grid(volume))
    (finding,) = report.findings
    assert finding.label == "spleen"
    assert finding.concept is not None
    assert finding.concept.property_type.value == "78961009"
    assert _dice(_label_map(report, volume.shape), volume.voxels > 0.0) >= 0.99


@pytest.mark.parametrize(("orientation", "head_first"), [("axial", True), ("oblique", False)])
def test_without_invertd_the_node_resamples_onto_the_source(
    tmp_path: Path, orientation: str, head_first: bool
) -> None:
    runner = _runner(_bundle(tmp_path / "plain", invert=False))
    volume = _field_volume(orientation, head_first)
    found = _label_map(runner.report(volume_grid(volume)), volume.shape)
    assert _dice(found, volume.voxels > 0.0) >= 0.9  # on the bundle's 1.5 mm grid, not ours


def test_writers_are_dropped_and_a_checkpoint_model_entry_loads(tmp_path: Path) -> None:
    folder = _bundle(tmp_path / "checkpoint", checkpoint=True)
    runner = _runner(folder)
    assert float(runner.network.get_parameter("gain")) == pytest.approx(0.05)
    volume = _field_volume("axial", True)
    assert runner.report(volume_grid(volume)).findings
    assert not (folder / "eval").exists()


def test_two_bundles_each_import_their_own_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both define scripts.net.ThresholdNet; the second's answers the complement."""
    outside = ModuleType("scripts")
    monkeypatch.setitem(sys.modules, "scripts", outside)
    first = _runner(_bundle(tmp_path / "first", sign=1))
    second = _runner(_bundle(tmp_path / "second", sign=-1))
    volume = _field_volume("axial", True)
    inside = volume.voxels > 0.0
    grid = volume_grid(volume)
    assert _dice(_label_map(first.report(grid), volume.shape), inside) >= 0.99
    assert _dice(_label_map(second.report(grid), volume.shape), ~inside) >= 0.99
    assert _dice(_label_map(first.report(grid), volume.shape), inside) >= 0.99
    assert sys.modules["scripts"] is outside
    assert not [name for name in sys.modules if name.startswith("scripts.")]


def test_a_bundle_that_raises_fails_with_its_own_message(tmp_path: Path) -> None:
    runner = _runner(_bundle(tmp_path / "failing", network="Failing"))
    with pytest.raises(ModelError, match="model failing: the bundle's own failure"):
        runner.report(volume_grid(_field_volume("axial", True)))


def test_a_bundle_that_cannot_build_names_the_file_and_the_reason(tmp_path: Path) -> None:
    missing = _bundle(tmp_path / "missing", network="NoSuchNet")
    with pytest.raises(ModelError, match=r"configs/inference.json: cannot build 'network'"):
        _runner(missing)
    unfit = _bundle(tmp_path / "unfit")
    torch.save({"gain": torch.tensor(1.0), "bias": torch.tensor(0.0)}, unfit / "models/model.pt")
    with pytest.raises(ModelError, match=r"model unfit: models/model.pt: does not fit"):
        _runner(unfit)


# --- the zoo's bundles, unchanged, with seeded weights --------------------------------------


def test_the_spleen_bundle_segments_a_small_volume(tmp_path: Path) -> None:
    folder = zoo_bundle("spleen_ct_segmentation", tmp_path)
    runner = BundleRunner(
        folder, site_manifest("spleen", folder, Task.SEGMENTATION, {1: SPLEEN}), "cpu"
    )
    volume = synthetic_volume(orientation="coronal", head_first=False)
    report = runner.report(volume_grid(volume))
    assert report.model.name == "spleen"
    assert report.region is None
    for finding in report.findings:  # seeded weights: any label map, but on the source grid
        assert finding.label == "spleen"
        assert all(0 <= v < n for v, n in zip(finding.centre, volume.shape, strict=True))
    assert not (folder / "eval").exists()


def test_the_lung_nodule_bundle_boxes_lie_on_the_volume(tmp_path: Path) -> None:
    folder = zoo_bundle("lung_nodule_ct_detection", tmp_path, tweak=retinanet_scores(0.0))
    labels = {0: label_entry("nodule", "27925004", "Nodule", threshold=0.5)}
    runner = BundleRunner(folder, site_manifest("luna", folder, Task.DETECTION, labels), "cpu")
    volume = synthetic_volume(
        (24, 48, 48), (1.25, 0.7, 0.7), orientation="oblique", origin=(-120.0, -150.0, 40.0)
    )
    report = runner.report(volume_grid(volume))
    assert report.findings  # far from the origin: boxes read as RAS would all be off the volume
    for finding in report.findings:
        assert finding.probability is not None
        assert finding.probability >= 0.5
        assert finding.extent_mm is not None
        assert all(-0.5 <= v < n - 0.5 for v, n in zip(finding.centre, volume.shape, strict=True))


def test_a_2d_classifier_answers_each_image(tmp_path: Path) -> None:
    folder = zoo_bundle("classification_template", tmp_path)
    labels = {i: label_entry(f"class {i}", f"11111{i}", f"Class {i}") for i in range(4)}
    manifest = site_manifest(
        "classes", folder, Task.CLASSIFICATION, labels, input_kind="image_set", modality="OT"
    )
    runner = BundleRunner(folder, manifest, "cpu")
    grid = image_grid((planar_image((64, 48)), planar_image((64, 48), seed=1, index=1)))
    report = runner.report(grid)
    assert [s.image_index for s in report.classifications] == [0, 1]
    for scores in report.classifications:  # softmax, taken before the bundle's AsDiscreted
        assert sum(scores.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert len(set(scores.probabilities)) == 4

"""The node runs MONAI model-zoo bundles as MONAI's own runner does (issue 16, "How it is shown").

Each zoo bundle (unchanged, seeded weights of its own ``network_def``) runs twice on the same
small synthetic series: through the node's :class:`BundleRunner` on the in-memory volume or
images, and through ``monai.bundle run`` (:func:`tests.bundles.monai_run`) on the same series
written as NIfTI or PNG. The overrides given to MONAI's runner are only what points it at
those files and at the CPU, plus, for classification_template, what exposes the probabilities
its postprocessing argmaxes away; each is explained where it is given.

Agreement asked: masks with Dice >= 0.99 on the source grid, boxes within 1 mm (centre and
extent, patient LPS), probabilities within 1e-4.
"""

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cad_node.domain.imaging import ImageVolume
from cad_node.domain.results import ModelReport, ResultGrid, SourceImage
from cad_node.models.manifest import Task
from cad_node.models.site.bundle import BundleRunner
from tests.bundles import (
    SPLEEN_LABELS,
    bundle_config,
    image_grid,
    label_entry,
    monai_run,
    planar_image,
    retinanet_scores,
    scale_output,
    shift_output_bias,
    site_manifest,
    source_grid_of,
    synthetic_volume,
    volume_grid,
    write_grey_nifti,
    write_nifti,
    write_png,
    zoo_bundle,
)

pytest.importorskip("torchvision")  # the lung detector's and breast density's networks

pytestmark = pytest.mark.slow  # MONAI's runner in a fresh interpreter per bundle

CPU = "$torch.device('cpu')"
"""The bundles' ``device`` picks CUDA when there is one; both runners get the CPU here."""

DICE_AT_LEAST = 0.99
BOX_MM = 1.0
PROBABILITY = 1e-4

SERIES = (("axial", True), ("coronal", False), ("oblique", False))
"""(orientation, head first) of the series each 3D bundle reads."""


@dataclass(frozen=True)
class Compared:
    """One bundle run by both runners on the same inputs."""

    node: tuple[ModelReport, ...]
    monai: Path
    """MONAI's output folder."""
    inputs: tuple[Path, ...]


def _node(
    folder: Path, manifest_args: dict[str, Any], grids: list[ResultGrid]
) -> tuple[ModelReport, ...]:
    runner = BundleRunner(folder, site_manifest(folder.name, folder, **manifest_args), "cpu")
    return tuple(runner.report(grid) for grid in grids)


# --- spleen_ct_segmentation: masks ---------------------------------------------------------

SPLEEN_BALANCE = -0.19
"""Added to the seeded UNet's "spleen" logit: it otherwise calls nearly every voxel spleen
(logit differences 0.14-0.22 on these series); with it about half the voxels are."""


@pytest.fixture(scope="module")
def spleen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Compared, list[ImageVolume]]:
    tmp = tmp_path_factory.mktemp("spleen")
    folder = zoo_bundle("spleen_ct_segmentation", tmp, tweak=shift_output_bias(1, SPLEEN_BALANCE))
    volumes = [
        synthetic_volume(orientation=o, head_first=h, seed=i) for i, (o, h) in enumerate(SERIES)
    ]
    paths = tuple(write_nifti(v, tmp / f"series{i}.nii.gz") for i, v in enumerate(volumes))
    out = tmp / "monai"
    monai_run(
        folder,
        bundle_config(folder),
        {
            "datalist": [str(p) for p in paths],  # instead of a glob of the Decathlon's folder
            "output_dir": str(out),  # instead of <bundle>/eval
            "device": CPU,
            "dataloader#num_workers": 0,  # no worker processes on a 2-core CI runner
        },
    )
    node = _node(
        folder,
        {"task": Task.SEGMENTATION, "labels": SPLEEN_LABELS},
        [volume_grid(v) for v in volumes],
    )
    return Compared(node, out, paths), volumes


def _node_labels(report: ModelReport, volume: ImageVolume) -> npt.NDArray[np.int64]:
    """The node's findings painted back into a label map ``[k, r, c]`` (value from the label)."""
    values = {entry["label"]: value for value, entry in SPLEEN_LABELS.items()}
    labels = np.zeros(volume.shape, dtype=np.int64)
    for finding in report.findings:
        assert finding.label is not None
        for mask in finding.masks:
            plane = mask.paste(volume.shape[1:])
            labels[mask.image_index][plane] = values[finding.label]
    return labels


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.mark.parametrize(
    "index", range(len(SERIES)), ids=[f"{o}-{'hf' if h else 'ff'}" for o, h in SERIES]
)
def test_spleen_masks_match_monai_on_the_source_grid(
    spleen: tuple[Compared, list[ImageVolume]], index: int
) -> None:
    compared, volumes = spleen
    volume = volumes[index]
    stem = compared.inputs[index].name.removesuffix(".nii.gz")
    theirs = source_grid_of(compared.monai / stem / f"{stem}_trans.nii.gz", volume)
    ours = _node_labels(compared.node[index], volume)
    spleen_voxels = theirs == 1
    assert 0.2 < spleen_voxels.mean() < 0.8, "the seeded network should call part of it spleen"
    assert _dice(ours == 1, spleen_voxels) >= DICE_AT_LEAST


# --- lung_nodule_ct_detection: boxes -------------------------------------------------------

NODULE_THRESHOLD = 0.5
NODULE = {0: label_entry("nodule", "27925004", "Nodule", threshold=NODULE_THRESHOLD)}
NODULE_LOGIT = -2.4
"""The seeded RetinaNet's classification bias: a handful of its boxes score above 0.5."""

LUNG_SERIES = (("axial", True), ("oblique", False))


@pytest.fixture(scope="module")
def lung(tmp_path_factory: pytest.TempPathFactory) -> tuple[Compared, list[ImageVolume]]:
    tmp = tmp_path_factory.mktemp("lung")
    folder = zoo_bundle("lung_nodule_ct_detection", tmp, tweak=retinanet_scores(NODULE_LOGIT))
    volumes = [
        synthetic_volume(
            (32, 64, 64),
            (1.25, 0.7, 0.7),
            orientation=o,
            head_first=h,
            origin=(100.0, 50.0, -200.0),  # LPS and RAS ranges differ: a sign slip shows
            background=-900.0,
            blob=40.0,
            seed=i,
        )
        for i, (o, h) in enumerate(LUNG_SERIES)
    ]
    paths = tuple(write_nifti(v, tmp / f"series{i}.nii.gz") for i, v in enumerate(volumes))
    out = tmp / "monai"
    out.mkdir()
    monai_run(
        folder,
        bundle_config(folder),
        {
            # instead of LUNA16's fold-0 datalist; these are "resampled" NIfTI, the default
            "test_datalist": [{"image": str(p)} for p in paths],
            "output_dir": str(out),  # instead of <bundle>/eval
            "device": CPU,
            "dataloader#num_workers": 0,  # no worker processes on a 2-core CI runner
        },
    )
    node = _node(
        folder, {"task": Task.DETECTION, "labels": NODULE}, [volume_grid(v) for v in volumes]
    )
    return Compared(node, out, paths), volumes


def _monai_boxes(out: Path, image: Path) -> list[tuple[npt.NDArray[np.float64], float]]:
    """(cccwhd box, score) of each box the DetectionSaver wrote for ``image`` at or above 0.5.

    Its boxes are world mm through ``AffineBoxToWorldCoordinated(affine_lps_to_ras=True)``:
    the RAS affine turned back to LPS, so already patient (LPS) coordinates.
    """
    results = json.loads((out / "result_luna16_fold0.json").read_text())
    (entry,) = [r for r in results if Path(r["image"]).name == image.name]
    return [
        (np.asarray(box, dtype=np.float64), float(score))
        for box, score in zip(entry["box"], entry["label_scores"], strict=True)
        if score >= NODULE_THRESHOLD
    ]


@pytest.mark.parametrize(
    "index", range(len(LUNG_SERIES)), ids=[f"{o}-{'hf' if h else 'ff'}" for o, h in LUNG_SERIES]
)
def test_lung_boxes_match_monai_in_patient_space(
    lung: tuple[Compared, list[ImageVolume]], index: int
) -> None:
    compared, volumes = lung
    volume = volumes[index]
    theirs = _monai_boxes(compared.monai, compared.inputs[index])
    findings = compared.node[index].findings
    assert 1 <= len(theirs) <= 30, "the tweaked detector should find a handful of boxes"
    assert len(findings) == len(theirs)
    low, high = _patient_bounds(volume)
    for box, score in theirs:
        centre, extent = box[:3], box[3:]
        assert np.all(centre >= low - BOX_MM)
        assert np.all(centre <= high + BOX_MM)
        nearest = min(
            findings,
            key=lambda f: float(
                np.linalg.norm(np.array(volume.index_to_patient(f.centre)) - centre)
            ),
        )
        assert np.allclose(volume.index_to_patient(nearest.centre), centre, atol=BOX_MM)
        assert nearest.extent_mm is not None
        assert np.allclose(nearest.extent_mm, extent, atol=BOX_MM)
        assert nearest.probability == pytest.approx(score, abs=PROBABILITY)


def _patient_bounds(volume: ImageVolume) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The LPS bounding box of the volume's voxel centres (MONAI clips its boxes to the image)."""
    corners = np.array(
        [
            volume.index_to_patient((k, r, c))
            for k in (0, volume.shape[0] - 1)
            for r in (0, volume.shape[1] - 1)
            for c in (0, volume.shape[2] - 1)
        ]
    )
    return corners.min(axis=0), corners.max(axis=0)


# --- classification_template and breast_density_classification: probabilities -----------

CLASSES_4 = {i: label_entry(f"class {i}", f"C{i}", f"Class {i}") for i in range(4)}


def _csv_probabilities(out: Path) -> dict[str, list[float]]:
    """ClassificationSaver's predictions.csv: file name -> the values it saved."""
    with (out / "predictions.csv").open(newline="") as handle:
        return {Path(row[0]).name: [float(v) for v in row[1:]] for row in csv.reader(handle)}


@dataclass(frozen=True)
class Classifier:
    """A 2D classification bundle and how MONAI's runner is pointed at the images."""

    name: str
    tweak: Callable[[Any], None]
    write: Callable[[SourceImage, Path], Path]
    """Writes an image as the file MONAI reads (the path is given without a suffix)."""
    overrides: Callable[[list[Path], Path], dict[str, Any]]
    """(image files, output folder) -> the overrides for ``monai.bundle run``."""


def _classify(
    tmp: Path, case: Classifier, images: tuple[SourceImage, ...]
) -> tuple[ModelReport, dict[str, list[float]], list[Path]]:
    name, tweak, write, overrides = case.name, case.tweak, case.write, case.overrides
    folder = zoo_bundle(name, tmp, tweak=tweak)
    paths = [write(image, tmp / f"image{i}") for i, image in enumerate(images)]
    out = tmp / "monai"
    out.mkdir()
    monai_run(folder, bundle_config(folder), overrides(paths, out))
    (report,) = _node(
        folder,
        {
            "task": Task.CLASSIFICATION,
            "labels": CLASSES_4,
            "input_kind": "image_set",
            "modality": "OT",
        },
        [image_grid(images)],
    )
    return report, _csv_probabilities(out), paths


def _template_overrides(paths: list[Path], out: Path) -> dict[str, Any]:
    return {
        # instead of <bundle>/data/test_samples.json; its evaluator's metrics need a label
        "test_dict": [{"image": str(p), "label": 0} for p in paths],
        "device": CPU,
        # The postprocessing argmaxes (AsDiscreted) for its accuracy metric: a copy of the
        # prediction is taken right after its own softmax (Activationsd, transform 0) ...
        "copy_probabilities": {"_target_": "CopyItemsd", "keys": "@pred", "names": "probs"},
        "evaluator#postprocessing": "$monai.transforms.Compose([@postprocessing.transforms[0],"
        " @copy_probabilities, *@postprocessing.transforms[1:]])",
        # ... and written by MONAI's ClassificationSaver, added to the bundle's own handlers.
        "probability_saver": {
            "_target_": "ClassificationSaver",
            "output_dir": str(out),
            "batch_transform": "$lambda x: [xx['image'].meta for xx in x]",
            "output_transform": "$monai.handlers.from_engine(['probs'])",
        },
        "evaluator#val_handlers": "$@val_handlers + [@probability_saver]",
    }


def test_classification_template_probabilities_match_monai(tmp_path: Path) -> None:
    images = tuple(planar_image(seed=s, index=s) for s in range(2))
    case = Classifier(
        "classification_template",
        scale_output(30.0),
        lambda image, stem: write_grey_nifti(image, stem.with_suffix(".nii.gz")),
        _template_overrides,
    )
    report, theirs, paths = _classify(tmp_path, case, images)
    _assert_same_probabilities(report, theirs, paths)


def _breast_overrides(paths: list[Path], out: Path) -> dict[str, Any]:
    return {
        # instead of scripts.createList reading ./configs/sample_image_data.json; the labels
        # are unused at inference
        "test_imagelist": [str(p) for p in paths],
        "test_labellist": [[1, 0, 0, 0]] * len(paths),
        "output_dir": str(out),  # where its ClassificationSaver writes predictions.csv
        "device": CPU,
        "dataloader#num_workers": 0,  # no worker processes on a 2-core CI runner
        # its inception_v3 asks torchvision for ImageNet weights, which cannot be fetched
        # offline; the bundle's checkpoint replaces every one of them anyway
        "network_def#pretrained": False,
        "run_id": "evaluating",  # the bundle names its run section "evaluating"
    }


def test_breast_density_probabilities_match_monai(tmp_path: Path) -> None:
    images = tuple(planar_image((120, 100), colour=True, seed=s, index=s) for s in range(2))
    case = Classifier(
        "breast_density_classification",
        scale_output(1e-10),
        lambda image, stem: write_png(image, stem.with_suffix(".png")),
        _breast_overrides,
    )
    report, theirs, paths = _classify(tmp_path, case, images)
    _assert_same_probabilities(report, theirs, paths)


def _assert_same_probabilities(
    report: ModelReport, theirs: dict[str, list[float]], paths: list[Path]
) -> None:
    assert [c.image_index for c in report.classifications] == list(range(len(paths)))
    spread = [max(theirs[p.name]) - min(theirs[p.name]) for p in paths]
    assert min(spread) > 0.05, f"probabilities too alike to tell inputs apart: {theirs}"
    assert all(0.0 < v < 1.0 for p in paths for v in theirs[p.name]), "saturated probabilities"
    for scores, path in zip(report.classifications, paths, strict=True):
        assert np.allclose(scores.probabilities, theirs[path.name], atol=PROBABILITY, rtol=0.0)

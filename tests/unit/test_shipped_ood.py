"""The shipped models' OOD scores and calibration (issue 17): the statistics files are the
ones their manifests hash, real images no one here made score over the threshold and fresh
synthetic data under it.  Real images are test inputs only (tests/real_images.py)."""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from cad_node.domain.findings import ModelResult
from cad_node.domain.image_sets import ImageSet, Laterality, PlanarImage, PlanarResult
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.volume import load_volume
from cad_node.models.base import reads_image_sets, reads_volumes
from cad_node.models.fundus.model import FundusModel
from cad_node.models.lung.detector import LungNoduleModel
from cad_node.models.mammo.model import MammoModel
from cad_node.models.manifest import Manifest, sha256_of
from cad_node.models.ood import load_ood_scorer
from cad_node.models.registry import SHIPPED_DIR, ModelRegistry
from cad_node.synth.dataset import write_dataset as write_ct_dataset
from cad_node.synth.fundus import write_dataset as write_fundus_dataset
from cad_node.synth.mammo import write_dataset as write_mammo_dataset
from tests.real_images import real_ct_series, real_file, retina_photograph

SHIPPED = sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "manifest.json").is_file())
WITH_OOD = ("fundus_dr", "lung_nodule_ct", "mammo_screening")
MAX_STATS_BYTES = 1_000_000
FRESH_SEED = 990_300
"""Seeds no shipped model was trained, calibrated or validated on."""
WRITE_SYNTHETIC: dict[str, Callable[..., list[Path]]] = {
    "fundus_dr": write_fundus_dataset,
    "lung_nodule_ct": write_ct_dataset,
    "mammo_screening": write_mammo_dataset,
}


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(device="cpu")


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_is_calibrated(name: str) -> None:
    calibration = Manifest.read(SHIPPED_DIR / name).calibration
    assert calibration["method"] == "temperature"
    assert calibration["temperature"] > 0


@pytest.mark.parametrize("name", WITH_OOD)
def test_shipped_ood_statistics_match_their_manifest(name: str) -> None:
    folder = SHIPPED_DIR / name
    manifest = Manifest.read(folder)
    assert manifest.ood, f"{name}: no OOD score in the manifest"
    path = folder / manifest.ood["file"]
    assert sha256_of(path) == manifest.ood["sha256"]
    assert path.stat().st_size < MAX_STATS_BYTES
    scorer = load_ood_scorer(folder, manifest)
    assert scorer is not None
    assert scorer.stats.dimensions == manifest.ood["features"]


def _single_image_set(dataset_path: Path) -> ImageSet:
    return load_image_set([dataset_path])


@pytest.mark.parametrize("name", WITH_OOD)
def test_fresh_synthetic_exam_under_threshold(
    registry: ModelRegistry, tmp_path: Path, name: str
) -> None:
    (folder,) = WRITE_SYNTHETIC[name](tmp_path, 1, seed=FRESH_SEED)
    files = sorted(folder.glob("*.dcm"))
    model = registry.get(name)
    result: ModelResult | PlanarResult
    if reads_volumes(model):
        result = model.predict(load_volume(files))
    else:
        assert reads_image_sets(model)
        result = model.predict(load_image_set(files))
    assert result.ood is not None
    assert not result.ood.outside, f"fresh synthetic {name} exam scored {result.ood.score:.2f}"


def test_fundus_real_photograph_over_threshold(registry: ModelRegistry, tmp_path: Path) -> None:
    model = registry.get("fundus_dr")
    assert isinstance(model, FundusModel)
    retina = tmp_path / "retina.dcm"
    retina_photograph("real fundus").save_as(retina, enforce_file_format=True)
    real = model.predict(_single_image_set(retina)).ood
    assert real is not None
    assert real.outside, f"skimage retina scored {real.score:.2f} <= {real.threshold:.2f}"
    # a margin, not a hair: the card measured 1.84 x the threshold
    assert real.score > 1.5 * real.threshold, f"retina {real.score:.2f} is too close"


@pytest.mark.parametrize(
    ("seed", "grades"),
    [(11, (2, 3)), (990_311, (4, 4)), (990_312, (1, 0))],
    ids=["benchmark-seed-11", "proliferative", "mild"],
)
def test_fundus_synthetic_exams_of_every_grade_under_threshold(
    registry: ModelRegistry, tmp_path: Path, seed: int, grades: tuple[int, int]
) -> None:
    """The benchmark's exam (bench.throughput / bench.priority: seed 11, grades 2 and 3) and
    rare grades are inside the validated domain: no false abstention."""
    from cad_node.synth.fundus import FundusSpec, generate_fundus, write_study

    model = registry.get("fundus_dr")
    assert isinstance(model, FundusModel)
    files = write_study(generate_fundus(FundusSpec(seed=seed, grades=grades)), tmp_path)
    score = model.predict(load_image_set(sorted(files))).ood
    assert score is not None
    assert not score.outside, f"synthetic exam (grades {grades}) scored {score.score:.2f}"


def _as_mammogram_views(path: Path) -> ImageSet:
    """A real grayscale image (not a mammogram) as a right CC and MLO view."""
    dataset = dcmread(path)
    pixels = dataset.pixel_array.astype(np.float32)
    if pixels.ndim == 3:
        pixels = pixels[0]
    views = tuple(
        PlanarImage(
            sop_instance_uid=f"2.25.{index}",
            series_instance_uid="2.25.9",
            sop_class_uid=str(dataset.SOPClassUID),
            pixels=pixels,
            pixel_spacing_mm=(0.2, 0.2),
            laterality=Laterality.RIGHT,
            view_position=position,
        )
        for index, position in enumerate(("CC", "MLO"), start=1)
    )
    return ImageSet(study_instance_uid="2.25.8", modality="MG", images=views)


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "MR_small.dcm"])
def test_mammo_real_images_over_threshold(registry: ModelRegistry, name: str) -> None:
    model = registry.get("mammo_screening")
    assert isinstance(model, MammoModel)
    score = model.predict(_as_mammogram_views(real_file(name))).ood
    assert score is not None
    assert score.outside, f"{name} scored {score.score:.2f} <= {score.threshold:.2f}"


@pytest.mark.parametrize(
    ("name", "slices", "finite"),
    [("explicit_VR-UN.dcm", 64, True), ("CT_small.dcm", 16, False)],
    ids=["abdominal-ct-with-candidates", "small-ct-without-candidates"],
)
def test_lung_real_ct_over_threshold(
    registry: ModelRegistry, tmp_path: Path, name: str, slices: int, finite: bool
) -> None:
    """A real slice repeated into a volume: one gives the candidate generator 150 blobs to
    score, the other none (infinitely far: every training scan had dozens)."""
    model = registry.get("lung_nodule_ct")
    assert isinstance(model, LungNoduleModel)
    volume = load_volume(real_ct_series(name, tmp_path, "real", slices=slices))
    score = model.predict(volume).ood
    assert score is not None
    assert score.outside, f"{name} scored {score.score:.2f} <= {score.threshold:.2f}"
    assert math.isfinite(score.score) == finite


def test_refit_only_fits_ood_and_calibration_and_keeps_the_weights(tmp_path: Path) -> None:
    import shutil

    from tests.conftest import models_command

    data, out = tmp_path / "data", tmp_path / "model"
    assert models_command(["synth", "mammo", "--out", str(data), "--count", "3"]) == 0
    shutil.copytree(SHIPPED_DIR / "mammo_screening", out)
    shipped = Manifest.read(out)
    (out / "ood.npz").unlink()
    argv = ["train", "mammo", "--data", str(data), "--out", str(out), "--refit-only"]
    assert models_command([*argv, "--ood-percentile", "90"]) == 0
    refitted = Manifest.read(out)
    assert sha256_of(out / "model.pt") == shipped.sha256 == refitted.sha256
    assert refitted.ood["percentile"] == 90
    assert refitted.ood["sha256"] == sha256_of(out / "ood.npz")
    assert refitted.calibration["uncalibrated_operating_threshold"] == pytest.approx(
        shipped.calibration["uncalibrated_operating_threshold"]
    )
    assert refitted.training == shipped.training


def test_fundus_refit_adds_validation_data_and_keeps_the_weights(tmp_path: Path) -> None:
    import shutil

    from tests.conftest import models_command

    data, more, out = tmp_path / "data", tmp_path / "more", tmp_path / "model"
    assert models_command(["synth", "fundus", "--out", str(data), "--count", "4"]) == 0
    argv = ["synth", "fundus", "--out", str(more), "--count", "2", "--seed", "990400"]
    assert models_command(argv) == 0
    shutil.copytree(SHIPPED_DIR / "fundus_dr", out)
    shipped = Manifest.read(out)
    argv = ["train", "fundus", "--data", str(data), "--out", str(out), "--refit-only"]
    assert models_command([*argv, "--validation-data", str(more)]) == 0
    refitted = Manifest.read(out)
    assert sha256_of(out / "model.pt") == shipped.sha256 == refitted.sha256
    assert refitted.ood["method"] == "mahalanobis-encoder-statistics"
    assert refitted.ood["sha256"] == sha256_of(out / "ood.npz")
    # 1 of the 4 exams is held out by the split, the 2 more join it
    assert refitted.ood["thresholded_on"].startswith("3 validation exams (1 held out")
    assert refitted.calibration["samples"] == 6
    argv = ["train", "mammo", "--data", str(data), "--out", str(out), "--refit-only"]
    assert models_command([*argv, "--validation-data", str(more)]) != 0

"""The shipped models give the same answers on a CUDA GPU (float16 autocast) as on the CPU.

Runs only where torch sees a GPU; CI has none, so this is the check a site (or a developer
with a GPU) runs before switching ``device: cuda`` on.  Tolerances: float16 moves
probabilities by about 1e-3; findings must be the same ones, at the same place.
"""

import math
from pathlib import Path

import pytest
import torch

from cad_node.domain.findings import ModelResult
from cad_node.domain.image_sets import ImageSet, PlanarResult
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.volume import load_volume
from cad_node.models.registry import ModelRegistry
from cad_node.synth.fundus import FundusSpec, generate_fundus, write_study
from cad_node.synth.mammo import write_dataset
from tests.synthetic import write_ct_series

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROBABILITY_TOLERANCE = 0.02
CENTRE_TOLERANCE_MM = 1.0
DIAMETER_TOLERANCE_MM = 0.5


def _both(name: str) -> tuple[object, object]:
    return ModelRegistry(device="cpu").get(name), ModelRegistry(device="cuda").get(name)


def test_lung_findings_agree(tmp_path: Path) -> None:
    series = write_ct_series(
        tmp_path, seed=9101, rows=256, slices=120, slice_thickness_mm=1.25, nodule_count=3
    )
    cpu, gpu = _both("lung_nodule_ct")
    volume = load_volume(series.paths)
    on_cpu, on_gpu = cpu.predict(volume), gpu.predict(volume)  # type: ignore[attr-defined]
    assert isinstance(on_cpu, ModelResult)
    assert isinstance(on_gpu, ModelResult)
    assert on_cpu.findings, "the synthetic scan has nodules: nothing to compare"
    assert len(on_gpu.findings) == len(on_cpu.findings)
    for a, b in zip(on_cpu.findings, on_gpu.findings, strict=True):
        assert math.dist(a.centre_patient_mm, b.centre_patient_mm) <= CENTRE_TOLERANCE_MM
        assert abs(a.diameter_mm - b.diameter_mm) <= DIAMETER_TOLERANCE_MM
        assert abs(a.probability - b.probability) <= PROBABILITY_TOLERANCE


def _assessments_agree(on_cpu: PlanarResult, on_gpu: PlanarResult) -> None:
    assert len(on_gpu.assessments) == len(on_cpu.assessments)
    for a, b in zip(on_cpu.assessments, on_gpu.assessments, strict=True):
        assert (a.kind, a.laterality, a.grade) == (b.kind, b.laterality, b.grade)
        assert abs(a.score - b.score) <= PROBABILITY_TOLERANCE
    assert len(on_gpu.findings) == len(on_cpu.findings)
    for f, g in zip(on_cpu.findings, on_gpu.findings, strict=True):
        assert (f.finding_type, f.sop_instance_uid) == (g.finding_type, g.sop_instance_uid)
        assert abs(f.probability - g.probability) <= PROBABILITY_TOLERANCE


def _predict_both(name: str, images: ImageSet) -> tuple[PlanarResult, PlanarResult]:
    cpu, gpu = _both(name)
    on_cpu, on_gpu = cpu.predict(images), gpu.predict(images)  # type: ignore[attr-defined]
    assert isinstance(on_cpu, PlanarResult)
    assert isinstance(on_gpu, PlanarResult)
    return on_cpu, on_gpu


def test_mammography_assessments_agree(tmp_path: Path) -> None:
    for folder in write_dataset(tmp_path, 2, 990_500, prevalence=1.0):
        images = load_image_set(sorted(folder.glob("*.dcm")))
        _assessments_agree(*_predict_both("mammo_screening", images))


def test_fundus_grades_agree(tmp_path: Path) -> None:
    folder = tmp_path / "exam"
    write_study(generate_fundus(FundusSpec(seed=990_501, grades=(0, 3))), folder)
    _assessments_agree(*_predict_both("fundus_dr", load_image_set(sorted(folder.glob("*.dcm")))))

"""A tiny fundus training run writes a loadable model; the evaluation writes its report."""

from pathlib import Path

import pytest

from cad_node.domain.image_sets import AssessmentKind
from cad_node.evaluation.fundus import evaluate_fundus
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.models.fundus.model import FundusModel
from cad_node.models.fundus.train import FAMILY, MODEL_NAME, TrainConfig, train
from cad_node.models.manifest import Manifest, sha256_of
from cad_node.synth.fundus import write_dataset


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("fundus")
    write_dataset(data, count=4, seed=880_000, size=256)
    return data


@pytest.fixture(scope="module")
def trained(exams: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    train(exams, out, TrainConfig(epochs=1, batch_size=4, width=4, validation_fraction=0.25))
    return out


def test_tiny_training_run_writes_a_loadable_manifest_and_weights(trained: Path) -> None:
    manifest = Manifest.read(trained)
    assert (manifest.name, manifest.family, manifest.modality) == (MODEL_NAME, FAMILY, "OP")
    assert manifest.sha256 == sha256_of(trained / manifest.weights_file)
    assert manifest.architecture["width"] == 4
    assert len(manifest.training["history"]) == 1
    assert "weighted loss" in manifest.training["imbalance"]
    assert "NOT FOR CLINICAL USE" in manifest.intended_use
    assert len(manifest.input_spec["lesion_thresholds"]) == 5
    assert 0.0 <= manifest.operating_threshold <= 1.0


def test_trained_folder_predicts_one_assessment_per_eye(trained: Path, exams: Path) -> None:
    model = FundusModel(trained, Manifest.read(trained))
    model.load("cpu")
    folder = sorted(exams.iterdir())[0]
    result = model.predict(load_image_set(sorted(folder.glob("*.dcm"))))
    assert [a.laterality.eye for a in result.assessments] == ["OD", "OS"]
    for assessment in result.assessments:
        assert assessment.kind is AssessmentKind.DIABETIC_RETINOPATHY
        assert sum(assessment.class_probabilities) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= assessment.score <= 4.0


def test_evaluation_writes_a_report(trained: Path, exams: Path, tmp_path: Path) -> None:
    model = FundusModel(trained, Manifest.read(trained))
    model.load("cpu")
    evaluation = evaluate_fundus(model, exams, tmp_path / "report")
    assert len(evaluation.eyes) == 8
    assert evaluation.confusion.sum() == 8
    text = evaluation.report_path.read_text()
    assert "NOT FOR CLINICAL USE" in text
    assert "kappa" in text.lower()
    assert (tmp_path / "report" / "index.html").is_file()
    assert list((tmp_path / "report").glob("confusion*.png"))

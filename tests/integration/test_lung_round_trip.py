"""The lung model's lab commands end to end: synth ct, train lung (and its --refit-only with
--validation-data), evaluate lung.

Here rather than in tests/unit: it trains a model (about 50 s on a quiet core).
"""

from pathlib import Path

import pytest

from cad_node.models.manifest import Manifest, sha256_of
from tests.conftest import models_command


@pytest.mark.slow
def test_train_then_evaluate_round_trip(tmp_path: Path) -> None:
    data, out, report = tmp_path / "data", tmp_path / "model", tmp_path / "report"
    synth = ["synth", "ct", "--out", str(data), "--count", "2", "--seed", "9300"]
    assert models_command([*synth, "--rows", "64", "--slices", "30", "--slice-thickness", "4"]) == 0
    train = ["train", "lung", "--data", str(data), "--out", str(out), "--epochs", "1"]
    train += ["--samples-per-epoch", "16", "--batch-size", "8", "--width", "4"]
    assert models_command(train) == 0
    manifest = Manifest.read(out)
    assert manifest.sha256 == sha256_of(out / "model.pt")
    assert manifest.training["series"] == 2
    trained_ood = manifest.ood

    more = tmp_path / "more"
    synth = ["synth", "ct", "--out", str(more), "--count", "1", "--seed", "9310"]
    assert models_command([*synth, "--rows", "64", "--slices", "30", "--slice-thickness", "4"]) == 0
    refit = ["train", "lung", "--data", str(data), "--out", str(out), "--refit-only"]
    assert models_command([*refit, "--validation-data", str(more)]) == 0
    refitted = Manifest.read(out)
    assert refitted.sha256 == manifest.sha256 == sha256_of(out / "model.pt")
    assert refitted.ood["sha256"] == sha256_of(out / "ood.npz")
    # 1 of the 2 scans is held out by the split, the 1 more joins it
    assert refitted.ood["thresholded_on"].startswith(
        "2 validation scans (1 held out of the training data + 1 from --validation-data)"
    )
    assert refitted.ood["fitted_on"] == trained_ood["fitted_on"]
    assert refitted.calibration == manifest.calibration

    evaluate = ["evaluate", "lung", "--data", str(data), "--report", str(report)]
    assert models_command([*evaluate, "--model", str(out), "--device", "cpu"]) == 0
    text = (report / "report.md").read_text()
    assert "CPM" in text
    assert "NOT FOR CLINICAL USE" in text
    assert (report / "froc.svg").read_text().startswith("<svg")

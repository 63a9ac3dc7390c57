"""The lung model's lab commands end to end: synth ct, train lung, evaluate lung.

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
    evaluate = ["evaluate", "lung", "--data", str(data), "--report", str(report)]
    assert models_command([*evaluate, "--model", str(out), "--device", "cpu"]) == 0
    text = (report / "report.md").read_text()
    assert "CPM" in text
    assert "NOT FOR CLINICAL USE" in text
    assert (report / "froc.svg").read_text().startswith("<svg")

"""The model subcommands: synth ct, evaluate lung, models (the lung round trip with training:
tests/integration/test_lung_round_trip.py)."""

import json
from pathlib import Path

import pydicom
import pytest

from tests.conftest import models_command


def test_synth_ct_writes_series_with_ground_truth(tmp_path: Path) -> None:
    argv = ["synth", "ct", "--out", str(tmp_path), "--count", "2", "--seed", "77", "--rows", "64"]
    argv += ["--slices", "10", "--slice-thickness", "5", "--images-in-acquisition"]
    assert models_command(argv) == 0
    folders = sorted(tmp_path.iterdir())
    assert [f.name for f in folders] == ["ct_000077", "ct_000078"]
    files = sorted(folders[0].glob("*.dcm"))
    assert len(files) == 10
    ds = pydicom.dcmread(files[0])
    assert (ds.Rows, ds.ImagesInAcquisition, float(ds.SliceThickness)) == (64, 10, 5.0)
    truth = json.loads((folders[0] / "ground_truth.json").read_text())
    assert truth["series_instance_uid"] == ds.SeriesInstanceUID


def test_models_lists_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert models_command(["models", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "lung_nodule_ct" in out
    assert "NOT FOR CLINICAL USE" in out
    assert "docs/model-cards/lung-nodule-ct.md" in out


def test_evaluate_with_an_unknown_model_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "lung", "--data", str(tmp_path), "--report", str(tmp_path / "r")]
    assert models_command([*argv, "--model", "no_such_model"]) == 1
    assert "no model named" in capsys.readouterr().err

"""The model subcommands: synth ct, train lung, evaluate lung, models."""

import argparse
import json
from pathlib import Path

import pydicom
import pytest

from cad_node.models.cli import add_commands
from cad_node.models.manifest import Manifest, sha256_of


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cad-node")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_synth_ct_writes_series_with_ground_truth(tmp_path: Path) -> None:
    argv = ["synth", "ct", "--out", str(tmp_path), "--count", "2", "--seed", "77", "--rows", "64"]
    argv += ["--slices", "10", "--slice-thickness", "5", "--images-in-acquisition"]
    assert _run(argv) == 0
    folders = sorted(tmp_path.iterdir())
    assert [f.name for f in folders] == ["ct_000077", "ct_000078"]
    files = sorted(folders[0].glob("*.dcm"))
    assert len(files) == 10
    ds = pydicom.dcmread(files[0])
    assert (ds.Rows, ds.ImagesInAcquisition, float(ds.SliceThickness)) == (64, 10, 5.0)
    truth = json.loads((folders[0] / "ground_truth.json").read_text())
    assert truth["series_instance_uid"] == ds.SeriesInstanceUID


def test_models_lists_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["models", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "lung_nodule_ct" in out
    assert "NOT FOR CLINICAL USE" in out
    assert "docs/model-cards/lung-nodule-ct.md" in out


def test_evaluate_with_an_unknown_model_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "lung", "--data", str(tmp_path), "--report", str(tmp_path / "r")]
    assert _run([*argv, "--model", "no_such_model"]) == 1
    assert "no model named" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_evaluate_round_trip(tmp_path: Path) -> None:
    data, out, report = tmp_path / "data", tmp_path / "model", tmp_path / "report"
    synth = ["synth", "ct", "--out", str(data), "--count", "2", "--seed", "9300"]
    assert _run([*synth, "--rows", "64", "--slices", "30", "--slice-thickness", "4"]) == 0
    train = ["train", "lung", "--data", str(data), "--out", str(out), "--epochs", "1"]
    assert _run([*train, "--samples-per-epoch", "16", "--batch-size", "8", "--width", "4"]) == 0
    manifest = Manifest.read(out)
    assert manifest.sha256 == sha256_of(out / "model.pt")
    assert manifest.training["series"] == 2
    evaluate = ["evaluate", "lung", "--data", str(data), "--report", str(report)]
    assert _run([*evaluate, "--model", str(out), "--device", "cpu"]) == 0
    text = (report / "report.md").read_text()
    assert "CPM" in text
    assert "NOT FOR CLINICAL USE" in text
    assert (report / "froc.svg").read_text().startswith("<svg")

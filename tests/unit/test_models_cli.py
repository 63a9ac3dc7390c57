"""The model platform's commands: models (with weights check), evaluate MODEL, planar synth/train.

The lung commands' own round trip is in tests/integration/test_lung_round_trip.py; these
cover the listing, the choice of evaluator by the manifest's family, and the planar families'
wiring.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cad_node.commands import models as cli
from cad_node.commands.models import EVALUATORS, Evaluator
from cad_node.models.manifest import MANIFEST_NAME, Manifest, sha256_of
from cad_node.models.registry import SHIPPED_DIR
from tests.conftest import models_command

SHIPPED = SHIPPED_DIR / "lung_nodule_ct"


def _site_model(site: Path, name: str) -> Path:
    """A copy of the shipped lung model under another name."""
    folder = site / name
    shutil.copytree(SHIPPED, folder)
    manifest = replace(Manifest.read(folder), name=name, version="2.0.0")
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))


def _lines(text: str) -> dict[str, str]:
    return {line.split("\t", 1)[0]: line for line in text.splitlines()}


def test_models_lists_every_model_with_its_weights_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _site_model(tmp_path, "lung_site")
    _tamper(_site_model(tmp_path, "lung_tampered") / "model.pt")
    (_site_model(tmp_path, "lung_missing") / "model.pt").unlink()

    assert models_command(["models", "--model-dir", str(tmp_path), "--device", "cpu"]) == 1

    captured = capsys.readouterr()
    lines = _lines(captured.out)
    assert set(lines) >= {"lung_nodule_ct", "lung_site", "lung_tampered", "lung_missing"}
    shipped = lines["lung_nodule_ct"].split("\t")
    sha = Manifest.read(SHIPPED).sha256
    assert shipped[1:9] == [
        "version=0.1.0",
        "family=lung_ct",
        "modality=CT",
        "format=native",
        f"sha256={sha[:12]}",
        "device=cpu",
        "weights=OK",
        "card=docs/model-cards/lung-nodule-ct.md",
    ]
    assert "version=2.0.0" in lines["lung_site"]
    assert "weights=OK" in lines["lung_site"]
    assert "weights=TAMPERED" in lines["lung_tampered"]
    assert "weights=MISSING" in lines["lung_missing"]
    assert all(line.endswith("\tNOT FOR CLINICAL USE") for line in lines.values())
    assert "2 model(s) would be refused" in captured.err


def test_models_exits_0_when_every_weights_file_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _site_model(tmp_path, "lung_site")
    assert models_command(["models", "--model-dir", str(tmp_path), "--device", "cpu"]) == 0
    assert "TAMPERED" not in capsys.readouterr().out


def _recording_evaluator(model: Any, data_dir: Path, report_dir: Path) -> str:
    """Stands in for a family evaluator: says what the command handed it."""
    return f"evaluated {model.identity.name} on {data_dir.name} into {report_dir.name}"


def _failing_evaluator(model: Any, data_dir: Path, report_dir: Path) -> str:
    raise ValueError(f"{data_dir} holds no study with a truth.json")


def test_evaluate_picks_the_evaluator_of_the_manifest_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(EVALUATORS, "lung_ct", Evaluator(__name__, "_recording_evaluator", str))
    folder = _site_model(tmp_path / "site", "lung_site")
    paths = ["--data", str(tmp_path / "data"), "--report", str(tmp_path / "report")]

    assert models_command(["evaluate", str(folder), *paths]) == 0
    assert models_command(["evaluate", "lung", *paths]) == 0
    assert models_command(["evaluate", "lung", "--model", str(folder), *paths]) == 0
    assert models_command(["evaluate", "lung_nodule_ct", *paths, "--device", "cpu"]) == 0

    said = [line.split("; report in")[0] for line in capsys.readouterr().out.splitlines()]
    assert said == [
        "lung_site: evaluated lung_site on data into report",
        "lung_nodule_ct: evaluated lung_nodule_ct on data into report",
        "lung_site: evaluated lung_site on data into report",
        "lung_nodule_ct: evaluated lung_nodule_ct on data into report",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "no_such_model"], "no model named no_such_model"),
        (["evaluate", "mammo", "--model", "lung_nodule_ct"], "is a lung_ct model, not mammography"),
        (["evaluate", "lung_nodule_ct", "--model", "x"], "--model goes with"),
    ],
)
def test_evaluate_refuses_a_model_it_cannot_evaluate(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = ["--data", str(tmp_path), "--report", str(tmp_path / "r")]
    assert models_command([*argv, *paths]) == 1
    assert message in capsys.readouterr().err


def test_evaluate_reports_data_the_evaluator_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(EVALUATORS, "lung_ct", Evaluator(__name__, "_failing_evaluator", str))
    argv = ["evaluate", "lung", "--data", str(tmp_path), "--report", str(tmp_path / "r")]
    assert models_command(argv) == 1
    assert "cannot evaluate on" in capsys.readouterr().err


def test_train_refuses_an_option_the_family_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "fundus", "--data", str(tmp_path), "--out", str(tmp_path / "m")]
    assert models_command([*argv, "--samples-per-epoch", "8"]) == 1
    assert "`train fundus` has no --samples-per-epoch option" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "options"), [("fundus", []), ("mammo", ["--samples-per-epoch", "16"])]
)
def test_planar_synth_train_evaluate_round_trip(
    tmp_path: Path, kind: str, options: list[str]
) -> None:
    data, model, report = tmp_path / "data", tmp_path / "model", tmp_path / "report"
    assert (
        models_command(["synth", kind, "--out", str(data), "--count", "4", "--seed", "9400"]) == 0
    )
    studies = sorted(p.parent for p in data.rglob("truth.json"))
    assert len(studies) == 4
    assert all(any(s.rglob("*.dcm")) for s in studies)
    train = ["train", kind, "--data", str(data), "--out", str(model), "--epochs", "1"]
    assert (
        models_command([*train, "--batch-size", "4", "--threads", "1", "--seed", "3", *options])
        == 0
    )
    manifest = Manifest.read(model)
    assert manifest.sha256 == sha256_of(model / manifest.weights_file)
    assert manifest.family == cli.PLANAR_FAMILIES[kind]
    evaluate = ["evaluate", str(model), "--data", str(data), "--report", str(report)]
    assert models_command([*evaluate, "--device", "cpu"]) == 0
    assert "NOT FOR CLINICAL USE" in (report / "report.md").read_text()


@pytest.mark.slow
def test_evaluate_by_folder_runs_the_lung_evaluator(tmp_path: Path) -> None:
    data, report = tmp_path / "data", tmp_path / "report"
    synth = ["synth", "ct", "--out", str(data), "--count", "1", "--seed", "9310"]
    assert models_command([*synth, "--rows", "96", "--slices", "24", "--slice-thickness", "5"]) == 0
    folder = _site_model(tmp_path / "site", "lung_site")
    assert (
        models_command(["evaluate", str(folder), "--data", str(data), "--report", str(report)]) == 0
    )
    text = (report / "report.md").read_text()
    assert "CPM" in text
    assert "lung_site" in text
    assert json.loads((folder / MANIFEST_NAME).read_text())["format"] == "native"

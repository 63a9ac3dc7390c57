"""``cad-node rules test FOLDER`` and ``rules check`` through argparse, on real DICOM headers."""

import argparse
import shutil
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread

from cad_node.commands.rules import add_commands, read_series
from tests.conftest import pydicom_file

NODE_YAML = Path(__file__).parents[2] / "config" / "node.yaml"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cad-node")
    add_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """CT_small, MR_small, a thin chest CT of two instances in a subfolder, and a text file."""
    folder = tmp_path / "dicom"
    (folder / "chest").mkdir(parents=True)
    shutil.copy(pydicom_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(pydicom_file("MR_small.dcm"), folder / "mr.dcm")
    for number in (1, 2):
        chest = dcmread(pydicom_file("CT_small.dcm"))
        chest.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77"
        chest.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{number}"
        chest.SliceThickness = "1.25"
        chest.SeriesDescription = "Chest 1.25"
        chest.save_as(folder / "chest" / f"{number}.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    return folder


def test_rules_test_prints_the_decision_and_reasons_per_series(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["rules", "test", str(folder), "--config", str(NODE_YAML)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"3 series in {folder} (1 non-DICOM files skipped)")
    chest = out[out.index("series 1.2.826.0.1.3680043.8.498.77") :].split("\n\n")[0]
    assert "modality CT, Chest 1.25, 2 instance(s)" in chest
    assert "routed by rule chest-ct-lung-nodules (active): model lung_nodule_ct -> pacs" in chest
    assert "✓ SeriesDescription matches /(?i)chest|thora|lung|pulm/ (was Chest 1.25)" in chest
    assert out.count("not routed: no active or shadow rule matches") == 2
    assert "✗ SliceThickness ≤ 2.5 (was 5.0)" in out
    assert "✗ Modality equals CT (was MR)" in out


def test_rules_test_uses_the_calling_ae_option(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    rule = {
        "name": "from-ct1",
        "model": "m",
        "destinations": ["pacs"],
        "when": {"keyword": "CallingAETitle", "equals": "CT1"},
    }
    pacs = {"host": "127.0.0.1", "port": 104, "ae_title": "PACS"}
    config.write_text(yaml.safe_dump({"destinations": {"pacs": pacs}, "rules": [rule]}))
    assert run(["rules", "test", str(folder), "--config", str(config), "--calling-ae", "CT1"]) == 0
    assert capsys.readouterr().out.count("routed by rule from-ct1") == 3
    assert run(["rules", "test", str(folder), "--config", str(config)]) == 0
    assert "✗ CallingAETitle equals CT1 (was -)" in capsys.readouterr().out


def test_read_series_groups_instances_by_series(folder: Path) -> None:
    series, skipped = read_series(folder, "-")
    assert skipped == 1
    assert sorted(s.instance_count for s in series) == [1, 1, 2]


def test_rules_test_on_a_folder_without_dicom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.txt").write_text("x")
    assert run(["rules", "test", str(tmp_path)]) == 1
    assert "no DICOM files found (1 other files)" in capsys.readouterr().out


def test_rules_check_lists_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["rules", "check", "--config", str(NODE_YAML)]) == 0
    out = capsys.readouterr().out
    assert "3 rule(s) valid" in out
    assert "chest-ct-lung-nodules: lung_nodule_ct -> pacs" in out


def test_rules_check_notes_keywords_the_node_does_not_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    rule = {
        "name": "age",
        "model": "lung_nodule_ct",
        "mode": "shadow",
        "when": {"keyword": "PatientAge", "present": True},
    }
    config.write_text(yaml.safe_dump({"rules": [rule]}))
    assert run(["rules", "check", "--config", str(config)]) == 0
    assert "rule age tests PatientAge, which the node does not record" in capsys.readouterr().out

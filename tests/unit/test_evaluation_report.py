"""Evaluation reports: report.md, index.html and PNG plots on disk, stating the computed numbers."""

import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cad_node.domain.findings import ModelIdentity
from cad_node.evaluation import metrics
from cad_node.evaluation.froc import Detection, FrocResult, TruthNodule, froc, match_scan
from cad_node.evaluation.lung import LungEvaluation, NoduleOutcome, write_report
from cad_node.evaluation.report import Report, markdown_table
from cad_node.synth.ct import NoduleTruth
from cad_node.synth.lesions import Attachment, NoduleType

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path.name
    assert len(data) > 5_000, f"{path.name} is suspiciously small ({len(data)} bytes)"


def _scores(seed: int = 3) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 80)
    return labels, labels * 1.2 + rng.normal(size=80)


def _froc_result() -> FrocResult:
    truth = [TruthNodule((0, 0, 0), 3.0), TruthNodule((40, 0, 0), 4.0)]
    scan = match_scan(
        [Detection((0, 0, 1), 0.9), Detection((20, 20, 20), 0.6), Detection((41, 0, 0), 0.3)],
        truth,
    )
    return froc([scan, scan])


def test_report_writes_markdown_html_and_pngs_with_the_computed_auc(tmp_path: Path) -> None:
    labels, scores = _scores()
    report = Report("Test model evaluation")
    summary = report.add_roc("Referable", labels, scores, operating_threshold=0.6)
    report.add_confusion_matrix("Density", [0, 1, 2, 3, 3], [0, 1, 1, 3, 2], list("ABCD"))
    report.add_froc("FROC", _froc_result())
    path = report.write(tmp_path / "report")

    assert path == tmp_path / "report" / "report.md"
    text = path.read_text()
    auc = metrics.roc_auc(labels, scores)
    low, high = metrics.auc_confidence_interval(labels, scores)
    assert summary.auc == pytest.approx(auc)
    assert f"| {auc:.3f} | {low:.3f}-{high:.3f} |" in text
    sensitivity, specificity = metrics.sensitivity_specificity(labels, scores >= 0.6)
    assert f"sensitivity {sensitivity:.3f}, specificity {specificity:.3f}" in text
    assert text.startswith("# Test model evaluation\n\n**NOT FOR CLINICAL USE.**")
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == ["confusion-density.png", "froc.png", "roc-referable.png"]
    for name in pngs:
        _assert_png(path.parent / name)
        assert f"]({name})" in text


def test_html_page_is_self_contained_with_the_warning_first(tmp_path: Path) -> None:
    labels, scores = _scores()
    report = Report("HTML <check>")
    report.add_roc("ROC", labels, scores)
    report.add_text("A note with <script>alert(1)</script> in it.")
    report.write(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.index("NOT FOR CLINICAL USE") < page.index("<h1>")
    assert "<title>HTML &lt;check&gt;</title>" in page
    assert "<script>" not in page  # raw HTML in markdown is escaped
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources == ["roc-roc.png"]
    assert all((tmp_path / s).is_file() for s in sources)
    assert "http" not in page  # nothing fetched from elsewhere
    assert f"<td>{metrics.roc_auc(labels, scores):.3f}</td>" in page


def test_confusion_section_states_per_class_rates_and_kappa(tmp_path: Path) -> None:
    truth = [0, 0, 1, 1, 2, 2]
    predicted = [0, 1, 1, 2, 2, 0]
    report = Report("Grades")
    kappa = report.add_kappa("ICDR", truth, predicted, ["none", "mild", "severe"])
    text = report.write(tmp_path).read_text()
    assert kappa == pytest.approx(0.25)  # worked out by hand in test_evaluation_metrics
    assert "Quadratic weighted kappa: 0.250." in text
    assert "| mild | 2 | 2 | 0.500 | 0.500 |" in text  # 1 of 2 mild found, 1 of 2 calls right
    assert "Accuracy: 0.500." in text


def test_froc_section_states_the_cpm(tmp_path: Path) -> None:
    result = _froc_result()
    report = Report("FROC")
    report.add_froc("FROC on two scans", result)
    text = report.write(tmp_path).read_text()
    assert f"| {result.cpm:.3f} |" in text
    _assert_png(tmp_path / "froc-on-two-scans.png")


def test_figures_with_the_same_name_get_distinct_files(tmp_path: Path) -> None:
    labels, scores = _scores()
    report = Report("Twice")
    report.add_roc("Left eye", labels, scores)
    report.add_roc("Left eye", labels, -scores)
    report.write(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "roc-left-eye-2.png",
        "roc-left-eye.png",
    ]


def test_per_class_bars_come_with_their_table(tmp_path: Path) -> None:
    report = Report("Lesions")
    series = {"Sensitivity": [0.75, float("nan")], "Precision": [0.5, 1.0]}
    report.add_bars("Per lesion type", ["microaneurysm", "haemorrhage"], series)
    text = report.write(tmp_path).read_text()
    assert "| microaneurysm | 0.750 | 0.500 |" in text
    assert "| haemorrhage | n/a | 1.000 |" in text
    _assert_png(tmp_path / "bars-per-lesion-type.png")
    with pytest.raises(ValueError, match="one value per class"):
        report.add_bars("bad", ["a", "b"], {"Sensitivity": [0.5]})


def test_tables_format_cells_and_check_widths() -> None:
    lines = markdown_table(["name", "dice"], [["a|b", 0.51234], ["c", float("nan")], ["d", 3]])
    assert lines == [
        "| name | dice |",
        "|---|---|",
        "| a\\|b | 0.512 |",
        "| c | n/a |",
        "| d | 3 |",
    ]
    with pytest.raises(ValueError, match="2 cells"):
        Report("x").add_table("bad", ["a", "b"], [["only one"]])


def test_roc_section_refuses_one_class_labels() -> None:
    with pytest.raises(ValueError, match="no positive case"):
        Report("x").add_roc("ROC", [0, 0, 0], [0.1, 0.2, 0.3])


def _nodule(label: int, kind: NoduleType, diameter: float) -> NoduleTruth:
    return NoduleTruth(
        label=label,
        nodule_type=kind,
        attachment=Attachment.ISOLATED,
        centre_index=(10.0, 20.0, 20.0),
        centre_patient_mm=(0.0, 0.0, 0.0),
        diameter_mm=diameter,
        volume_mm3=float(np.pi / 6 * diameter**3),
    )


def test_lung_report_keeps_its_numbers(tmp_path: Path) -> None:
    found = NoduleOutcome(_nodule(1, NoduleType.SOLID, 8.0), True, 9.0, 0.9)
    missed = NoduleOutcome(_nodule(2, NoduleType.GROUND_GLASS, 12.0), False, None, None)
    result = LungEvaluation(
        model=ModelIdentity("lung_nodule_ct", "1.0.0", "0" * 64),
        operating_threshold=0.5,
        froc=_froc_result(),
        scans=2,
        nodules=(found, missed),
        false_positives_at_threshold=3,
        seconds_per_scan=1.25,
    )
    text = write_report(result, tmp_path / "data", tmp_path / "report").read_text()
    assert f"| {result.froc.cpm:.3f} |" in text
    assert "- Sensitivity: 0.500" in text
    assert "- False positives per scan: 1.50" in text
    assert "mean +1.00 mm" in text  # found 9.0 mm, truth's equal-volume diameter 8.0 mm
    assert "| 6-10 mm | 1 | 1 | 1.00 |" in text
    assert "| ground_glass | 1 | 0 | 0.00 |" in text
    _assert_png(tmp_path / "report" / "froc.png")
    assert (tmp_path / "report" / "froc.svg").read_text().startswith("<svg")
    assert "NOT FOR CLINICAL USE" in (tmp_path / "report" / "index.html").read_text()

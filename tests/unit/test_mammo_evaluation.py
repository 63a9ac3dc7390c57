"""Mammography evaluation: lesion hit counting by hand, and a report from a few studies."""

from pathlib import Path

import numpy as np
import pytest

from cad_node.domain.findings import FindingType
from cad_node.domain.image_sets import Laterality, PlanarFinding, PlanarMask
from cad_node.evaluation import metrics
from cad_node.evaluation.mammo import _score_view, _Tally, evaluate_mammo
from cad_node.models.mammo.model import MammoModel
from cad_node.models.manifest import Manifest
from cad_node.synth.mammo import load_truth, write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHTS = Path(__file__).resolve().parents[2] / "cad_node/models/weights/mammo_screening"


def _finding(uid: str, centre: tuple[int, int], probability: float) -> PlanarFinding:
    full = np.zeros((512, 384), dtype=np.bool_)
    full[centre[0] - 2 : centre[0] + 3, centre[1] - 2 : centre[1] + 3] = True
    return PlanarFinding(
        finding_type=FindingType.MASS,
        sop_instance_uid=uid,
        laterality=Laterality.RIGHT,
        mask=PlanarMask.from_full(full),
        probability=probability,
    )


def test_hits_and_false_positives_are_counted_by_hand(tmp_path: Path) -> None:
    truth = load_truth(write_dataset(tmp_path, 1, 14)[0])  # seed 14: a mass in the right breast
    view = next(v for v in truth.views if v.key == "R_CC")
    lesion = truth.breast(Laterality.RIGHT).lesions[0]
    row, col = (round(x) for x in lesion.views["CC"].centre_rc)
    findings = [
        _finding(view.sop_instance_uid, (row + 3, col), 0.9),  # 0.9 mm off: a hit
        _finding(view.sop_instance_uid, (row - 2, col + 2), 0.4),  # a second hit, below 0.5
        _finding(view.sop_instance_uid, (row + 100, col), 0.7),  # 30 mm away: a false positive
        _finding("another image", (row, col), 0.99),  # not this view: ignored
    ]
    tally = _Tally(matches=[], outcomes=[])
    _score_view(truth, view, findings, 0.5, tally)
    (matches,) = tally.matches
    assert matches.nodule_scores == (0.9,)
    assert matches.false_positive_scores == (0.7,)
    assert tally.false_positives == 1
    assert [o.found for o in tally.outcomes] == [True]
    tally = _Tally(matches=[], outcomes=[])
    _score_view(truth, view, findings, 0.95, tally)
    assert [o.found for o in tally.outcomes] == [False]
    assert tally.false_positives == 0


@pytest.mark.slow
def test_the_report_states_the_metrics_of_the_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data, 5, 990_100, prevalence=0.5)
    model = MammoModel(WEIGHTS, Manifest.read(WEIGHTS))
    model.load("cpu")
    result = evaluate_mammo(model, data, tmp_path / "report")
    assert result.studies == 5
    assert len(result.breast_labels) == 10
    labels = np.array(result.breast_labels)
    scores = np.array(result.breast_scores)
    assert result.roc.auc == pytest.approx(metrics.roc_auc(labels, scores))
    predicted = scores >= model.threshold
    assert result.confusion.matrix[1, 1] == int((predicted & labels).sum())
    assert result.confusion.matrix.sum() == 10
    assert result.images == 20
    assert len(result.lesions) == 2 * sum(
        len(load_truth(f).breast(lat).lesions) for f in sorted(data.iterdir()) for lat in Laterality
    )
    assert len(result.cam_distances_mm) == int(labels.sum())  # one per malignant breast
    text = (tmp_path / "report" / "report.md").read_text()
    assert "NOT FOR CLINICAL USE" in text
    assert f"{result.roc.auc:.3f}" in text
    assert f"{result.fp_per_image:.2f} per image" in text
    for name in ("index.html", "roc-per-breast-suspicion.png", "froc-lesion-marks-per-image.png"):
        assert (tmp_path / "report" / name).is_file()

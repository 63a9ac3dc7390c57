"""FROC and CPM against a case computed by hand (LUNA16 hit rule)."""

import pytest

from cad_node.evaluation.froc import Detection, ScanMatches, TruthNodule, froc, match_scan
from cad_node.evaluation.plot import froc_svg


def _case() -> list[ScanMatches]:
    scan_a = match_scan(
        [
            Detection((1, 1, 0), 0.9),  # hits N1
            Detection((0, 2, 0), 0.4),  # hits N1 again: neither a second hit nor a false positive
            Detection((100, 0, 0), 0.8),  # false positive
            Detection((52, 0, 0), 0.3),  # 2 mm from N2 (radius 3): hit
        ],
        [TruthNodule((0, 0, 0), 5.0), TruthNodule((50, 0, 0), 3.0)],
    )
    scan_b = match_scan(
        [Detection((0, 0, 5), 0.7), Detection((20, 20, 20), 0.2)],  # 5 mm > radius 4: both FPs
        [TruthNodule((0, 0, 0), 4.0)],
    )
    return [scan_a, scan_b]


def test_matching_follows_the_luna16_rule() -> None:
    scan_a, scan_b = _case()
    assert scan_a.nodule_scores == (0.9, 0.3)
    assert scan_a.false_positive_scores == (0.8,)
    assert scan_b.nodule_scores == (None,)
    assert scan_b.false_positive_scores == (0.7, 0.2)


def test_froc_and_cpm_match_the_hand_computed_values() -> None:
    result = froc(_case())
    # FPs sorted 0.8, 0.7, 0.2 over 2 scans: 1/8..1/2 FP/scan allow 0, 0, 1 FPs -> only N1;
    # 1 FP/scan allows 2 -> N1 and N2; more allow all three FPs -> still 2 of 3
    third, two_thirds = 1 / 3, 2 / 3
    assert result.sensitivities == pytest.approx([third] * 3 + [two_thirds] * 4)
    assert result.cpm == pytest.approx(11 / 21)
    assert result.scans == 2
    assert result.nodules == 3


def test_perfect_detector_scores_one() -> None:
    truth = [TruthNodule((0, 0, 0), 3.0)]
    result = froc([match_scan([Detection((0, 0, 1), 0.99)], truth)] * 4)
    assert result.cpm == pytest.approx(1.0)


def test_svg_plot_names_the_cpm() -> None:
    svg = froc_svg(froc(_case()))
    assert svg.startswith("<svg")
    assert "CPM 0.524" in svg

"""A dependency-free SVG plot of a FROC curve."""

import math

from cad_node.evaluation.froc import FrocResult

WIDTH, HEIGHT, MARGIN = 480, 320, 48


def _x(fp: float) -> float:
    # log2 axis from 1/8 to 8 false positives per scan
    fp = min(max(fp, 0.125), 8.0)
    return MARGIN + (math.log2(fp) + 3.0) / 6.0 * (WIDTH - 2 * MARGIN)


def _y(sensitivity: float) -> float:
    return HEIGHT - MARGIN - sensitivity * (HEIGHT - 2 * MARGIN)


def froc_svg(result: FrocResult) -> str:
    """The FROC curve on a log FP axis, with the seven CPM points marked."""
    points = " ".join(
        f"{_x(fp):.1f},{_y(s):.1f}"
        for fp, s in zip(result.curve_fp_per_scan, result.curve_sensitivity, strict=True)
        if fp >= 0.125 and not math.isnan(s)
    )
    marks = "".join(
        f'<circle cx="{_x(r):.1f}" cy="{_y(s):.1f}" r="3" fill="#c00"/>'
        for r, s in zip(result.fp_rates, result.sensitivities, strict=True)
        if not math.isnan(s)
    )
    ticks = "".join(
        f'<text x="{_x(r):.1f}" y="{HEIGHT - MARGIN + 16}" font-size="11" '
        f'text-anchor="middle">{r:g}</text>'
        for r in result.fp_rates
    )
    yticks = "".join(
        f'<text x="{MARGIN - 6}" y="{_y(v) + 4:.1f}" font-size="11" '
        f'text-anchor="end">{v:.1f}</text>'
        for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<rect x="{MARGIN}" y="{MARGIN}" width="{WIDTH - 2 * MARGIN}" '
        f'height="{HEIGHT - 2 * MARGIN}" fill="none" stroke="#444"/>'
        f'<polyline points="{points}" fill="none" stroke="#06c" stroke-width="2"/>'
        f"{marks}{ticks}{yticks}"
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" font-size="12" text-anchor="middle">'
        f"false positives per scan</text>"
        f'<text x="{WIDTH / 2}" y="24" font-size="13" text-anchor="middle">'
        f"FROC, CPM {result.cpm:.3f} (not for clinical use)</text></svg>\n"
    )

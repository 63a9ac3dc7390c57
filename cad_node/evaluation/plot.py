"""Evaluation plots drawn with matplotlib: ROC, FROC, reliability and confusion matrix.

Figures are built with :class:`matplotlib.figure.Figure` directly, never
through ``pyplot``: no global figure registry, no interactive backend, no
display needed, safe in worker threads. PNG files are rendered by the Agg
canvas; the SVG text is deterministic (fixed hash salt, no date).
"""

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.evaluation.froc import FrocResult
from cad_node.models.calibration import ReliabilityBin  # numpy only, like RocCurve
from cad_node.monitoring.stats import RocCurve  # numpy only: the node draws these too

FIGURE_SIZE_IN = (5.0, 4.0)
DPI = 120
_SVG_SALT = "cad-node"
"""Fixed salt for matplotlib's SVG element ids, so the same figure gives the same bytes."""


def _figure(title: str) -> tuple[Figure, "mpl.axes.Axes"]:
    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10)
    figure.supxlabel(NOT_FOR_CLINICAL_USE.lower(), fontsize=7, color="#a00")
    return figure, axes


def roc_figure(
    curve: RocCurve,
    label: str,
    operating_point: tuple[float, float] | None = None,
    title: str = "ROC",
) -> Figure:
    """ROC curve with ``label`` in the legend (e.g. AUC and its CI) and an optional marker.

    ``operating_point`` is ``(false positive rate, true positive rate)``.
    """
    figure, axes = _figure(title)
    axes.plot(curve.fpr, curve.tpr, color="#06c", linewidth=2, label=label, drawstyle="default")
    axes.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="chance")
    if operating_point is not None:
        fpr, tpr = operating_point
        axes.plot([fpr], [tpr], "o", color="#c00", label=f"operating point ({1 - fpr:.2f} spec)")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("1 - specificity (false positive rate)")
    axes.set_ylabel("sensitivity (true positive rate)")
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return figure


def reliability_figure(
    tables: Mapping[str, Sequence[ReliabilityBin]],
    title: str = "Reliability diagram",
    *,
    xlabel: str = "mean predicted probability (bin)",
    ylabel: str = "observed frequency",
    colours: Sequence[str] = ("#06c", "#c60", "#080"),
    show_counts: bool = False,
) -> Figure:
    """Observed frequency against mean predicted probability per bin, one line per table.

    Empty bins are left out; ``show_counts`` writes each point's case count beside it.
    The evaluation reports (:mod:`cad_node.evaluation.honesty`) and the monitoring page
    (:mod:`cad_node.monitoring.figures`) both draw theirs here.
    """
    figure, axes = _figure(title)
    axes.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect")
    for (label, table), colour in zip(tables.items(), colours, strict=False):
        shown = [b for b in table if b.count]  # a bin with cases has both means
        x = [b.mean_probability or 0.0 for b in shown]
        y = [b.observed_frequency or 0.0 for b in shown]
        axes.plot(x, y, "o-", color=colour, linewidth=1.5, markersize=4, label=label)
        if show_counts:
            for b, point in zip(shown, zip(x, y, strict=True), strict=True):
                axes.annotate(
                    str(b.count), point, textcoords="offset points", xytext=(4, -10), fontsize=7
                )
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    return figure


def _froc_steps(
    result: FrocResult, low: float, high: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The FROC step curve clipped to [low, high] FPs per scan (a log axis cannot show 0).

    The curve holds its value from one FP count to the next, so the value at 0 FPs
    applies from ``low`` to the first FP, and the last value within ``high`` up to it.
    """
    fp = np.asarray(result.curve_fp_per_scan, dtype=np.float64)
    sens = np.asarray(result.curve_sensitivity, dtype=np.float64)
    inside = (fp > 0) & (fp <= high)
    ys = np.concatenate([sens[:1], sens[inside]])
    xs = np.concatenate([[low], fp[inside]])
    return np.append(xs, high), np.append(ys, ys[-1])


def froc_figure(result: FrocResult, title: str | None = None) -> Figure:
    """The FROC curve on a log2 axis of 1/8 to 8 false positives per scan, CPM points marked."""
    figure, axes = _figure(title or f"FROC, CPM {result.cpm:.3f}")
    low, high = result.fp_rates[0] / 1.2, result.fp_rates[-1] * 1.2
    xs, ys = _froc_steps(result, low, high)
    if np.isfinite(ys).all():
        axes.step(xs, ys, where="post", color="#06c", linewidth=2, label="curve")
    marked = [(r, s) for r, s in zip(result.fp_rates, result.sensitivities, strict=True)]
    marked = [(r, s) for r, s in marked if not math.isnan(s)]
    if marked:
        rates, values = zip(*marked, strict=True)
        axes.plot(rates, values, "o", color="#c00", label="CPM points")
    axes.set_xscale("log", base=2)
    axes.set_xlim(low, high)
    axes.set_xticks(result.fp_rates, [f"{r:g}" for r in result.fp_rates])
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("false positives per scan")
    axes.set_ylabel("sensitivity")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return figure


def confusion_matrix_figure(
    matrix: npt.ArrayLike, class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Counts as a heat map, true class down the rows and predicted class along the columns."""
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(f"matrix shape {counts.shape} does not fit {len(class_names)} classes")
    figure, axes = _figure(title)
    axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("truth")
    half = counts.max() / 2
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if count > half else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=9)
    return figure


def bar_figure(
    class_names: Sequence[str],
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str = "rate",
) -> Figure:
    """Grouped bars: one group per class, one bar per series (e.g. sensitivity, precision).

    NaN values (a rate with nothing to count) leave their bar out.
    """
    if any(len(values) != len(class_names) for values in series.values()):
        raise ValueError(f"every series needs one value per class ({len(class_names)})")
    figure, axes = _figure(title)
    positions = np.arange(len(class_names), dtype=np.float64)
    width = 0.8 / max(len(series), 1)
    for k, (label, values) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * width
        axes.bar(positions + offset, np.asarray(values, dtype=np.float64), width, label=label)
    axes.set_xticks(positions, class_names, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3, axis="y")
    axes.legend(loc="best", fontsize=8)
    return figure


def save_png(figure: Figure, path: Path) -> Path:
    """Render ``figure`` to a PNG file with the Agg canvas (no display)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def svg_text(figure: Figure) -> str:
    """The figure as SVG text starting at ``<svg``, fit to inline in HTML or save as .svg.

    Text stays text (``svg.fonttype`` "none"): smaller, searchable, and selectable.
    The XML declaration and DOCTYPE that matplotlib writes are dropped: a DOCTYPE is
    not allowed inside an HTML page, and an SVG file does not need either.
    """
    buffer = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": _SVG_SALT, "svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def froc_svg(result: FrocResult) -> str:
    """The FROC plot (:func:`froc_figure`) as SVG text, e.g. for a model card."""
    return svg_text(froc_figure(result))

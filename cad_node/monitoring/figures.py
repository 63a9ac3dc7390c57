"""PNG figures of a model's local performance (issue 22): the monitoring page and
``cad-node report`` draw the same ones.

matplotlib is imported inside the drawing functions (``serve`` starts without it); figures
are drawn on the Agg canvas directly, never through ``pyplot``, in the style of the
evaluation reports (:mod:`cad_node.evaluation.plot`).
"""

import io
from typing import TYPE_CHECKING

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.models.calibration import ReliabilityBin
from cad_node.monitoring.performance import Estimate, ModelPerformance

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_NAMES = ("roc", "reliability", "confusion", "weekly")
"""Every figure :func:`performance_figures` may draw, in the order a report shows them."""
WEEKLY_SIZE_IN = (7.0, 5.0)


def performance_figures(perf: ModelPerformance) -> dict[str, bytes]:
    """Figure name -> PNG bytes, for the figures that apply to ``perf``.

    ``roc`` where classification cases hold both outcomes, ``reliability`` where there are
    classification cases, ``confusion`` where there are classification or grading cases
    (the 2x2 of classification, else the 5x5 of grading), ``weekly`` where the model read
    any study. Each is titled with the model, version, period and n, and labelled "not for
    clinical use".
    """
    figures: dict[str, Figure] = {}
    classification = perf.classification
    if classification is not None and classification.roc:
        figures["roc"] = _roc(perf)
    if perf.reliability:
        figures["reliability"] = _reliability(perf)
    if classification is not None or perf.grading is not None:
        figures["confusion"] = _confusion(perf)
    if perf.weekly:
        figures["weekly"] = _weekly(perf)
    return {name: _png(figure) for name, figure in figures.items()}


def figure_title(perf: ModelPerformance, what: str, n: int) -> str:
    """``"ROC: lung_nodule_ct 1.0.0\\n2026-11-01 to 2026-12-01, n = 32"``."""
    version = perf.model_version or _versions(perf)
    return f"{what}: {perf.model_name} {version}\n{perf.period}, n = {n}"


def _versions(perf: ModelPerformance) -> str:
    names = [summary.model_version for summary in perf.versions if summary.studies]
    return "v" + ", ".join(names) if names else "(no version)"


def estimate_text(estimate: Estimate, digits: int = 2) -> str:
    """``0.89 (95 % CI 0.75-1.00, n = 32)``; ``- (n = 0)`` where undefined."""
    if estimate.value is None:
        return f"- (n = {estimate.n})"
    if estimate.low is None or estimate.high is None:
        return f"{estimate.value:.{digits}f} (n = {estimate.n})"
    return (
        f"{estimate.value:.{digits}f} (95 % CI {estimate.low:.{digits}f}-"
        f"{estimate.high:.{digits}f}, n = {estimate.n})"
    )


def _roc(perf: ModelPerformance) -> "Figure":
    import numpy as np

    from cad_node.evaluation.plot import roc_figure
    from cad_node.monitoring.stats import RocCurve

    classification = perf.classification
    assert classification is not None
    points = classification.roc
    curve = RocCurve(
        fpr=np.array([p.false_positive_rate for p in points]),
        tpr=np.array([p.true_positive_rate for p in points]),
        thresholds=np.array([np.inf if p.threshold is None else p.threshold for p in points]),
    )
    operating = None
    sensitivity, specificity = classification.sensitivity, classification.specificity
    if sensitivity.value is not None and specificity.value is not None:
        operating = (1.0 - specificity.value, sensitivity.value)
    return roc_figure(
        curve,
        label=f"AUC {estimate_text(classification.auc)}",
        operating_point=operating,
        title=figure_title(perf, "ROC", classification.cases),
    )


def _reliability(perf: ModelPerformance) -> "Figure":
    from cad_node.evaluation.plot import reliability_figure

    bins = [
        ReliabilityBin(b.low, b.high, b.count, b.mean_predicted, b.observed_frequency)
        for b in perf.reliability
    ]
    return reliability_figure(
        {"observed": bins},
        figure_title(perf, "Reliability", sum(b.count for b in bins)),
        xlabel="predicted probability (bin mean)",
        ylabel="observed frequency of positives",
        show_counts=True,
    )


def _confusion(perf: ModelPerformance) -> "Figure":
    from cad_node.evaluation.plot import confusion_matrix_figure

    if perf.classification is not None:
        classification = perf.classification
        title = figure_title(perf, "Confusion matrix", classification.cases)
        return confusion_matrix_figure(
            classification.confusion, ("negative", "positive"), title=title
        )
    grading = perf.grading
    assert grading is not None
    title = figure_title(perf, "ICDR grades", grading.cases)
    return confusion_matrix_figure(grading.confusion, [str(g) for g in range(5)], title=title)


def _weekly(perf: ModelPerformance) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cad_node.evaluation.plot import DPI

    weeks = perf.weekly
    figure = Figure(figsize=WEEKLY_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    counts, rates = figure.subplots(2, 1, sharex=True)
    figure.suptitle(figure_title(perf, "Weekly", perf.counts.studies_read), fontsize=10)
    figure.supxlabel(
        f"ISO week (Monday, UTC); {NOT_FOR_CLINICAL_USE.lower()}", fontsize=7, color="#a00"
    )
    days = [week.week_start for week in weeks]
    counts.bar(days, [w.studies for w in weeks], width=5, color="#9bd", label="studies")
    counts.bar(days, [w.reviewed for w in weeks], width=3, color="#06c", label="reviewed")
    counts.set_ylabel("studies")
    counts.grid(alpha=0.3, axis="y")
    counts.legend(loc="upper left", fontsize=8)
    series = (
        ("abstention rate", [w.abstention_rate for w in weeks], "#a60"),
        ("sensitivity", [w.sensitivity for w in weeks], "#080"),
        ("PPV", [w.ppv for w in weeks], "#c00"),
    )
    for label, values, colour in series:
        shown = [(day, v) for day, v in zip(days, values, strict=True) if v is not None]
        if shown:
            xs, ys = zip(*shown, strict=True)
            rates.plot(xs, ys, "o-", color=colour, label=label, markersize=4)
    rates.set_ylim(-0.02, 1.02)
    rates.set_ylabel("rate")
    rates.grid(alpha=0.3)
    rates.legend(loc="lower left", fontsize=8)
    for label in rates.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
    return figure


def _png(figure: "Figure") -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()

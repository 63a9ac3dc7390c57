"""Evaluation reports: report.md, a self-contained index.html and one PNG per plot.

A :class:`Report` collects sections (ROC with DeLong CI, confusion matrix with
per-class rates and kappa, FROC, tables, free markdown) and writes them into a
folder::

    report = Report("Mammography model evaluation: mammo_cls 1.0.0")
    summary = report.add_roc("Malignant vs benign", labels, scores, operating_threshold=0.4)
    report.add_confusion_matrix("BI-RADS density", truth, predicted, ["A", "B", "C", "D"])
    report.write(Path("report"))  # report/report.md, report/index.html, report/*.png

The markdown is the single source of the text; the HTML page is rendered from it
(markdown-it-py, CommonMark with tables, raw HTML disabled), with the images
referenced by relative path and "NOT FOR CLINICAL USE" at the top of both.
"""

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from markdown_it import MarkdownIt
from matplotlib.figure import Figure

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.evaluation import metrics
from cad_node.evaluation.froc import FrocResult
from cad_node.evaluation.plot import (
    bar_figure,
    confusion_matrix_figure,
    froc_figure,
    roc_figure,
    save_png,
)

Cell = str | int | float | None

REPORT_MARKDOWN = "report.md"
REPORT_HTML = "index.html"

_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; }
.banner { background: #a00; color: white; font-weight: bold; padding: .5em 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #999; padding: .2em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
"""


def format_cell(value: Cell, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, NaN and None as "n/a", pipes escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> list[str]:
    """A GitHub-flavoured markdown table, one string per line."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row must have {len(header)} cells like the header")
    lines = ["| " + " | ".join(format_cell(h) for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(format_cell(c) for c in row) + " |" for row in rows]
    return lines


@dataclass(frozen=True, slots=True)
class RocSummary:
    """What a ROC section states: AUC with its DeLong CI, and the operating point if given."""

    auc: float
    ci_low: float
    ci_high: float
    level: float
    positives: int
    negatives: int
    sensitivity_at_90_specificity: float
    operating_threshold: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None


@dataclass(frozen=True, slots=True, eq=False)
class ConfusionSummary:
    """What a confusion-matrix section states (rows: truth, columns: prediction)."""

    matrix: npt.NDArray[np.int64]
    accuracy: float
    sensitivity: npt.NDArray[np.float64]
    precision: npt.NDArray[np.float64]
    kappa: float | None = None


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:60] or "figure"


def summarise_roc(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    operating_threshold: float | None = None,
    level: float = 0.95,
) -> RocSummary:
    """AUC, DeLong CI, sensitivity at 90% specificity and the rates at a threshold."""
    truth = metrics.binary_labels(labels)
    values = np.asarray(scores, dtype=np.float64)
    auc = metrics.roc_auc(truth, values)
    low, high = metrics.auc_confidence_interval(truth, values, level)
    at_90 = metrics.sensitivity_at_specificity(truth, values, 0.9).sensitivity
    rates: tuple[float | None, float | None] = (None, None)
    if operating_threshold is not None:
        rates = metrics.sensitivity_specificity(truth, values >= operating_threshold)
    return RocSummary(
        auc=auc,
        ci_low=low,
        ci_high=high,
        level=level,
        positives=int(truth.sum()),
        negatives=int((~truth).sum()),
        sensitivity_at_90_specificity=at_90,
        operating_threshold=operating_threshold,
        sensitivity=rates[0],
        specificity=rates[1],
    )


def summarise_confusion(
    truth: npt.ArrayLike, predicted: npt.ArrayLike, n_classes: int, ordinal: bool = False
) -> ConfusionSummary:
    """Confusion matrix, accuracy, per-class sensitivity and precision (+ kappa if ordinal)."""
    matrix = metrics.confusion_matrix(truth, predicted, n_classes)
    sensitivity, precision = metrics.per_class_rates(matrix)
    kappa = metrics.quadratic_weighted_kappa(truth, predicted, n_classes) if ordinal else None
    return ConfusionSummary(
        matrix=matrix,
        accuracy=float(np.trace(matrix) / matrix.sum()),
        sensitivity=sensitivity,
        precision=precision,
        kappa=kappa,
    )


@dataclass
class Report:
    """An evaluation report under construction; :meth:`write` puts it on disk.

    Parameters
    ----------
    title : str
        The report's first heading, e.g. "Fundus model evaluation: fundus_dr 1.0.0".
    """

    title: str
    _lines: list[str] = field(default_factory=list, init=False, repr=False)
    _figures: dict[str, Figure] = field(default_factory=dict, init=False, repr=False)

    def add_text(self, markdown: str) -> None:
        """Free markdown (a paragraph, a bullet list ...), written as given."""
        self._lines += [markdown.rstrip("\n"), ""]

    def add_heading(self, name: str) -> None:
        """A section heading (level 2)."""
        self._lines += [f"## {name}", ""]

    def add_table(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
        """A section holding one table; floats are shown with 3 decimals, NaN as "n/a"."""
        self.add_heading(name)
        self._lines += [*markdown_table(header, rows), ""]

    def add_figure(self, name: str, figure: Figure, caption: str = "") -> str:
        """Any matplotlib figure, saved as PNG by :meth:`write`; returns its file name."""
        stem, count = _slug(name), 2
        while f"{stem}.png" in self._figures:
            stem, count = f"{_slug(name)}-{count}", count + 1
        filename = f"{stem}.png"
        self._figures[filename] = figure
        self._lines += [f"![{caption or name}]({filename})", ""]
        return filename

    def add_roc(
        self,
        name: str,
        labels: npt.ArrayLike,
        scores: npt.ArrayLike,
        operating_threshold: float | None = None,
        level: float = 0.95,
    ) -> RocSummary:
        """ROC section: plot (AUC and CI in the legend), AUC table and operating point.

        A case is positive at ``score >= operating_threshold``; the threshold's
        point is marked on the curve when given. Raises ValueError when the
        labels hold one class only (the AUC is undefined).
        """
        summary = summarise_roc(labels, scores, operating_threshold, level)
        curve = metrics.roc_curve(labels, scores)
        point = None
        if summary.sensitivity is not None and summary.specificity is not None:
            point = (1.0 - summary.specificity, summary.sensitivity)
        percent = f"{100 * level:g}%"
        legend = f"AUC {summary.auc:.3f} ({percent} CI {summary.ci_low:.3f}-{summary.ci_high:.3f})"
        self.add_heading(name)
        self.add_figure(f"roc {name}", roc_figure(curve, legend, point, f"ROC: {name}"), name)
        self._lines += _roc_lines(summary, percent)
        return summary

    def add_confusion_matrix(
        self,
        name: str,
        truth: npt.ArrayLike,
        predicted: npt.ArrayLike,
        class_names: Sequence[str],
        ordinal: bool = False,
    ) -> ConfusionSummary:
        """Confusion-matrix section: plot with counts and a per-class sensitivity/precision table.

        With ``ordinal`` (graded classes such as ICDR), the quadratic weighted kappa
        is stated too. ``truth`` and ``predicted`` are class indices into ``class_names``.
        """
        summary = summarise_confusion(truth, predicted, len(class_names), ordinal)
        figure = confusion_matrix_figure(summary.matrix, class_names, name)
        self.add_heading(name)
        self.add_figure(f"confusion {name}", figure, name)
        self._lines += _confusion_lines(summary, class_names)
        return summary

    def add_kappa(
        self,
        name: str,
        truth: npt.ArrayLike,
        predicted: npt.ArrayLike,
        class_names: Sequence[str],
    ) -> float:
        """Ordinal grading section (confusion matrix + quadratic weighted kappa); returns kappa."""
        kappa = self.add_confusion_matrix(name, truth, predicted, class_names, ordinal=True).kappa
        return math.nan if kappa is None else kappa

    def add_bars(
        self,
        name: str,
        class_names: Sequence[str],
        series: Mapping[str, Sequence[float]],
        ylabel: str = "rate",
    ) -> None:
        """Per-class rates in [0, 1] as grouped bars plus the same numbers as a table.

        ``series`` maps a column name (e.g. "Sensitivity") to one value per class.
        """
        figure = bar_figure(class_names, series, name, ylabel)
        rows: list[list[Cell]] = [
            [class_name, *(float(values[i]) for values in series.values())]
            for i, class_name in enumerate(class_names)
        ]
        self.add_table(name, ["Class", *series], rows)
        self.add_figure(f"bars {name}", figure, name)

    def add_froc(self, name: str, result: FrocResult) -> None:
        """FROC section: sensitivity at each false-positive rate, CPM, and the curve's plot."""
        self.add_heading(name)
        header = ["FP/scan", *(f"{r:g}" for r in result.fp_rates), "CPM"]
        row: list[Cell] = ["sensitivity", *result.sensitivities, result.cpm]
        self._lines += [*markdown_table(header, [row]), ""]
        stem = name if _slug(name).startswith("froc") else f"froc {name}"
        self.add_figure(stem, froc_figure(result), name)

    def markdown(self) -> str:
        """The report as markdown text."""
        head = [f"# {self.title}", "", f"**{NOT_FOR_CLINICAL_USE}.**", ""]
        return "\n".join([*head, *self._lines]).rstrip("\n") + "\n"

    def html(self) -> str:
        """A self-contained HTML page (inline style, images by relative path)."""
        body = MarkdownIt("commonmark", {"html": False}).enable("table").render(self.markdown())
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f'<body>\n<p class="banner">{NOT_FOR_CLINICAL_USE}</p>\n{body}</body>\n</html>\n'
        )

    def write(self, report_dir: Path) -> Path:
        """Write report.md, index.html and the PNG plots into ``report_dir``; returns report.md."""
        report_dir.mkdir(parents=True, exist_ok=True)
        for filename, figure in self._figures.items():
            save_png(figure, report_dir / filename)
        (report_dir / REPORT_HTML).write_text(self.html(), encoding="utf-8")
        path = report_dir / REPORT_MARKDOWN
        path.write_text(self.markdown(), encoding="utf-8")
        return path


def _roc_lines(summary: RocSummary, percent: str) -> list[str]:
    header = ["Positives", "Negatives", "AUC", f"{percent} CI (DeLong)", "Sens. at 90% spec."]
    row: list[Cell] = [
        summary.positives,
        summary.negatives,
        summary.auc,
        f"{summary.ci_low:.3f}-{summary.ci_high:.3f}",
        summary.sensitivity_at_90_specificity,
    ]
    lines = [*markdown_table(header, [row]), ""]
    if summary.operating_threshold is not None:
        lines += [
            f"At the operating threshold {summary.operating_threshold:.3f} (score >= threshold is "
            f"positive): sensitivity {format_cell(summary.sensitivity)}, "
            f"specificity {format_cell(summary.specificity)}.",
            "",
        ]
    return lines


def _confusion_lines(summary: ConfusionSummary, class_names: Sequence[str]) -> list[str]:
    rows: list[list[Cell]] = [
        [
            name,
            int(summary.matrix[i].sum()),
            int(summary.matrix[:, i].sum()),
            float(summary.sensitivity[i]),
            float(summary.precision[i]),
        ]
        for i, name in enumerate(class_names)
    ]
    header = ["Class", "True cases", "Predicted", "Sensitivity", "Precision"]
    lines = [*markdown_table(header, rows), "", f"Accuracy: {summary.accuracy:.3f}."]
    if summary.kappa is not None:
        lines.append(f"Quadratic weighted kappa: {format_cell(summary.kappa)}.")
    return [*lines, ""]

"""A model's monitoring report for a quality committee (issue 22, item 4): HTML and PNGs.

``cad-node report`` writes ``index.html`` and its figures into one folder: the model's
local performance over the period (overall and per version, each figure with its 95 %
interval and the number of cases), its versions, a comparison with every other model
that read the same studies (a shadow model beside the active one), and its drift. The
same figures as the monitoring page. UIDs, counts and figures only: no patient data.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path

from sqlalchemy.orm import Session

from cad_node import NOT_FOR_CLINICAL_USE, __version__
from cad_node.config.monitoring import MonitoringSettings
from cad_node.monitoring import records
from cad_node.monitoring.figures import FIGURE_NAMES, estimate_text, performance_figures
from cad_node.monitoring.performance import (
    Estimate,
    ModelPerformance,
    compare_models,
    local_performance,
)

INDEX = "index.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #eef; }
td.n { text-align: right; }
.warning { color: #a00; font-weight: bold; }
.level-alert { color: #a00; font-weight: bold; }
.level-warn { color: #a60; }
figure { display: inline-block; margin: 0.5em; }
"""


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    index: Path
    figures: tuple[Path, ...]
    performance: ModelPerformance


def write_report(
    session: Session,
    model_name: str,
    since: datetime,
    until: datetime,
    out_dir: Path,
    *,
    monitoring: MonitoringSettings,
    now: datetime,
) -> ReportFiles:
    """Write ``out_dir/index.html`` and its PNG figures for ``model_name`` over
    ``[since, until)``; the drift as of ``now``.

    Raises
    ------
    UnknownModelError
        The journal holds no output of ``model_name``.
    """
    perf = local_performance(session, model_name, since, until)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = performance_figures(perf)
    for name, png in figures.items():
        written.append(_write(out_dir / f"{name}.png", png))
    comparisons = [
        compare_models(session, model_name, other, since, until)
        for other in _models_on_same_studies(session, perf)
    ]
    drift_html, drift_pngs = _drift(session, model_name, now, monitoring)
    for name, png in drift_pngs.items():
        written.append(_write(out_dir / f"drift-{name}.png", png))
    sections = [
        _header(perf, now),
        _counts_section(perf),
        _versions_section(perf),
        _figures_table(perf),
        _figure_images(name for name in FIGURE_NAMES if name in figures),
        _comparison_section(comparisons),
        drift_html,
        _drift_images(drift_pngs),
    ]
    index = out_dir / INDEX
    index.write_text(_page(perf, sections), encoding="utf-8")
    return ReportFiles(index, tuple(written), perf)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _models_on_same_studies(session: Session, perf: ModelPerformance) -> list[str]:
    studies = set(perf.studies)
    return [
        name
        for name in records.model_names(session)
        if name != perf.model_name
        and studies
        & {
            job.study_instance_uid
            for job in records.newest_jobs(session, name, perf.since, perf.until)
        }
    ]


def _page(perf: ModelPerformance, sections: Iterable[str]) -> str:
    title = escape(f"{perf.model_name}: local performance, {perf.period}")
    body = "\n".join(section for section in sections if section)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )


def _header(perf: ModelPerformance, now: datetime) -> str:
    return (
        f"<h1>{escape(perf.model_name)}: local performance</h1>\n"
        f"<p class='warning'>{escape(NOT_FOR_CLINICAL_USE)}</p>\n"
        f"<p>Period {perf.since:%Y-%m-%d %H:%M} to {perf.until:%Y-%m-%d %H:%M} UTC "
        "(the end excluded). The newest job of each study counts, and the newest verdict "
        "on each finding. Intervals are 95 %: Wilson for proportions, exact Poisson for "
        "false marks per study, DeLong for the AUC, bootstrap (1000 resamples, fixed "
        "seed) for kappa. UIDs, counts and figures only: no patient data.</p>\n"
        f"<p>Written {now:%Y-%m-%d %H:%M} UTC by cad-node {escape(__version__)}.</p>"
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], css: str = "") -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    lines = ["<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows]
    attribute = f" class='{css}'" if css else ""
    return f"<table{attribute}>\n<tr>{head}</tr>\n" + "\n".join(lines) + "\n</table>"


def _cell(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"<td class='n'>{value}</td>"
    return f"<td>{escape(str(value))}</td>"


def _counts_section(perf: ModelPerformance) -> str:
    counts = perf.counts
    rate = counts.abstention_rate
    rows = [
        ("Studies read", counts.studies_read),
        ("Abstained (not assessed)", counts.abstained),
        ("Abstention rate", "-" if rate is None else f"{rate:.3f}"),
        ("Reviewed (any verdict or outcome)", counts.reviewed),
    ]
    return "<h2>Studies</h2>\n" + _table(("", "count"), rows, "counts")


def _versions_section(perf: ModelPerformance) -> str:
    rows = [
        (
            v.model_version,
            v.weights_sha256[:16],
            v.studies,
            f"{v.first_recorded:%Y-%m-%d %H:%M}",
            f"{v.last_recorded:%Y-%m-%d %H:%M}",
            ", ".join(v.modes),
        )
        for v in perf.versions
    ]
    header = ("Version", "Weights SHA-256 (start)", "Studies", "First", "Last", "Mode")
    return "<h2>Model versions</h2>\n" + _table(header, rows, "versions")


def _figures_table(perf: ModelPerformance) -> str:
    scopes = [perf, *perf.by_version] if len(perf.by_version) > 1 else [perf]
    parts = ["<h2>Performance</h2>"]
    for scope in scopes:
        label = scope.model_version or "every version"
        rows = _figure_rows(scope)
        if not rows:
            rows = [("No reviewed case", "-", "-")]
        parts.append(f"<h3>{escape(label)}</h3>")
        parts.append(_table(("Figure", "Value (95 % CI, n)", "Counts"), rows, "figures"))
        parts += _confusion_tables(scope)
    return "\n".join(parts)


def _figure_rows(perf: ModelPerformance) -> list[tuple[str, str, str]]:
    rows = []
    if perf.detection is not None:
        d = perf.detection
        counts = f"TP {d.true_positives}, FP {d.false_positives}, FN {d.false_negatives}"
        rows += [
            ("Detection sensitivity", estimate_text(d.sensitivity, 3), counts),
            ("Detection PPV", estimate_text(d.ppv, 3), counts),
            (
                "False marks per reviewed study",
                estimate_text(d.false_marks_per_study, 3),
                f"FP {d.false_positives}, reviewed studies {d.reviewed_studies}",
            ),
        ]
    if perf.classification is not None:
        c = perf.classification
        counts = f"{c.cases} cases: {c.positives} positive, {c.negatives} negative"
        rows += [
            (f"AUC ({c.kind})", estimate_text(c.auc, 3), counts),
            ("Sensitivity at the operating point", estimate_text(c.sensitivity, 3), counts),
            ("Specificity at the operating point", estimate_text(c.specificity, 3), counts),
        ]
    if perf.grading is not None:
        g = perf.grading
        rows.append(
            ("Quadratic weighted kappa", estimate_text(g.kappa, 3), f"{g.cases} graded eyes")
        )
    return rows


def _confusion_tables(perf: ModelPerformance) -> list[str]:
    parts = []
    if perf.classification is not None:
        (tn, fp), (fn, tp) = perf.classification.confusion
        parts.append(
            "<p>Confusion (truth down, the model's call across):</p>\n"
            + _table(
                ("truth \\ called", "negative", "positive"),
                [("negative", tn, fp), ("positive", fn, tp)],
                "confusion",
            )
        )
    if perf.grading is not None:
        grades = [str(g) for g in range(len(perf.grading.confusion))]
        parts.append(
            "<p>ICDR grades (truth down, the model's grade across):</p>\n"
            + _table(
                ("truth \\ model", *grades),
                [(grade, *row) for grade, row in zip(grades, perf.grading.confusion, strict=True)],
                "confusion",
            )
        )
    return parts


def _figure_images(names: Iterable[str]) -> str:
    images = [
        f"<figure><img src='{name}.png' alt='{name}'><figcaption>{name}</figcaption></figure>"
        for name in names
    ]
    return "\n".join(["<h2>Figures</h2>", *images]) if images else ""


def _comparison_section(comparisons: Sequence[tuple[ModelPerformance, ModelPerformance]]) -> str:
    if not comparisons:
        return (
            "<h2>Compared with other models</h2>\n"
            "<p>No other model read the same studies in this period.</p>"
        )
    parts = ["<h2>Compared with other models on the same studies</h2>"]
    for mine, theirs in comparisons:
        header = (
            "Figure",
            f"{mine.model_name} ({_modes(mine)})",
            f"{theirs.model_name} ({_modes(theirs)})",
        )
        rows: list[tuple[str, object, object]] = [
            ("Studies both read", mine.counts.studies_read, theirs.counts.studies_read),
            ("Abstained", mine.counts.abstained, theirs.counts.abstained),
            ("Reviewed", mine.counts.reviewed, theirs.counts.reviewed),
        ]
        for label, pick in COMPARED:
            if pick(mine) is not None or pick(theirs) is not None:
                rows.append((label, _maybe(pick(mine)), _maybe(pick(theirs))))
        parts.append(_table(header, rows, "comparison"))
    return "\n".join(parts)


def _sensitivity(perf: ModelPerformance) -> Estimate | None:
    return perf.detection.sensitivity if perf.detection else None


def _ppv(perf: ModelPerformance) -> Estimate | None:
    return perf.detection.ppv if perf.detection else None


def _false_marks(perf: ModelPerformance) -> Estimate | None:
    return perf.detection.false_marks_per_study if perf.detection else None


def _auc(perf: ModelPerformance) -> Estimate | None:
    return perf.classification.auc if perf.classification else None


def _called_sensitivity(perf: ModelPerformance) -> Estimate | None:
    return perf.classification.sensitivity if perf.classification else None


def _called_specificity(perf: ModelPerformance) -> Estimate | None:
    return perf.classification.specificity if perf.classification else None


def _kappa(perf: ModelPerformance) -> Estimate | None:
    return perf.grading.kappa if perf.grading else None


COMPARED: tuple[tuple[str, Callable[[ModelPerformance], Estimate | None]], ...] = (
    ("Detection sensitivity", _sensitivity),
    ("Detection PPV", _ppv),
    ("False marks per reviewed study", _false_marks),
    ("AUC", _auc),
    ("Sensitivity at the operating point", _called_sensitivity),
    ("Specificity at the operating point", _called_specificity),
    ("Quadratic weighted kappa", _kappa),
)
"""The figures of a comparison, each where either model has it."""


def _modes(perf: ModelPerformance) -> str:
    return "/".join(sorted({mode for v in perf.versions for mode in v.modes})) or "-"


def _maybe(estimate: Estimate | None) -> str:
    return "-" if estimate is None else estimate_text(estimate, 3)


def _drift(
    session: Session, model_name: str, now: datetime, settings: MonitoringSettings
) -> tuple[str, dict[str, bytes]]:
    from cad_node.monitoring.drift import model_drift
    from cad_node.monitoring.drift_figures import drift_figures

    drift = model_drift(session, model_name, now, settings)
    rows = [
        (
            f.feature,
            f.kind.value,
            f.baseline_count,
            f.current_count,
            "-" if f.psi is None else f"{f.psi:.3f}",
            f.level.value,
        )
        for f in drift.features
    ]
    baseline = (
        "none yet"
        if drift.baseline is None
        else f"{drift.baseline.start:%Y-%m-%d} to {drift.baseline.end:%Y-%m-%d} "
        f"({drift.baseline.jobs} jobs)"
    )
    html = (
        "<h2>Model drift</h2>\n"
        f"<p>As of {drift.computed_at:%Y-%m-%d %H:%M} UTC: level "
        f"<span class='level-{escape(drift.level.value)}'>{escape(drift.level.value)}</span>. "
        f"Baseline {escape(baseline)}; current {drift.current.start:%Y-%m-%d} to "
        f"{drift.current.end:%Y-%m-%d} ({drift.current.jobs} jobs). Population stability "
        f"index: warn at {drift.psi_warn}, alert at {drift.psi_alert}; fewer than "
        f"{drift.min_samples} jobs in a window: too few.</p>\n"
        + _table(("Feature", "Kind", "Baseline n", "Current n", "PSI", "Level"), rows, "drift")
    )
    return html, drift_figures(drift)


def _drift_images(pngs: dict[str, bytes]) -> str:
    return "\n".join(
        f"<figure><img src='drift-{name}.png' alt='drift {name}'>"
        f"<figcaption>drift: {escape(name)}</figcaption></figure>"
        for name in pngs
    )

"""PNG figures of a model's drift: PSI per feature by week, and distributions compared.

matplotlib is imported inside :func:`drift_figures` (Agg, through ``Figure`` without
pyplot, so drawing is safe from the admin server's threads): ``serve`` starts without it.
"""

import io
from typing import TYPE_CHECKING

from cad_node.monitoring.drift import DriftLevel, FeatureDrift, ModelDrift

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PSI_FIGURE = "psi"
DISTRIBUTION_PREFIX = "distribution-"
"""``distribution-<feature>``: baseline vs current, for each feature at warn or alert."""
NOT_CLINICAL = "synthetic-data models: not for clinical use"


def drift_figures(drift: ModelDrift) -> dict[str, bytes]:
    """Figure name -> PNG bytes.

    ``psi``: each feature's weekly PSI with the warn and alert lines (when any week has
    one); ``distribution-<feature>``: baseline vs current proportions per bin, for each
    feature at ``warn`` or ``alert``.
    """
    figures: dict[str, bytes] = {}
    if any(week.psi is not None for feature in drift.features for week in feature.weekly):
        figures[PSI_FIGURE] = _png(_psi_by_week(drift))
    for feature in drift.features:
        if feature.level in (DriftLevel.WARN, DriftLevel.ALERT):
            figures[DISTRIBUTION_PREFIX + feature.feature] = _png(_distribution(drift, feature))
    return figures


def _psi_by_week(drift: ModelDrift) -> "Figure":
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.2), dpi=100)
    axes = figure.add_subplot()
    weeks = [week.week for week in drift.features[0].weekly]
    positions = range(len(weeks))
    for feature in drift.features:
        points = [(i, w.psi) for i, w in enumerate(feature.weekly) if w.psi is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", markersize=3, label=feature.feature)
    axes.axhline(drift.psi_warn, color="#d9a400", linestyle="--", linewidth=1, label="warn")
    axes.axhline(drift.psi_alert, color="#c0392b", linestyle="--", linewidth=1, label="alert")
    step = max(len(weeks) // 12, 1)
    axes.set_xticks(list(positions)[::step], weeks[::step], rotation=45, ha="right", fontsize=7)
    axes.set_ylabel("PSI against the baseline")
    axes.set_ylim(bottom=0)
    baseline = drift.baseline
    period = (
        ""
        if baseline is None
        else f"baseline {baseline.start:%Y-%m-%d} to {baseline.end:%Y-%m-%d}, n={baseline.jobs}"
    )
    axes.set_title(f"{drift.model_name}: PSI per ISO week ({period})", fontsize=9)
    axes.legend(fontsize=7, ncol=2, loc="upper left")
    figure.text(0.99, 0.01, NOT_CLINICAL, ha="right", fontsize=6, color="#777777")
    figure.tight_layout()
    return figure


def _distribution(drift: ModelDrift, feature: FeatureDrift) -> "Figure":
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.8), dpi=100)
    axes = figure.add_subplot()
    positions = range(len(feature.labels))
    width = 0.4
    days = round((drift.current.end - drift.current.start).total_seconds() / 86400)
    axes.bar(
        [p - width / 2 for p in positions],
        feature.baseline,
        width,
        label=f"baseline (n={feature.baseline_count})",
        color="#5a8fd6",
    )
    axes.bar(
        [p + width / 2 for p in positions],
        feature.current,
        width,
        label=f"last {days} days (n={feature.current_count})",
        color="#e07b39",
    )
    axes.set_xticks(list(positions), feature.labels, rotation=30, ha="right", fontsize=7)
    axes.set_ylabel("proportion of jobs")
    axes.set_ylim(0, 1)
    psi = "" if feature.psi is None else f"PSI {feature.psi:.2f} "
    axes.set_title(
        f"{drift.model_name}: {feature.feature}, {psi}({feature.level.value})", fontsize=9
    )
    axes.legend(fontsize=7)
    figure.text(0.99, 0.01, NOT_CLINICAL, ha="right", fontsize=6, color="#777777")
    figure.tight_layout()
    return figure


def _png(figure: "Figure") -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

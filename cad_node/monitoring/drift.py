"""Model drift: each model's inputs and outputs this week against its baseline window.

Per model, the jobs that count are the newest per study (a re-run replaces the earlier).
Inputs are the read series' attributes (``Series.attributes``); outputs come from
``job_outputs``. Each feature's distribution is binned on the baseline window and
compared with the population stability index (PSI)::

    PSI = sum over bins of (c - b) * ln(c / b)

with ``b``, ``c`` the baseline and current proportions and an empty bin counted as
:data:`EMPTY_BIN` (not renormalised). Categorical inputs are binned by the baseline's
categories plus ``other``; numeric inputs and outputs by the baseline's deciles (plus
``missing`` for inputs); the abstention rate is a two-bin feature. Windows: ISO weeks
(UTC, from Monday); the baseline is the first ``baseline_weeks`` weeks of the model's
outputs unless ``baseline_since``/``baseline_until`` are set; current is the last
``current_days`` days. A window with fewer than ``min_samples`` values is ``too few``
and never raises an alert.

The binning and PSI are pure (no SQLAlchemy); :func:`model_drift` and
:func:`drift_alerts` read the journal.
"""

import logging
import math
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any

from sqlalchemy import and_, func, or_, select, true
from sqlalchemy.orm import Session, sessionmaker

from cad_node.clock import Clock
from cad_node.config.monitoring import MonitoringSettings
from cad_node.store.schema import Job, JobOutput, Series

logger = logging.getLogger(__name__)

EMPTY_BIN = 1e-4
"""The proportion an empty bin counts as in the PSI."""
OTHER = "other"
"""The bin of categories the baseline did not have."""
MISSING = "missing"
"""The bin of jobs whose series lacks the attribute (numeric inputs)."""


class DriftLevel(StrEnum):
    """How far a feature has moved from its baseline."""

    OK = "ok"
    WARN = "warn"
    """PSI >= ``psi_warn``."""
    ALERT = "alert"
    """PSI >= ``psi_alert``."""
    TOO_FEW = "too few"
    """Fewer than ``min_samples`` values in the baseline or the current window."""


class FeatureKind(StrEnum):
    CATEGORICAL = "categorical"
    NUMERIC = "numeric"
    BINARY = "binary"


@dataclass(frozen=True, slots=True)
class Bins:
    """How a feature's values are binned: categories (+ other), or decile edges."""

    kind: FeatureKind
    labels: tuple[str, ...]
    """One per bin, in order: a category, ``other``, ``<= 1.25``, ``> 2.5``, ``missing``."""
    categories: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()
    """Numeric: bin i holds ``edges[i-1] < v <= edges[i]`` (the last has no upper edge)."""


@dataclass(frozen=True, slots=True)
class Window:
    """A time window ``[start, end)`` and how many jobs fell in it."""

    start: datetime
    end: datetime
    jobs: int

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "jobs": self.jobs}


@dataclass(frozen=True, slots=True)
class WeeklyPsi:
    """One ISO week's PSI of a feature against the baseline."""

    week: str
    """``2026-W49``."""
    start: datetime
    """Monday 00:00 UTC."""
    count: int
    psi: float | None
    """None when ``level`` is ``too few``."""
    level: DriftLevel

    def to_json(self) -> dict[str, Any]:
        return {
            "week": self.week,
            "start": self.start.isoformat(),
            "count": self.count,
            "psi": self.psi,
            "level": self.level.value,
        }


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature of one model: baseline and current distribution, PSI, level, weeks."""

    feature: str
    """A series attribute keyword (``Manufacturer``) or an output
    (``score``, ``finding_count``, ``abstained``)."""
    kind: FeatureKind
    labels: tuple[str, ...]
    """The bins."""
    baseline: tuple[float, ...]
    """Proportion of the baseline window's values in each bin."""
    current: tuple[float, ...]
    baseline_count: int
    current_count: int
    psi: float | None
    """None when ``level`` is ``too few``."""
    level: DriftLevel
    weekly: tuple[WeeklyPsi, ...] = ()

    @property
    def is_input(self) -> bool:
        return self.feature not in ("score", "finding_count", "abstained")

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": self.kind.value,
            "input": self.is_input,
            "labels": list(self.labels),
            "baseline": list(self.baseline),
            "current": list(self.current),
            "baseline_count": self.baseline_count,
            "current_count": self.current_count,
            "psi": self.psi,
            "level": self.level.value,
            "weekly": [week.to_json() for week in self.weekly],
        }


@dataclass(frozen=True, slots=True)
class ModelDrift:
    """Every watched feature of one model at ``computed_at``."""

    model_name: str
    computed_at: datetime
    baseline: Window | None
    """None: the model has no outputs yet."""
    current: Window
    features: tuple[FeatureDrift, ...]
    psi_warn: float
    psi_alert: float
    min_samples: int

    @property
    def alert(self) -> bool:
        """Whether any feature is at ``alert``."""
        return any(feature.level is DriftLevel.ALERT for feature in self.features)

    @property
    def level(self) -> DriftLevel:
        """The worst level of its features (``too few`` when every feature is)."""
        return worst_level([feature.level for feature in self.features])

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "computed_at": self.computed_at.isoformat(),
            "baseline": None if self.baseline is None else self.baseline.to_json(),
            "current": self.current.to_json(),
            "alert": self.alert,
            "level": self.level.value,
            "psi_warn": self.psi_warn,
            "psi_alert": self.psi_alert,
            "min_samples": self.min_samples,
            "features": [feature.to_json() for feature in self.features],
        }


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """A feature of a model at ``warn`` or ``alert``: a line of the admin page's banner."""

    model_name: str
    feature: str
    psi: float
    level: DriftLevel

    def message(self) -> str:
        """``lung_nodule_ct: Manufacturer PSI 0.31 (alert)``."""
        return f"{self.model_name}: {self.feature} PSI {self.psi:.2f} ({self.level.value})"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "feature": self.feature,
            "psi": self.psi,
            "level": self.level.value,
            "message": self.message(),
        }


CATEGORICAL_INPUTS = frozenset(
    {"Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "BodyPartExamined"}
)
NUMERIC_INPUTS = frozenset({"SliceThickness", "PixelSpacing", "KVP"})
OUTPUTS = ("score", "finding_count", "abstained")
ABSTENTION_LABELS = ("assessed", "abstained")
WEEK = timedelta(days=7)
MAX_WEEKS = 52
"""Weeks of PSI history kept per feature (the most recent)."""

FeatureValue = str | float | None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What drift reads of one job: when its outputs were recorded, its outputs and the
    series attributes it read."""

    recorded_at: datetime
    study_instance_uid: str
    score: float | None
    finding_count: int
    abstained: bool
    attributes: Mapping[str, Any]


# --- pure: values, bins, PSI, levels ---------------------------------------------------


def feature_kind(feature: str) -> FeatureKind:
    if feature in CATEGORICAL_INPUTS:
        return FeatureKind.CATEGORICAL
    if feature == "abstained":
        return FeatureKind.BINARY
    return FeatureKind.NUMERIC


def _number(value: object) -> float | None:
    if isinstance(value, list):
        return _number(value[0]) if value else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _category(value: object) -> str:
    if isinstance(value, list):
        value = "\\".join(str(item) for item in value)
    text = "" if value is None else str(value).strip()
    return text or MISSING


def feature_values(feature: str, records: Iterable[JobRecord]) -> list[FeatureValue]:
    """The feature's value of each record that has one to count.

    Inputs: every job (a categorical's absent value is ``missing``, a numeric's is None);
    ``score`` and ``finding_count``: jobs that did not abstain (and have a score);
    ``abstained``: every job, ``abstained`` or ``assessed``.
    """
    if feature == "abstained":
        return [ABSTENTION_LABELS[int(record.abstained)] for record in records]
    if feature == "score":
        return [r.score for r in records if not r.abstained and r.score is not None]
    if feature == "finding_count":
        return [float(r.finding_count) for r in records if not r.abstained]
    if feature in CATEGORICAL_INPUTS:
        return [_category(record.attributes.get(feature)) for record in records]
    return [_number(record.attributes.get(feature)) for record in records]


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted ``ordered`` by nearest rank (a value that occurred)."""
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def _format(value: float) -> str:
    return f"{value:.3g}"


def make_bins(feature: str, baseline: Sequence[FeatureValue]) -> Bins:
    """Bins of ``feature`` from its baseline values.

    Categorical: the baseline's categories, most frequent first, then ``other``.
    Numeric: upper edges at the baseline's deciles (nearest rank, duplicates dropped):
    ``<= e1``, ``(e1, e2]`` ... ``> e_last``, and ``missing`` for inputs.
    Binary (abstention): ``assessed``, ``abstained``.
    """
    kind = feature_kind(feature)
    if kind is FeatureKind.BINARY:
        return Bins(kind, ABSTENTION_LABELS, categories=ABSTENTION_LABELS)
    if kind is FeatureKind.CATEGORICAL:
        counts = Counter(str(value) for value in baseline)
        categories = tuple(sorted(counts, key=lambda name: (-counts[name], name)))
        return Bins(kind, (*categories, OTHER), categories=categories)
    ordered = sorted(value for value in baseline if isinstance(value, float))
    edges: tuple[float, ...] = ()
    if ordered:
        deciles = (nearest_rank(ordered, k / 10) for k in range(1, 10))
        edges = tuple(sorted(set(deciles)))
    labels = _numeric_labels(edges)
    if feature not in OUTPUTS:
        labels = (*labels, MISSING)
    return Bins(kind, labels, edges=edges)


def _numeric_labels(edges: Sequence[float]) -> tuple[str, ...]:
    if not edges:
        return ("all",)
    inner = [f"({_format(low)}, {_format(high)}]" for low, high in pairwise(edges)]
    return (f"<= {_format(edges[0])}", *inner, f"> {_format(edges[-1])}")


def bin_counts(bins: Bins, values: Iterable[FeatureValue]) -> tuple[int, ...]:
    """How many of ``values`` fall in each of ``bins``."""
    counts = [0] * len(bins.labels)
    if bins.kind is FeatureKind.NUMERIC:
        has_missing = bins.labels[-1] == MISSING
        for value in values:
            if isinstance(value, float):
                counts[bisect_left(bins.edges, value) if bins.edges else 0] += 1
            elif has_missing:
                counts[-1] += 1
        return tuple(counts)
    index = {category: i for i, category in enumerate(bins.categories)}
    other = len(bins.labels) - 1
    for value in values:
        counts[index.get(str(value), other)] += 1
    return tuple(counts)


def proportions(counts: Sequence[int]) -> tuple[float, ...]:
    """Each count over their total (all zero when the total is)."""
    total = sum(counts)
    return tuple(count / total if total else 0.0 for count in counts)


def psi(baseline: Sequence[float], current: Sequence[float]) -> float:
    """Population stability index of two proportion vectors over the same bins:
    ``sum((c - b) * ln(c / b))``, an empty bin counted as :data:`EMPTY_BIN`."""
    if len(baseline) != len(current):
        raise ValueError(f"{len(baseline)} baseline bins but {len(current)} current bins")
    total = 0.0
    for expected, observed in zip(baseline, current, strict=True):
        b = expected if expected > 0 else EMPTY_BIN
        c = observed if observed > 0 else EMPTY_BIN
        total += (c - b) * math.log(c / b)
    return total


def drift_level(
    value: float | None, baseline_count: int, current_count: int, settings: MonitoringSettings
) -> DriftLevel:
    """``too few`` below ``min_samples`` in either window, else by the PSI thresholds."""
    if value is None or min(baseline_count, current_count) < settings.min_samples:
        return DriftLevel.TOO_FEW
    if value >= settings.psi_alert:
        return DriftLevel.ALERT
    if value >= settings.psi_warn:
        return DriftLevel.WARN
    return DriftLevel.OK


_SEVERITY = {DriftLevel.TOO_FEW: 0, DriftLevel.OK: 1, DriftLevel.WARN: 2, DriftLevel.ALERT: 3}


def worst_level(levels: Iterable[DriftLevel]) -> DriftLevel:
    """``alert`` > ``warn`` > ``ok`` > ``too few`` (nothing: ``too few``)."""
    return max(levels, key=_SEVERITY.__getitem__, default=DriftLevel.TOO_FEW)


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of ``moment``'s ISO week."""
    day = moment.astimezone(UTC).date()
    monday = day - timedelta(days=day.weekday())
    return datetime(monday.year, monday.month, monday.day, tzinfo=UTC)


def iso_week(moment: datetime) -> str:
    """``2026-W49``."""
    year, week, _ = moment.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def baseline_window(
    first_output: datetime, now: datetime, settings: MonitoringSettings
) -> tuple[datetime, datetime]:
    """``[start, end)`` of the baseline: ``baseline_since``/``until`` days when set, else the
    first ``baseline_weeks`` ISO weeks from ``first_output``'s; never past ``now``."""
    start = week_start(first_output)
    end = start + settings.baseline_weeks * WEEK
    if settings.baseline_since is not None:
        start = _midnight(settings.baseline_since)
        end = now if settings.baseline_until is None else end
    if settings.baseline_until is not None:
        end = _midnight(settings.baseline_until)
    return start, min(end, now)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def feature_drift(
    feature: str,
    baseline: Sequence[JobRecord],
    current: Sequence[JobRecord],
    weeks: Sequence[tuple[datetime, Sequence[JobRecord]]],
    settings: MonitoringSettings,
) -> FeatureDrift:
    """One feature: bins from ``baseline``, PSI of ``current`` and of each of ``weeks``."""
    baseline_values = feature_values(feature, baseline)
    bins = make_bins(feature, baseline_values)
    expected = proportions(bin_counts(bins, baseline_values))

    def compare(records: Sequence[JobRecord]) -> tuple[tuple[float, ...], int, float | None]:
        values = feature_values(feature, records)
        observed = proportions(bin_counts(bins, values))
        enough = min(len(values), len(baseline_values)) >= settings.min_samples
        return observed, len(values), psi(expected, observed) if enough else None

    observed, current_count, value = compare(current)
    weekly = []
    for start, records in weeks:
        _, count, week_psi = compare(records)
        level = drift_level(week_psi, len(baseline_values), count, settings)
        weekly.append(WeeklyPsi(iso_week(start), start, count, week_psi, level))
    return FeatureDrift(
        feature=feature,
        kind=bins.kind,
        labels=bins.labels,
        baseline=expected,
        current=observed,
        baseline_count=len(baseline_values),
        current_count=current_count,
        psi=value,
        level=drift_level(value, len(baseline_values), current_count, settings),
        weekly=tuple(weekly),
    )


def drift_of_records(
    model_name: str,
    records: Sequence[JobRecord],
    now: datetime,
    settings: MonitoringSettings,
    first_output: datetime | None = None,
) -> ModelDrift:
    """:class:`ModelDrift` of ``model_name`` from its counted jobs (any order);
    ``first_output``: the model's first output (None: the first of ``records``)."""
    current_start = now - timedelta(days=settings.current_days)
    current = [r for r in records if current_start <= r.recorded_at <= now]
    current_window = Window(current_start, now, len(current))
    if not records:
        return ModelDrift(model_name, now, None, current_window, (), *_thresholds(settings))
    first = first_output or min(record.recorded_at for record in records)
    start, end = baseline_window(first, now, settings)
    baseline = [r for r in records if start <= r.recorded_at < end]
    weeks = _weeks(records, first_week_shown(first, now), now)
    features = tuple(
        feature_drift(feature, baseline, current, weeks, settings) for feature in settings.features
    )
    return ModelDrift(
        model_name,
        now,
        Window(start, end, len(baseline)),
        current_window,
        features,
        *_thresholds(settings),
    )


def first_week_shown(first_output: datetime, now: datetime) -> datetime:
    """Monday of the first week with a weekly PSI: the first output's, at most
    :data:`MAX_WEEKS` weeks back."""
    return max(week_start(first_output), week_start(now) - (MAX_WEEKS - 1) * WEEK)


def _thresholds(settings: MonitoringSettings) -> tuple[float, float, int]:
    return settings.psi_warn, settings.psi_alert, settings.min_samples


def _weeks(
    records: Sequence[JobRecord], first_week: datetime, now: datetime
) -> list[tuple[datetime, list[JobRecord]]]:
    weeks: dict[datetime, list[JobRecord]] = {}
    start = first_week
    while start <= now:
        weeks[start] = []
        start += WEEK
    for record in records:
        if record.recorded_at <= now:
            weeks.get(week_start(record.recorded_at), []).append(record)
    return list(weeks.items())


def alerts_of(drifts: Iterable[ModelDrift]) -> list[DriftAlert]:
    """The features at ``warn`` or ``alert``: alerts first, then by PSI, highest first."""
    found = [
        DriftAlert(drift.model_name, feature.feature, feature.psi, feature.level)
        for drift in drifts
        for feature in drift.features
        if feature.psi is not None and feature.level in (DriftLevel.WARN, DriftLevel.ALERT)
    ]
    return sorted(found, key=lambda alert: (-_SEVERITY[alert.level], -alert.psi, alert.model_name))


# --- the journal -------------------------------------------------------------------------


def job_records(
    session: Session,
    model_name: str,
    until: datetime,
    windows: Sequence[tuple[datetime, datetime]] = (),
) -> list[JobRecord]:
    """``model_name``'s jobs that count for drift, recorded until ``until`` (and within one
    of ``windows`` ``[start, end)`` when given): the newest per study (by recorded_at, then
    job id), with the attributes of the series each read."""
    within = [
        and_(JobOutput.recorded_at >= start, JobOutput.recorded_at < end) for start, end in windows
    ]
    query = (
        select(
            JobOutput.job_id,
            JobOutput.recorded_at,
            JobOutput.study_instance_uid,
            JobOutput.score,
            JobOutput.finding_count,
            JobOutput.abstained,
            Series.attributes,
        )
        .join(Job, Job.id == JobOutput.job_id)
        .join(Series, Series.series_instance_uid == Job.series_instance_uid)
        .where(JobOutput.model_name == model_name, JobOutput.recorded_at <= until)
        .where(or_(*within) if within else true())
        .order_by(JobOutput.recorded_at, JobOutput.job_id)
    )
    newest: dict[str, JobRecord] = {}
    for _, recorded_at, study, score, finding_count, abstained, attributes in session.execute(
        query
    ):
        newest[study] = JobRecord(
            recorded_at=recorded_at,
            study_instance_uid=study,
            score=score,
            finding_count=int(finding_count or 0),
            abstained=bool(abstained),
            attributes=attributes or {},
        )
    return list(newest.values())


def monitored_models(session: Session) -> list[str]:
    """Models with outputs in the journal, by name."""
    query = select(JobOutput.model_name).distinct().order_by(JobOutput.model_name)
    return list(session.scalars(query))


def model_drift(
    session: Session, model_name: str, now: datetime, settings: MonitoringSettings
) -> ModelDrift:
    """``model_name``'s drift at ``now``: every feature in ``settings.features``.

    Reads the jobs of the baseline window and of the weeks shown (and the current window)
    only, not the whole history."""
    first = session.scalar(
        select(func.min(JobOutput.recorded_at)).where(
            JobOutput.model_name == model_name, JobOutput.recorded_at <= now
        )
    )
    if first is None:
        return drift_of_records(model_name, [], now, settings)
    recent = min(first_week_shown(first, now), now - timedelta(days=settings.current_days))
    windows = (baseline_window(first, now, settings), (recent, now + timedelta(seconds=1)))
    records = job_records(session, model_name, now, windows)
    return drift_of_records(model_name, records, now, settings, first_output=first)


def drift_alerts(session: Session, now: datetime, settings: MonitoringSettings) -> list[DriftAlert]:
    """Every model's features at ``warn`` or ``alert`` at ``now``, alerts first, by PSI."""
    return alerts_of(
        model_drift(session, name, now, settings) for name in monitored_models(session)
    )


class DriftWatch:
    """Every model's drift, kept for /metrics and the banner and recomputed in the
    background once it is ``check_interval_seconds`` old by the node's clock.

    A reader never waits for the journal but the first, who finds nothing computed yet;
    the others get the last result while a fresh one is computed.
    """

    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock, settings: MonitoringSettings
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._settings = settings
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._last: tuple[ModelDrift, ...] | None = None
        self._computed_at: datetime | None = None
        self._thread: threading.Thread | None = None

    @property
    def computed_at(self) -> datetime | None:
        """The node's time of the result :meth:`current` returns; None before the first."""
        return self._computed_at

    def refresh(self) -> tuple[ModelDrift, ...]:
        """Compute every model's drift now (one computation at a time)."""
        with self._refreshing:
            now = self._clock()
            with self._sessions() as session:
                drifts = tuple(
                    model_drift(session, name, now, self._settings)
                    for name in monitored_models(session)
                )
            with self._lock:
                self._last, self._computed_at = drifts, now
            return drifts

    def current(self) -> tuple[ModelDrift, ...]:
        """The last result; a stale one starts a refresh in the background."""
        with self._lock:
            last, computed_at = self._last, self._computed_at
        if last is None or computed_at is None:
            return self.refresh()
        age = (self._clock() - computed_at).total_seconds()
        stale = age >= self._settings.check_interval_seconds or age < 0
        if stale:
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._refresh_quietly, name="model-drift", daemon=True
                    )
                    self._thread.start()
        return last

    def join(self, timeout: float | None = None) -> None:
        """Wait for a background refresh under way to end."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def alerts(self) -> list[DriftAlert]:
        """:func:`alerts_of` the last result."""
        return alerts_of(self.current())

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception:
            logger.exception("model drift: computing failed; the last result stays")

"""Time to result per clinical priority class and model: Prometheus histograms, the
dashboard's median and p90, and the alert when a class's p90 misses its target.

Time to result is the time from the last instance of a job's series received to the
job's results written (journal: ``series.last_received_at`` to ``jobs.finished_at``),
of DONE jobs. The histograms count every such job in the journal (true across restarts
and worker processes); the median, p90 and the alert read the last
:data:`WINDOW` only, so an old slow day does not keep the alert up.
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta

from fastapi import APIRouter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from cad_node.admin.auth import Reader
from cad_node.admin.deps import Context, Journal
from cad_node.clock import Clock
from cad_node.domain.priority import PriorityClass
from cad_node.store.priority import TimeToResult, times_to_result

BUCKETS_SECONDS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""The histograms' upper bounds (a 2D study alone takes seconds, a chest CT tens)."""

WINDOW = timedelta(hours=24)
"""The jobs the median, p90 and the alert read: those finished this recently."""


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank: a value that occurred); 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


class TimeToResultOut(BaseModel):
    """Median and p90 time to result of one priority class and model (the last 24 hours)."""

    priority_class: str
    model_name: str
    count: int
    median_seconds: float
    p90_seconds: float


class ClassTargetOut(BaseModel):
    """One class's p90 over every model (the last 24 hours) against its target."""

    priority_class: str
    count: int
    p90_seconds: float
    target_seconds: float | None
    missed: bool


class TimeToResultSummary(BaseModel):
    """The dashboard's time-to-result panel."""

    window_hours: float
    by_model: list[TimeToResultOut]
    by_class: list[ClassTargetOut]


def summarise(
    rows: Sequence[TimeToResult], targets: Mapping[PriorityClass, float]
) -> TimeToResultSummary:
    """Median and p90 per (class, model) and per class against ``targets``, most urgent first."""
    by_model: dict[tuple[PriorityClass, str], list[float]] = {}
    by_class: dict[PriorityClass, list[float]] = {}
    for row in rows:
        by_model.setdefault((row.priority_class, row.model_name), []).append(row.seconds)
        by_class.setdefault(row.priority_class, []).append(row.seconds)
    return TimeToResultSummary(
        window_hours=WINDOW.total_seconds() / 3600,
        by_model=[
            TimeToResultOut(
                priority_class=priority.value,
                model_name=model,
                count=len(seconds),
                median_seconds=round(quantile(seconds, 0.5), 3),
                p90_seconds=round(quantile(seconds, 0.9), 3),
            )
            for (priority, model), seconds in sorted(by_model.items(), key=_class_then_model)
        ],
        by_class=[_against_target(c, by_class.get(c, []), targets.get(c)) for c in PriorityClass],
    )


def _class_then_model(item: tuple[tuple[PriorityClass, str], list[float]]) -> tuple[int, str]:
    (priority, model), _ = item
    return priority.rank, model


def _against_target(
    priority: PriorityClass, seconds: Sequence[float], target: float | None
) -> ClassTargetOut:
    p90 = quantile(seconds, 0.9)
    return ClassTargetOut(
        priority_class=priority.value,
        count=len(seconds),
        p90_seconds=round(p90, 3),
        target_seconds=target,
        missed=bool(seconds) and target is not None and p90 > target,
    )


def recent_summary(
    session: Session, clock: Clock, targets: Mapping[PriorityClass, float]
) -> TimeToResultSummary:
    """:func:`summarise` over the jobs finished in the last :data:`WINDOW`."""
    return summarise(times_to_result(session, since=clock() - WINDOW), targets)


class TimeToResultCollector(Collector):
    """``cad_node_time_to_result_seconds`` (histogram per class and model), the p90 per class
    and ``cad_node_time_to_result_target_missed`` (1 while a class's p90 exceeds its target)."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock, targets: Mapping[PriorityClass, float]
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._targets = targets

    def collect(self) -> Iterator[Metric]:
        with self._sessions() as session:
            every = times_to_result(session)
            recent = recent_summary(session, self._clock, self._targets)
        yield _histogram(every)
        p90 = GaugeMetricFamily(
            "cad_node_time_to_result_p90_seconds",
            "p90 time to result per priority class, jobs finished in the last 24 hours",
            labels=["priority_class"],
        )
        missed = GaugeMetricFamily(
            "cad_node_time_to_result_target_missed",
            "1 while the class's p90 time to result exceeds queue.target_seconds",
            labels=["priority_class"],
        )
        for figure in recent.by_class:
            p90.add_metric([figure.priority_class], figure.p90_seconds)
            missed.add_metric([figure.priority_class], 1.0 if figure.missed else 0.0)
        yield p90
        yield missed


def _histogram(rows: Sequence[TimeToResult]) -> HistogramMetricFamily:
    metric = HistogramMetricFamily(
        "cad_node_time_to_result_seconds",
        "Last instance received to results written, per priority class and model",
        labels=["priority_class", "model"],
    )
    grouped: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        grouped.setdefault((row.priority_class.value, row.model_name), []).append(row.seconds)
    for labels, seconds in sorted(grouped.items()):
        buckets = [
            (_bound(bound), float(sum(1 for s in seconds if s <= bound)))
            for bound in BUCKETS_SECONDS
        ]
        buckets.append(("+Inf", float(len(seconds))))
        metric.add_metric(list(labels), buckets, sum_value=sum(seconds))
    return metric


def _bound(bound: float) -> str:
    """Prometheus' own form of a bucket bound ("30.0"), as its client library writes them."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]  # untyped library


router = APIRouter(prefix="/api", tags=["series, jobs, deliveries"])


@router.get("/time-to-result", response_model=TimeToResultSummary)
def time_to_result(session: Journal, context: Context, _caller: Reader) -> TimeToResultSummary:
    """Median and p90 time to result per priority class and model (last 24 hours), and each
    class's p90 against its target (``queue.target_seconds``)."""
    return recent_summary(session, context.clock, context.settings.queue.target_seconds)

"""Prometheus metrics, read from the journal at each scrape.

Counting from the journal, not from in-process counters, keeps the figures
true across restarts and across several worker processes sharing one journal.
"""

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from cad_node.admin.context import AdminContext
from cad_node.admin.health import backlog
from cad_node.admin.time_to_result import TimeToResultCollector
from cad_node.domain.states import DeliveryState, JobState, SeriesState
from cad_node.store.abstentions import abstention_counts
from cad_node.store.disk import disk_space
from cad_node.store.model_modes_and_destinations import current_destinations
from cad_node.store.schema import Delivery, Instance, Job, Series

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class JournalCollector(Collector):
    """Instances received, series per state, queue depth, job durations, deliveries."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self._sessions() as session:
            yield self._instances(session)
            yield self._series(session)
            yield self._jobs(session)
            yield self._queue_depth(session)
            yield self._job_seconds(session)
            yield self._stage_seconds(session)
            yield self._deliveries(session)
            yield self._abstentions(session)

    def _instances(self, session: Session) -> Metric:
        count = session.scalar(select(func.count()).select_from(Instance)) or 0
        metric = CounterMetricFamily(
            "cad_node_instances_received", "Instances received and stored (C-STORE)"
        )
        metric.add_metric([], float(count))
        return metric

    def _series(self, session: Session) -> Metric:
        metric = GaugeMetricFamily("cad_node_series", "Series by state", labels=["state"])
        counts = _counts(session, select(Series.state, func.count()).group_by(Series.state))
        for state in SeriesState:
            metric.add_metric([state.value], float(counts.get(state, 0)))
        return metric

    def _jobs(self, session: Session) -> Metric:
        metric = GaugeMetricFamily("cad_node_jobs", "Jobs by state", labels=["state"])
        counts = _counts(session, select(Job.state, func.count()).group_by(Job.state))
        for state in JobState:
            metric.add_metric([state.value], float(counts.get(state, 0)))
        return metric

    def _queue_depth(self, session: Session) -> Metric:
        depth = session.scalar(select(func.count()).where(Job.state == JobState.QUEUED)) or 0
        metric = GaugeMetricFamily("cad_node_queue_depth", "Jobs waiting for a worker")
        metric.add_metric([], float(depth))
        return metric

    def _job_seconds(self, session: Session) -> Metric:
        """Run time of finished jobs (claim to done or failed), per model: a summary."""
        query = select(Job.model_name, Job.started_at, Job.finished_at).where(
            Job.state.in_([JobState.DONE, JobState.FAILED]),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        totals: dict[str, tuple[int, float]] = {}
        for model_name, started_at, finished_at in session.execute(query).all():
            if started_at is None or finished_at is None:
                continue  # excluded by the query; narrows the types
            count, seconds = totals.get(model_name, (0, 0.0))
            totals[model_name] = (count + 1, seconds + (finished_at - started_at).total_seconds())
        metric = _summary("cad_node_job_duration_seconds", "Job run time per model", ["model"])
        for model_name, (count, seconds) in sorted(totals.items()):
            metric.add_metric([model_name], count_value=count, sum_value=seconds)
        return metric

    def _stage_seconds(self, session: Session) -> Metric:
        """Time per stage of finished jobs (load, inference, build, write), per model."""
        query = select(Job.model_name, Job.stage_seconds).where(
            Job.state == JobState.DONE, Job.stage_seconds.is_not(None)
        )
        totals: dict[tuple[str, str], tuple[int, float]] = {}
        for model_name, stages in session.execute(query).all():
            for stage, seconds in (stages or {}).items():
                count, total = totals.get((model_name, stage), (0, 0.0))
                totals[(model_name, stage)] = (count + 1, total + float(seconds))
        metric = _summary(
            "cad_node_job_stage_seconds",
            "Time per stage of a job (model inference is stage 'inference'), per model",
            ["model", "stage"],
        )
        for (model_name, stage), (count, seconds) in sorted(totals.items()):
            metric.add_metric([model_name, stage], count_value=count, sum_value=seconds)
        return metric

    def _deliveries(self, session: Session) -> Metric:
        metric = GaugeMetricFamily(
            "cad_node_deliveries", "Result deliveries by state", labels=["state"]
        )
        query = select(Delivery.state, func.count()).group_by(Delivery.state)
        counts = _counts(session, query)
        for state in DeliveryState:
            metric.add_metric([state.value], float(counts.get(state, 0)))
        return metric

    def _abstentions(self, session: Session) -> Metric:
        """Done jobs whose model abstained, per model, reason and the rule's choice."""
        metric = CounterMetricFamily(
            "cad_node_abstentions",
            "Jobs whose model did not assess the input (outside its validated domain or "
            "out of distribution), per model, reason and the rule's on_out_of_domain",
            labels=["model", "reason", "on_out_of_domain"],
        )
        for count in abstention_counts(session):
            labels = [count.model_name, count.reason, count.on_out_of_domain]
            metric.add_metric(labels, float(count.count))
        return metric


def _counts(session: Session, query: Select[Any, int]) -> dict[str, int]:
    return {str(state): int(count) for state, count in session.execute(query).all()}


def _summary(name: str, documentation: str, labels: list[str]) -> SummaryMetricFamily:
    return SummaryMetricFamily(name, documentation, labels=labels)


class HealthCollector(Collector):
    """Destination health (last C-ECHO), the delivery backlog per destination, disk space."""

    def __init__(self, context: AdminContext) -> None:
        self._context = context

    def collect(self) -> Iterator[Metric]:
        yield from self._destinations()
        yield from self._storage()

    def _destinations(self) -> Iterator[Metric]:
        now = self._context.clock()
        with self._context.sessions() as session:
            figures = backlog(session, current_destinations(session))
        up = GaugeMetricFamily(
            "cad_node_destination_up",
            "1 when the destination's last C-ECHO answered Success, 0 when not",
            labels=["destination"],
        )
        echo_seconds = GaugeMetricFamily(
            "cad_node_destination_echo_seconds",
            "Round trip of the destination's last C-ECHO",
            labels=["destination"],
        )
        for name, health in sorted(self._context.destination_health().items()):
            up.add_metric([name], 1.0 if health.ok else 0.0)
            echo_seconds.add_metric([name], health.seconds)
        pending = _by_destination(
            "cad_node_deliveries_pending", "Deliveries waiting to be sent (first try or retry)"
        )
        retrying = _by_destination(
            "cad_node_deliveries_retrying", "Pending deliveries after at least one failed attempt"
        )
        oldest = _by_destination(
            "cad_node_delivery_oldest_pending_seconds",
            "Age of the oldest pending delivery's result (0: none pending)",
        )
        for name, waiting in sorted(figures.items()):
            pending.add_metric([name], float(waiting.pending))
            retrying.add_metric([name], float(waiting.retrying))
            since = waiting.oldest_pending_since
            oldest.add_metric([name], max((now - since).total_seconds(), 0.0) if since else 0.0)
        yield from (up, echo_seconds, pending, retrying, oldest)

    def _storage(self) -> Iterator[Metric]:
        settings = self._context.settings
        disk = disk_space(settings.storage_dir, settings.health.min_free_disk_fraction)
        for name, documentation, value in (
            (
                "cad_node_storage_total_bytes",
                "Size of the storage folder's file system",
                disk.total_bytes,
            ),
            (
                "cad_node_storage_free_bytes",
                "Free bytes on the storage folder's file system",
                disk.free_bytes,
            ),
            (
                "cad_node_storage_low",
                "1 when free/total is under health.min_free_disk_fraction",
                int(disk.low),
            ),
        ):
            metric = GaugeMetricFamily(name, documentation)
            metric.add_metric([], float(value))
            yield metric


class ModelDriftCollector(Collector):
    """Each model's drift (:class:`~cad_node.monitoring.drift.DriftWatch`'s last result, so a
    scrape does not wait for the journal): PSI per feature, and per model (every model a rule
    names, too) 1 when any feature is at alert."""

    def __init__(self, context: AdminContext) -> None:
        self._context = context

    def collect(self) -> Iterator[Metric]:
        psi = GaugeMetricFamily(
            "cad_node_model_drift_psi",
            "Population stability index of a model's input or output feature, the last "
            "monitoring.current_days against its baseline (absent: too few jobs)",
            labels=["model", "feature"],
        )
        alert = GaugeMetricFamily(
            "cad_node_model_drift_alert",
            "1 when any feature of the model has PSI >= monitoring.psi_alert",
            labels=["model"],
        )
        alerting = {rule.model: False for rule in self._context.rule_book.current()}
        for drift in self._context.model_drift.current():
            for feature in drift.features:
                if feature.psi is not None:
                    psi.add_metric([drift.model_name, feature.feature], feature.psi)
            alerting[drift.model_name] = drift.alert
        for model_name, drifted in sorted(alerting.items()):
            alert.add_metric([model_name], 1.0 if drifted else 0.0)
        yield from (psi, alert)


def _by_destination(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["destination"])


def metrics_registry(
    sessions: sessionmaker[Session], context: AdminContext | None = None
) -> CollectorRegistry:
    """A registry of the node's metrics only (no process metrics of the test runner):
    the journal's, and with ``context`` destination health, backlog, disk space and time to
    result per priority class (:mod:`cad_node.admin.time_to_result`) and model drift."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JournalCollector(sessions))
    if context is not None:
        registry.register(HealthCollector(context))
        targets = context.settings.queue.target_seconds
        registry.register(TimeToResultCollector(sessions, context.clock, targets))
        registry.register(ModelDriftCollector(context))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (Prometheus 0.0.4)."""
    return generate_latest(registry)

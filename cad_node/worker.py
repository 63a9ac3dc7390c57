"""Workers that hold their job under a renewed lease, and the ``cad-node worker`` process.

Several workers, threads of ``cad-node serve`` or ``cad-node worker`` processes
on several hosts, share one PostgreSQL journal and one storage folder. Each
claims a job with ``SELECT ... FOR UPDATE SKIP LOCKED`` (:func:`claim_next_job`)
and, while the model runs, a heartbeat thread pushes the job's lease forward;
a worker that dies stops renewing, and the node's sweep puts the job back in
the queue once the lease has expired (:func:`requeue_expired`).
"""

import logging
import os
import socket
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cad_node.clock import Clock, utc_now
from cad_node.config import Settings
from cad_node.domain.states import ResultKind
from cad_node.errors import CadNodeError, ModelError, RuleError
from cad_node.imaging.isolation import SCRATCH_DIR, DecodingLimits, IsolatedDecoder
from cad_node.ingest.bounds import DataSetLimits
from cad_node.models.registry import ModelRegistry
from cad_node.pipeline.work import JobInput, JobRun, Worker
from cad_node.routing.rules import Rule, RuleMode, unknown_references
from cad_node.store.db import make_engine, session_factory
from cad_node.store.jobs import renew_lease
from cad_node.store.model_modes_and_destinations import DestinationBook
from cad_node.store.rulesets import RuleBook

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How long an idle worker waits before looking at the queue again."""


def worker_id(index: int = 0) -> str:
    """``host:pid:index``: who holds a lease, unique across hosts, processes and threads."""
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


class LeaseHeartbeat:
    """A thread that renews one job's lease every ``interval`` seconds until stopped.

    Parameters
    ----------
    renew
        Pushes the lease forward; False when the job is no longer this worker's.
    interval
        Seconds between renewals (a fraction of the lease, so one missed beat is harmless).
    """

    def __init__(self, renew: Callable[[], bool], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cad-node-lease", daemon=True)

    def __enter__(self) -> "LeaseHeartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                if not self._renew():
                    logger.warning("lease lost: the job was reclaimed by another worker")
                    return
            except SQLAlchemyError as exc:  # the journal is away for a moment: try again
                logger.warning("lease renewal failed: %s", type(exc).__name__)


@dataclass
class LeasedWorker(Worker):
    """A :class:`Worker` whose job's lease is renewed while it runs."""

    heartbeat_seconds: float | None = None
    """Seconds between renewals; ``None``: a third of ``lease_seconds``."""

    def _run(self, job_input: JobInput) -> JobRun:
        interval = self.heartbeat_seconds or self.lease_seconds / 3
        with LeaseHeartbeat(lambda: self._renew(job_input.job_id), interval):
            return super()._run(job_input)

    def _renew(self, job_id: int) -> bool:
        until = self.clock() + timedelta(seconds=self.lease_seconds)
        with self.sessions.begin() as session:
            return renew_lease(session, job_id, self.worker_id, until)


def model_registry(settings: Settings) -> ModelRegistry:
    """The shipped models and ``models_dir``, on the configured device and CPU threads."""
    return ModelRegistry(
        [settings.resolved_models_dir],
        device=None if settings.device == "auto" else settings.device,
        threads=settings.torch_threads,
    )


def make_worker(
    settings: Settings,
    sessions: sessionmaker[Session],
    registry: ModelRegistry,
    clock: Clock,
    index: int = 0,
) -> LeasedWorker:
    """A leased worker configured from ``settings``."""
    return LeasedWorker(
        sessions=sessions,
        registry=registry,
        storage_dir=settings.storage_dir,
        result_options=settings.result_options(),
        result_kinds={
            name: [ResultKind(kind) for kind in destination.results]
            for name, destination in settings.destinations.items()
        },
        clock=clock,
        worker_id=worker_id(index),
        lease_seconds=settings.lease_seconds,
        decoder=IsolatedDecoder(
            DecodingLimits(
                timeout_seconds=settings.decoding.timeout_seconds,
                memory_bytes=settings.decoding.memory_mb * 2**20,
            ),
            settings.storage_dir / SCRATCH_DIR,
        ),
        limits=DataSetLimits.from_settings(settings.limits),
    )


def work_loop(
    worker: Worker,
    stopping: threading.Event,
    wake: threading.Event,
    job_done: Callable[[], None] = lambda: None,
) -> None:
    """Run jobs until ``stopping`` is set; a running job is finished first.

    ``job_done`` is called after each job (e.g. to deliver its results at once).

    A journal error (PostgreSQL restarting, a job completed twice after its
    lease was taken over) is logged and the loop goes on: the job's lease
    brings it back to a worker if it was not closed.
    """
    while not stopping.is_set():
        try:
            if worker.run_next():
                job_done()
                continue
        except SQLAlchemyError as exc:
            logger.error("worker %s: journal error: %s", worker.worker_id, type(exc).__name__)
        wake.wait(timeout=POLL_SECONDS)
        wake.clear()


def check_rule_references(
    rules: Sequence[Rule],
    models: Collection[str],
    destinations: Collection[str],
    models_dir: Path,
) -> None:
    """Refuse to start (:class:`~cad_node.errors.RuleError`) when a rule in force names a
    model not in ``models`` (installed) or a destination not in ``destinations`` (in force),
    naming them all (:func:`~cad_node.routing.rules.unknown_references`); ``serve`` and
    ``worker`` both call it at start."""
    problems = unknown_references(rules, models, destinations)
    if not problems:
        return
    hint = ""
    if any(rule.model not in models for rule in rules if rule.mode is not RuleMode.OFF):
        hint = f"; install the model in {models_dir} (cad-node models add) and start again"
    raise RuleError(
        f"the routing rules in force (journal) name what does not exist: "
        f"{'; '.join(problems)}{hint}"
    )


def model_names(sessions: sessionmaker[Session]) -> set[str]:
    """The models the journal's rules name (to load them before the first job)."""
    return {rule.model for rule in RuleBook(sessions, utc_now).current()}


@dataclass
class WorkerProcess:
    """``cad-node worker``: only the worker loop, against the configured journal and storage.

    The journal's schema and rules come from ``cad-node serve``; this process
    claims, runs and completes jobs, nothing else.
    """

    settings: Settings
    clock: Clock = utc_now
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Work until :meth:`request_stop`; the job in hand is finished first.

        Like ``cad-node serve``, refuses to start (:class:`~cad_node.errors.RuleError`)
        when a rule in force names a model not installed in this worker's models folder
        or a destination not in force, before it claims any job.
        """
        engine = make_engine(self.settings.resolved_database_url)
        try:
            sessions = session_factory(engine)
            registry = model_registry(self.settings)
            try:
                check_rule_references(
                    RuleBook(sessions, self.clock).current(),
                    registry.entries(),
                    DestinationBook(sessions, self.clock).current(),
                    self.settings.resolved_models_dir,
                )
            except RuleError:
                registry.close()
                raise
            if self.settings.queue.lanes:
                self._run_lanes(sessions, registry)
                return
            worker = make_worker(self.settings, sessions, registry, self.clock)
            _warm(registry, model_names(sessions))
            logger.info("cad-node worker %s started", worker.worker_id)
            work_loop(worker, self.stopping, wake=threading.Event())  # nothing wakes it: polls
            logger.info("cad-node worker %s stopped", worker.worker_id)
            worker.close()
            registry.close()
        finally:
            engine.dispose()

    def _run_lanes(self, sessions: sessionmaker[Session], registry: ModelRegistry) -> None:
        """``queue.lanes``: a thread per lane (:mod:`cad_node.queueing`) until stopped."""
        from cad_node.queueing import make_lanes, start_lanes  # it builds on this module

        try:
            lanes = make_lanes(self.settings, sessions, registry, self.clock)
        except CadNodeError:
            registry.close()
            raise
        threads = start_lanes(lanes, self.stopping, threading.Event(), lambda: None)
        logger.info("cad-node worker started: lanes %s", ", ".join(lane.name for lane in lanes))
        for thread in threads:
            thread.join()
        logger.info("cad-node worker stopped")
        for lane in lanes:
            lane.worker.close()
        registry.close()

    def request_stop(self) -> None:
        """Stop after the current job; safe to call from a signal handler."""
        self.stopping.set()


def _warm(registry: ModelRegistry, names: set[str]) -> None:
    for name in sorted(names):
        try:
            registry.get(name)
        except ModelError as exc:
            logger.error("model %s not available: %s", name, exc)

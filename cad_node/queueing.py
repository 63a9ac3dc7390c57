"""Lanes that run at once, batches of 2D jobs, and the promotion of long waits.

With ``queue.lanes`` set, ``cad-node serve`` runs one worker thread per lane
instead of ``workers`` general ones. A lane claims only its models' jobs (most
urgent first, :func:`cad_node.store.jobs.claim_next_job`), runs torch with its
own CPU thread budget, and keeps its models warm; so a mammogram runs beside a
chest CT instead of behind it. At start-up every lane model is loaded and
measured (:func:`cad_node.models.memory.measured_load`): one over its lane's
``memory_mb`` refuses the start, with the numbers.

A lane with ``batch_size`` over 1 claims up to that many queued jobs of one
2D model (one that has ``predict_batch``) and runs them through one forward
pass; then each job goes on alone through the worker's own path (domain check,
results, journal), so a job that fails, to load or to build, fails alone.

Example::

    lanes = make_lanes(settings, sessions, registry, clock)  # refuses a model over budget
    threads = start_lanes(lanes, stopping, wake, job_done)
"""

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from cad_node.clock import Clock
from cad_node.config import Settings
from cad_node.config.queue import LaneSettings
from cad_node.domain.image_sets import ImageSet
from cad_node.errors import ConfigError
from cad_node.models.base import CadModel, reads_image_sets
from cad_node.models.registry import ModelRegistry
from cad_node.pipeline.files import read_datasets, read_headers
from cad_node.pipeline.work import JobInput
from cad_node.store.lanes import EVERY_OTHER_MODEL, ClaimFilter, claiming_for
from cad_node.store.priority import promote_waiting
from cad_node.worker import LeasedWorker, make_worker, work_loop

logger = logging.getLogger(__name__)

LANE_WORKER_INDEX = 100
"""Lane workers' ids count from here (``host:pid:100``), apart from general workers'."""


class _Precomputed:
    """A model whose ``predict`` answers from a batch's results for the image sets it ran."""

    def __init__(self, model: CadModel, results: dict[int, Any]) -> None:
        self._model = model
        self._results = results

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, images: ImageSet) -> Any:
        found = self._results.pop(id(images), None)
        return found if found is not None else self._model.predict(images)  # type: ignore[attr-defined]


class _BatchRegistry:
    """The registry as a lane worker sees it: models answer from the current batch."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self.results: dict[int, Any] = {}
        """A batch's predictions by ``id()`` of the image set they were made from."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def get(self, name: str) -> CadModel:
        model = self._registry.get(name)
        if not self.results:
            return model
        return _Precomputed(model, self.results)


@dataclass
class LaneWorker(LeasedWorker):
    """A :class:`~cad_node.worker.LeasedWorker` that claims only its lane's models' jobs and,
    with ``batch_size`` over 1, runs queued 2D jobs of one model in one forward pass."""

    claims: ClaimFilter = field(default_factory=ClaimFilter)
    """The jobs the lane takes (its models; ``*``: the models no other lane names)."""
    batch_size: int = 1
    _claimed: deque[JobInput] = field(default_factory=deque, init=False, repr=False)
    _image_sets: dict[int, ImageSet] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.registry = _BatchRegistry(self.registry)  # type: ignore[assignment]  # a proxy

    def run_next(self) -> bool:
        """Run the lane's most urgent job (or the next of the batch in hand); False: none."""
        if not self._claimed and self.batch_size > 1:
            self._claim_batch()
        try:
            return super().run_next()
        finally:
            if not self._claimed:  # what a job that abstained before loading left behind
                self._image_sets.clear()
                self._batch_registry.results.clear()

    @property
    def _batch_registry(self) -> _BatchRegistry:
        return self.registry  # type: ignore[return-value]  # wrapped in __post_init__

    def _claim(self) -> JobInput | None:
        while self._claimed:  # the batch in hand, each job's lease renewed as its turn comes
            held = self._claimed.popleft()
            if self._renew(held.job_id):
                return held
            logger.warning("job %d: lease lost while it waited in the batch", held.job_id)
            self._image_sets.pop(held.job_id, None)
        with claiming_for(self.claims):
            return super()._claim()

    def _claim_batch(self) -> None:
        """Claim up to ``batch_size`` jobs of the first one's model and predict them at once."""
        first = self._claim()
        if first is None:
            return
        batch = [first]
        try:
            model = self.registry.get(first.model_name)
        except Exception:  # the job's own run fails with the reason
            model = None
        if (
            model is not None
            and reads_image_sets(model)
            and callable(getattr(model, "predict_batch", None))
        ):
            with claiming_for(ClaimFilter(frozenset({first.model_name}))):
                while len(batch) < self.batch_size:
                    job_input = super()._claim()
                    if job_input is None:
                        break
                    batch.append(job_input)
            self._predict_batch(model, batch)
        self._claimed.extend(batch)

    def _predict_batch(self, model: CadModel, batch: Sequence[JobInput]) -> None:
        """One forward pass over the batch's image sets; a set that cannot be loaded is left
        out (its job fails alone in its own run), and if the batch fails each job runs alone."""
        loaded: list[tuple[JobInput, ImageSet]] = []
        for job_input in batch:
            try:
                loaded.append((job_input, self._batch_image_set(job_input)))
            except Exception:  # the job's own run loads it again and fails with the reason
                logger.info("job %d: left out of the batch", job_input.job_id)
        if len(loaded) < 2:
            return
        try:
            predictions = model.predict_batch([images for _, images in loaded])  # type: ignore[attr-defined]
        except Exception as exc:  # each job runs alone: a bad one fails alone
            logger.warning("batch of %d failed (%s): jobs run one by one", len(loaded), exc)
            return
        for (job_input, images), prediction in zip(loaded, predictions, strict=True):
            self._image_sets[job_input.job_id] = images
            self._batch_registry.results[id(images)] = prediction
        logger.info("batch of %d %s jobs in one forward pass", len(loaded), batch[0].model_name)

    def _batch_image_set(self, job_input: JobInput) -> ImageSet:
        paths = job_input.instance_paths
        if self.decoder is not None:
            datasets = read_headers(paths, self.limits)
        else:
            datasets = read_datasets(paths, self.limits)
        return super()._load_image_set(job_input, datasets)

    def _load_image_set(self, job_input: JobInput, datasets: Sequence[Any]) -> ImageSet:
        held = self._image_sets.pop(job_input.job_id, None)
        return held if held is not None else super()._load_image_set(job_input, datasets)


@dataclass(frozen=True, slots=True)
class Lane:
    """A lane: its settings, and the worker its thread runs."""

    name: str
    settings: LaneSettings
    worker: LaneWorker


def check_lane_budgets(settings: Settings, registry: ModelRegistry) -> dict[str, int]:
    """Load every lane model, measure it, and refuse (:class:`ConfigError`) one over its lane's
    ``memory_mb``, naming the model, the bytes measured and the budget; the bytes by model.

    A lane model that is not installed is refused too; the threads of all lanes together
    over the CPU's cores is logged (it oversubscribes the CPU), not refused.
    """
    from cad_node.models.memory import measured_load

    measured: dict[str, int] = {}
    problems: list[str] = []
    installed = registry.entries()
    for lane_name, lane in settings.queue.lanes.items():
        for model_name in lane.models:
            if model_name == EVERY_OTHER_MODEL:
                continue  # loaded on first use, as without lanes
            if model_name not in installed:
                problems.append(f"lane {lane_name!r}: model {model_name!r} is not installed")
                continue
            _, size = measured_load(registry.device, lambda n=model_name: registry.get(n))  # type: ignore[misc]
            measured[model_name] = size
            if lane.memory_mb is not None and size > lane.memory_mb * 2**20:
                problems.append(
                    f"lane {lane_name!r}: model {model_name!r} needs {size / 2**20:.1f} MB "
                    f"on {registry.device} (measured at load), over the lane's budget of "
                    f"{lane.memory_mb:g} MB"
                )
            logger.info("lane %s: model %s holds %.1f MB", lane_name, model_name, size / 2**20)
    threads = sum(lane.threads for lane in settings.queue.lanes.values())
    if threads > (os.cpu_count() or 1):
        logger.warning("lanes use %d threads on %d CPU cores", threads, os.cpu_count() or 1)
    if problems:
        raise ConfigError("queue.lanes: " + "; ".join(problems))
    return measured


def lane_claims(name: str, lanes: Mapping[str, LaneSettings]) -> ClaimFilter:
    """What lane ``name`` claims: its models, or (``*``) every model no other lane names."""
    if EVERY_OTHER_MODEL not in lanes[name].models:
        return ClaimFilter(include=frozenset(lanes[name].models))
    named = {m for other, lane in lanes.items() if other != name for m in lane.models}
    return ClaimFilter(exclude=frozenset(named - {EVERY_OTHER_MODEL}))


def models_without_lane(lanes: Mapping[str, LaneSettings], models: Iterable[str]) -> list[str]:
    """The ``models`` no lane claims (none when a lane says ``*``), sorted."""
    named = {model for lane in lanes.values() for model in lane.models}
    if not lanes or EVERY_OTHER_MODEL in named:
        return []
    return sorted(set(models) - named)


def make_lanes(
    settings: Settings,
    sessions: sessionmaker[Session],
    registry: ModelRegistry,
    clock: Clock,
) -> list[Lane]:
    """One lane worker per ``queue.lanes`` entry, after :func:`check_lane_budgets`; [] when
    no lane is configured."""
    if not settings.queue.lanes:
        return []
    check_lane_budgets(settings, registry)
    lanes = []
    for index, (name, lane) in enumerate(settings.queue.lanes.items()):
        base = make_worker(settings, sessions, registry, clock, LANE_WORKER_INDEX + index)
        worker = LaneWorker(
            **{f.name: getattr(base, f.name) for f in fields(base) if f.init},
            claims=lane_claims(name, settings.queue.lanes),
            batch_size=lane.batch_size,
        )
        lanes.append(Lane(name, lane, worker))
    return lanes


def lane_loop(
    lane: Lane,
    stopping: threading.Event,
    wake: threading.Event,
    job_done: Callable[[], None],
) -> None:
    """The lane's thread: its torch CPU thread budget, then :func:`work_loop` on its worker."""
    from cad_node.models.runtime import set_cpu_threads

    set_cpu_threads(lane.settings.threads)  # OpenMP's thread count is per calling thread
    work_loop(lane.worker, stopping, wake, job_done)


def start_lanes(
    lanes: Sequence[Lane],
    stopping: threading.Event,
    wake: threading.Event,
    job_done: Callable[[], None],
) -> list[threading.Thread]:
    """Start one daemon thread per lane; the threads."""
    threads = []
    for lane in lanes:
        thread = threading.Thread(
            target=lane_loop,
            args=(lane, stopping, wake, job_done),
            name=f"cad-node-lane-{lane.name}",
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    return threads


def promote(settings: Settings, sessions: sessionmaker[Session], clock: Clock) -> int:
    """One promotion sweep (``queue.age_limit_minutes``); how many jobs moved up a class."""
    limits = {
        priority: timedelta(minutes=minutes)
        for priority, minutes in settings.queue.age_limit_minutes.items()
    }
    if not limits:
        return 0
    with sessions.begin() as session:
        promoted = promote_waiting(session, clock(), limits)
    if promoted:
        logger.info("%d queued jobs promoted after waiting past their class's age limit", promoted)
    return promoted


__all__ = [
    "Lane",
    "LaneWorker",
    "check_lane_budgets",
    "lane_loop",
    "make_lanes",
    "promote",
    "start_lanes",
]

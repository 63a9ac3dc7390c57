"""The worker hop: run a job's model on its series and write the SEG and SR.

Results are written to disk before the job is closed in the journal, and their
UIDs are derived from (series, revision, model), so a job re-run after a crash
produces byte-identical objects and a destination never sees two versions.
"""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from pydicom import Dataset, dcmread
from sqlalchemy.orm import Session, sessionmaker

from cad_node.domain.abstention import Abstention, OutOfDomainAction
from cad_node.domain.domain_check import (
    abstention_record,
    check_domain,
    ood_abstention,
    with_ood,
)
from cad_node.domain.findings import ModelIdentity
from cad_node.domain.image_sets import ImageSet
from cad_node.domain.imaging import ImageVolume
from cad_node.domain.monitoring import JobOutputs
from cad_node.domain.results import (
    ModelReport,
    ResultGrid,
    planar_grid,
    planar_report,
    volume_grid,
    volume_report,
)
from cad_node.domain.states import JobState, ResultKind
from cad_node.errors import CadNodeError, InvalidSeriesError, ModelError
from cad_node.imaging.acquisition import image_datasets, image_headers
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.isolation import DecodingAbortedError, IsolatedDecoder
from cad_node.imaging.volume import load_volume
from cad_node.ingest.bounds import DataSetLimits, DataSetTooLargeError
from cad_node.models.base import CadModel, reads_image_sets, reads_volumes, reports_directly
from cad_node.models.registry import ModelRegistry
from cad_node.models.remote import behind_deidentification
from cad_node.monitoring.outputs import abstained_outputs, job_mode, job_outputs
from cad_node.pipeline.files import read_datasets, read_headers, write_dataset_atomically
from cad_node.results.abstention import build_abstention_objects
from cad_node.results.build import ResultObjects, build_result_objects, study_of
from cad_node.results.options import ResultOptions
from cad_node.results.uids import result_uids
from cad_node.security.redaction import redact
from cad_node.store.jobs import (
    StoredResult,
    claim_next_job,
    complete_job,
    earlier_results,
    fail_job,
)
from cad_node.store.model_modes_and_destinations import current_destinations, result_kinds_of
from cad_node.store.outputs import record_outputs
from cad_node.store.retention import purged_inputs_error, purged_series
from cad_node.store.schema import Job
from cad_node.store.series import instance_paths, quarantine

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobInput:
    """What one job reads from the journal before the model runs."""

    job_id: int
    series_instance_uid: str
    series_revision: int
    model_name: str
    destinations: tuple[str, ...]
    created_at: datetime
    instance_paths: tuple[Path, ...]
    predecessor_paths: tuple[Path, ...]
    result_kinds: Mapping[str, Sequence[ResultKind]] | None = None
    """For each destination, the kinds it receives, as the journal held them at the claim."""
    series_group: tuple[str, ...] = ()
    """Every series the job reads (a study model); empty: its own series only."""
    purged: Mapping[str, datetime] = field(default_factory=dict)
    """When retention removed the files of the series read, of those it did."""
    on_out_of_domain: OutOfDomainAction = OutOfDomainAction.REPORT
    """The rule's choice, as queued, when the input is outside the model's domain."""

    @property
    def job_key(self) -> str:
        return f"{self.series_instance_uid}/{self.series_revision}/{self.model_name}"


@dataclass(frozen=True, slots=True)
class JobTimings:
    """Seconds per stage of one job (for logs and the benchmarks)."""

    load: float
    inference: float
    build: float
    """All result objects: SEG, SR, maps, KOS, and overlays and states where asked for."""
    write: float


@dataclass(frozen=True, slots=True)
class JobRun:
    """What one job's run produced, for the journal."""

    stored: list[StoredResult]
    finding_count: int
    timings: JobTimings
    warnings: tuple[str, ...] = ()
    """What was derived or left out on the way (UIDs only), shown to the admin."""
    abstention: Abstention | None = None
    """Why the model did not assess the input (or, under ``run_anyway``, the caveat)."""
    outputs: JobOutputs | None = None
    """What the model said, for monitoring (journaled with the job's completion)."""


@dataclass
class Worker:
    """Claims queued jobs one at a time and runs them to results."""

    sessions: sessionmaker[Session]
    registry: ModelRegistry
    storage_dir: Path
    result_options: ResultOptions
    result_kinds: Mapping[str, Sequence[ResultKind]]
    """For each destination name, the kinds of result it receives."""
    clock: Callable[[], datetime]
    worker_id: str
    lease_seconds: float = 900.0
    decoder: IsolatedDecoder | None = None
    """Decodes each series in a bounded child process; ``None``: in this process (tests)."""
    limits: DataSetLimits = field(default_factory=DataSetLimits)
    """Bounds of the headers read in this process (``limits`` in the settings)."""

    def run_next(self) -> bool:
        """Run the oldest queued job; False when there was none."""
        job_input = self._claim()
        if job_input is None:
            return False
        try:
            run = self._run(job_input)
        except (DecodingAbortedError, DataSetTooLargeError) as exc:
            self._quarantine(job_input, str(exc))
            return True
        except (InvalidSeriesError, ModelError) as exc:
            self._fail(job_input, str(exc))
            return True
        except CadNodeError as exc:
            logger.exception("job %d failed", job_input.job_id)
            self._fail(job_input, str(exc))
            return True
        except Exception as exc:  # a model bug must not stop the worker; the job shows why
            logger.exception("job %d crashed", job_input.job_id)
            self._fail(job_input, f"internal error: {type(exc).__name__}: {exc}")
            return True
        with self.sessions.begin() as session:
            job = self._held_job(session, job_input.job_id)
            if job is None:
                return True
            now = self.clock()
            complete_job(
                session,
                job,
                run.stored,
                run.finding_count,
                now,
                stage_seconds=asdict(run.timings),
                warnings=run.warnings,
                abstention=abstention_record(run.abstention) if run.abstention else None,
            )
            if run.outputs is not None:
                record_outputs(session, job.id, run.outputs, now)
        _log_done(job_input, run)
        return True

    def close(self) -> None:
        """Stop the decoder process (a later job starts a new one)."""
        if self.decoder is not None:
            self.decoder.close()

    def _claim(self) -> JobInput | None:
        with self.sessions.begin() as session:
            job = claim_next_job(session, self.worker_id, self.clock(), self.lease_seconds)
            if job is None:
                return None
            series_read = job.series_group or [job.series_instance_uid]
            paths = instance_paths(session, *series_read)
            predecessors = earlier_results(
                session, job.series_instance_uid, job.series_revision, ResultKind.SR
            )
            return JobInput(
                job_id=job.id,
                series_instance_uid=job.series_instance_uid,
                series_revision=job.series_revision,
                model_name=job.model_name,
                destinations=tuple(job.destinations),
                created_at=job.created_at,
                instance_paths=tuple(self.storage_dir / p for p in paths),
                predecessor_paths=tuple(self.storage_dir / r.path for r in predecessors),
                result_kinds=self._result_kinds(session),
                series_group=tuple(job.series_group or ()),
                purged=purged_series(session, series_read),
                on_out_of_domain=OutOfDomainAction(
                    job.on_out_of_domain or OutOfDomainAction.REPORT
                ),
            )

    def _result_kinds(self, session: Session) -> Mapping[str, Sequence[ResultKind]]:
        """The journal's destinations (changed through the admin API), else the configured ones."""
        return result_kinds_of(current_destinations(session)) or self.result_kinds

    def _fail(self, job_input: JobInput, reason: str) -> None:
        # A library's exception text may quote a header value, and the reason is shown
        # on the admin page and by `cad-node status`: withhold quoted values.
        reason = redact(reason)
        logger.warning("job %d failed: %s", job_input.job_id, reason)
        with self.sessions.begin() as session:
            job = self._held_job(session, job_input.job_id)
            if job is not None:
                fail_job(job, reason, self.clock())

    def _quarantine(self, job_input: JobInput, reason: str) -> None:
        """Fail the job and set its series aside with the same reason (no automatic retry)."""
        reason = redact(reason)
        logger.warning(
            "job %d: series %s quarantined: %s",
            job_input.job_id,
            job_input.series_instance_uid,
            reason,
        )
        with self.sessions.begin() as session:
            job = self._held_job(session, job_input.job_id)
            if job is not None:
                fail_job(job, reason, self.clock())
                series = job_input.series_group or (job_input.series_instance_uid,)
                quarantine(session, series, reason)

    def _held_job(self, session: Session, job_id: int) -> Job | None:
        """The job, locked, if this worker still holds it; None if it was reclaimed.

        A worker that stalled past its lease may find its job re-run by another
        worker (and maybe finished): its own outcome is dropped, since the other
        run writes the same objects under the same UIDs.
        """
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state != JobState.RUNNING or job.worker_id != self.worker_id:
            logger.warning(
                "job %d is no longer held by %s: outcome dropped", job_id, self.worker_id
            )
            return None
        return job

    def _run(self, job_input: JobInput) -> JobRun:
        started = time.perf_counter()
        purged = purged_inputs_error(job_input.instance_paths, job_input.purged)
        if purged is not None:  # a late instance of a purged series: never a partial read
            raise InvalidSeriesError(purged)
        # The child decodes the pixels: here the headers suffice (results, de-identification).
        # Read before the model is loaded: a file over the bounds fails fast.
        paths = job_input.instance_paths
        if self.decoder is not None:
            datasets = read_headers(paths, self.limits)
        else:
            datasets = read_datasets(paths, self.limits)
        outside = self._outside_domain(job_input, datasets)
        if outside is not None and job_input.on_out_of_domain != OutOfDomainAction.RUN_ANYWAY:
            identity = self.registry.entries()[job_input.model_name].manifest.identity()
            return self._abstain(job_input, datasets, identity, outside, started)
        model = self.registry.get(job_input.model_name)
        model = behind_deidentification(  # a remote model sees de-identified data only
            self.registry, model, datasets, self.storage_dir, job_input.job_id
        )
        warnings: tuple[str, ...] = ()
        if reports_directly(model):
            grid, warnings = self._grid(job_input, datasets, model)
            loaded = time.perf_counter()
            report = model.report(grid)
        elif reads_image_sets(model):
            image_set = self._load_image_set(job_input, datasets)
            _drop_pixel_data(datasets)
            loaded = time.perf_counter()
            report = planar_report(image_set, model.predict(image_set))
        elif reads_volumes(model):
            volume = self._load_volume(job_input, datasets)
            _drop_pixel_data(datasets)
            loaded = time.perf_counter()
            report = volume_report(volume, model.predict(volume), study_of(datasets, volume))
            warnings = tuple(left_out_notes(job_input.series_instance_uid, datasets, volume))
        else:
            raise _unknown_input_kind(model)
        inferred = time.perf_counter()
        abstention = _abstention_after(report, outside)
        if abstention is not None and job_input.on_out_of_domain != OutOfDomainAction.RUN_ANYWAY:
            return self._abstain(job_input, datasets, report.model, abstention, started)
        if abstention is not None:
            report = replace(report, out_of_domain=abstention)
        built_objects = self._build(job_input, datasets, report)
        objects = _by_stem(built_objects)
        warnings = (*warnings, *built_objects.warnings)
        built = time.perf_counter()
        stored = self._write(job_input, objects)
        timings = JobTimings(
            load=loaded - started,
            inference=inferred - loaded,
            build=built - inferred,
            write=time.perf_counter() - built,
        )
        outputs = job_outputs(
            report,
            built_objects.tracking,
            sr_sop_instance_uid=str(built_objects.sr.SOPInstanceUID),
            study_instance_uid=report.grid.study_instance_uid,
            mode=job_mode(job_input.destinations),
        )
        return JobRun(stored, len(report.findings), timings, warnings, abstention, outputs)

    def _outside_domain(
        self, job_input: JobInput, datasets: Sequence[Dataset]
    ) -> Abstention | None:
        """Why the job's images lie outside its model's validated domain (headers only);
        None when inside, or when the model declares no domain."""
        entry = self.registry.entries().get(job_input.model_name)
        domain = entry.manifest.domain() if entry is not None else None
        if domain is None:
            return None
        return check_domain(domain, [image_headers(ds) for ds in image_datasets(datasets)])

    def _abstain(
        self,
        job_input: JobInput,
        datasets: Sequence[Dataset],
        model: ModelIdentity,
        abstention: Abstention,
        started: float,
    ) -> JobRun:
        """The job's outcome when its model does not assess the input: under ``report`` the
        SR saying it was not assessed and why (no findings, SEG or marks); under ``skip``
        nothing. Pixels are not needed: the SR references the images by their headers."""
        _drop_pixel_data(datasets)
        logger.info(
            "job %d: model %s abstains (%s); %s",
            job_input.job_id,
            job_input.model_name,
            abstention.reason.value,
            job_input.on_out_of_domain.value,
        )
        checked = time.perf_counter()
        stored: list[StoredResult] = []
        warnings: tuple[str, ...] = ()
        sr_uid: str | None = None
        if job_input.on_out_of_domain == OutOfDomainAction.REPORT:
            objects = self._build_abstention(job_input, datasets, model, abstention)
            warnings = objects.warnings
            sr_uid = str(objects.sr.SOPInstanceUID)
            built = time.perf_counter()
            stored = self._write(job_input, _by_stem(objects))
        else:
            built = time.perf_counter()
        timings = JobTimings(
            load=checked - started,
            inference=0.0,
            build=built - checked,
            write=time.perf_counter() - built,
        )
        outputs = abstained_outputs(
            model,
            study_instance_uid=_study_uid(datasets),
            mode=job_mode(job_input.destinations),
            sr_sop_instance_uid=sr_uid,
            ood_score=abstention.ood.score if abstention.ood is not None else None,
        )
        return JobRun(stored, 0, timings, warnings, abstention, outputs)

    def _build_abstention(
        self,
        job_input: JobInput,
        datasets: Sequence[Dataset],
        model: ModelIdentity,
        abstention: Abstention,
    ) -> ResultObjects:
        """The abstention SR (PS3.16 TID 1500, "not assessed" with the reason)."""
        predecessors = [dcmread(path) for path in job_input.predecessor_paths if path.exists()]
        options = self.result_options.at(job_input.created_at).for_model(job_input.model_name)
        uids = result_uids(job_input.job_key)
        return build_abstention_objects(datasets, model, abstention, uids, options, predecessors)

    def _grid(
        self, job_input: JobInput, datasets: Sequence[Dataset], model: CadModel
    ) -> tuple[ResultGrid, tuple[str, ...]]:
        """The grid a reporting model reads (its input kind's), and what was left out of it."""
        if reads_image_sets(model):
            image_set = self._load_image_set(job_input, datasets)
            _drop_pixel_data(datasets)
            return planar_grid(image_set), ()
        if reads_volumes(model):
            volume = self._load_volume(job_input, datasets)
            _drop_pixel_data(datasets)
            notes = left_out_notes(job_input.series_instance_uid, datasets, volume)
            return volume_grid(volume, study_of(datasets, volume)), tuple(notes)
        raise _unknown_input_kind(model)

    def _load_volume(self, job_input: JobInput, datasets: Sequence[Dataset]) -> ImageVolume:
        if self.decoder is None:
            return load_volume(datasets)
        return self.decoder.load_volume(job_input.instance_paths)

    def _load_image_set(self, job_input: JobInput, datasets: Sequence[Dataset]) -> ImageSet:
        if self.decoder is None:
            return load_image_set(datasets)
        return self.decoder.load_image_set(job_input.instance_paths)

    def _build(
        self, job_input: JobInput, datasets: Sequence[Dataset], report: ModelReport
    ) -> ResultObjects:
        """Every object of the job's report; overlays, presentation states and the KOS only
        where a destination receives them."""
        predecessors = [dcmread(path) for path in job_input.predecessor_paths if path.exists()]
        options = self.result_options.at(job_input.created_at).for_model(job_input.model_name)
        return build_result_objects(
            datasets,
            report,
            result_uids(job_input.job_key),
            options,
            predecessors,
            overlay=self._wanted(ResultKind.OVERLAY, job_input),
            gsps=self._wanted(ResultKind.GSPS, job_input),
            kos=self._wanted(ResultKind.KOS, job_input),
        )

    def _write(
        self, job_input: JobInput, objects: Mapping[str, tuple[ResultKind, Dataset]]
    ) -> list[StoredResult]:
        folder = Path("results") / job_input.series_instance_uid / str(job_input.series_revision)
        stored = []
        for stem, (kind, dataset) in objects.items():
            relative = folder / f"{job_input.model_name}-{stem}.dcm"
            write_dataset_atomically(dataset, self.storage_dir / relative)
            stored.append(
                StoredResult(
                    kind=kind,
                    sop_class_uid=str(dataset.SOPClassUID),
                    sop_instance_uid=str(dataset.SOPInstanceUID),
                    series_instance_uid=str(dataset.SeriesInstanceUID),
                    path=relative.as_posix(),
                    destinations=self._destinations_for(kind, job_input),
                )
            )
        return stored

    def _wanted(self, kind: ResultKind, job_input: JobInput) -> bool:
        """Whether some destination of the job receives ``kind``."""
        return bool(self._destinations_for(kind, job_input))

    def _destinations_for(self, kind: ResultKind, job_input: JobInput) -> tuple[str, ...]:
        kinds = self.result_kinds if job_input.result_kinds is None else job_input.result_kinds
        wanted = {kind, ResultKind.SR} if kind in _FOLLOW_THE_SR else {kind}
        return tuple(name for name in job_input.destinations if wanted & set(kinds.get(name, ())))


_FOLLOW_THE_SR = frozenset({ResultKind.EXPLANATION, ResultKind.PARAMETRIC_MAP})
"""Kinds that go wherever the SR goes: the SR references them."""


def _by_stem(objects: ResultObjects) -> dict[str, tuple[ResultKind, Dataset]]:
    """The job's objects by file name stem: "sr", "seg-1", "overlay-2" ..."""
    by_stem: dict[str, tuple[ResultKind, Dataset]] = {
        ResultKind.SR.value: (ResultKind.SR, objects.sr)
    }
    if objects.kos is not None:
        by_stem[ResultKind.KOS.value] = (ResultKind.KOS, objects.kos)
    numbered = (
        (ResultKind.SEG, objects.segs),
        (ResultKind.PARAMETRIC_MAP, objects.parametric_maps),
        (ResultKind.EXPLANATION, objects.explanations),
        (ResultKind.OVERLAY, objects.overlays),
        (ResultKind.GSPS, objects.states),
    )
    for kind, datasets in numbered:
        for number, dataset in enumerate(datasets, start=1):
            by_stem[f"{kind.value}-{number}"] = (kind, dataset)
    return by_stem


def left_out_notes(
    series_instance_uid: str, datasets: Sequence[Dataset], volume: ImageVolume
) -> list[str]:
    """For a job's warnings: how many of the series' instances the volume left out (localizers,
    other objects, other stacks, duplicates: :func:`cad_node.imaging.stacks.main_stack`)."""
    received = {str(ds.get("SOPInstanceUID", "")) for ds in datasets}
    left_out = received - set(volume.sop_instance_uids)
    if not left_out:
        return []
    return [
        f"series {series_instance_uid}: {len(left_out)} of {len(received)} instances left out "
        f"of the volume (localizers, other objects or stacks, duplicates)"
    ]


def _abstention_after(report: ModelReport, outside: Abstention | None) -> Abstention | None:
    """The job's abstention once the model ran: ``outside`` (the domain check's, under
    ``run_anyway``) noting an OOD score over its threshold, else the OOD score's own."""
    if report.ood is None or not report.ood.outside:
        return outside
    if outside is not None:
        return with_ood(outside, report.ood)
    return ood_abstention(report.ood)


def _log_done(job_input: JobInput, run: JobRun) -> None:
    timings = run.timings
    logger.info(
        "job %d done: series %s, %d findings, %d objects, %d warnings; load %.1fs "
        "inference %.1fs build %.2fs write %.2fs%s",
        job_input.job_id,
        job_input.series_instance_uid,
        run.finding_count,
        len(run.stored),
        len(run.warnings),
        timings.load,
        timings.inference,
        timings.build,
        timings.write,
        f"; abstention: {run.abstention.reason.value}" if run.abstention else "",
    )


def _study_uid(datasets: Sequence[Dataset]) -> str:
    """The Study Instance UID of the job's images (one study per job)."""
    for dataset in datasets:
        uid = str(dataset.get("StudyInstanceUID", "") or "")
        if uid:
            return uid
    return ""


def _unknown_input_kind(model: CadModel) -> ModelError:
    return ModelError(f"model {model.identity.name}: unknown input kind {model.input_kind!r}")


def _drop_pixel_data(datasets: Sequence[Dataset]) -> None:
    """Free the encoded pixels once the volume holds them: results need headers only.

    A 300-slice 512² CT keeps 150 MB of Pixel Data (and pydicom's decoded
    copies) alive otherwise, for the whole of inference and result building.
    """
    for dataset in datasets:
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset._pixel_array = None  # pydicom caches the decoded array here

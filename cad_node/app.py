"""Wiring: builds a running node from its settings (the one place that knows every part)."""

import errno
import logging
import socket
import threading
from dataclasses import dataclass, field

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cad_node.admin.api import create_app
from cad_node.admin.context import AdminContext
from cad_node.admin.server import AdminServer
from cad_node.clock import Clock, utc_now, wait_until_set
from cad_node.config import Settings, listens_everywhere
from cad_node.domain.states import DeliveryState
from cad_node.errors import CadNodeError, ModelError
from cad_node.export.commitment_service import CommitmentReports, request_due_commitments
from cad_node.export.dispatch import check_destination
from cad_node.export.health import DestinationMonitor
from cad_node.export.service import deliver_due
from cad_node.ingest.bounds import DataSetLimits
from cad_node.ingest.processes import IngestProcesses
from cad_node.ingest.recovery import reindex_spool
from cad_node.ingest.scp import StorageSCP
from cad_node.ingest.stow import stow_store_service
from cad_node.models.registry import ModelRegistry
from cad_node.monitoring.feedback_intake import FeedbackIntake
from cad_node.pipeline.assemble import Assembler, OwnEquipment
from cad_node.pipeline.work import Worker
from cad_node.queueing import Lane, make_lanes, models_without_lane, promote, start_lanes
from cad_node.store.db import create_schema, make_engine, session_factory
from cad_node.store.instances import RecordOutcome
from cad_node.store.jobs import requeue_all_running, requeue_expired
from cad_node.store.lock import StorageLock
from cad_node.store.model_modes_and_destinations import DestinationBook
from cad_node.store.retention import RetentionPolicy, purge
from cad_node.store.rulesets import RuleBook
from cad_node.sweeps import Sweep
from cad_node.worker import (
    LeasedWorker,
    check_rule_references,
    make_worker,
    model_registry,
    work_loop,
)

logger = logging.getLogger(__name__)


class PortInUseError(CadNodeError):
    """The DICOM port cannot be listened on (another program has it, or the address is wrong)."""


SWEEP_SECONDS = 1.0
"""How often quiet series, expired leases and due deliveries are looked for (besides the
sweeps a complete series or a finished job asks for at once)."""


@dataclass
class Node:
    """A cad-node: Storage SCP, assembly, ``settings.workers`` workers, export, one journal."""

    settings: Settings
    clock: Clock = utc_now
    engine: Engine = field(init=False)
    sessions: sessionmaker[Session] = field(init=False)
    scp: StorageSCP = field(init=False)
    registry: ModelRegistry = field(init=False)
    assembler: Assembler = field(init=False)
    worker: Worker = field(init=False)
    """The first worker (``settings.workers`` threads run jobs; 0: none, workers run apart)."""
    workers: list[LeasedWorker] = field(init=False, default_factory=list)
    lanes: list[Lane] = field(init=False, default_factory=list)
    """The ``queue.lanes`` workers; when set they run instead of ``workers``' threads."""
    rule_book: RuleBook = field(init=False)
    destination_book: DestinationBook = field(init=False)
    """The destinations in force (journal; changed through the admin API without restart)."""
    admin: AdminServer | None = field(init=False, default=None)
    _scheduler: BackgroundScheduler = field(init=False)
    _assembly: Sweep | None = field(init=False, default=None)
    _exports: Sweep | None = field(init=False, default=None)
    _commitments: Sweep | None = field(init=False, default=None)
    """Asks destinations with ``commitment: true`` to commit what they stored."""
    _commitment_reports: CommitmentReports = field(init=False)
    _monitor: DestinationMonitor = field(init=False)
    _health: Sweep | None = field(init=False, default=None)
    _retention: Sweep | None = field(init=False, default=None)
    _promotion: Sweep | None = field(init=False, default=None)
    _extra_ingest: IngestProcesses | None = field(init=False, default=None)
    _stopping: threading.Event = field(init=False, default_factory=threading.Event)
    _work_available: threading.Event = field(init=False, default_factory=threading.Event)
    _worker_threads: list[threading.Thread] = field(init=False, default_factory=list)
    _lock: StorageLock = field(init=False)

    def __post_init__(self) -> None:
        """Claim the storage folder and check the DICOM port, then open the journal.

        Both come before anything reads or writes the journal or the spool: a second
        ``serve`` on a live node's folder or port stops here with
        :class:`~cad_node.store.lock.FolderInUseError` or :class:`PortInUseError`,
        having touched neither (issue 24).
        """
        storage_dir = self.settings.storage_dir
        storage_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = StorageLock(storage_dir)
        self._lock.acquire()
        try:
            check_port_free(self.settings.bind_address, self.settings.port)
            self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> None:
        self.engine = make_engine(self.settings.resolved_database_url)
        create_schema(self.engine)
        self.sessions = session_factory(self.engine)
        self.rule_book = RuleBook(self.sessions, self.clock)
        self.rule_book.seed(self.settings.rules)
        self.destination_book = DestinationBook(self.sessions, self.clock)
        self.destination_book.seed(self.settings.destinations)
        self.registry = model_registry(self.settings)
        try:
            self._check_rule_references()
            if self.settings.workers:  # workers: 0: `cad-node worker` processes run the lanes
                self.lanes = make_lanes(self.settings, self.sessions, self.registry, self.clock)
            ruled = {rule.model for rule in self.rule_book.current()}
            for model in models_without_lane(self.settings.queue.lanes, ruled):
                logger.warning("model %s is in no lane (queue.lanes): its jobs wait", model)
        except BaseException:
            self.engine.dispose()
            raise
        self._commitment_reports = CommitmentReports(
            self.sessions, self.clock, self.settings.export.max_attempts, self._kick_exports
        )
        self.scp = StorageSCP.from_settings(
            self.settings,
            self.sessions,
            self.clock,
            port=self.settings.port,
            on_instance=self._on_instance,
            on_commitment_report=self._commitment_reports,
        )
        self.assembler = Assembler(
            sessions=self.sessions,
            rules=self.rule_book.current,
            quiet_seconds=self.settings.quiet_seconds,
            study_groups=self.settings.study_groups,
            clock=self.clock,
            calling_ae_classes=self.settings.queue.calling_ae_classes,
            own_equipment=OwnEquipment(
                manufacturer=self.settings.results.manufacturer,
                manufacturer_model_name=self.settings.results.manufacturer_model_name,
                device_serial_number=self.settings.results.device_serial_number,
            ),
            feedback=FeedbackIntake(
                self.settings.storage_dir, DataSetLimits.from_settings(self.settings.limits)
            ),
        )
        self.workers = [
            make_worker(self.settings, self.sessions, self.registry, self.clock, index)
            for index in range(max(self.settings.workers, 1))
        ]
        self.worker = self.workers[0]
        self._check_destination_tls()

    def _check_rule_references(self) -> None:
        """Refuse to start when a rule in force names a model not installed or a destination
        not in force (:func:`~cad_node.worker.check_rule_references`), naming them all."""
        check_rule_references(
            self.rule_book.current(),
            self.registry.entries(),
            self.destination_book.current(),
            self.settings.resolved_models_dir,
        )

    def _check_destination_tls(self) -> None:
        """Load every destination's TLS files (and a DICOMweb one's CA and secret) now: a bad
        path stops start-up, not an export."""
        for destination in self.settings.destinations.values():
            check_destination(destination)

    def start(self) -> None:
        """Recover what a crash left, then start receiving, assembling, working, exporting.

        The storage folder's lock is held (taken when the node was made): no other
        ``serve`` runs on this journal, so what recovery finds running was left by a crash.
        """
        self.recover()
        self._warm_models()
        self._listen()
        self._start_extra_ingest()
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._assembly = Sweep(self._scheduler, "assembly-sweep", self._assemble, SWEEP_SECONDS)
        self._exports = Sweep(self._scheduler, "export-sweep", self._export, SWEEP_SECONDS)
        self._commitments = Sweep(
            self._scheduler, "commitment-sweep", self._request_commitments, SWEEP_SECONDS
        )
        self._start_health_sweep()
        self._start_retention_sweep()
        self._start_promotion_sweep()
        self._scheduler.start()
        if self._health is not None:
            self._health.kick()  # the first C-ECHOes now, not an interval later
        self._start_workers()
        self._start_admin()
        logger.info(
            "cad-node %s listening on %s:%d",
            self.settings.ae_title,
            self.settings.bind_address,
            self.scp.port,
        )
        logger.log(*_peer_exposure(self.settings))

    def _listen(self) -> None:
        """Start the Storage SCP; a port taken since :func:`check_port_free` is reported
        as :class:`PortInUseError` too, not as a bare ``OSError``."""
        try:
            self.scp.start()
        except OSError as exc:
            raise _port_error(self.settings.bind_address, self.settings.port, exc) from exc

    def _start_extra_ingest(self) -> None:
        if self.settings.ingest_processes > 1:
            self._extra_ingest = IngestProcesses(
                self.settings, self.scp, self.settings.ingest_processes - 1
            )
            self._extra_ingest.start()

    def _start_workers(self) -> None:
        if self.lanes:  # a thread per lane, each with its models and budgets
            self._worker_threads += start_lanes(
                self.lanes, self._stopping, self._work_available, self._job_done
            )
            return
        for index, worker in enumerate(self.workers[: self.settings.workers]):
            thread = threading.Thread(
                target=work_loop,
                args=(worker, self._stopping, self._work_available, self._job_done),
                name=f"cad-node-worker-{index}",
                daemon=True,
            )
            thread.start()
            self._worker_threads.append(thread)

    def _start_admin(self) -> None:
        if not self.settings.admin.enabled:
            return
        context = AdminContext(
            settings=self.settings,
            sessions=self.sessions,
            rule_book=self.rule_book,
            registry=self.registry,
            clock=self.clock,
            ready=self._receiving,
            wake_worker=self._work_available.set,
            destination_health=self._monitor.current,
            stow_service=stow_store_service(self.scp.store_service),
        )
        self.admin = AdminServer(create_app(context), self.settings.admin)
        self.admin.start()

    def _start_health_sweep(self) -> None:
        """C-ECHO every destination now and every ``health.echo_interval_seconds``."""
        self._monitor = DestinationMonitor(
            self.destination_book.current,
            self.settings.ae_title,
            self.settings.export.timeouts,
            self.clock,
        )
        self._health = Sweep(
            self._scheduler,
            "health-sweep",
            self._check_destinations,
            self.settings.health.echo_interval_seconds,
        )

    def _check_destinations(self) -> None:
        self._monitor.check_all()

    def _receiving(self) -> bool:
        """Whether the Storage SCP listens (the admin API's readiness)."""
        try:
            self.scp.port  # noqa: B018 - raises while the SCP is not started
        except RuntimeError:
            return False
        return not self._stopping.is_set()

    def request_stop(self) -> None:
        """Ask ``wait()`` to return; safe to call from a signal handler."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        self._work_available.set()
        if self.admin is not None:
            self.admin.stop()
        self.scp.stop()
        if self._extra_ingest is not None:
            self._extra_ingest.stop()
        if hasattr(self, "_scheduler") and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        for thread in self._worker_threads:
            thread.join(timeout=600)
        for worker in [*self.workers, *(lane.worker for lane in self.lanes)]:
            worker.close()  # its decoder process
        self.registry.close()  # site models' child processes
        self.engine.dispose()
        self._lock.release()

    def wait(self) -> None:
        """Block until ``stop()`` is called (from a signal handler, say)."""
        wait_until_set(self._stopping)

    def recover(self) -> None:
        """Re-index spool files the journal lacks and re-queue jobs a crash left running.

        A single node's journal has no other live worker, so every RUNNING job
        was orphaned by the crash; with PostgreSQL and several workers, expired
        leases are reclaimed by the sweep instead.
        """
        reindexed = reindex_spool(
            self.settings.storage_dir,
            self.sessions,
            self.clock,
            DataSetLimits.from_settings(self.settings.limits),
        )
        with self.sessions.begin() as session:
            requeued = (
                requeue_all_running(session)
                if self.engine.dialect.name == "sqlite"
                else requeue_expired(session, self.clock())
            )
        if reindexed or requeued:
            logger.info("recovered %d spooled instances and %d jobs", reindexed, requeued)

    def _warm_models(self) -> None:
        """Load every model a rule names, so the first job does not wait for it.

        A model that cannot load does not stop the node: images are still
        received and stored, and the jobs for that model fail with the reason.
        With ``workers: 0`` no model runs here, so none is loaded.
        """
        if self.settings.workers == 0:
            return
        for name in sorted({rule.model for rule in self.rule_book.current()}):
            try:
                self.registry.get(name)
            except ModelError as exc:
                logger.error("model %s not available: %s", name, exc)

    def _on_instance(self, outcome: RecordOutcome) -> None:
        """The last image a series announced is in: complete and route it now."""
        complete = outcome.is_new and outcome.instance_count == outcome.expected_count
        if complete and self._assembly is not None:
            self._assembly.kick()

    def _job_done(self) -> None:
        """A job has written its results: deliver them now."""
        self._kick_exports()

    def _kick_exports(self) -> None:
        """Deliver what is due now (results written, or objects a PACS did not commit)."""
        if self._exports is not None:
            self._exports.kick()

    def _assemble(self) -> None:
        routed = self.assembler.sweep()
        with self.sessions.begin() as session:
            requeue_expired(session, self.clock())
        if any(outcome.job_id is not None for outcome in routed):
            self._work_available.set()

    def _export(self) -> None:
        report = deliver_due(
            self.sessions,
            self.destination_book.current(),
            export=self.settings.export,
            storage_dir=self.settings.storage_dir,
            calling_ae_title=self.settings.ae_title,
            now=self.clock(),
        )
        if report.count(DeliveryState.SENT) and self._commitments is not None:
            self._commitments.kick()  # stored where commitment is asked for: ask now

    def _request_commitments(self) -> None:
        """Ask for the commitment of what committing destinations stored (Storage Commitment)."""
        request_due_commitments(
            self.sessions,
            self.destination_book.current(),
            self.settings.ae_title,
            self.clock(),
            export=self.settings.export,
            record=self._commitment_reports,
        )

    def _start_promotion_sweep(self) -> None:
        """Promote queued jobs waiting past their class's age limit (``queue``), if any is set."""
        if self.settings.queue.age_limit_minutes:
            self._promotion = Sweep(
                self._scheduler,
                "promotion-sweep",
                self._promote,
                self.settings.queue.promotion_interval_seconds,
            )

    def _promote(self) -> None:
        promote(self.settings, self.sessions, self.clock)

    def _start_retention_sweep(self) -> None:
        """Remove delivered series' files every ``retention.interval_seconds`` (if enabled)."""
        if self.settings.retention.enabled:
            self._retention = Sweep(
                self._scheduler,
                "retention-sweep",
                self.purge_due,
                self.settings.retention.interval_seconds,
            )

    def kick_retention(self) -> None:
        """Run the retention sweep now (it runs every ``retention.interval_seconds``)."""
        if self._retention is not None:
            self._retention.kick()

    def purge_due(self) -> None:
        """Remove the files retention allows now (:mod:`cad_node.store.retention`)."""
        policy = RetentionPolicy.from_settings(self.settings.retention)
        purge(self.sessions, self.settings.storage_dir, policy, self.clock())


def check_port_free(bind_address: str, port: int) -> None:
    """Raise :class:`PortInUseError` unless ``bind_address:port`` can be listened on now.

    Binds and listens as the Storage SCP will (``SO_REUSEADDR``, pynetdicom's choice of
    address family), then closes at once: the SCP binds only after recovery, which must
    not start when another program holds the port.  Port 0 (the OS picks one) is free.
    """
    if port == 0:
        return
    try:
        entries = socket.getaddrinfo(
            bind_address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        # the first IPv4 address, else the first IPv6 one: pynetdicom's choice
        family, _, _, _, address = next(
            (entry for entry in entries if entry[0] == socket.AF_INET), entries[0]
        )
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
            probe.listen(1)
    except OSError as exc:
        raise _port_error(bind_address, port, exc) from exc


def _port_error(bind_address: str, port: int, exc: OSError) -> PortInUseError:
    if exc.errno == errno.EADDRINUSE:
        return PortInUseError(
            f"port {port} is in use ({bind_address}:{port}): another program listens there"
        )
    return PortInUseError(f"cannot listen on {bind_address}:{port}: {exc.strerror or exc}")


def _peer_exposure(settings: Settings) -> tuple[int, str]:
    """The level and text of the start-up line saying who can reach the DICOM port."""
    if settings.restricts_peers:
        return logging.INFO, "DICOM peers: only those in peers and allowed_calling_aets"
    if listens_everywhere(settings.bind_address):
        return logging.WARNING, (
            "DICOM peers: any calling AE title from any address on every interface "
            "(accept_any_peer: true); list the senders under peers to restrict it"
        )
    return logging.INFO, (
        f"DICOM peers: any calling AE title that reaches {settings.bind_address}; to receive "
        "from other machines set bind_address and list the senders under peers"
    )

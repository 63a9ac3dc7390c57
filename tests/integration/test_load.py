"""Load: 8 concurrent senders x 5,000 instances into one ``cad-node serve`` (issue #6).

Eight DCMTK ``storescu`` processes send at once, each over one association:
small head CT series (64x64 slices, no rule takes them: stored and assembled)
and, in the middle of each stream, one fundus exam (an OD/OS pair) the fundus
rule routes to the DR model, whose SEG, SR and Grad-CAM images go to a
pynetdicom Storage SCP.

Asserted: every instance answered 0x0000 is in the journal and complete in the
spool (0 lost); every series is assembled; each routed exam got exactly one
job and one result set (one SR), each result delivered once (0 duplicates); the node's
peak resident memory (VmHWM, its child processes included) stays under
:data:`PEAK_RSS_LIMIT_BYTES`.  The figures go to the ``load`` section of
``docs/reliability.md``.  Deselect with ``-m "not load"``.
"""

import os
import platform
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from cad_node.domain.states import DeliveryState, JobState, SeriesState
from cad_node.store.schema import Delivery, Instance, Job, Result, Series
from cad_node.synth import fundus
from tests.dcmtk import free_port
from tests.dicom_validation import assert_valid_dicom
from tests.integration.load_traffic import (
    LoadPlan,
    SenderOutcome,
    SenderTraffic,
    concurrent_storescus,
    write_traffic,
)
from tests.integration.peers import running_node, wait_for, write_config
from tests.integration.process_usage import PeakMemorySampler, cpu_seconds
from tests.reliability_doc import write_section
from tests.synthetic import write_ct_series

pytestmark = [pytest.mark.slow, pytest.mark.load]

REPOSITORY = Path(__file__).parents[2]
REPORT_PATH = REPOSITORY / "docs" / "reliability.md"
COMMAND = "bash tests/run tests/integration/test_load.py"

PLAN = LoadPlan(senders=8, instances_per_sender=5_000, slices_per_series=40)
BULK_ROWS = 64
FUNDUS_SIZE = 256
PEAK_RSS_LIMIT_BYTES = 2 * 1024**3
"""Generous: the node, torch and the fundus model peaked at 654 MiB over 40,000 instances."""
SETTLE_TIMEOUT = 300.0
QUIET_SECONDS = 5.0

RESULT_SOP_CLASSES = (
    SegmentationStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
)


# -- the destination: a Storage SCP that keeps what it received ------------------------------


@dataclass
class CountingPacs:
    """Keeps each result it receives on disk and notes its SOP Instance UID and study."""

    folder: Path
    received: list[tuple[str, str, str]] = field(default_factory=list)
    """(SOP Instance UID, SOP Class UID, Study Instance UID) of each C-STORE, in order."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_store(self, event: Event) -> int:
        request = cast(C_STORE, event.request)
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        uid = str(request.AffectedSOPInstanceUID)
        with self._lock:
            copy = sum(1 for seen, _, _ in self.received if seen == uid)
            dataset.save_as(self.folder / f"{uid}.{copy}.dcm", enforce_file_format=True)
            sop_class = str(request.AffectedSOPClassUID)
            self.received.append((uid, sop_class, str(dataset.StudyInstanceUID)))
        return 0x0000

    def uids(self) -> Counter[str]:
        return Counter(uid for uid, _, _ in self.received)

    def duplicates(self) -> int:
        return len(self.received) - len(self.uids())

    def per_study(self, sop_class_uid: str | None = None) -> Counter[str]:
        """Objects received per Study Instance UID (of one SOP Class when given)."""
        return Counter(
            study for _, sop_class, study in self.received if sop_class_uid in (None, sop_class)
        )


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, CountingPacs]]:
    """A CountingPacs (AE title PACS) on a free port."""
    folder = tmp_path / "pacs"
    folder.mkdir()
    receiver = CountingPacs(folder)
    ae = AE(ae_title="PACS")
    for sop_class in RESULT_SOP_CLASSES:
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    handlers: list[Any] = [(evt.EVT_C_STORE, receiver.on_store)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    assert server is not None
    yield port, receiver
    server.shutdown()


# -- the journal and the spool, read from outside the node ----------------------------------


class Journal:
    """Read-only queries on the node's SQLite journal, each in a fresh transaction."""

    def __init__(self, storage_dir: Path) -> None:
        self.storage_dir = storage_dir
        self._engine = create_engine(f"sqlite:///{storage_dir / 'journal.sqlite'}")

    def scalars(self, statement: Any) -> list[Any]:
        with Session(self._engine) as session:
            return list(session.scalars(statement).all())

    def rows(self, statement: Any) -> list[Any]:
        with Session(self._engine) as session:
            return list(session.execute(statement).all())

    def count(self, table: Any) -> int:
        with Session(self._engine) as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    def spool_file_count(self) -> int:
        return sum(1 for _ in (self.storage_dir / "spool").glob("*/*/*.dcm"))

    def stored_instances(self) -> set[str]:
        """SOP Instance UIDs in the journal whose spool file is complete (its recorded size)."""
        rows = self.rows(select(Instance.sop_instance_uid, Instance.path, Instance.size_bytes))
        return {uid for uid, path, size in rows if _file_size(self.storage_dir / path) == size}

    def close(self) -> None:
        self._engine.dispose()


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _settled(journal: Journal, series: int, routed: int) -> bool:
    """Every series assembled, every job done, every result delivered."""
    states = Counter(journal.scalars(select(Series.state)))
    if (
        sum(states.values()) != series
        or states[SeriesState.RECEIVING]
        or states[SeriesState.COMPLETE]
    ):
        return False
    jobs = journal.scalars(select(Job.state))
    if JobState.FAILED in jobs:
        raise AssertionError("a job failed")
    if jobs != [JobState.DONE] * routed:
        return False
    deliveries = journal.scalars(select(Delivery.state))
    return bool(deliveries) and set(deliveries) == {DeliveryState.DELIVERED}


# -- what is sent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FundusExam:
    """One OD/OS pair (one series) a sender sends; the fundus rule routes it."""

    paths: tuple[Path, Path]
    study_instance_uid: str
    series_instance_uid: str


@pytest.fixture(scope="module")
def fundus_exams(tmp_path_factory: pytest.TempPathFactory) -> list[FundusExam]:
    """One exam per sender: copies of one synthetic exam under new UIDs."""
    folder = tmp_path_factory.mktemp("fundus")
    spec = fundus.FundusSpec(seed=680_000, size=FUNDUS_SIZE)
    source = fundus.write_study(fundus.generate_fundus(spec), folder / "source")
    return [_copy_exam(source, folder / f"sender{sender:02d}") for sender in range(PLAN.senders)]


def _copy_exam(source: list[Path], folder: Path) -> FundusExam:
    folder.mkdir()
    study_instance_uid, series_instance_uid = generate_uid(), generate_uid()
    paths = []
    for path in source:
        dataset = dcmread(path)
        dataset.StudyInstanceUID = study_instance_uid
        dataset.SeriesInstanceUID = series_instance_uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.save_as(folder / path.name, enforce_file_format=True)
        paths.append(folder / path.name)
    od, os_ = paths
    return FundusExam((od, os_), study_instance_uid, series_instance_uid)


@pytest.fixture(scope="module")
def traffic(
    tmp_path_factory: pytest.TempPathFactory, fundus_exams: list[FundusExam]
) -> list[SenderTraffic]:
    template = write_ct_series(
        tmp_path_factory.mktemp("template"),
        seed=670_000,
        rows=BULK_ROWS,
        slices=PLAN.slices_per_series,
        nodule_count=0,
    )
    return write_traffic(
        tmp_path_factory.mktemp("traffic"),
        PLAN,
        template.paths,
        [exam.paths for exam in fundus_exams],
    )


def node_config(folder: Path, pacs_port: int) -> Path:
    """The shipped fundus rule to the PACS; series otherwise complete after QUIET_SECONDS."""
    shipped = yaml.safe_load((REPOSITORY / "config" / "rules.yaml").read_text())
    fundus_rules = [rule for rule in shipped if rule["model"] == "fundus_dr"]
    destination = {"host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"}
    return write_config(
        folder,
        quiet_seconds=QUIET_SECONDS,
        rules=fundus_rules,
        destinations={"pacs": destination},
        torch_threads=1,
    )


# -- the figures, written to docs/reliability.md ---------------------------------------------


@dataclass(frozen=True)
class LoadFigures:
    senders: int
    sent: int
    acknowledged: int
    stored: int
    series: int
    routed_series: int
    results: int
    delivered: int
    duplicates: int
    peak_rss_bytes: int
    ingest_seconds: float
    ingest_cpu_seconds: float
    """CPU time the node used while the senders ran (model runs meanwhile included)."""
    total_seconds: float

    @property
    def lost(self) -> int:
        return self.acknowledged - self.stored

    def render(self, when: datetime) -> str:
        """The ``load`` section of docs/reliability.md."""
        return "\n".join(
            [
                "## Load: concurrent senders",
                "",
                textwrap.fill(_description(self.senders), width=92),
                "",
                *self._table(),
                "",
                textwrap.fill(_COMMAND_AND_LIMIT, width=92),
                "",
                f"Date: {when:%Y-%m-%d %H:%M} UTC",
                "",
                f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU "
                f"cores, Python {platform.python_version()}",
            ]
        )

    def _table(self) -> list[str]:
        rate = self.acknowledged / self.ingest_seconds
        cpu_ms = 1000 * self.ingest_cpu_seconds / self.acknowledged
        return [
            "| Senders | Sent | Acknowledged | Stored | Series | Routed exams | Results "
            "| Delivered | Duplicates | Lost | Peak RSS | Ingest | Instances/s "
            "| CPU per instance | Until all delivered |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {self.senders} | {self.sent} | {self.acknowledged} | {self.stored} "
            f"| {self.series} | {self.routed_series} | {self.results} | {self.delivered} "
            f"| {self.duplicates} | {self.lost} | {self.peak_rss_bytes / 1024**2:.0f} MiB "
            f"| {self.ingest_seconds:.0f} s | {rate:.0f} | {cpu_ms:.1f} ms "
            f"| {self.total_seconds:.0f} s |",
        ]


def _description(senders: int) -> str:
    return (
        f"{senders} DCMTK `storescu` processes send at once into one `cad-node serve`, each "
        f"over one association: small head CT series ({BULK_ROWS}x{BULK_ROWS} slices, stored "
        f"and assembled, no rule) and one fundus exam each ({FUNDUS_SIZE}x{FUNDUS_SIZE} OD/OS "
        "pair) that the fundus rule routes to the DR model, whose SEG, SR and Grad-CAM images "
        "go to a pynetdicom Storage SCP (tests/integration/test_load.py).  *Sent*: C-STORE "
        "requests; *Stored*: in the journal and complete in the spool; *Lost* = acknowledged - "
        "stored; *Results*: result objects the journal holds; *Delivered*: C-STOREs the "
        "receiver got; *Duplicates*: extra copies among them.  *Peak RSS*: the node's VmHWM "
        "plus that of any child process.  *Ingest*: from the senders' start to the last one's "
        "end; *CPU per instance*: the node's CPU time over that span (model runs meanwhile "
        "included) per instance acknowledged."
    )


_COMMAND_AND_LIMIT = (
    f"Command: `{COMMAND}`.  Peak RSS limit asserted: "
    f"{PEAK_RSS_LIMIT_BYTES / 1024**3:.0f} GiB.  Times are wall-clock on a shared machine "
    "and noisy; no test asserts on them."
)


# -- the test --------------------------------------------------------------------------------


@pytest.mark.timeout(1800)
def test_concurrent_senders_lose_nothing_and_duplicate_nothing(
    tmp_path: Path,
    traffic: list[SenderTraffic],
    fundus_exams: list[FundusExam],
    pacs: tuple[int, CountingPacs],
) -> None:
    pacs_port, receiver = pacs
    config_path = node_config(tmp_path, pacs_port)
    sent_uids = {uid for t in traffic for uid in t.sop_instance_uids}
    series_count = sum(len(t.series_instance_uids) for t in traffic)
    assert len(sent_uids) == PLAN.senders * PLAN.instances_per_sender

    with running_node(config_path, tmp_path / "node.log") as node:
        journal = Journal(Path(node.config["storage_dir"]))
        with PeakMemorySampler(node.process.pid) as memory:
            started, cpu_at_start = time.monotonic(), cpu_seconds(node.process.pid)
            with concurrent_storescus(node.port, traffic, tmp_path / "senders") as senders:
                outcomes = [sender.wait() for sender in senders]
            ingest_seconds = time.monotonic() - started
            ingest_cpu_seconds = cpu_seconds(node.process.pid) - cpu_at_start
            wait_for(
                lambda: _settled(journal, series_count, len(fundus_exams)),
                SETTLE_TIMEOUT,
                "every series assembled and every result delivered",
            )
            total_seconds = time.monotonic() - started
        stored = journal.stored_instances()
        rows, files = journal.count(Instance), journal.spool_file_count()
        results = journal.rows(select(Result.sop_instance_uid, Job.series_instance_uid).join(Job))
        jobs = journal.scalars(select(Job.series_instance_uid))
        delivered = journal.count(Delivery)
        journal.close()
        log = node.log()

    acknowledged = _acknowledged(outcomes)
    assert all(o.returncode == 0 and o.refused == 0 for o in outcomes), outcomes
    assert acknowledged == sent_uids
    assert stored == acknowledged, f"lost: {len(acknowledged - stored)}"
    assert rows == files == len(acknowledged)
    assert "Traceback" not in log

    exams = {exam.series_instance_uid: exam.study_instance_uid for exam in fundus_exams}
    assert sorted(jobs) == sorted(exams), "one job per routed exam"
    assert receiver.duplicates() == 0
    assert set(receiver.uids()) == {uid for uid, _ in results}
    assert delivered == len(results)
    assert receiver.per_study(Comprehensive3DSRStorage) == Counter(exams.values())
    results_per_study = Counter(exams[series] for _, series in results)
    assert receiver.per_study() == results_per_study, "one result set per exam"
    for path in sorted(receiver.folder.iterdir()):
        assert_valid_dicom(path)
        assert "NOT FOR CLINICAL USE" in dcmread(path, stop_before_pixels=True).SeriesDescription

    figures = LoadFigures(
        senders=PLAN.senders,
        sent=sum(o.requests for o in outcomes),
        acknowledged=len(acknowledged),
        stored=len(stored),
        series=series_count,
        routed_series=len(exams),
        results=len(results),
        delivered=len(receiver.received),
        duplicates=receiver.duplicates(),
        peak_rss_bytes=memory.peak_bytes,
        ingest_seconds=ingest_seconds,
        ingest_cpu_seconds=ingest_cpu_seconds,
        total_seconds=total_seconds,
    )
    write_section(REPORT_PATH, "load", figures.render(datetime.now(UTC)))
    assert memory.peak_bytes < PEAK_RSS_LIMIT_BYTES


def _acknowledged(outcomes: list[SenderOutcome]) -> set[str]:
    acknowledged: set[str] = set()
    for outcome in outcomes:
        acknowledged |= outcome.acknowledged
    return acknowledged

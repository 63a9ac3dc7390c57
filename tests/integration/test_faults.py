"""Fault injection against ``cad-node serve`` with real peers: nothing acknowledged is lost.

Each scenario kills the node with SIGKILL at a chosen moment (mid-association
during ingest, during inference, during export), restarts it on the same
storage and journal, and checks that every instance acknowledged with 0x0000
is in the spool and the journal, that every job finishes and that every result
reaches each destination, a resend carrying the same SOP Instance UID and the
same bytes.  Two more scenarios give a destination that answers 0xA700 then
success (retried) or 0xC000 (failed at once, shown by ``cad-node status``), and
a disk that fills up under the spool (0xA700, nothing half-written recorded).

The figures of each scenario are written to ``docs/reliability.md`` once the
module has run (see :class:`ReliabilityReport`).
"""

import os
import platform
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SegmentationStorage,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from cad_node.domain.states import DeliveryState, JobState
from cad_node.store.schema import Delivery, Instance, Job, Result
from tests.conftest import NO_RESPONSE, context_of, send
from tests.dcmtk import NODE_AE_TITLE, free_port
from tests.integration.peers import (
    NodeProcess,
    cad_node_status,
    running_node,
    shipped_rules_anyway,
    wait_for,
    write_config,
)
from tests.reliability_doc import write_section
from tests.synthetic import SyntheticSeries, write_ct_series

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).parents[2]
REPORT_PATH = REPOSITORY / "docs" / "reliability.md"
COMMAND = "bash tests/run tests/integration/test_faults.py"

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
RESULT_SOP_CLASSES = (SegmentationStorage, Comprehensive3DSRStorage, ComprehensiveSRStorage)
ACKNOWLEDGED_BEFORE_KILL = 15
JOB_TIMEOUT = 120.0


# -- the report: figures per scenario, written to docs/reliability.md -----------------------


@dataclass(frozen=True)
class Figures:
    """What one fault scenario sent, stored and delivered."""

    scenario: str
    fault: str
    sent: int
    """C-STORE requests the sender made into the node (resends included)."""
    acknowledged: int
    """Distinct SOP instances the node answered 0x0000 for."""
    stored: int
    """Instances found both in the spool (complete files) and the journal after the fault."""
    results: int
    """Result objects (SEG, SR) the journal holds."""
    delivered: int
    """(result, destination) pairs the journal records as DELIVERED."""
    duplicates: int
    """Extra copies the receivers got (identical resends of the same SOP Instance UID)."""
    dead_lettered: int = 0
    """(result, destination) pairs the journal records as FAILED (a permanent refusal)."""

    @property
    def lost(self) -> int:
        return self.acknowledged - self.stored


@dataclass
class ReliabilityReport:
    """Figures collected by the tests of this module, rendered as Markdown."""

    figures: list[Figures] = field(default_factory=list)

    def render(self, when: datetime) -> str:
        header = (
            "| Scenario | Fault | Sent | Acknowledged | Stored | Results | Delivered "
            "| Dead-lettered | Duplicates at receiver | Lost |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        return "\n".join([*_REPORT_HEAD, header, *self._rows(), "", *_report_foot(when)]) + "\n"

    def _rows(self) -> list[str]:
        by_scenario = {f.scenario: f for f in self.figures}
        return [
            _row(by_scenario[name]) if name in by_scenario else f"| {name} | not run this time |"
            for name in _SCENARIO_ORDER
        ]


def _row(f: Figures) -> str:
    return (
        f"| {f.scenario} | {f.fault} | {f.sent} | {f.acknowledged} | {f.stored} | {f.results} "
        f"| {f.delivered} | {f.dead_lettered} | {f.duplicates} | {f.lost} |"
    )


_REPORT_HEAD = [
    "## Under faults",
    "",
    "Each scenario runs `cad-node serve` as a",
    "child process with real DICOM peers on 127.0.0.1 (pynetdicom SCU and SCPs), kills it with",
    "SIGKILL at the moment named, restarts it on the same storage and journal, and checks the",
    "journal and the receivers (tests/integration/test_faults.py).",
    "",
    "- *Sent*: C-STORE requests into the node, resends included.",
    "- *Acknowledged*: distinct SOP instances answered 0x0000.",
    "- *Stored*: instances found both in the spool and in the journal after the fault.",
    "- *Results*: result objects (SEG, SR) in the journal; *Delivered*: (result, destination)",
    "  pairs recorded as delivered, each once; *Dead-lettered*: pairs recorded as FAILED after",
    "  a permanent refusal (shown by `cad-node status` and the admin page).",
    "- *Duplicates at receiver*: extra copies of a result a receiver got, each an identical",
    "  resend (same SOP Instance UID, same bytes): after a kill between sending and recording",
    "  the outcome, or a retry after 0xA700.",
    "- *Lost* = acknowledged - stored; every test asserts it is 0.",
    "",
]


def _report_foot(when: datetime) -> list[str]:
    return [
        f"Command: `{COMMAND}`",
        "",
        f"Date: {when:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}",
    ]


@pytest.fixture(scope="module")
def report() -> Iterator[ReliabilityReport]:
    """Collects each scenario's figures; writes its docs/reliability.md section at the end."""
    collected = ReliabilityReport()
    yield collected
    if collected.figures:
        write_section(REPORT_PATH, "faults", collected.render(datetime.now(UTC)))


_SCENARIO_ORDER = [
    "kill -9 during ingest",
    "kill -9 during inference",
    "kill -9 during export",
    "destination 0xA700, then 0x0000",
    "destination 0xC000",
    "disk full under the spool",
]


# -- the journal and the spool, read from outside the node ----------------------------------


def query(config: dict[str, Any], statement: Any) -> list[Any]:
    """Run ``statement`` on the node's SQLite journal in a fresh read transaction."""
    engine = create_engine(f"sqlite:///{Path(config['storage_dir']) / 'journal.sqlite'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(statement).all())
    finally:
        engine.dispose()


def stored_instances(config: dict[str, Any]) -> set[str]:
    """SOP Instance UIDs that are both in the journal and complete files in the spool."""
    storage = Path(config["storage_dir"])
    return {
        row.sop_instance_uid
        for row in query(config, select(Instance))
        if (storage / row.path).is_file() and (storage / row.path).stat().st_size == row.size_bytes
    }


def jobs_done(config: dict[str, Any], count: int = 1) -> bool:
    states = query(config, select(Job.state))
    if JobState.FAILED in states:
        raise AssertionError("a job failed")
    return states == [JobState.DONE] * count


def delivery_states(config: dict[str, Any]) -> list[DeliveryState]:
    return query(config, select(Delivery.state))


def result_uids(config: dict[str, Any]) -> set[str]:
    return set(query(config, select(Result.sop_instance_uid)))


def all_delivered(config: dict[str, Any], destinations: int = 1) -> bool:
    states = delivery_states(config)
    expected = len(result_uids(config)) * destinations
    return expected > 0 and states == [DeliveryState.DELIVERED] * expected


# -- a receiving PACS whose answers and timing the test chooses ------------------------------


@dataclass
class ReceivingPacs:
    """A pynetdicom Storage SCP on 127.0.0.1 that records every C-STORE it gets, in order.

    ``answers`` are its C-STORE statuses for the first, second ... copy of each
    SOP Instance UID (the last repeats).  ``hold_first_seconds`` keeps the first
    C-STORE waiting for its response, the association open, after its bytes
    are recorded: the moment to kill the sender.
    """

    answers: tuple[int, ...] = (SUCCESS,)
    hold_first_seconds: float = 0.0
    received: list[tuple[str, bytes]] = field(default_factory=list)
    first_received: threading.Event = field(default_factory=threading.Event)

    def on_store(self, event: Event) -> int:
        uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        attempt = sum(1 for seen, _ in self.received if seen == uid)
        self.received.append((uid, event.encoded_dataset(include_meta=False)))
        if not self.first_received.is_set():
            self.first_received.set()
            time.sleep(self.hold_first_seconds)
        return self.answers[min(attempt, len(self.answers) - 1)]

    def uids(self) -> set[str]:
        return {uid for uid, _ in self.received}

    def duplicates(self) -> int:
        return len(self.received) - len(self.uids())

    def assert_resends_identical(self) -> None:
        """Every copy of one SOP Instance UID carries the same bytes."""
        first: dict[str, bytes] = {}
        for uid, data in self.received:
            assert first.setdefault(uid, data) == data, f"a resend of {uid} differs"


@pytest.fixture
def start_pacs() -> Iterator[Any]:
    """Start ReceivingPacs on free ports (AE title PACS); stopped after the test."""
    servers: list[Any] = []

    def factory(port: int, **fields: Any) -> ReceivingPacs:
        pacs = ReceivingPacs(**fields)
        ae = AE(ae_title="PACS")
        for sop_class in RESULT_SOP_CLASSES:
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        handlers: list[Any] = [(evt.EVT_C_STORE, pacs.on_store)]
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        assert server is not None
        servers.append(server)
        return pacs

    yield factory
    for server in servers:
        server.shutdown()


# -- a sender that keeps track of what the node acknowledged ---------------------------------


@dataclass
class Sender:
    """C-STOREs into the node; counts requests and the instances answered 0x0000."""

    port: int
    requests: int = 0
    acknowledged: set[str] = field(default_factory=set)

    def send(self, paths: list[Path]) -> list[int]:
        """Send ``paths`` over one new association (pynetdicom); the status of each."""
        statuses = send(self.port, paths)
        self._count(paths, statuses)
        return statuses

    def send_then_lose_the_node(self, paths: list[Path], node: NodeProcess) -> list[int]:
        """Send all but the last of ``paths``, kill ``node`` mid-association, then the last."""
        ae = AE(ae_title="SCANNER")
        for sop_class_uid, transfer_syntax_uid in sorted({context_of(p) for p in paths}):
            ae.add_requested_context(sop_class_uid, transfer_syntax_uid)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AE_TITLE)
        assert assoc.is_established
        statuses = [_status(assoc.send_c_store(path)) for path in paths[:-1]]
        node.kill()
        statuses.append(_status_or_none(assoc, paths[-1]))
        assoc.abort()
        self._count(paths, statuses)
        return statuses

    def _count(self, paths: list[Path], statuses: list[int]) -> None:
        self.requests += len(statuses)
        self.acknowledged |= {
            sop_instance_uid(path)
            for path, status in zip(paths, statuses, strict=True)
            if status == SUCCESS
        }


def _status(response: Dataset) -> int:
    return int(response.Status) if "Status" in response else NO_RESPONSE


def _status_or_none(assoc: Any, path: Path) -> int:
    """The status of a C-STORE on an association whose peer may be gone."""
    if not assoc.is_established:
        return NO_RESPONSE
    try:
        return _status(assoc.send_c_store(path))
    except RuntimeError:  # pynetdicom: the association was aborted while sending
        return NO_RESPONSE


def sop_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- node configuration ----------------------------------------------------------------------


def rules_to(folder: Path, destinations: list[str]) -> Path:
    """The shipped lung CT rule, sending to ``destinations``, run anyway outside the model's
    domain (the small test CTs are: their findings are what the faults delay)."""
    (lung,) = [rule for rule in shipped_rules_anyway() if rule["model"] == "lung_nodule_ct"]
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump([{**lung, "destinations": destinations}]))
    return path


def destination(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "ae_title": "PACS"}


def node_config(folder: Path, **overrides: Any) -> Path:
    """A node that completes a series by its expected count (quiet timer long) and retries fast."""
    settings: dict[str, Any] = {
        "quiet_seconds": 60,
        "export": {
            "initial_backoff_seconds": 1,
            "max_backoff_seconds": 2,
            "timeouts": {"dimse_seconds": 10, "network_seconds": 30},
        },
        **overrides,
    }
    return write_config(folder, **settings)


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    """A 40-slice chest CT with ImagesInAcquisition, so the node completes it by count."""
    return write_ct_series(
        tmp_path_factory.mktemp("small-ct"),
        seed=515151,
        rows=128,
        slices=40,
        nodule_count=2,
        images_in_acquisition=True,
    )


# -- the scenarios ---------------------------------------------------------------------------


def test_kill_mid_association_during_ingest(
    tmp_path: Path, small_ct: SyntheticSeries, start_pacs: Any, report: ReliabilityReport
) -> None:
    """Acknowledged instances survive a kill mid-association; a full resend completes the job."""
    config_path = node_config(tmp_path)
    log = tmp_path / "node.log"
    node = NodeProcess(config_path, log)
    pacs = start_pacs(node.config["destinations"]["pacs"]["port"])
    sender = Sender(node.port)
    first = list(small_ct.paths[: ACKNOWLEDGED_BEFORE_KILL + 1])

    statuses = sender.send_then_lose_the_node(first, node)

    assert statuses[:-1] == [SUCCESS] * ACKNOWLEDGED_BEFORE_KILL
    assert statuses[-1] != SUCCESS, "the C-STORE after the kill cannot be acknowledged"
    acknowledged_at_kill = set(sender.acknowledged)
    assert stored_instances(node.config) == acknowledged_at_kill
    with running_node(config_path, log) as restarted:
        assert sender.send(list(small_ct.paths)) == [SUCCESS] * len(small_ct.paths)
        wait_for(lambda: jobs_done(restarted.config), JOB_TIMEOUT, "the job")
        wait_for(lambda: all_delivered(restarted.config), 60, "the deliveries")
        results = result_uids(restarted.config)
        stored = stored_instances(restarted.config)
    assert stored == sender.acknowledged == set(small_ct.sop_instance_uids)
    assert pacs.uids() == results
    assert pacs.duplicates() == 0
    report.figures.append(
        Figures(
            "kill -9 during ingest",
            f"SIGKILL after {ACKNOWLEDGED_BEFORE_KILL} of {len(small_ct.paths)} C-STOREs "
            "in one association; the sender resends all",
            sender.requests,
            len(sender.acknowledged),
            len(stored),
            len(results),
            len(delivery_states_of(restarted.config, DeliveryState.DELIVERED)),
            pacs.duplicates(),
        )
    )


def delivery_states_of(config: dict[str, Any], state: DeliveryState) -> list[DeliveryState]:
    return [s for s in delivery_states(config) if s == state]


def test_kill_during_inference(
    tmp_path: Path, small_ct: SyntheticSeries, start_pacs: Any, report: ReliabilityReport
) -> None:
    """A job killed while RUNNING is requeued at restart, finishes, and delivers once."""
    config_path = node_config(tmp_path)
    log = tmp_path / "node.log"
    node = NodeProcess(config_path, log)
    pacs = start_pacs(node.config["destinations"]["pacs"]["port"])
    sender = Sender(node.port)
    assert sender.send(list(small_ct.paths)) == [SUCCESS] * len(small_ct.paths)
    wait_for(
        lambda: query(node.config, select(Job.state)) == [JobState.RUNNING], 60, "a running job"
    )
    node.kill()

    assert query(node.config, select(Job.state)) == [JobState.RUNNING]
    assert query(node.config, select(Result)) == []
    with running_node(config_path, log) as restarted:
        wait_for(lambda: jobs_done(restarted.config), JOB_TIMEOUT, "the requeued job")
        wait_for(lambda: all_delivered(restarted.config), 60, "the deliveries")
        (attempts,) = query(restarted.config, select(Job.attempts))
        results = result_uids(restarted.config)
        stored = stored_instances(restarted.config)
    assert attempts == 2
    assert stored == sender.acknowledged
    assert pacs.uids() == results
    assert pacs.duplicates() == 0
    report.figures.append(
        Figures(
            "kill -9 during inference",
            "SIGKILL while the job is RUNNING; restart requeues it",
            sender.requests,
            len(sender.acknowledged),
            len(stored),
            len(results),
            len(delivery_states_of(restarted.config, DeliveryState.DELIVERED)),
            pacs.duplicates(),
        )
    )


def test_kill_during_export(
    tmp_path: Path, small_ct: SyntheticSeries, start_pacs: Any, report: ReliabilityReport
) -> None:
    """Killed with the first C-STORE to the PACS unanswered: the resend is byte-identical."""
    config_path = node_config(tmp_path)
    log = tmp_path / "node.log"
    node = NodeProcess(config_path, log)
    pacs = start_pacs(node.config["destinations"]["pacs"]["port"], hold_first_seconds=5.0)
    sender = Sender(node.port)
    assert sender.send(list(small_ct.paths)) == [SUCCESS] * len(small_ct.paths)
    assert pacs.first_received.wait(JOB_TIMEOUT), "no result reached the PACS"
    node.kill()

    assert DeliveryState.DELIVERED not in delivery_states(node.config)
    with running_node(config_path, log) as restarted:
        wait_for(lambda: all_delivered(restarted.config), 60, "the deliveries after restart")
        assert jobs_done(restarted.config)
        results = result_uids(restarted.config)
        stored = stored_instances(restarted.config)
    assert stored == sender.acknowledged
    assert pacs.uids() == results
    assert pacs.duplicates() >= 1, "the result in flight at the kill is sent again"
    pacs.assert_resends_identical()
    report.figures.append(
        Figures(
            "kill -9 during export",
            "SIGKILL while the PACS holds the first C-STORE unanswered",
            sender.requests,
            len(sender.acknowledged),
            len(stored),
            len(results),
            len(delivery_states_of(restarted.config, DeliveryState.DELIVERED)),
            pacs.duplicates(),
        )
    )


def test_out_of_resources_is_retried_and_refusal_fails_at_once(
    tmp_path: Path, small_ct: SyntheticSeries, start_pacs: Any, report: ReliabilityReport
) -> None:
    """0xA700 then 0x0000: delivered on a retry; 0xC000: FAILED after one attempt, in status."""
    busy_port, refusing_port = free_port(), free_port()
    config_path = node_config(
        tmp_path,
        destinations={"busy": destination(busy_port), "refusing": destination(refusing_port)},
        rules=str(rules_to(tmp_path, ["busy", "refusing"])),
    )
    busy = start_pacs(busy_port, answers=(OUT_OF_RESOURCES, SUCCESS))
    refusing = start_pacs(refusing_port, answers=(CANNOT_UNDERSTAND,))
    with running_node(config_path, tmp_path / "node.log") as node:
        sender = Sender(node.port)
        assert sender.send(list(small_ct.paths)) == [SUCCESS] * len(small_ct.paths)
        wait_for(lambda: jobs_done(node.config), JOB_TIMEOUT, "the job")
        wait_for(lambda: _settled(node.config), 60, "delivered to busy, failed at refusing")
        status = cad_node_status(config_path)
        rows = query(node.config, select(Delivery))
        results = result_uids(node.config)
        stored = stored_instances(node.config)
    by_destination = {name: [r for r in rows if r.destination == name] for name in _DESTINATIONS}
    assert all(r.attempts == 2 for r in by_destination["busy"])
    assert all(r.state == DeliveryState.DELIVERED for r in by_destination["busy"])
    assert all(r.attempts == 1 for r in by_destination["refusing"])
    assert all(r.last_status == CANNOT_UNDERSTAND for r in by_destination["refusing"])
    assert f"deliveries: delivered {len(results)}, failed {len(results)}" in status
    failed_rows = [
        line for line in status.splitlines() if line.split()[3:5] == ["refusing", "failed"]
    ]
    assert len(failed_rows) == len(results)
    assert all(" 1 " in row and "0xC000" in row for row in failed_rows)
    assert busy.uids() == refusing.uids() == results
    busy.assert_resends_identical()
    for scenario, pacs, state in (
        ("destination 0xA700, then 0x0000", busy, "busy"),
        ("destination 0xC000", refusing, "refusing"),
    ):
        delivered = [r for r in by_destination[state] if r.state == DeliveryState.DELIVERED]
        failed = [r for r in by_destination[state] if r.state == DeliveryState.FAILED]
        report.figures.append(
            Figures(
                scenario,
                _FAULTS[scenario],
                sender.requests,
                len(sender.acknowledged),
                len(stored),
                len(results),
                len(delivered),
                pacs.duplicates(),
                len(failed),
            )
        )


_DESTINATIONS = ("busy", "refusing")
_FAULTS = {
    "destination 0xA700, then 0x0000": "the PACS answers each result's first C-STORE 0xA700",
    "destination 0xC000": "the PACS answers every C-STORE 0xC000 (dead-lettered: FAILED)",
}


def _settled(config: dict[str, Any]) -> bool:
    rows = query(config, select(Delivery))
    results = len(result_uids(config))
    states = sorted((r.destination, r.state) for r in rows)
    expected = sorted(
        [("busy", DeliveryState.DELIVERED)] * results
        + [("refusing", DeliveryState.FAILED)] * results
    )
    return results > 0 and states == expected


# -- disk full: a small tmpfs under storage_dir ----------------------------------------------

TMPFS_SIZE = "2m"
TMPFS_FREED_SIZE = "16m"


@contextmanager
def small_tmpfs(folder: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted on ``folder``; skipped outside CI where ``mount`` is refused."""
    folder.mkdir()
    mounted = _mount(["-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield folder
    finally:
        _mount(["-l", str(folder)], program="umount")


def _mount(arguments: list[str], program: str = "mount") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, *arguments], capture_output=True, text=True, check=False, timeout=30
    )


def free_more_space(folder: Path) -> None:
    """Grow the tmpfs: the admin freeing space under storage_dir."""
    grown = _mount(["-o", f"remount,size={TMPFS_FREED_SIZE}", str(folder)])
    assert grown.returncode == 0, grown.stderr


def spool_files(storage: Path) -> tuple[set[str], list[Path]]:
    """(SOP Instance UIDs of complete spool files, leftover temp files)."""
    spool = storage / "spool"
    complete = {path.stem for path in spool.glob("*/*/*.dcm")}
    return complete, sorted((spool / ".tmp").glob("*"))


@pytest.fixture(scope="module")
def larger_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    """A 100-slice CT of 3.2 MB: more than the 2 MiB tmpfs holds."""
    return write_ct_series(
        tmp_path_factory.mktemp("larger-ct"), seed=525252, rows=128, slices=100, nodule_count=1
    )


def test_disk_full_refuses_with_out_of_resources(
    tmp_path: Path, larger_ct: SyntheticSeries, report: ReliabilityReport
) -> None:
    """A full disk answers 0xA700; nothing half-written is recorded; freed, it accepts again."""
    with small_tmpfs(tmp_path / "storage") as storage:
        config_path = node_config(tmp_path, storage_dir=str(storage), rules=[])
        with running_node(config_path, tmp_path / "node.log") as node:
            sender = Sender(node.port)
            statuses = sender.send(list(larger_ct.paths))
            assert OUT_OF_RESOURCES in statuses
            assert set(statuses) <= {SUCCESS, OUT_OF_RESOURCES}
            refused = len(statuses) - statuses.count(SUCCESS)
            journal = set(query(node.config, select(Instance.sop_instance_uid)))
            complete, leftovers = spool_files(storage)
            assert journal == complete == stored_instances(node.config) == sender.acknowledged
            assert leftovers == []

            free_more_space(storage)
            assert sender.send(list(larger_ct.paths)) == [SUCCESS] * len(larger_ct.paths)
            stored = stored_instances(node.config)
            assert "Traceback" not in node.log()
    assert stored == sender.acknowledged == set(larger_ct.sop_instance_uids)
    report.figures.append(
        Figures(
            "disk full under the spool",
            f"storage_dir on a {TMPFS_SIZE[:-1]} MiB tmpfs: {refused} C-STOREs answered 0xA700;"
            " space freed, the sender resends all",
            sender.requests,
            len(sender.acknowledged),
            len(stored),
            0,
            0,
            0,
        )
    )

"""Export against real peers on 127.0.0.1: a pynetdicom SCP answering chosen statuses, a
destination that is down then up, and DCMTK storescp receiving byte-identical objects."""

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pynetdicom
import pytest
from pydicom import dcmread
from pydicom.uid import UID, ComprehensiveSRStorage, CTImageStorage, SegmentationStorage
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import select
from sqlalchemy.orm import Session

from cad_node.config import DestinationSettings, ExportSettings, TimeoutSettings
from cad_node.domain.states import DeliveryState, JobState, ResultKind, SeriesState
from cad_node.export.outcomes import OutcomeKind
from cad_node.export.scu import send_files
from cad_node.export.service import deliver_due
from cad_node.store.deliveries import counts_by_state
from cad_node.store.schema import Delivery, Job, Result, Series, Study
from tests.conftest import Journal, dataset_bytes, pydicom_file
from tests.dcmtk import DCMTK_ENV, program

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STUDY_UID = "1.2.826.0.1.3680043.8.498.10"
SERIES_UID = "1.2.826.0.1.3680043.8.498.11"
FAST = TimeoutSettings(connect_seconds=2, acse_seconds=5, dimse_seconds=5, network_seconds=10)
EXPORT = ExportSettings(
    initial_backoff_seconds=5, max_backoff_seconds=60, max_attempts=3, timeouts=FAST
)

SUCCESS, WARNING, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xB000, 0xA700, 0xC000


# -- a pynetdicom Storage SCP whose answers a test chooses ------------------------------------


@dataclass
class Peer:
    """A Storage SCP on 127.0.0.1: answers ``statuses[uid]`` (default success), records bytes."""

    port: int
    statuses: dict[str, int] = field(default_factory=dict)
    received: dict[str, bytes] = field(default_factory=dict)
    proposed: list[set[str]] = field(default_factory=list)
    """The abstract syntaxes each association proposed."""
    delay_seconds: float = 0.0

    def on_store(self, event: Event) -> int:
        uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        time.sleep(self.delay_seconds)
        self.received[uid] = event.encoded_dataset(include_meta=False)
        return self.statuses.get(uid, SUCCESS)

    def on_requested(self, event: Event) -> None:
        contexts = event.assoc.requestor.requested_contexts
        self.proposed.append({str(context.abstract_syntax) for context in contexts})


PeerFactory = Callable[..., Peer]


@pytest.fixture(autouse=True)
def plain_pynetdicom_acceptor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peers here act as a plain PACS would.

    The node's own SCP turns pynetdicom's process-wide unrestricted storage on
    (accept any SOP class, with the first transfer syntax proposed); an ingest
    test run earlier in this process would otherwise change what these peers accept.
    """
    monkeypatch.setattr(pynetdicom._config, "UNRESTRICTED_STORAGE_SERVICE", False)


@pytest.fixture
def start_peer() -> Iterator[PeerFactory]:
    """Start Storage SCPs (AE title PACS); ``port=0`` picks a free port. Stopped after the test."""
    servers = []

    def factory(port: int = 0, contexts: list[str] | None = None, **fields: float) -> Peer:
        ae = AE(ae_title="PACS")
        ae.require_called_aet = True
        if contexts is None:
            ae.supported_contexts = StoragePresentationContexts
        else:
            for sop_class in contexts:
                ae.add_supported_context(sop_class)
        peer = Peer(port=port, **fields)  # type: ignore[arg-type]  # only delay_seconds is passed
        handlers: list[Any] = [
            (evt.EVT_C_STORE, peer.on_store),
            (evt.EVT_REQUESTED, peer.on_requested),
        ]
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        assert server is not None
        servers.append(server)
        peer.port = int(server.server_address[1])
        return peer

    yield factory
    for server in servers:
        server.shutdown()


def destination(port: int, ae_title: str = "PACS") -> DestinationSettings:
    return DestinationSettings(host="127.0.0.1", port=port, ae_title=ae_title)


# -- payloads: small real DICOM files --------------------------------------------------------


def ct_copies(folder: Path, count: int) -> list[Path]:
    """``count`` copies of CT_small.dcm, each with its own SOP Instance UID."""
    paths = []
    for number in range(1, count + 1):
        dataset = dcmread(pydicom_file("CT_small.dcm"))
        uid = UID(f"1.2.826.0.1.3680043.8.498.20.{number}")
        dataset.SOPInstanceUID = uid
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"ct{number}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- the journal: results with one pending delivery per destination -------------------------


def add_job(session: Session) -> int:
    session.add(Study(study_instance_uid=STUDY_UID, created_at=T0))
    session.flush()
    session.add(
        Series(
            series_instance_uid=SERIES_UID,
            study_instance_uid=STUDY_UID,
            modality="CT",
            state=SeriesState.ROUTED,
            instance_count=1,
            calling_ae_title="SCANNER",
            attributes={},
            first_received_at=T0,
            last_received_at=T0,
        )
    )
    session.flush()
    job = Job(
        series_instance_uid=SERIES_UID,
        series_revision=1,
        rule_name="chest",
        model_name="lung_nodule_ct",
        destinations=["pacs"],
        state=JobState.DONE,
        created_at=T0,
    )
    session.add(job)
    session.flush()
    return job.id


def add_results(
    journal: Journal, storage_dir: Path, files: list[Path], destinations: list[str]
) -> dict[str, int]:
    """Copy ``files`` under storage_dir as results of one job; delivery ids by SOP Instance UID."""
    ids: dict[str, int] = {}
    with journal.sessionmaker.begin() as session:
        job_id = add_job(session)
        for path in files:
            relative = Path("results") / path.name
            (storage_dir / "results").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, storage_dir / relative)
            dataset = dcmread(path, stop_before_pixels=True)
            result = Result(
                job_id=job_id,
                kind=ResultKind.SR,
                sop_class_uid=str(dataset.SOPClassUID),
                sop_instance_uid=str(dataset.SOPInstanceUID),
                series_instance_uid=str(dataset.SeriesInstanceUID),
                path=relative.as_posix(),
                created_at=T0,
            )
            session.add(result)
            session.flush()
            for name in destinations:
                delivery = Delivery(
                    result_id=result.id,
                    destination=name,
                    state=DeliveryState.PENDING,
                    attempts=0,
                    next_attempt_at=T0,
                )
                session.add(delivery)
                session.flush()
                ids[str(dataset.SOPInstanceUID)] = delivery.id
    return ids


def delivery(journal: Journal, delivery_id: int) -> Delivery:
    with journal.sessionmaker() as session:
        return session.get_one(Delivery, delivery_id)


# -- send_files: one association, outcomes from statuses ------------------------------------


def test_one_association_proposing_exactly_the_files_sop_classes(
    tmp_path: Path, start_peer: PeerFactory
) -> None:
    peer = start_peer()
    ct = ct_copies(tmp_path, 2)
    sr, seg = pydicom_file("test-SR.dcm"), pydicom_file("liver_1frame.dcm")
    outcomes = send_files(destination(peer.port), "CADNODE", [*ct, sr, seg], FAST)
    assert [o.kind for o in outcomes] == [OutcomeKind.SUCCESS] * 4
    assert peer.proposed == [
        {
            CTImageStorage,  # CT Image Storage
            ComprehensiveSRStorage,  # Comprehensive SR Storage
            SegmentationStorage,  # Segmentation Storage
        }
    ]
    for path in (*ct, sr, seg):
        assert peer.received[uid_of(path)] == dataset_bytes(path)


def test_each_status_is_classified(tmp_path: Path, start_peer: PeerFactory) -> None:
    files = ct_copies(tmp_path, 4)
    statuses = [SUCCESS, WARNING, OUT_OF_RESOURCES, CANNOT_UNDERSTAND]
    peer = start_peer()
    peer.statuses = {uid_of(p): s for p, s in zip(files, statuses, strict=True)}
    outcomes = send_files(destination(peer.port), "CADNODE", files, FAST)
    assert [(o.kind, o.status) for o in outcomes] == [
        (OutcomeKind.SUCCESS, SUCCESS),
        (OutcomeKind.WARNING, WARNING),
        (OutcomeKind.RETRY, OUT_OF_RESOURCES),
        (OutcomeKind.FAIL, CANNOT_UNDERSTAND),
    ]
    assert outcomes[3].error is not None
    assert outcomes[3].error.startswith("status 0xC000")
    assert len(peer.proposed) == 1


def test_down_destination_gives_retry_for_every_file(tmp_path: Path, free_port: int) -> None:
    outcomes = send_files(destination(free_port), "CADNODE", ct_copies(tmp_path, 2), FAST)
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY, OutcomeKind.RETRY]
    assert outcomes[0].error is not None
    assert outcomes[0].error.startswith("no association with PACS@127.0.0.1")


def test_unresolvable_host_gives_retry(tmp_path: Path) -> None:
    unknown = DestinationSettings(host="no-such-host.invalid", port=104, ae_title="PACS")
    (outcome,) = send_files(unknown, "CADNODE", ct_copies(tmp_path, 1), FAST)
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error is not None
    assert outcome.error.startswith("no association with PACS@no-such-host.invalid:104: ")


def test_rejected_association_gives_retry(tmp_path: Path, start_peer: PeerFactory) -> None:
    peer = start_peer()
    (outcome,) = send_files(
        destination(peer.port, "NOT_PACS"), "CADNODE", ct_copies(tmp_path, 1), FAST
    )
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error is not None
    assert "rejected" in outcome.error


def test_no_response_within_the_dimse_timeout_gives_retry(
    tmp_path: Path, start_peer: PeerFactory
) -> None:
    peer = start_peer(delay_seconds=2.0)
    impatient = TimeoutSettings(
        connect_seconds=2, acse_seconds=5, dimse_seconds=0.5, network_seconds=5
    )
    outcomes = send_files(destination(peer.port), "CADNODE", ct_copies(tmp_path, 2), impatient)
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY, OutcomeKind.RETRY]
    assert [o.status for o in outcomes] == [None, None]


def test_sop_class_the_destination_refuses_fails(tmp_path: Path, start_peer: PeerFactory) -> None:
    peer = start_peer(contexts=[CTImageStorage])
    ct = ct_copies(tmp_path, 1)[0]
    outcomes = send_files(
        destination(peer.port), "CADNODE", [pydicom_file("test-SR.dcm"), ct], FAST
    )
    assert [o.kind for o in outcomes] == [OutcomeKind.FAIL, OutcomeKind.SUCCESS]
    assert outcomes[0].error == "the destination does not accept SOP class Comprehensive SR Storage"


def test_unreadable_file_fails_alone(tmp_path: Path, start_peer: PeerFactory) -> None:
    peer = start_peer()
    missing, not_dicom = tmp_path / "gone.dcm", tmp_path / "text.dcm"
    not_dicom.write_text("hello")
    ct = ct_copies(tmp_path, 1)[0]
    outcomes = send_files(destination(peer.port), "CADNODE", [missing, not_dicom, ct], FAST)
    assert [o.kind for o in outcomes] == [OutcomeKind.FAIL, OutcomeKind.FAIL, OutcomeKind.SUCCESS]
    assert [o.path for o in outcomes] == [missing, not_dicom, ct]


def test_implicit_vr_acceptor_gets_a_converted_file(tmp_path: Path) -> None:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2"])  # Implicit VR LE only
    received: list[str] = []

    def on_store(event: Event) -> int:
        received.append(str(event.context.transfer_syntax))
        return SUCCESS

    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        port = int(server.server_address[1])
        (outcome,) = send_files(destination(port), "CADNODE", ct_copies(tmp_path, 1), FAST)
    finally:
        server.shutdown()
    assert outcome.kind is OutcomeKind.SUCCESS
    assert received == ["1.2.840.10008.1.2"]


# -- deliver_due: the journal drives retries -------------------------------------------------


def test_deliver_due_journals_each_outcome_and_retries_later(
    tmp_path: Path, journal: Journal, tmp_storage: Path, start_peer: PeerFactory
) -> None:
    files = ct_copies(tmp_path, 4)
    ids = add_results(journal, tmp_storage, files, ["pacs"])
    peer = start_peer()
    uids = [uid_of(p) for p in files]
    peer.statuses = dict(
        zip(uids, [SUCCESS, WARNING, OUT_OF_RESOURCES, CANNOT_UNDERSTAND], strict=True)
    )
    destinations = {"pacs": destination(peer.port)}

    report = deliver_due(
        journal.sessionmaker, destinations, tmp_storage, "CADNODE", T0, export=EXPORT
    )

    assert (report.delivered, report.delivered_with_warning, report.pending, report.failed) == (
        1,
        1,
        1,
        1,
    )
    assert len(peer.proposed) == 1  # one association for the batch
    ok, warned, busy, refused = (delivery(journal, ids[uid]) for uid in uids)
    assert (ok.state, ok.attempts, ok.last_status, ok.delivered_at) == (
        DeliveryState.DELIVERED,
        1,
        0,
        T0,
    )
    assert (warned.state, warned.last_status) == (DeliveryState.DELIVERED_WITH_WARNING, WARNING)
    assert (busy.state, busy.attempts, busy.last_status) == (
        DeliveryState.PENDING,
        1,
        OUT_OF_RESOURCES,
    )
    assert busy.next_attempt_at == T0 + timedelta(seconds=5)
    assert (refused.state, refused.last_status) == (DeliveryState.FAILED, CANNOT_UNDERSTAND)
    assert refused.last_error is not None

    # Not due yet: nothing is sent.
    assert (
        deliver_due(
            journal.sessionmaker,
            destinations,
            tmp_storage,
            "CADNODE",
            T0 + timedelta(seconds=4),
            export=EXPORT,
        ).outcomes
        == ()
    )
    # Due: only the retryable one is sent again, and now it is stored.
    peer.statuses.pop(uids[2])
    later = deliver_due(
        journal.sessionmaker,
        destinations,
        tmp_storage,
        "CADNODE",
        T0 + timedelta(seconds=5),
        export=EXPORT,
    )
    assert [(o.sop_instance_uid, o.state, o.attempts) for o in later.outcomes] == [
        (uids[2], DeliveryState.DELIVERED, 2)
    ]
    assert len(peer.proposed) == 2
    with journal.sessionmaker() as session:
        assert counts_by_state(session) == {
            DeliveryState.PENDING: 0,
            DeliveryState.DELIVERED: 2,
            DeliveryState.DELIVERED_WITH_WARNING: 1,
            DeliveryState.SENT: 0,  # only a destination with commitment: true
            DeliveryState.COMMITTED: 0,
            DeliveryState.FAILED: 1,
        }


def test_destination_down_then_up_is_delivered_on_a_later_call(
    tmp_path: Path, journal: Journal, tmp_storage: Path, free_port: int, start_peer: PeerFactory
) -> None:
    ids = add_results(journal, tmp_storage, ct_copies(tmp_path, 2), ["pacs"])
    destinations = {"pacs": destination(free_port)}

    down = deliver_due(
        journal.sessionmaker, destinations, tmp_storage, "CADNODE", T0, export=EXPORT
    )
    assert [o.state for o in down.outcomes] == [DeliveryState.PENDING] * 2
    first = delivery(journal, next(iter(ids.values())))
    assert (first.attempts, first.last_status, first.next_attempt_at) == (
        1,
        None,
        T0 + timedelta(seconds=5),
    )
    assert first.last_error is not None
    assert "no association" in first.last_error

    peer = start_peer(port=free_port)
    up = deliver_due(
        journal.sessionmaker,
        destinations,
        tmp_storage,
        "CADNODE",
        T0 + timedelta(seconds=6),
        export=EXPORT,
    )
    assert [o.state for o in up.outcomes] == [DeliveryState.DELIVERED] * 2
    assert set(peer.received) == set(ids)


def test_retries_end_in_failed_after_max_attempts(
    tmp_path: Path, journal: Journal, tmp_storage: Path, free_port: int
) -> None:
    (delivery_id,) = add_results(journal, tmp_storage, ct_copies(tmp_path, 1), ["pacs"]).values()
    destinations = {"pacs": destination(free_port)}
    now = T0
    for _ in range(EXPORT.max_attempts):
        deliver_due(journal.sessionmaker, destinations, tmp_storage, "CADNODE", now, export=EXPORT)
        now += timedelta(seconds=EXPORT.max_backoff_seconds)
    row = delivery(journal, delivery_id)
    assert (row.state, row.attempts) == (DeliveryState.FAILED, 3)
    assert row.last_error is not None
    assert row.last_error.startswith("gave up after 3 attempts; last: no association")


def test_removed_destination_fails_with_a_clear_error(
    tmp_path: Path, journal: Journal, tmp_storage: Path
) -> None:
    (delivery_id,) = add_results(
        journal, tmp_storage, ct_copies(tmp_path, 1), ["old-pacs"]
    ).values()
    report = deliver_due(journal.sessionmaker, {}, tmp_storage, "CADNODE", T0)
    assert report.failed == 1
    row = delivery(journal, delivery_id)
    assert row.state == DeliveryState.FAILED
    assert row.last_error == "destination 'old-pacs' is not configured (removed from the config?)"


def test_batches_are_grouped_by_destination(
    tmp_path: Path, journal: Journal, tmp_storage: Path, start_peer: PeerFactory
) -> None:
    files = ct_copies(tmp_path, 3)
    add_results(journal, tmp_storage, files, ["a", "b"])
    peer_a, peer_b = start_peer(), start_peer()
    destinations = {"a": destination(peer_a.port), "b": destination(peer_b.port)}
    export = EXPORT.model_copy(update={"max_files_per_association": 2})
    report = deliver_due(
        journal.sessionmaker, destinations, tmp_storage, "CADNODE", T0, export=export
    )
    assert report.delivered == 6
    assert len(peer_a.proposed) == len(peer_b.proposed) == 2  # 3 files, at most 2 per association
    assert set(peer_a.received) == set(peer_b.received) == {uid_of(p) for p in files}
    with journal.sessionmaker() as session:
        states = set(session.scalars(select(Delivery.state)))
    assert states == {DeliveryState.DELIVERED}


# -- DCMTK storescp receives what was stored, byte for byte ----------------------------------


@pytest.fixture
def storescp(tmp_path: Path, free_port: int) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp (AE PACS, bit-preserving) on a free port; its output folder."""
    out = tmp_path / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        [program("storescp"), "-aet", "PACS", "+B", "-od", str(out), str(free_port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(free_port)
        yield free_port, out
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("storescp did not start listening")


def test_storescp_receives_seg_and_sr_byte_identical(
    tmp_path: Path, journal: Journal, tmp_storage: Path, storescp: tuple[int, Path]
) -> None:
    port, out = storescp
    seg, sr = pydicom_file("liver_1frame.dcm"), pydicom_file("test-SR.dcm")
    add_results(journal, tmp_storage, [seg, sr], ["pacs"])
    report = deliver_due(
        journal.sessionmaker, {"pacs": destination(port)}, tmp_storage, "CADNODE", T0, export=EXPORT
    )
    assert report.delivered == 2
    received = {uid_of(path): path for path in out.iterdir()}
    for original in (seg, sr):
        assert dataset_bytes(received[uid_of(original)]) == dataset_bytes(original)

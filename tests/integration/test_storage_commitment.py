"""Storage Commitment SCU against a real pynetdicom PACS on 127.0.0.1 (PS3.4 Annex J).

The PACS stores by C-STORE and commits by N-ACTION; it reports (N-EVENT-REPORT) on the
N-ACTION's association, on one it opens back to the node's Storage SCP, or never; it
reports the objects a test chooses as failed. The journal's transitions: sent ->
committed; failed -> sent again under the retry policy; unanswered -> asked again, then
failed (a dead letter); the PACS down -> asked again after the backoff.
"""

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

import pynetdicom
import pytest
from pydicom import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import select

from cad_node.config import DestinationSettings, ExportSettings, TimeoutSettings
from cad_node.domain.states import DeliveryState
from cad_node.export.commitment import (
    EVENT_ALL_COMMITTED,
    EVENT_SOME_FAILED,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
)
from cad_node.export.commitment_service import CommitmentReports, request_due_commitments
from cad_node.export.service import deliver_due
from cad_node.store.schema import AuditEvent, Delivery
from tests.conftest import FakeClock, Journal, NodeFactory
from tests.integration.peers import wait_for
from tests.integration.test_export import T0, add_results, ct_copies

FAST = TimeoutSettings(connect_seconds=2, acse_seconds=5, dimse_seconds=5, network_seconds=10)
EXPORT = ExportSettings(
    initial_backoff_seconds=5, max_backoff_seconds=60, max_attempts=3, timeouts=FAST
)
NO_SUCH_OBJECT_INSTANCE = 0x0112

Mode = Literal["same", "back", "silent"]


@dataclass
class CommittingPeer:
    """A PACS: Storage SCP and Storage Commitment Push Model SCP (AE title PACS)."""

    mode: Mode
    node_port: int = 0
    fail_once: set[str] = field(default_factory=set)
    """SOP Instance UIDs reported failed the first time they are asked for."""
    port: int = 0
    received: dict[str, int] = field(default_factory=dict)
    """C-STOREs per SOP Instance UID."""
    transactions: list[str] = field(default_factory=list)
    report_statuses: list[int] = field(default_factory=list)
    """The node's answers to the reports sent on associations of the PACS's own."""
    reported: threading.Event = field(default_factory=threading.Event)
    _pending: list[Dataset] = field(default_factory=list)

    def on_store(self, event: Event) -> int:
        uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        self.received[uid] = self.received.get(uid, 0) + 1
        return 0x0000

    def on_action(self, event: Event) -> tuple[int, None]:
        information = event.action_information
        self.transactions.append(str(information.TransactionUID))
        self._pending.append(self._report(information))
        return 0x0000, None

    def on_sent(self, event: Event) -> None:
        """EVT_DIMSE_SENT: once the N-ACTION-RSP is out, report as the mode says."""
        if type(event.message).__name__ != "N_ACTION_RSP" or self.mode == "silent":
            return
        report = self._pending.pop(0)
        target = self._same_association if self.mode == "same" else self._association_back
        threading.Thread(target=target, args=(event.assoc, report), daemon=True).start()

    def _report(self, information: Dataset) -> Dataset:
        report = Dataset()
        report.TransactionUID = information.TransactionUID
        committed, failed = [], []
        for item in information.ReferencedSOPSequence:
            uid = str(item.ReferencedSOPInstanceUID)
            if uid in self.fail_once or uid not in self.received:
                self.fail_once.discard(uid)
                failure = Dataset()
                failure.ReferencedSOPClassUID = item.ReferencedSOPClassUID
                failure.ReferencedSOPInstanceUID = uid
                failure.FailureReason = NO_SUCH_OBJECT_INSTANCE
                failed.append(failure)
            else:
                committed.append(item)
        report.ReferencedSOPSequence = committed
        if failed:
            report.FailedSOPSequence = failed
        return report

    def _same_association(self, assoc: Any, report: Dataset) -> None:
        self._send(assoc, report)

    def _association_back(self, _assoc: Any, report: Dataset) -> None:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)
        assoc = ae.associate("127.0.0.1", self.node_port, ae_title="CADNODE", ext_neg=[role])
        assert assoc.is_established
        try:
            status, _ = self._send(assoc, report)
            self.report_statuses.append(int(status.Status))
        finally:
            assoc.release()

    def _send(self, assoc: Any, report: Dataset) -> tuple[Dataset, Any]:
        event_type = EVENT_SOME_FAILED if "FailedSOPSequence" in report else EVENT_ALL_COMMITTED
        answer = assoc.send_n_event_report(
            report,
            event_type,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
        )
        self.reported.set()
        return cast(tuple[Dataset, Any], answer)


PeerFactory = Callable[..., CommittingPeer]


@pytest.fixture(autouse=True)
def plain_pynetdicom_acceptor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PACS accepts what a plain pynetdicom acceptor does (see test_export.py)."""
    monkeypatch.setattr(pynetdicom._config, "UNRESTRICTED_STORAGE_SERVICE", False)


@pytest.fixture
def start_peer() -> Iterator[PeerFactory]:
    servers = []

    def factory(mode: Mode, port: int = 0, **fields: Any) -> CommittingPeer:
        ae = AE(ae_title="PACS")
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL)
        peer = CommittingPeer(mode, **fields)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, peer.on_store),
            (evt.EVT_N_ACTION, peer.on_action),
            (evt.EVT_DIMSE_SENT, peer.on_sent),
        ]
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        assert server is not None
        servers.append(server)
        peer.port = int(server.server_address[1])
        return peer

    yield factory
    for server in servers:
        server.shutdown()


def committing(port: int, **fields: Any) -> dict[str, DestinationSettings]:
    settings = {"commitment_report_wait_seconds": 5.0, **fields}
    return {
        "pacs": DestinationSettings(
            host="127.0.0.1", port=port, ae_title="PACS", commitment=True, **settings
        )
    }


@dataclass
class Setup:
    journal: Journal
    storage_dir: Path
    clock: FakeClock
    ids: dict[str, int]
    reports: CommitmentReports

    def deliver(self, destinations: dict[str, DestinationSettings]) -> None:
        deliver_due(
            self.journal.sessionmaker,
            destinations,
            self.storage_dir,
            "CADNODE",
            self.clock(),
            export=EXPORT,
        )

    def request(self, destinations: dict[str, DestinationSettings]) -> None:
        request_due_commitments(
            self.journal.sessionmaker,
            destinations,
            "CADNODE",
            self.clock(),
            export=EXPORT,
            record=self.reports,
        )

    def delivery(self, uid: str) -> Delivery:
        with self.journal.sessionmaker() as session:
            return session.get_one(Delivery, self.ids[uid])

    def states(self) -> dict[str, DeliveryState]:
        return {uid: DeliveryState(self.delivery(uid).state) for uid in self.ids}

    def audit_actions(self) -> list[str]:
        with self.journal.sessionmaker() as session:
            return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


@pytest.fixture
def setup(tmp_path: Path, tmp_storage: Path, journal: Journal, clock: FakeClock) -> Setup:
    files = ct_copies(tmp_path, 2)
    ids = add_results(journal, tmp_storage, files, ["pacs"])
    clock.now = T0  # the deliveries are due from T0
    reports = CommitmentReports(journal.sessionmaker, clock, EXPORT.max_attempts)
    return Setup(journal, tmp_storage, clock, ids, reports)


def test_stored_objects_wait_sent_until_the_report_on_the_same_association(
    setup: Setup, start_peer: PeerFactory
) -> None:
    peer = start_peer("same")
    destinations = committing(peer.port)
    setup.deliver(destinations)
    assert set(setup.states().values()) == {DeliveryState.SENT}

    setup.request(destinations)

    assert set(setup.states().values()) == {DeliveryState.COMMITTED}
    (transaction,) = peer.transactions
    for uid in setup.ids:
        row = setup.delivery(uid)
        assert row.commitment_transaction_uid == transaction
        assert row.committed_at == setup.clock()
        assert row.commitment_attempts == 1
    assert setup.audit_actions().count("delivery.committed") == 2


def test_a_report_on_an_association_the_pacs_opens_is_taken_by_the_node_scp(
    setup: Setup, start_peer: PeerFactory, make_node: NodeFactory
) -> None:
    node = make_node(journal=setup.journal, clock=setup.clock, on_commitment_report=setup.reports)
    peer = start_peer("back", node_port=node.scp.port)
    destinations = committing(peer.port, commitment_report_wait_seconds=0)
    setup.deliver(destinations)

    setup.request(destinations)
    wait_for(lambda: peer.report_statuses == [0x0000], 30, "the node to answer the report")

    assert set(setup.states().values()) == {DeliveryState.COMMITTED}


def test_objects_reported_failed_are_sent_again_then_committed(
    setup: Setup, start_peer: PeerFactory
) -> None:
    failing = next(iter(setup.ids))
    peer = start_peer("same", fail_once={failing})
    destinations = committing(peer.port)
    setup.deliver(destinations)

    setup.request(destinations)

    failed = setup.delivery(failing)
    assert failed.state == DeliveryState.PENDING
    assert failed.next_attempt_at == setup.clock()
    assert failed.commitment_transaction_uid is None
    assert "no such object instance (0x0112)" in (failed.last_error or "")
    others = [uid for uid in setup.ids if uid != failing]
    assert {setup.delivery(uid).state for uid in others} == {DeliveryState.COMMITTED}

    setup.deliver(destinations)
    setup.request(destinations)

    assert set(setup.states().values()) == {DeliveryState.COMMITTED}
    assert peer.received[failing] == 2
    assert setup.delivery(failing).attempts == 2
    assert len(peer.transactions) == 2


def test_a_failure_with_the_attempts_used_up_is_a_dead_letter(
    setup: Setup, start_peer: PeerFactory
) -> None:
    failing = next(iter(setup.ids))
    peer = start_peer("same", fail_once={failing})
    destinations = committing(peer.port)
    setup.reports.max_attempts = 1
    setup.deliver(destinations)

    setup.request(destinations)

    row = setup.delivery(failing)
    assert row.state == DeliveryState.FAILED
    assert "gave up after 1 attempts" in (row.last_error or "")


def test_an_unanswered_request_is_made_again_then_given_up(
    setup: Setup, start_peer: PeerFactory
) -> None:
    peer = start_peer("silent")
    destinations = committing(
        peer.port,
        commitment_timeout_seconds=60,
        commitment_max_requests=2,
        commitment_report_wait_seconds=0,
    )
    setup.deliver(destinations)

    setup.request(destinations)
    setup.clock.advance(30)
    setup.request(destinations)  # not yet overdue
    assert len(peer.transactions) == 1

    setup.clock.advance(31)
    setup.request(destinations)
    assert len(peer.transactions) == 2
    assert peer.transactions[0] != peer.transactions[1]
    assert set(setup.states().values()) == {DeliveryState.SENT}

    setup.clock.advance(61)
    setup.request(destinations)
    assert len(peer.transactions) == 2
    assert set(setup.states().values()) == {DeliveryState.FAILED}
    row = setup.delivery(next(iter(setup.ids)))
    assert row.last_error == "no storage commitment answer after 2 request(s)"


def test_a_pacs_down_is_asked_again_after_the_backoff(
    setup: Setup, start_peer: PeerFactory, free_port: int
) -> None:
    peer = start_peer("same")
    destinations = committing(peer.port)
    setup.deliver(destinations)
    down = committing(free_port)  # nothing listens there

    setup.request(down)

    row = setup.delivery(next(iter(setup.ids)))
    assert row.state == DeliveryState.SENT
    assert row.next_attempt_at == setup.clock() + timedelta(seconds=5)
    assert "storage commitment request failed: no association" in (row.last_error or "")
    setup.request(destinations)  # not due yet
    assert peer.transactions == []

    setup.clock.advance(5)
    setup.request(destinations)
    assert set(setup.states().values()) == {DeliveryState.COMMITTED}
    assert setup.delivery(next(iter(setup.ids))).commitment_attempts == 2


def test_a_report_of_an_unknown_transaction_changes_nothing(
    setup: Setup, start_peer: PeerFactory, make_node: NodeFactory
) -> None:
    node = make_node(journal=setup.journal, clock=setup.clock, on_commitment_report=setup.reports)
    peer = start_peer("back", node_port=node.scp.port)
    report = Dataset()
    report.TransactionUID = "1.2.826.0.1.3680043.8.498.99"
    report.ReferencedSOPSequence = []
    peer._association_back(None, report)
    assert peer.report_statuses == [0x0000]
    assert set(setup.states().values()) == {DeliveryState.PENDING}


def test_a_destination_that_no_longer_commits_ends_delivered(
    setup: Setup, start_peer: PeerFactory
) -> None:
    peer = start_peer("same")
    setup.deliver(committing(peer.port))
    plain = {"pacs": DestinationSettings(host="127.0.0.1", port=peer.port, ae_title="PACS")}

    setup.request(plain)

    assert set(setup.states().values()) == {DeliveryState.DELIVERED}
    assert peer.transactions == []


def test_a_dead_letter_retried_by_the_admin_is_asked_afresh(
    setup: Setup, start_peer: PeerFactory
) -> None:
    silent, answering = start_peer("silent"), start_peer("same")
    once = {"commitment_max_requests": 1, "commitment_timeout_seconds": 60}
    setup.deliver(committing(silent.port, commitment_report_wait_seconds=0, **once))
    setup.request(committing(silent.port, commitment_report_wait_seconds=0, **once))
    setup.clock.advance(60)
    setup.request(committing(silent.port, **once))
    assert set(setup.states().values()) == {DeliveryState.FAILED}

    with setup.journal.sessionmaker.begin() as session:  # what "Retry now" does
        for delivery_id in setup.ids.values():
            row = session.get_one(Delivery, delivery_id)
            row.state, row.attempts, row.next_attempt_at = DeliveryState.PENDING, 0, setup.clock()
    setup.deliver(committing(answering.port, **once))
    assert {setup.delivery(uid).commitment_attempts for uid in setup.ids} == {0}
    setup.request(committing(answering.port, **once))

    assert set(setup.states().values()) == {DeliveryState.COMMITTED}

"""The Storage SCP: C-ECHO and C-STORE over pynetdicom, into the spool and the journal.

An instance is acknowledged (0x0000) only after its bytes are fsync'd in the
spool and its row is committed in the journal; every other outcome is a
precise PS3.4 Annex B.2.3 status, never a dropped association.

Everything that depends on pynetdicom's internals, and the choice of receive
path by its version, is :mod:`cad_node.ingest.pynetdicom_adapter`'s.
"""

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import AE, VerificationPresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from cad_node.config import Settings
from cad_node.export.commitment import (
    REPORT_NOT_RECORDED,
    STORAGE_COMMITMENT_PUSH_MODEL,
    RecordReport,
    answer_report,
)
from cad_node.ingest.bounds import DataSetLimits
from cad_node.ingest.connections import ConnectionLimits, ConnectionsPerAddress
from cad_node.ingest.incoming import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_IDENTITY_CONFLICT,
    STATUS_NOT_AUTHORIZED,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    OnInstance,
    StoreRequest,
    StoreService,
    status_with_comment,
)
from cad_node.ingest.journal_writer import GroupCommitter, JournalWriter
from cad_node.ingest.pynetdicom_adapter import (
    ReceivePath,
    configure,
    install,
    receive_path,
    register_server,
    write_data_set,
)
from cad_node.ingest.spool import Spool
from cad_node.security.peers import PeerPolicy, PeerService
from cad_node.security.tls import handshake_in_association_thread, server_context

logger = logging.getLogger(__name__)

__all__ = [
    "MAXIMUM_PDU_LENGTH",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DATASET_MISMATCH",
    "STATUS_IDENTITY_CONFLICT",
    "STATUS_NOT_AUTHORIZED",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_SUCCESS",
    "OnInstance",
    "StorageSCP",
    "configure_pynetdicom",
]

MAXIMUM_PDU_LENGTH = 1_048_576
"""Maximum Length Received (PS3.8 D.1.1) the SCP announces, in bytes.

DCMTK senders then send 128 KiB P-DATA-TF PDUs (their largest) instead of
16 KiB ones: a 0.5 MB image arrives in 4 PDUs, not 32.  Bounded rather than 0
(unlimited), because one PDU is held in memory whole while it is read.
"""


def configure_pynetdicom() -> ReceivePath:
    """Process-wide pynetdicom settings the node relies on, for the receive path the installed
    pynetdicom gets (:mod:`cad_node.ingest.pynetdicom_adapter`; never a refusal)."""
    path = receive_path()
    configure(path)
    return path


class StorageSCP:
    """A Storage SCP (PS3.4 Annex B) and Verification SCP (PS3.4 Annex A) on one port.

    Parameters
    ----------
    ae_title
        The node's AE title.
    bind_address, port
        Where to listen; port 0 picks a free port (see :attr:`port`).
    allowed_calling_aets
        Calling AE titles accepted at association; empty accepts any.
    peers
        Who may associate, from where, for which services (replaces
        ``allowed_calling_aets`` when given; see :mod:`cad_node.security.peers`).
    spool
        Where received instances are written.
    sessionmaker
        Sessions on the journal.
    clock
        The current UTC time (injected so tests need not sleep).
    on_instance
        Called after each instance is committed (e.g. to complete a series early
        when its expected count is reached); its errors are logged, not answered.
    maximum_associations
        Concurrent associations accepted; more are rejected (not dropped).  A connection
        whose A-ASSOCIATE-RQ has not arrived yet does not count (:meth:`check_association`).
    ssl_context
        DICOM TLS (PS3.15 Annex B.9) on the port (see :mod:`cad_node.security.tls`);
        ``None``: plain TCP.
    listening_fd
        Accept on this inherited listening socket instead of binding one: an extra
        ingest process shares the node's (:mod:`cad_node.ingest.processes`).
    shares_socket
        Other processes accept on the listening socket too (implied by
        ``listening_fd``): accept by load, so associations spread evenly.
    journal
        What records the instances; by default a :class:`JournalWriter` on
        ``sessionmaker`` (an extra ingest process passes a
        :class:`~cad_node.ingest.journal_link.LinkedJournal`).
    limits
        What one data set may cost (:class:`~cad_node.ingest.bounds.DataSetLimits`);
        ``None``: the defaults.
    connection_limits
        What one peer's connections may cost: PDU lengths, timeouts, connections per
        address (:class:`~cad_node.ingest.connections.ConnectionLimits`); ``None``: the
        defaults.
    on_commitment_report
        Journals a Storage Commitment report (N-EVENT-REPORT) a destination sends on an
        association of its own, the node in the SCU role (PS3.4 J.3.3); ``None``: the
        Storage Commitment Push Model is not offered.
    """

    def __init__(
        self,
        *,
        ae_title: str,
        bind_address: str,
        port: int,
        allowed_calling_aets: Sequence[str],
        spool: Spool,
        sessionmaker: sessionmaker[Session],
        clock: Callable[[], datetime],
        on_instance: OnInstance | None = None,
        maximum_associations: int = 16,
        ssl_context: ssl.SSLContext | None = None,
        peers: PeerPolicy | None = None,
        listening_fd: int | None = None,
        shares_socket: bool = False,
        journal: GroupCommitter | None = None,
        limits: DataSetLimits | None = None,
        connection_limits: ConnectionLimits | None = None,
        on_commitment_report: RecordReport | None = None,
    ) -> None:
        self._receive_path = configure_pynetdicom()
        shares_socket = shares_socket or listening_fd is not None
        self._connection_limits = connection_limits or ConnectionLimits()
        self._server_class = type(
            "BoundIngestServer",
            (_IngestServer,),
            {
                "listening_fd": listening_fd,
                "shares_socket": shares_socket,
                "connections": ConnectionsPerAddress(
                    self._connection_limits.max_connections_per_address
                ),
            },
        )
        self._peers = peers or PeerPolicy.from_calling_aets(allowed_calling_aets)
        self._bind = (bind_address, port)
        self._store_service = StoreService(
            spool=spool,
            journal=journal or JournalWriter(sessionmaker, clock),
            peers=self._peers,
            on_instance=on_instance,
            limits=limits or DataSetLimits(),
        )
        self._maximum_associations = maximum_associations
        self._ae = _make_ae(ae_title, self._connection_limits)
        self._on_commitment_report = on_commitment_report
        if on_commitment_report is not None:
            # the destination reports in the SCP role: accept its proposal (PS3.7 D.3.3.4)
            self._ae.add_supported_context(
                STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True
            )
        self._server: ThreadedAssociationServer | None = None
        self._ssl_context = ssl_context

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        sessionmaker: sessionmaker[Session],
        clock: Callable[[], datetime],
        *,
        port: int,
        on_instance: OnInstance | None = None,
        listening_fd: int | None = None,
        journal: GroupCommitter | None = None,
        on_commitment_report: RecordReport | None = None,
    ) -> "StorageSCP":
        """The node's SCP as ``settings`` describe it, on ``port`` (``cad-node serve``'s own,
        or that of an extra ``cad-node ingest`` process, on serve's listening socket)."""
        return cls(
            ae_title=settings.ae_title,
            bind_address=settings.bind_address,
            port=port,
            allowed_calling_aets=settings.allowed_calling_aets,
            peers=PeerPolicy.from_settings(settings),
            spool=Spool(settings.storage_dir),
            sessionmaker=sessionmaker,
            clock=clock,
            on_instance=on_instance,
            ssl_context=None if settings.tls is None else server_context(settings.tls),
            listening_fd=listening_fd,
            shares_socket=settings.ingest_processes > 1,
            journal=journal,
            limits=DataSetLimits.from_settings(settings.limits),
            connection_limits=ConnectionLimits.from_settings(settings.limits),
            on_commitment_report=on_commitment_report,
        )

    @property
    def store_service(self) -> StoreService:
        """Where C-STORE data sets go: its journal and ``notify`` serve extra ingest processes."""
        return self._store_service

    @property
    def listening_socket(self) -> socket.socket:
        """The socket associations are accepted on (extra ingest processes inherit it)."""
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return cast(socket.socket, self._server.socket)

    @property
    def port(self) -> int:
        """The bound port (the one the OS picked when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen in a background thread; returns once the socket is bound."""
        if self._server is not None:
            raise RuntimeError("the SCP is already started")
        handlers: list[EventHandlerType] = [
            (evt.EVT_REQUESTED, self.check_association),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_N_EVENT_REPORT, self.handle_event_report),
            (evt.EVT_REJECTED, _log_rejection),
        ]
        server = self._ae.make_server(
            self._bind,
            evt_handlers=handlers,
            ssl_context=self._ssl_context,
            server_class=self._server_class,
        )
        install(server, self._receive_path, self._store_service, self._connection_limits)
        handshake_in_association_thread(server)
        threading.Thread(
            target=server.serve_forever,
            name=f"storage-scp-{server.server_address[1]}",
            daemon=True,
        ).start()
        register_server(self._ae, server)
        self._server = server
        logger.info(
            "Storage SCP %s listening on %s:%d%s",
            self._ae.ae_title,
            self._bind[0],
            self.port,
            " (TLS)" if self._ssl_context is not None else "",
        )

    def stop(self) -> None:
        """Stop listening and close the socket; idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def check_association(self, event: Event) -> None:
        """EVT_REQUESTED: reject an association of a calling AE title not accepted from its
        address, then one past ``maximum_associations`` (PS3.8 9.3.4)."""
        if self.check_peer(event):
            self.check_association_limit(event)

    def check_peer(self, event: Event) -> bool:
        """Whether the calling AE title is accepted from its address; if not, the association
        is rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized."""
        calling_ae_title = _calling_ae_title(event)
        address = str(event.assoc.requestor.address)
        if self._peers.accepts_association(calling_ae_title, address):
            return True
        logger.warning(
            "association from %s (calling AE %s) rejected: not a peer from that address",
            address,
            calling_ae_title,
        )
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()
        return False

    def check_association_limit(self, event: Event) -> bool:
        """Whether this association is within ``maximum_associations``; if not, it is
        rejected-transient, DICOM UL service-provider (presentation), local-limit-exceeded.

        Only associations whose A-ASSOCIATE-RQ has arrived count (pynetdicom's own count,
        switched off in :func:`_make_ae`, counts every connection): silent connections are
        bounded by the ARTIM timeout and ``max_connections_per_address`` instead, and hold
        no sender off (issue 19).
        """
        requested = sum(1 for association in self._ae.active_associations if _asked(association))
        if requested <= self._maximum_associations:
            return True
        logger.warning(
            "association from %s (calling AE %s) rejected: %d associations open (local limit)",
            event.assoc.requestor.address,
            _calling_ae_title(event),
            requested - 1,
        )
        event.assoc.acse.send_reject(0x02, 0x03, 0x02)
        event.assoc.kill()
        return False

    def handle_echo(self, event: Event) -> int:
        """EVT_C_ECHO: 0x0000, or 0x0124 for a peer not allowed ``echo`` (PS3.4 A.4)."""
        return self._authorized(event, PeerService.ECHO)

    def _authorized(self, event: Event, service: PeerService) -> int:
        requestor = event.assoc.requestor
        if self._peers.permits(str(requestor.ae_title), str(requestor.address), service):
            return STATUS_SUCCESS
        logger.warning(
            "%s refused (0x0124): calling AE %s at %s may not use it",
            service.value,
            str(requestor.ae_title).strip(),
            requestor.address,
        )
        return STATUS_NOT_AUTHORIZED

    def handle_store(self, event: Event) -> int | Dataset:
        """EVT_C_STORE: store one instance and answer its status (PS3.4 B.2.3).

        pynetdicom's path: every C-STORE on a pynetdicom the fast path does not know, and
        on the fast path those it leaves to pynetdicom (:mod:`cad_node.ingest.streaming`).
        The broad ``except`` belongs here only: whatever goes wrong becomes a status, so
        the peer never sees a dropped association.
        """
        try:
            incoming = self._store_service.begin(_store_request(event))
            write_data_set(event, incoming, self._store_service.limits.max_instance_bytes)
            return status_with_comment(incoming.finish(), incoming.error_comment)
        except Exception as exc:  # top of the SCP handler: any failure is a status
            logger.error(
                "C-STORE failed (0xC211) for SOP Instance %s: %s",
                getattr(event.request, "AffectedSOPInstanceUID", "?"),
                type(exc).__name__,
            )
            return STATUS_PROCESSING_FAILURE

    def handle_event_report(self, event: Event) -> tuple[int, Dataset | None]:
        """EVT_N_EVENT_REPORT: a Storage Commitment report, journaled before it is answered
        (PS3.4 J.3.3); 0x0110 when it could not be recorded, so the sender may send it again."""
        status, report = answer_report(event)
        if report is None or self._on_commitment_report is None:
            return (status if report is None else REPORT_NOT_RECORDED), None
        try:
            return self._on_commitment_report(report), None
        except Exception as exc:  # top of the SCP handler: any failure is a status
            logger.error(
                "storage commitment report %s failed: %s",
                report.transaction_uid,
                type(exc).__name__,
            )
            return REPORT_NOT_RECORDED, None


def _store_request(event: Event) -> StoreRequest:
    request = cast(C_STORE, event.request)
    requestor = event.assoc.requestor
    return StoreRequest(
        affected_sop_class_uid=str(request.AffectedSOPClassUID).strip(),
        affected_sop_instance_uid=str(request.AffectedSOPInstanceUID).strip(),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        calling_ae_title=str(requestor.ae_title).strip(),
        address=str(requestor.address),
    )


def _calling_ae_title(event: Event) -> str:
    request = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ, set before EVT_REQUESTED
    return "" if request is None else str(request.calling_ae_title).strip()


def _asked(association: Association) -> bool:
    """An acceptor association whose A-ASSOCIATE-RQ has arrived, and which has not ended."""
    ended = association.is_rejected or association.is_aborted or association.is_released
    return association.is_acceptor and association.requestor.primitive is not None and not ended


_PYNETDICOM_COUNT_OFF = 1 << 30
"""pynetdicom's limit of associations, out of reach: :meth:`StorageSCP.check_association_limit`
counts them instead."""


def _make_ae(ae_title: str, limits: ConnectionLimits) -> AE:
    ae = AE(ae_title=ae_title)
    ae.supported_contexts = VerificationPresentationContexts
    ae.maximum_associations = _PYNETDICOM_COUNT_OFF
    ae.maximum_pdu_size = MAXIMUM_PDU_LENGTH
    ae.acse_timeout = limits.acse_timeout_seconds
    ae.network_timeout = limits.network_timeout_seconds
    return ae


def _log_rejection(event: Event) -> None:
    """EVT_REJECTED: who was refused (PS3.8 9.3.4), for the audit; AE titles are no patient data."""
    requestor = event.assoc.requestor
    logger.warning(
        "association from %s (calling AE %s, called AE %s) rejected",
        requestor.address,
        str(requestor.ae_title).strip(),
        str(event.assoc.acceptor.ae_title).strip(),
    )


ACCEPT_PAUSE_PER_ASSOCIATION = 0.005
"""Seconds an SCP that shares its listening socket waits, per association it serves,
before it accepts a new one."""


class _IngestServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a listening socket that never blocks in ``accept``.

    Extra ingest processes accept on the node's listening socket too: each wakes
    for a new connection, the first to ``accept`` takes it, and the others must
    go back to waiting rather than block until the next one.  Whoever is least
    busy tends to be first, and a process pauses before it accepts for each
    association it already serves (:data:`ACCEPT_PAUSE_PER_ASSOCIATION`), so a
    burst of associations spreads evenly.  ``SO_REUSEPORT`` spread them by a
    hash, and eight senders split as unevenly as 7:1.
    """

    listening_fd: int | None = None
    """An inherited listening socket to accept on instead of binding one."""
    shares_socket = False
    """Other processes accept on the socket too."""
    connections: ConnectionsPerAddress | None = None
    """The open connections of each source address, bounded (issue 19)."""
    request_queue_size = 128
    """The listen backlog: socketserver's 5 overflows under a burst of connections, and the
    kernel then drops SYNs that a sender retries only a second later."""

    def verify_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> bool:
        """Accept a connection only while its source address holds fewer than
        ``max_connections_per_address``; socketserver closes a refused one at once."""
        if self.connections is None:
            return True
        return self.connections.admit(cast(socket.socket, request), str(client_address[0]))

    def server_bind(self) -> None:
        if self.listening_fd is None:
            super().server_bind()
        else:
            cast(socket.socket, self.socket).close()
            self.socket = socket.socket(fileno=self.listening_fd)
            self.server_address = self.socket.getsockname()
        cast(socket.socket, self.socket).setblocking(False)

    def server_activate(self) -> None:
        if self.listening_fd is None:
            super().server_activate()

    def server_close(self) -> None:
        """Close the socket; an inherited one without ``shutdown``, which would stop every
        process accepting on it."""
        if self.listening_fd is None:
            super().server_close()
        else:
            cast(socket.socket, self.socket).close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, after a pause as long as this process has associations when others
        accept on the socket too: the least busy process tends to take the connection."""
        if self.shares_socket:
            time.sleep(ACCEPT_PAUSE_PER_ASSOCIATION * len(self.active_associations))
        return super().get_request()

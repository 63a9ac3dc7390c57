"""A leaner receive path for pynetdicom's acceptor associations (PS3.8 9.3 PDUs over TCP).

pynetdicom 3.0 reads each PDU with a loop of 4 KB ``recv`` calls, and both of an
association's threads poll: the DUL reactor sleeps 1 ms whenever the socket has
nothing to read, and the association reactor sleeps 1 ms before each look at
its queues: thousands of wake-ups per second, each taking the GIL from the
threads doing the work (docs/benchmarks.md, "Profiles and changes").

Here an acceptor's socket reads a whole PDU with ``recv_into``, and both
threads block until there is something to do:

- the DUL thread waits in ``select`` on the socket *and* on an eventfd that
  every primitive queued for sending signals (:class:`WakingQueue`);
- the association thread waits on an event that every DIMSE message and every
  primitive from the peer sets, instead of sleeping.

Each still wakes every :data:`IDLE_WAIT_SECONDS` to check its timers.

The DIMSE provider sends a plain C-STORE-RSP encoded by
:mod:`cad_node.ingest.responses` instead of building it through pydicom.

The DUL provider offers each P-DATA-TF PDU of an established association to a
:class:`~cad_node.ingest.streaming.StoreStream` before decoding it: C-STORE
requests are written to the spool as they arrive and answered from the same
thread; every other PDU goes through pynetdicom's decoding and state machine.

Every read is bounded (issue 19, :mod:`cad_node.ingest.connections`): a PDU
whose header announces more than the node accepts for its type (the Maximum
Length Received it announced for P-DATA-TF, ``max_associate_rq_bytes`` for the
others) or a type PS3.8 does not define is refused before anything is
allocated for it; each ``recv`` waits at most the ARTIM timeout before the
A-ASSOCIATE-RQ and the network timeout after it, and a PDU that arrives a few
bytes at a time is cut off too.  A refused or stalled connection is answered
with an A-ABORT (an over-long A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ), closed,
and logged in one line.  None of it costs the fast path more than a comparison.

The adapter is installed per server through socketserver's ``RequestHandlerClass``;
it relies on private details of pynetdicom 3.0 (the socket's ``_is_connected``
and ``event_queue``, the DUL's ``_run_loop_delay``, queues and ``_read_pdu_data``,
copied in :meth:`IngestDUL._read_pdu_data`, the association reactor's loop,
copied in :meth:`IngestAssociation._run_reactor`, the association's
``_accepted_cx``, the DIMSE provider's ``maximum_pdu_size`` and ``assoc``), so only
:mod:`cad_node.ingest.pynetdicom_adapter` imports it, and only on the series it was
written for (other versions run pynetdicom's supported path).
"""

import logging
import math
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler
from pynetdicom.utils import make_target

from cad_node.ingest.connections import (
    A_ASSOCIATE_RJ_TOO_LONG,
    A_ASSOCIATE_RQ,
    PDU_NAMES,
    REASON_INVALID_PARAMETER_VALUE,
    REASON_NOT_SPECIFIED,
    REASON_UNRECOGNIZED_PDU,
    ConnectionLimits,
    a_abort,
    bound_waits,
    pdu_length_limits,
)
from cad_node.ingest.incoming import StoreService
from cad_node.ingest.responses import plain_c_store_response
from cad_node.ingest.streaming import P_DATA_TF, Received, StoreStream

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

LOGGER = logging.getLogger("pynetdicom.assoc")
DUL_LOGGER = logging.getLogger("pynetdicom.dul")
logger = logging.getLogger(__name__)
"""Connections refused or cut off by the bounds (one line each, never patient data)."""

IDLE_WAIT_SECONDS = 0.02
"""How long either thread of an idle association waits before it looks at its timers
(ARTIM, network timeout) and at whether it was told to stop."""


class UnsupportedPynetdicomError(RuntimeError):
    """pynetdicom made an association of other classes than this adapter was written for."""


class WakingQueue(queue.Queue[Any]):
    """A :class:`queue.Queue` that calls ``wake`` after each put."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class Doorbell:
    """An eventfd one thread rings and another waits for in ``select``; safe to ring after
    :meth:`close` (the number of a closed fd may already belong to another file)."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        return self._fd

    def ring(self) -> None:
        with self._lock:
            if not self._closed:
                os.eventfd_write(self._fd, 1)

    def answer(self) -> None:
        """Reset it after a ring."""
        with self._lock, suppress(BlockingIOError):
            if not self._closed:
                os.eventfd_read(self._fd)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)


class IngestSocket(AssociationSocket):
    """An :class:`AssociationSocket` that reads PDUs whole and waits in ``select`` for
    incoming data or an outgoing primitive."""

    _outgoing: "queue.Queue[Any]"
    _doorbell: Doorbell
    _wait_seconds: float = math.inf

    def attach_outgoing(self, outgoing: "queue.Queue[Any]", doorbell: Doorbell) -> None:
        """Wake from :attr:`ready` when ``doorbell`` rings (a primitive was put in ``outgoing``)."""
        self._outgoing = outgoing
        self._doorbell = doorbell

    @property
    def ready(self) -> bool:
        """Whether data can be read, after waiting up to :data:`IDLE_WAIT_SECONDS` for it.

        Returns False at once when a primitive waits to be sent, and as soon as
        one is queued, so the DUL reactor sends it.  Emits Evt17 (transport
        connection closed) when the socket is gone, as pynetdicom's own does.
        """
        connection = self.socket
        if connection is None or not self._is_connected:
            return False
        if isinstance(connection, ssl.SSLSocket) and connection.pending():
            return True  # decrypted bytes already buffered: select cannot see them
        if not self._outgoing.empty():
            return False
        try:
            incoming = connection.fileno()
            doorbell = self._doorbell.fileno()
            readable, _, _ = select.select([incoming, doorbell], [], [], IDLE_WAIT_SECONDS)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")
            return False
        if doorbell in readable:
            self._doorbell.answer()
        return incoming in readable

    def bound_waits(self, seconds: float | None) -> None:
        """Let each read or send wait at most ``seconds`` (None: leave the bound as it is), and
        one PDU's read at most that long again after it first comes up short."""
        if self.socket is None or seconds is None:
            return
        bound_waits(self.socket, seconds)
        self._wait_seconds = seconds

    @property
    def wait_seconds(self) -> float:
        """How long one read may wait (:meth:`bound_waits`)."""
        return self._wait_seconds

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` into one buffer; fewer only when the peer closed the connection.

        Raises
        ------
        TimeoutError, BlockingIOError
            The peer stalled past :meth:`bound_waits`' bound.
        """
        connection = self.socket
        if connection is None:
            return bytearray()
        buffer = bytearray(nr_bytes)
        received = recv_exactly(connection, memoryview(buffer), self._wait_seconds)
        if received < nr_bytes:
            del buffer[received:]
        return buffer

    def close(self) -> None:
        super().close()
        self._doorbell.close()


class IngestAssociation(Association):
    """An acceptor :class:`Association` whose reactor waits for work instead of polling."""

    _activity: threading.Event
    _connection: socket.socket

    def run(self) -> None:
        try:
            super().run()
        finally:
            # pynetdicom skips the close when the shutdown before it fails; the count of
            # connections per address (ConnectionsPerAddress) ends with the close.
            self._connection.close()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's acceptor reactor, with its 1 ms sleep replaced by a wait for
        :attr:`_activity` (set by every DIMSE message and every primitive from the peer)."""
        self._is_paused = False
        while not self._kill:
            self._activity.wait(IDLE_WAIT_SECONDS)
            self._activity.clear()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
                self._activity.set()  # another message may be queued behind it

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

    def kill(self) -> None:
        super().kill()
        self._activity.set()


def recv_exactly(connection: socket.socket, view: memoryview, seconds: float = math.inf) -> int:
    """Fill ``view`` from the socket; returns the bytes read (short only at end of stream).

    Once a read comes up short, the rest must arrive within ``seconds``: each
    ``recv`` is bounded by the socket, and this bounds a peer that drips bytes.

    Raises
    ------
    TimeoutError
        The rest did not arrive within ``seconds``.
    """
    total = len(view)
    if total == 0:
        return 0
    with view:
        received = connection.recv_into(view, total)
        deadline = math.inf
        while 0 < received < total:
            if deadline == math.inf:
                deadline = time.monotonic() + seconds
            elif time.monotonic() > deadline:
                raise TimeoutError(f"{received} of {total} bytes in {seconds:g} s")
            count = connection.recv_into(view[received:], total - received)
            if count == 0:
                break
            received += count
    return received


class IngestDUL(DULServiceProvider):
    """pynetdicom's DUL provider, handing the P-DATA-TF PDUs of an established association to
    a :class:`~cad_node.ingest.streaming.StoreStream` before its own decoding."""

    _stream: StoreStream | None
    _pdu_length_limits: tuple[int, ...]
    """The largest PDU length accepted for each PDU type, 0 to 255 (:func:`pdu_length_limits`)."""

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self._stream is not None:
                self._stream.close()

    def run_reactor(self) -> None:
        """pynetdicom 3.0's DUL reactor without its ``time.sleep`` between turns.

        Even a sleep of 0 gives up the GIL: with several associations, each of
        their PDUs then cost a wait to get it back.  Here the socket's
        :attr:`IngestSocket.ready` is where an idle thread waits.
        """
        self._idle_timer.start()
        while not self._kill_thread:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self.artim_timer.expired:
                self._artim_expired()
            try:
                if not self._process_recv_primitive() and self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                self._abort_on_error(exc)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                continue
            self.state_machine.do_action(event)

    def _artim_expired(self) -> None:
        """Evt18 (PS3.8 9.2.3); logged when it ends a connection that never asked to associate."""
        if self.state_machine.current_state == "Sta2":
            logger.warning(
                "connection from %s closed: no A-ASSOCIATE-RQ within %g s (ARTIM)",
                self.assoc.requestor.address,
                self.artim_timer.timeout,
            )
        self.event_queue.put("Evt18")

    def _abort_on_error(self, exc: Exception) -> None:
        """pynetdicom's way out of a failed turn: an A-ABORT sent past the state machine,
        whose state can no longer be trusted, and both reactors stopped."""
        DUL_LOGGER.error("Exception in DUL.run(), aborting association")
        DUL_LOGGER.exception(exc)
        self._end_connection(a_abort(REASON_NOT_SPECIFIED))

    def _end_connection(self, last_pdu: bytes) -> None:
        """Send ``last_pdu`` (an A-ABORT or A-ASSOCIATE-RJ) past the state machine, close the
        connection and stop both reactors; the association thread, which may be waiting for
        an A-ASSOCIATE-RQ, is woken as if that wait had timed out."""
        association_socket = cast(IngestSocket, self.socket)
        association_socket.send(last_pdu)
        association_socket.close()
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True
        # None is what receive_pdu returns when its wait times out; the queue's type omits it.
        self.to_user_queue.put(None)  # type: ignore[arg-type]

    def _read_pdu_data(self) -> None:
        """pynetdicom 3.0's ``_read_pdu_data``, the PDU read into one buffer once its length
        is known to be acceptable, and P-DATA-TF offered to the stream first (Evt10 in Sta6
        leaves the state machine as it is)."""
        header = self._receive(_PDU_HEADER.size)
        if header is None:
            return
        if len(header) < _PDU_HEADER.size:
            self.event_queue.put("Evt17")  # connection closed before a whole PDU
            return
        pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
        if pdu_length > self._pdu_length_limits[pdu_type]:
            self._refuse(pdu_type, pdu_length)
            return
        body = self._receive(pdu_length, pdu_length)
        if body is None:
            return
        if len(body) != pdu_length:
            LOGGER.error(
                f"The received PDU is shorter than expected "
                f"({6 + len(body)} of {6 + pdu_length} bytes received)"
            )
            self.event_queue.put("Evt17")
            return
        if pdu_type == P_DATA_TF and self._streamed(body):
            return
        if pdu_type == A_ASSOCIATE_RQ:
            cast(IngestSocket, self.socket).bound_waits(self.assoc.network_timeout)
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception as exc:
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _receive(self, length: int, announced: int | None = None) -> bytearray | None:
        """``length`` bytes (a PDU header, or the ``announced`` bytes of a PDU), or fewer when
        the connection closed or failed; None when the peer stalled (the connection is then
        aborted)."""
        association_socket = cast(IngestSocket, self.socket)
        try:
            return association_socket.recv(length)
        except (TimeoutError, BlockingIOError):
            logger.warning(
                "connection from %s aborted: %s not received within %g s",
                self.assoc.requestor.address,
                "a PDU header" if announced is None else f"a {announced}-byte PDU",
                association_socket.wait_seconds,
            )
            self._end_connection(a_abort(REASON_NOT_SPECIFIED))
            return None
        except OSError as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            return bytearray()

    def _refuse(self, pdu_type: int, pdu_length: int) -> None:
        """End the connection of a peer that announced a PDU of a type PS3.8 does not define,
        or longer than the node accepts, before reading any of it."""
        address = self.assoc.requestor.address
        name = PDU_NAMES.get(pdu_type)
        if name is None:
            logger.warning(
                "connection from %s aborted: unknown PDU type 0x%02X (%d bytes announced)",
                address,
                pdu_type,
                pdu_length,
            )
            self._end_connection(a_abort(REASON_UNRECOGNIZED_PDU))
            return
        # Sta1 too: a peer that sends at once is read before Evt5 (connection open) is handled.
        awaiting_request = self.state_machine.current_state in ("Sta1", "Sta2")
        rejects = pdu_type == A_ASSOCIATE_RQ and awaiting_request
        logger.warning(
            "connection from %s %s: %s of %d bytes announced, over the %d accepted",
            address,
            "rejected" if rejects else "aborted",
            name,
            pdu_length,
            self._pdu_length_limits[pdu_type],
        )
        if rejects:
            self._end_connection(A_ASSOCIATE_RJ_TOO_LONG)
        else:
            self._end_connection(a_abort(REASON_INVALID_PARAMETER_VALUE))

    def _streamed(self, body: bytearray) -> bool:
        """Whether the stream took the PDU (an invalid one queues Evt19: the FSM aborts)."""
        if self._stream is None or self.state_machine.current_state != "Sta6":
            return False
        received = self._stream.receive(memoryview(body))
        if received is Received.INVALID:
            self.event_queue.put("Evt19")
        return received is not Received.FOR_PYNETDICOM


_PDU_HEADER = struct.Struct(">BBI")
"""PDU type, reserved, PDU length (PS3.8 9.3.1)."""


class IngestDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending a plain C-STORE-RSP it encodes itself
    (:mod:`cad_node.ingest.responses`); every other message goes through pynetdicom."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = plain_c_store_response(primitive)
        if command is None or not self._may_send_alone(command):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
        self.dul.send_pdu(pdata)

    def _may_send_alone(self, command: bytes) -> bool:
        """One PDV fits the peer's PDUs, and no one listens for EVT_DIMSE_SENT, whose
        message object only pynetdicom's path makes."""
        fits = self.maximum_pdu_size == 0 or len(command) + _PDV_OVERHEAD <= self.maximum_pdu_size
        return fits and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)


_LAST_COMMAND_FRAGMENT = b"\x03"
"""PS3.8 E.2 message control header: command information, last fragment."""
_PDV_OVERHEAD = 6
"""PS3.8 9.3.5.1: the item length (4), presentation context ID (1) and control header (1)."""


class IngestRequestHandler(RequestHandler):
    """pynetdicom's acceptor request handler, with :class:`IngestSocket` on every association,
    its reads bounded by :attr:`limits`, and C-STORE requests streamed into
    :attr:`store_service` when it is set."""

    store_service: StoreService | None = None
    limits = ConnectionLimits()

    def _create_association(self) -> "Association":
        association = super()._create_association()
        association_socket = association.dul.socket
        if (
            type(association_socket) is not AssociationSocket
            or type(association) is not Association
            or type(association.dimse) is not DIMSEServiceProvider
            or type(association.dul) is not DULServiceProvider
        ):
            raise UnsupportedPynetdicomError(
                f"expected pynetdicom's Association, AssociationSocket and "
                f"DIMSEServiceProvider, got {type(association).__name__}, "
                f"{type(association_socket).__name__} and {type(association.dimse).__name__}"
            )
        _wait_for_work(association, association_socket)
        _stream_stores(association, self.store_service)
        _bound_reads(association, self.request, self.limits)
        return association


def _wait_for_work(association: Association, association_socket: AssociationSocket) -> None:
    """Re-class the association and its socket so that both threads block until there is work.

    Re-classed, not re-made: the socket's constructor queues Evt5 (connection
    open), and a second socket would queue it twice.  The queues are swapped
    while they are still empty, before the association's threads start.
    """
    dul = association.dul
    doorbell = Doorbell()
    activity = threading.Event()
    association_socket.__class__ = IngestSocket
    association.__class__ = IngestAssociation
    association.dimse.__class__ = IngestDIMSE
    cast(IngestAssociation, association)._activity = activity
    dul.to_provider_queue = WakingQueue(doorbell.ring)
    dul.to_user_queue = WakingQueue(activity.set)
    association.dimse.msg_queue = WakingQueue(activity.set)
    cast(IngestSocket, association_socket).attach_outgoing(dul.to_provider_queue, doorbell)
    dul._run_loop_delay = 0  # the socket waits in select: a sleep on top only adds delay


def _stream_stores(association: Association, service: StoreService | None) -> None:
    """Re-class the association's DUL provider so that it streams C-STORE requests into
    ``service`` (:mod:`cad_node.ingest.streaming`); with no service, it only reads as
    pynetdicom's does."""
    dul = association.dul
    dul.__class__ = IngestDUL
    # The thread's target was bound to pynetdicom's reactor before the re-class.
    cast(Any, dul)._target = make_target(dul.run_reactor)
    association_socket = cast(IngestSocket, dul.socket)
    cast(IngestDUL, dul)._stream = (
        None if service is None else StoreStream(association, service, association_socket.send)
    )


def _bound_reads(
    association: Association, connection: socket.socket, limits: ConnectionLimits
) -> None:
    """Refuse over-long PDUs on ``association`` and bound its reads by the ARTIM timeout until
    its A-ASSOCIATE-RQ arrives (:meth:`IngestDUL._read_pdu_data`)."""
    dul = cast(IngestDUL, association.dul)
    dul._pdu_length_limits = pdu_length_limits(
        association.acceptor.maximum_length or 0, limits.max_associate_rq_bytes
    )
    cast(IngestAssociation, association)._connection = connection
    cast(IngestSocket, dul.socket).bound_waits(association.acse_timeout)


def use_ingest_sockets(
    server: "ThreadedAssociationServer",
    store_service: StoreService | None = None,
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve the associations ``server`` accepts from now on with :class:`IngestSocket`, their
    reads bounded by ``limits`` (by default :class:`ConnectionLimits`'), and stream their
    C-STORE requests into ``store_service`` when given.

    ``RequestHandlerClass`` is socketserver's public hook; pynetdicom's
    ``start_server`` does not pass a handler class through.
    """
    handler_class = type(
        "BoundIngestRequestHandler",
        (IngestRequestHandler,),
        {"store_service": store_service, "limits": limits or ConnectionLimits()},
    )
    server.RequestHandlerClass = handler_class

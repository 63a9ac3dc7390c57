"""A leaner receive path for pynetdicom's acceptor sockets (PS3.8 9.3 PDUs over TCP).

pynetdicom 3.0 reads each PDU with a loop of 4 KB ``recv`` calls, and its DUL
reactor sleeps 1 ms whenever the socket has nothing to read yet, so a sender
that is a little slower than the reactor costs a sleep per PDU.  Profiling
ingest (docs/benchmarks.md, "Profiles and changes") showed the DUL thread
asleep most of the time while a series arrived.  Here an acceptor's socket
reads a whole PDU with ``recv_into`` and waits for data in ``select`` (waking
as soon as bytes arrive) instead of sleeping.

The adapter is installed per server through pynetdicom's public
``request_handler`` argument; it relies on three private details of
pynetdicom 3.0 (the socket's ``_is_connected`` and ``event_queue``, the DUL's
``_run_loop_delay``), so :func:`check_pynetdicom_version` refuses other series.
"""

import select
import socket
import ssl
from typing import TYPE_CHECKING

import pynetdicom
from pynetdicom.transport import AssociationSocket, RequestHandler

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.transport import ThreadedAssociationServer

SUPPORTED_PYNETDICOM = "3.0."
"""The pynetdicom release series whose private details this module relies on."""

READY_WAIT_SECONDS = 0.001
"""How long the DUL reactor waits for incoming data per turn: what it slept before, at most."""


class UnsupportedPynetdicomError(RuntimeError):
    """The installed pynetdicom is not a release this adapter was written for."""


def check_pynetdicom_version(version: str = pynetdicom.__version__) -> None:
    """Raise unless ``version`` is of the series this adapter was written for.

    Raises
    ------
    UnsupportedPynetdicomError
        If ``version`` does not start with :data:`SUPPORTED_PYNETDICOM`.
    """
    if not version.startswith(SUPPORTED_PYNETDICOM):
        raise UnsupportedPynetdicomError(
            f"cad_node.ingest.transport supports pynetdicom {SUPPORTED_PYNETDICOM}x, "
            f"found {version}: check its AssociationSocket and DUL reactor, then update"
        )


class IngestSocket(AssociationSocket):
    """An :class:`AssociationSocket` that reads PDUs whole and waits for data in ``select``."""

    @property
    def ready(self) -> bool:
        """Whether data can be read, after waiting up to :data:`READY_WAIT_SECONDS` for it.

        Emits Evt17 (transport connection closed) when the socket is gone, as
        pynetdicom's own ``ready`` does.
        """
        connection = self.socket
        if connection is None or not self._is_connected:
            return False
        if isinstance(connection, ssl.SSLSocket) and connection.pending():
            return True  # decrypted bytes already buffered: select cannot see them
        try:
            readable, _, _ = select.select([connection], [], [], READY_WAIT_SECONDS)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")
            return False
        return bool(readable)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` into one buffer; fewer only when the peer closed the connection."""
        connection = self.socket
        if connection is None:
            return bytearray()
        buffer = bytearray(nr_bytes)
        received = _recv_exactly(connection, memoryview(buffer))
        if received < nr_bytes:
            del buffer[received:]
        return buffer


def _recv_exactly(connection: socket.socket, view: memoryview) -> int:
    """Fill ``view`` from the socket; returns the bytes read (short only at end of stream)."""
    received = 0
    total = len(view)
    with view:
        while received < total:
            count = connection.recv_into(view[received:], total - received)
            if count == 0:
                break
            received += count
    return received


class IngestRequestHandler(RequestHandler):
    """pynetdicom's acceptor request handler, with :class:`IngestSocket` on every association."""

    def _create_association(self) -> "Association":
        association = super()._create_association()
        association_socket = association.dul.socket
        if type(association_socket) is not AssociationSocket:
            raise UnsupportedPynetdicomError(
                f"expected pynetdicom's AssociationSocket, got {type(association_socket).__name__}"
            )
        # Re-classed, not re-made: the constructor queues Evt5 (connection
        # open), and a second socket would queue it twice.  IngestSocket adds
        # no state, only methods.
        association_socket.__class__ = IngestSocket
        # The socket now waits in select for READY_WAIT_SECONDS: a sleep on top only adds delay.
        association.dul._run_loop_delay = 0
        return association


def use_ingest_sockets(server: "ThreadedAssociationServer") -> None:
    """Serve the associations ``server`` accepts from now on with :class:`IngestSocket`.

    ``RequestHandlerClass`` is socketserver's public hook; pynetdicom's
    ``start_server`` does not pass a handler class through.
    """
    server.RequestHandlerClass = IngestRequestHandler

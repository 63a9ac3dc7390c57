"""What a peer's connections may cost before and while it is associated (PS3.8 9.1.5, 9.3).

Why: a peer that never associates must cost the node little.  Unbounded, a PDU
header announcing 1 GiB is allocated before it is read, a peer that stops
mid-PDU holds its thread forever, and silent connections count against the
association limit (docs/security.md, "Bounds: what one peer may cost the node").
The bounds:

- :class:`ConnectionLimits`: the largest A-ASSOCIATE-RQ accepted, the ARTIM
  (``acse_timeout_seconds``) that bounds every read before association, the
  network timeout that bounds every read after it, and the connections one
  source address may hold open (``limits`` in the node's settings);
- :class:`ConnectionsPerAddress`: counts the open connections of each source
  address where they are accepted; the next one past the limit is closed at
  once;
- :func:`bound_waits`: each ``recv`` and ``send`` on a connection waits at most
  so long.  On a plain TCP socket the kernel keeps the time (``SO_RCVTIMEO``,
  ``SO_SNDTIMEO``), so a read costs no more than before;
- :func:`pdu_length_limits`: the largest length accepted for each PDU type, and
  the PDUs that answer a peer refused (:func:`a_abort`,
  :data:`A_ASSOCIATE_RJ_TOO_LONG`).

The PDU reader that refuses an over-long PDU before allocating it is
:mod:`cad_node.ingest.transport`; the association count, which leaves out
connections whose A-ASSOCIATE-RQ has not arrived, is
:mod:`cad_node.ingest.scp`'s.
"""

import logging
import socket
import ssl
import struct
import weakref
from dataclasses import dataclass

from cad_node.config import IngestLimitSettings
from cad_node.ingest.streaming import P_DATA_TF

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds of one peer's connections (``limits`` in the node's settings)."""

    max_associate_rq_bytes: int = 65536
    """Largest A-ASSOCIATE-RQ PDU, header included."""
    max_connections_per_address: int = 32
    """Open connections from one source address."""
    acse_timeout_seconds: float = 30.0
    """ARTIM: the A-ASSOCIATE-RQ must arrive within it; each read before it waits no longer."""
    network_timeout_seconds: float = 60.0
    """Silence on an association, and each read of a PDU, at most this long."""

    def __post_init__(self) -> None:
        if self.max_associate_rq_bytes < 6 or self.max_connections_per_address < 1:
            raise ValueError(f"connection limits must be positive: {self}")
        if self.acse_timeout_seconds <= 0 or self.network_timeout_seconds <= 0:
            raise ValueError(f"connection timeouts must be positive: {self}")

    @classmethod
    def from_settings(cls, limits: IngestLimitSettings) -> "ConnectionLimits":
        return cls(
            max_associate_rq_bytes=limits.max_associate_rq_bytes,
            max_connections_per_address=limits.max_connections_per_address,
            acse_timeout_seconds=limits.acse_timeout_seconds,
            network_timeout_seconds=limits.network_timeout_seconds,
        )


class ConnectionsPerAddress:
    """The open connections of each source address, at most ``maximum`` each.

    A connection counts from :meth:`admit` until its socket is closed: the
    count keeps weak references to the sockets, and a closed one has no file
    descriptor.  Only the thread that accepts connections calls :meth:`admit`.
    """

    def __init__(self, maximum: int) -> None:
        self._maximum = maximum
        self._open: dict[str, weakref.WeakSet[socket.socket]] = {}

    def admit(self, connection: socket.socket, address: str) -> bool:
        """Count ``connection`` from ``address``; False (not counted) when the address
        already holds ``maximum`` open connections."""
        self._forget_closed()
        connections = self._open.setdefault(address, weakref.WeakSet())
        if len(connections) >= self._maximum:
            logger.warning(
                "connection from %s refused: %d connections from that address are open "
                "(limits.max_connections_per_address)",
                address,
                len(connections),
            )
            return False
        connections.add(connection)
        return True

    def open_from(self, address: str) -> int:
        """How many connections from ``address`` are open now."""
        self._forget_closed()
        return len(self._open.get(address, ()))

    def _forget_closed(self) -> None:
        for address, connections in list(self._open.items()):
            for connection in list(connections):
                if connection.fileno() == -1:
                    connections.discard(connection)
            if not connections:
                del self._open[address]


def bound_waits(connection: socket.socket, seconds: float) -> None:
    """Let each ``recv`` and ``send`` on ``connection`` wait at most ``seconds``.

    A plain blocking socket gets the kernel's ``SO_RCVTIMEO`` and ``SO_SNDTIMEO``:
    a call that times out raises :class:`BlockingIOError`, and no call costs a
    ``poll`` more.  A TLS socket gets Python's own timeout (:class:`TimeoutError`):
    OpenSSL would retry a kernel timeout on a blocking socket for ever.
    """
    if isinstance(connection, ssl.SSLSocket) or connection.gettimeout() is not None:
        connection.settimeout(seconds)
        return
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


A_ASSOCIATE_RQ = 0x01
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
"""The PDU types of PS3.8 9.3.1."""
_PDU_HEADER_BYTES = 6
_UNBOUNDED_PDU_LENGTH = 0xFFFFFFFF
_NOT_ACCEPTED = -1


def pdu_length_limits(maximum_length_received: int, max_associate_rq_bytes: int) -> tuple[int, ...]:
    """The largest PDU length (PS3.8 9.3.1, the header's field) accepted for each PDU type,
    indexed by type from 0 to 255: -1 for a type PS3.8 does not define.

    P-DATA-TF: the Maximum Length Received the node announced (PS3.8 D.1.1; 0: no
    limit).  Every other PDU: ``max_associate_rq_bytes`` in all, its header included.
    """
    limits = [_NOT_ACCEPTED] * 256
    for pdu_type in PDU_NAMES:
        limits[pdu_type] = max_associate_rq_bytes - _PDU_HEADER_BYTES
    limits[P_DATA_TF] = maximum_length_received or _UNBOUNDED_PDU_LENGTH
    return tuple(limits)


_A_ABORT = struct.Struct(">BBIBBBB")
"""PDU type, reserved, length (4), reserved (2), source, reason/diagnostic (PS3.8 9.3.8)."""
_SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_INVALID_PARAMETER_VALUE = 0x06


def a_abort(reason: int) -> bytes:
    """An A-ABORT PDU from the DICOM UL service-provider (PS3.8 9.3.8)."""
    return _A_ABORT.pack(0x07, 0, 4, 0, 0, _SERVICE_PROVIDER, reason)


A_ASSOCIATE_RJ_TOO_LONG = _A_ABORT.pack(0x03, 0, 4, 0, 0x01, 0x02, 0x01)
"""A-ASSOCIATE-RJ (PS3.8 9.3.4, laid out as an A-ABORT): rejected-permanent, DICOM UL
service-provider (ACSE related function), no-reason-given."""

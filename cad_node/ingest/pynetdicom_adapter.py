"""The one door to pynetdicom's internals: which receive path the Storage SCP runs.

pyproject allows ``pynetdicom>=3.0,<4``, but the fast receive path
(:mod:`cad_node.ingest.transport` and :mod:`cad_node.ingest.streaming`, reached
only through here) re-classes pynetdicom 3.0's sockets, DUL and association and
copies two of its reactors.  So the node picks its path by the installed version
(issue 18, item 7):

- :attr:`ReceivePath.FAST` on the 3.0.x series it was written for;
- :attr:`ReceivePath.SUPPORTED` on any other, after one WARNING naming the
  version: pynetdicom's documented path, an ``EVT_C_STORE`` handler reading the
  data set pynetdicom wrote to a temporary file
  (``_config.STORE_RECV_CHUNKED_DATASET``, ``Event.dataset_path``), never held
  whole in memory, into the same :class:`~cad_node.ingest.incoming.StoreService`.
  Statuses, ``max_instance_bytes`` and the journal behave as on the fast path.

Never a refusal to start.  What the supported path keeps of the connection
bounds (issue 19): the connections per address and the association count
(:mod:`cad_node.ingest.scp`, socketserver's ``verify_request`` and
``AE.active_associations``), the ARTIM and network timeouts (pynetdicom's own,
plus a bound on each read, :func:`cad_node.ingest.connections.bound_waits`).
What it loses: an over-long PDU is read before it is refused, and a data set over
``max_instance_bytes`` is written whole to pynetdicom's temporary file before
the handler answers 0xA700.
"""

import enum
import logging
import socket
import struct
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import IO, Any, cast

import pynetdicom
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from cad_node.ingest.connections import ConnectionLimits, bound_waits
from cad_node.ingest.incoming import IncomingInstance, StoreService

logger = logging.getLogger(__name__)

KNOWN_SERIES = "3.0."
"""The pynetdicom release series whose private details the fast path relies on."""
INSTALLED_VERSION: str = pynetdicom.__version__
"""The version the path is chosen by; tests set another to run the supported path."""
CHUNK_BYTES = 1 << 20
"""How much of a received data set the supported path reads at a time."""


class ReceivePath(enum.Enum):
    """How C-STORE data sets reach the :class:`~cad_node.ingest.incoming.StoreService`."""

    FAST = "fast"
    """Streamed from each P-DATA-TF as it arrives (pynetdicom 3.0.x internals)."""
    SUPPORTED = "supported"
    """pynetdicom's ``EVT_C_STORE`` handler, the data set chunked to a temporary file."""


_warned_versions: set[str] = set()
_warned_lock = threading.Lock()


def receive_path(version: str | None = None) -> ReceivePath:
    """The path for ``version`` (by default :data:`INSTALLED_VERSION`); the first time an
    unknown version is seen, one WARNING names it."""
    version = INSTALLED_VERSION if version is None else version
    if version.startswith(KNOWN_SERIES):
        return ReceivePath.FAST
    with _warned_lock:
        first = version not in _warned_versions
        _warned_versions.add(version)
    if first:
        logger.warning(
            "pynetdicom %s: the fast receive path is written for %sx; running pynetdicom's "
            "supported path (EVT_C_STORE, chunked receive) instead",
            version,
            KNOWN_SERIES,
        )
    return ReceivePath.SUPPORTED


def configure(path: ReceivePath) -> None:
    """Process-wide pynetdicom settings the node relies on.

    Identifier logging is off because identifiers carry patient data; the
    unrestricted storage service accepts storage SOP classes newer than
    pynetdicom knows (each with the first transfer syntax proposed).

    pynetdicom's standard event handlers describe every PDU and DIMSE message
    for its INFO and DEBUG log, whether that log is on or not (each C-STORE-RQ's
    description copies its whole data set to see that it is not empty): they
    are bound only while the ``pynetdicom`` logger is on at INFO.
    """
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    describes = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if describes else "none"
    _config.STORE_RECV_CHUNKED_DATASET = path is ReceivePath.SUPPORTED


def install(
    server: ThreadedAssociationServer,
    path: ReceivePath,
    store_service: StoreService,
    limits: ConnectionLimits,
) -> None:
    """Serve the associations ``server`` accepts from now on by ``path``, their reads bounded
    by ``limits``."""
    if path is ReceivePath.FAST:
        from cad_node.ingest.transport import use_ingest_sockets

        use_ingest_sockets(server, store_service, limits)
        return
    server.bind(evt.EVT_CONN_OPEN, _bound_reads, [limits.network_timeout_seconds])


def _bound_reads(event: Event, seconds: float) -> None:
    """EVT_CONN_OPEN on the supported path: each read and send of the connection waits at
    most ``seconds``; a stalled one ends it (pynetdicom's Evt17)."""
    association_socket = getattr(event.assoc.dul, "socket", None)
    connection = getattr(association_socket, "socket", None)
    if isinstance(connection, socket.socket):
        bound_waits(connection, seconds)


def register_server(ae: AE, server: ThreadedAssociationServer) -> None:
    """Count ``server`` among ``ae``'s, as ``AE.start_server`` does: its ``shutdown`` then
    removes it (and ``AE.shutdown`` stops it)."""
    servers: Any = getattr(ae, "_servers", None)
    if isinstance(servers, list):
        servers.append(server)


def write_data_set(event: Event, incoming: IncomingInstance, max_instance_bytes: int) -> None:
    """Write the data set of ``event``'s C-STORE-RQ to ``incoming``: from pynetdicom's chunked
    temporary file a piece at a time, or from memory where pynetdicom gathered it there
    (the fast path's messages it leaves to pynetdicom)."""
    request = cast(C_STORE, event.request)
    located = _chunked_location(event)
    if located is None:
        incoming.write([cast(BytesIO, request.DataSet).getbuffer()])
        return
    path, offset = located
    with path.open("rb") as file:
        file.seek(offset if offset is not None else _data_set_offset(file))
        for chunk in _chunks(file):
            incoming.write([chunk])
            if incoming.length > max_instance_bytes:
                return  # refused: the rest would only be counted


def _chunked_location(event: Event) -> tuple[Path, int | None] | None:
    """Where ``STORE_RECV_CHUNKED_DATASET`` put the data set, and its offset if known."""
    located: Any = event.dataset_path
    if located is None:
        return None
    if isinstance(located, tuple):
        return Path(located[0]), int(located[1])
    return Path(located), None


_META_START = struct.Struct("<128s4sHH2sHI")
"""Preamble, "DICM", then (0002,0000) UL, 4: the File Meta Information Group Length (PS3.10
7.1), Explicit VR Little Endian."""


def _data_set_offset(file: IO[bytes]) -> int:
    """Where the data set starts in a DICOM file pynetdicom wrote (its meta always begins with
    the group length)."""
    start = file.read(_META_START.size)
    if len(start) < _META_START.size:
        raise ValueError("pynetdicom's data set file ends inside its File Meta Information")
    _, prefix, group, element, vr, _, group_length = _META_START.unpack(start)
    if (prefix, group, element, vr) != (b"DICM", 0x0002, 0x0000, b"UL"):
        raise ValueError("pynetdicom's data set file does not start with a group length")
    return _META_START.size + int(group_length)


def _chunks(file: IO[bytes]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK_BYTES):
        yield chunk

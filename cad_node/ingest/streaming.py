"""C-STORE requests received as a stream: each P-DATA-TF written to the spool as it arrives.

pynetdicom gathers a whole DIMSE message before anything sees it: every PDU decoded
into objects, put through the state machine, its fragments copied into a buffer, the
command set decoded with pydicom, then handed to the association's thread, whose
service class calls the C-STORE handler, whose answer goes back through a queue to
the first thread to be sent. That machinery holds the GIL about as long as the
handler itself (docs/benchmarks.md, "Profiles and changes").

For the usual message of a storage association, a C-STORE-RQ whose command
set fits one PDV, a :class:`StoreStream` does the same work in the thread that
reads the socket (PS3.8 9.3.5 and Annex E; PS3.7 9.3.1):

- the command set is decoded here (:func:`c_store_request`), and the instance
  is begun in the :class:`~cad_node.ingest.incoming.StoreService`;
- each P-DATA-TF's data fragments are appended to the instance's spool file
  as the PDU arrives;
- after the last fragment the instance is stored and the C-STORE-RSP sent
  from the same thread.

Every other message (C-ECHO, a command in several fragments, a request on a
context that was not accepted) goes to pynetdicom as before, whole PDUs at a
time and only at message boundaries, so either side sees only whole messages.
An association whose events anyone listens to (pynetdicom's logging handlers
at INFO or DEBUG) is never streamed.

pynetdicom holds a message's data set in memory until it is whole, so the
stream counts the data set fragments of each message it leaves to pynetdicom
and aborts the association once they exceed ``max_instance_bytes``
(docs/security.md): a streamed data set over the bound is refused with 0xA700
instead (:mod:`cad_node.ingest.incoming`).
"""

import enum
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.association import Association

from cad_node.ingest.incoming import IncomingInstance, StoreRequest, StoreService
from cad_node.ingest.responses import c_store_response_command

logger = logging.getLogger(__name__)

C_STORE_RQ = 0x0001
"""Command Field (0000,0100) of a C-STORE-RQ (PS3.7 E.1)."""
NO_DATA_SET = 0x0101
"""Command Data Set Type (0000,0800): no data set follows the command."""
P_DATA_TF = 0x04
"""PDU type of a P-DATA-TF (PS3.8 9.3.5)."""

_COMMAND_FRAGMENT = 0x01
"""Message control header bit 0: the fragment is command information (PS3.8 E.2)."""
_LAST_FRAGMENT = 0x02
"""Message control header bit 1: the last fragment of the command or data set."""
_PDV_HEADER = struct.Struct(">IBB")
"""PDV item length, presentation context ID, message control header (PS3.8 9.3.5.1)."""
_PDU_HEADER = struct.Struct(">BBI")
_ELEMENT_HEADER = struct.Struct("<HHI")
"""Implicit VR Little Endian: group, element, value length (PS3.5 7.1.3)."""
_SMALLEST_PEER_PDU = 1024
"""A peer announcing smaller PDUs gets its C-STORE-RSP through pynetdicom, which fragments."""
_WATCHED_EVENTS = (
    evt.EVT_DATA_RECV,
    evt.EVT_PDU_RECV,
    evt.EVT_DIMSE_RECV,
    evt.EVT_DATA_SENT,
    evt.EVT_PDU_SENT,
    evt.EVT_DIMSE_SENT,
)
"""Events streaming does not emit: an association with handlers for them is not streamed."""


@dataclass(frozen=True, slots=True)
class PresentationDataValue:
    """One PDV item of a P-DATA-TF PDU."""

    context_id: int
    control: int
    data: memoryview

    @property
    def is_command(self) -> bool:
        return bool(self.control & _COMMAND_FRAGMENT)

    @property
    def is_last(self) -> bool:
        return bool(self.control & _LAST_FRAGMENT)


@dataclass(frozen=True, slots=True)
class CStoreRequestCommand:
    """What the node needs of a C-STORE-RQ command set (PS3.7 9.3.1.1)."""

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str


def presentation_data_values(body: memoryview) -> list[PresentationDataValue] | None:
    """The PDV items of a P-DATA-TF PDU's body (after its 6-byte header), as views of it;
    None when the items do not fill the body exactly or one is shorter than its header."""
    items = []
    offset = 0
    while offset < len(body):
        if offset + _PDV_HEADER.size > len(body):
            return None
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        end = offset + 4 + length
        if length < 2 or end > len(body):
            return None
        items.append(PresentationDataValue(context_id, control, body[offset + 6 : end]))
        offset = end
    return items or None


def command_elements(command: bytes | bytearray | memoryview) -> dict[int, bytes] | None:
    """The elements of a command set (group 0000, Implicit VR Little Endian) by element
    number; None when it is not one."""
    elements = {}
    offset = 0
    while offset < len(command):
        if offset + _ELEMENT_HEADER.size > len(command):
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(command, offset)
        offset += _ELEMENT_HEADER.size
        if group != 0x0000 or offset + length > len(command):
            return None
        elements[element] = bytes(command[offset : offset + length])
        offset += length
    return elements


def c_store_request(command: bytes | bytearray | memoryview) -> CStoreRequestCommand | None:
    """The command set as a C-STORE-RQ with a data set to follow; None for any other
    message, and for a C-STORE-RQ this module leaves to pynetdicom (malformed, non-ASCII
    UIDs, no data set)."""
    elements = command_elements(command)
    if elements is None or _unsigned_short(elements, 0x0100) != C_STORE_RQ:
        return None
    data_set_type = _unsigned_short(elements, 0x0800)
    message_id = _unsigned_short(elements, 0x0110)
    sop_class_uid = _uid(elements, 0x0002)
    sop_instance_uid = _uid(elements, 0x1000)
    if data_set_type in (None, NO_DATA_SET) or message_id is None:
        return None
    if not sop_class_uid or not sop_instance_uid:
        return None
    return CStoreRequestCommand(message_id, sop_class_uid, sop_instance_uid)


def _has_data_set(command: bytes | bytearray | memoryview) -> bool | None:
    """Whether a data set follows the command set; None when that cannot be read."""
    elements = command_elements(command)
    data_set_type = None if elements is None else _unsigned_short(elements, 0x0800)
    return None if data_set_type is None else data_set_type != NO_DATA_SET


def _unsigned_short(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    return None if value is None or len(value) != 2 else int.from_bytes(value, "little")


def _uid(elements: dict[int, bytes], element: int) -> str | None:
    value = elements.get(element)
    if value is None or not value.isascii():
        return None
    return value.decode("ascii").rstrip("\x00 ").strip()


def c_store_response_pdu(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU carrying a whole command set in one PDV (PS3.8 9.3.5, E.2)."""
    control = _COMMAND_FRAGMENT | _LAST_FRAGMENT
    item_length = 2 + len(command)
    pdv = _PDV_HEADER.pack(item_length, context_id, control) + command
    return _PDU_HEADER.pack(P_DATA_TF, 0, len(pdv)) + pdv


class Received(enum.Enum):
    """What became of a P-DATA-TF PDU handed to :meth:`StoreStream.receive`."""

    STORED = "consumed by the stream"
    FOR_PYNETDICOM = "not streamed: pynetdicom decodes it as usual"
    INVALID = "breaks PS3.8 mid-message: abort the association"


class _Mode(enum.Enum):
    BETWEEN_MESSAGES = enum.auto()
    STREAMING = enum.auto()
    PYNETDICOM = enum.auto()
    """pynetdicom receives the current message; the stream only watches for its end."""
    PYNETDICOM_ONLY = enum.auto()
    """Where a message ends could not be told: pynetdicom receives the rest of the association."""


@dataclass
class _Streamed:
    context_id: int
    command: CStoreRequestCommand
    incoming: IncomingInstance


class StoreStream:
    """Streams the C-STORE requests of one association into ``service``; made per association,
    used only by the thread that reads its socket.

    Parameters
    ----------
    association
        The acceptor association (its accepted presentation contexts, its
        requestor, its event handlers).
    service
        Stores the instances.
    send
        Sends bytes to the peer (the association socket's ``send``).
    """

    def __init__(
        self, association: Association, service: StoreService, send: Callable[[bytes], None]
    ) -> None:
        self._association = association
        self._service = service
        self._send = send
        self._mode = _Mode.BETWEEN_MESSAGES
        self._streamed: _Streamed | None = None
        self._pynetdicom_command = bytearray()
        self._pynetdicom_data_set_bytes = 0
        self._streams: bool | None = None

    def receive(self, body: memoryview) -> Received:
        """Take the body of one P-DATA-TF PDU (after its 6-byte header)."""
        items = presentation_data_values(body)
        if self._mode is _Mode.STREAMING:
            return self._continue(items)
        if self._mode is _Mode.BETWEEN_MESSAGES and items is not None:
            started = self._start(items)
            if started is not None:
                return started
        self._watch_pynetdicom(items)
        if items is not None and not self._count_pynetdicom_data_set(items):
            return Received.INVALID
        return Received.FOR_PYNETDICOM

    def close(self) -> None:
        """The association ended: drop an instance still arriving (never acknowledged)."""
        if self._streamed is not None:
            logger.warning(
                "association ended during C-STORE of %s after %d bytes: nothing kept",
                self._streamed.command.affected_sop_instance_uid,
                self._streamed.incoming.length,
            )
            self._streamed.incoming.discard()
            self._streamed = None

    def _start(self, items: list[PresentationDataValue]) -> Received | None:
        """Begin streaming the message ``items`` opens, if it is one to stream."""
        first = items[0]
        if not (first.is_command and first.is_last) or not self._association_streams():
            return None
        command = c_store_request(first.data)
        context = self._association._accepted_cx.get(first.context_id)
        if command is None or context is None or not context.transfer_syntax:
            return None
        requestor = self._association.requestor
        request = StoreRequest(
            affected_sop_class_uid=command.affected_sop_class_uid,
            affected_sop_instance_uid=command.affected_sop_instance_uid,
            transfer_syntax_uid=str(context.transfer_syntax[0]),
            calling_ae_title=str(requestor.ae_title).strip(),
            address=str(requestor.address),
        )
        incoming = self._service.begin(request)
        self._streamed = _Streamed(first.context_id, command, incoming)
        self._mode = _Mode.STREAMING
        return self._continue(items[1:])

    def _continue(self, items: list[PresentationDataValue] | None) -> Received:
        """Append the data fragments ``items`` to the instance; store it after the last."""
        streamed = self._streamed
        assert streamed is not None  # STREAMING
        if items is None or not _data_set_fragments(items, streamed.context_id):
            logger.warning(
                "C-STORE of %s broke off: a PDU that is not the next part of its data set",
                streamed.command.affected_sop_instance_uid,
            )
            self.close()
            return Received.INVALID
        streamed.incoming.write([item.data for item in items])
        if items and items[-1].is_last:
            self._streamed = None
            self._mode = _Mode.BETWEEN_MESSAGES
            self._respond(streamed, streamed.incoming.finish())
        return Received.STORED

    def _respond(self, streamed: _Streamed, status: int) -> None:
        command = c_store_response_command(
            affected_sop_class_uid=streamed.command.affected_sop_class_uid,
            message_id_being_responded_to=streamed.command.message_id,
            status=status,
            affected_sop_instance_uid=streamed.command.affected_sop_instance_uid,
            error_comment=streamed.incoming.error_comment,
        )
        self._send(c_store_response_pdu(streamed.context_id, command))

    def _count_pynetdicom_data_set(self, items: list[PresentationDataValue]) -> bool:
        """Count the data set fragments pynetdicom gathers in memory; False once a data set
        exceeds ``max_instance_bytes`` (the association is then aborted)."""
        for item in items:
            if item.is_command:
                continue
            self._pynetdicom_data_set_bytes += len(item.data)
            if self._pynetdicom_data_set_bytes > self._service.limits.max_instance_bytes:
                logger.warning(
                    "association from %s aborted: a data set for pynetdicom exceeds %d bytes",
                    self._association.requestor.address,
                    self._service.limits.max_instance_bytes,
                )
                return False
            if item.is_last:
                self._pynetdicom_data_set_bytes = 0
        return True

    def _watch_pynetdicom(self, items: list[PresentationDataValue] | None) -> None:
        """Follow the message pynetdicom receives, to know when streaming may start again."""
        if items is None:
            self._mode = _Mode.PYNETDICOM_ONLY
        if self._mode is _Mode.PYNETDICOM_ONLY or items is None:
            return
        self._mode = _Mode.PYNETDICOM
        for item in items:
            if item.is_command:
                self._pynetdicom_command += item.data
                if item.is_last:
                    self._end_of_pynetdicom_command()
            elif item.is_last:
                self._mode = _Mode.BETWEEN_MESSAGES
            if self._mode is _Mode.PYNETDICOM_ONLY:
                return
        if self._mode is _Mode.BETWEEN_MESSAGES:
            self._pynetdicom_command.clear()

    def _end_of_pynetdicom_command(self) -> None:
        has_data_set = _has_data_set(self._pynetdicom_command)
        if has_data_set is None:
            self._mode = _Mode.PYNETDICOM_ONLY
        elif not has_data_set:
            self._mode = _Mode.BETWEEN_MESSAGES
        self._pynetdicom_command.clear()

    def _association_streams(self) -> bool:
        """Whether streaming leaves nothing out that anyone listens for, decided once."""
        if self._streams is None:
            association = self._association
            peer_pdu = association.requestor.maximum_length or 0
            self._streams = not any(
                association.get_handlers(event) for event in _WATCHED_EVENTS
            ) and (peer_pdu == 0 or peer_pdu >= _SMALLEST_PEER_PDU)
        return self._streams


def _data_set_fragments(items: list[PresentationDataValue], context_id: int) -> bool:
    """Data set fragments on ``context_id``, only the final one of them marked last."""
    return all(
        not item.is_command
        and item.context_id == context_id
        and (not item.is_last or index == len(items) - 1)
        for index, item in enumerate(items)
    )

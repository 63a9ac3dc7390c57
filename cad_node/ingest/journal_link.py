"""The journal rows of extra ingest processes, committed by the node's own process.

An extra ``cad-node ingest`` process (:mod:`cad_node.ingest.processes`) does
not write the journal itself: its :class:`LinkedJournal` sends each batch of
records over a socket pair to the node's process, where :func:`serve_link`
commits them in the same group commits as the node's own associations and sends
back what became of each.  A row is still committed before its instance is
acknowledged, and the node's process hears of every instance at once (a series
complete by count is routed without waiting for the next sweep).

Why one writer: processes each writing the SQLite journal take turns on its write
lock, each with its own small batches, and a second process gains nothing
(docs/benchmarks.md, "Profiles and changes").

Each message is a 4-byte big-endian length and a pickle: a list of
:class:`~cad_node.store.instances.InstanceRecord` one way, a list of
:class:`~cad_node.store.instances.RecordOutcome` or error messages the other.
Both ends are the node's own processes, on a socket pair nobody else holds.
"""

import logging
import pickle
import socket
import struct
from collections.abc import Callable, Sequence

from cad_node.errors import StorageError
from cad_node.ingest.journal_writer import MAXIMUM_BATCH, GroupCommitter
from cad_node.ingest.transport import recv_exactly
from cad_node.store.instances import InstanceRecord, RecordOutcome

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")


class JournalLinkError(StorageError):
    """The link to the node's process broke, or carried something it should not."""


class LinkedJournal(GroupCommitter):
    """In an extra ingest process: group commits, each sent over ``link`` to the node's process.

    Parameters
    ----------
    link
        This process's end of the socket pair (:func:`serve_link` serves the other).
    maximum_batch
        Records per message at most.
    """

    def __init__(self, link: socket.socket, *, maximum_batch: int = MAXIMUM_BATCH) -> None:
        super().__init__(maximum_batch=maximum_batch)
        self._link = link

    def _commit_each(self, records: Sequence[InstanceRecord]) -> list[RecordOutcome | Exception]:
        try:
            send_message(self._link, list(records))
            answer = receive_message(self._link)
        except OSError as exc:
            raise JournalLinkError(f"journal link to the node lost: {exc}") from exc
        if not isinstance(answer, list) or len(answer) != len(records):
            raise JournalLinkError("journal link: the node's answer does not match the request")
        return [_result(item) for item in answer]

    def close(self) -> None:
        self._link.close()


def serve_link(
    link: socket.socket,
    journal: GroupCommitter,
    on_outcome: Callable[[RecordOutcome], None],
) -> None:
    """Commit the records an extra ingest process sends over ``link`` until it closes.

    ``on_outcome`` is called for each record committed before the outcomes (or error
    messages) go back in order, so the node has heard of every instance an extra
    process acknowledges.
    """
    with link:
        while True:
            try:
                records = receive_message(link)
            except (OSError, JournalLinkError) as exc:
                logger.error("journal link closed: %s", exc)
                return
            if records is None:
                return
            if not isinstance(records, list) or not all(
                isinstance(record, InstanceRecord) for record in records
            ):
                logger.error("journal link closed: it carried something other than records")
                return
            results = journal.record_many(records)
            for result in results:
                if isinstance(result, RecordOutcome):
                    on_outcome(result)
            try:
                send_message(link, [_answer(result) for result in results])
            except OSError as exc:
                logger.error("journal link closed before its answer: %s", exc)
                return


def send_message(link: socket.socket, message: object) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    link.sendall(_LENGTH.pack(len(payload)) + payload)


def receive_message(link: socket.socket) -> object | None:
    """The next message, or None when the other end closed between messages.

    Raises
    ------
    JournalLinkError
        The link closed in the middle of a message.
    """
    header = _receive_exactly(link, _LENGTH.size)
    if not header:
        return None
    if len(header) < _LENGTH.size:
        raise JournalLinkError("journal link closed in the middle of a message")
    (length,) = _LENGTH.unpack(header)
    payload = _receive_exactly(link, length)
    if len(payload) < length:
        raise JournalLinkError("journal link closed in the middle of a message")
    message: object = pickle.loads(payload)
    return message


def _receive_exactly(link: socket.socket, length: int) -> bytes:
    """``length`` bytes, or fewer when the other end closed."""
    buffer = bytearray(length)
    received = recv_exactly(link, memoryview(buffer))
    return bytes(buffer[:received])


def _answer(result: RecordOutcome | Exception) -> RecordOutcome | str:
    if isinstance(result, RecordOutcome):
        return result
    return str(result) or type(result).__name__


def _result(item: object) -> RecordOutcome | Exception:
    if isinstance(item, RecordOutcome):
        return item
    return StorageError(str(item))

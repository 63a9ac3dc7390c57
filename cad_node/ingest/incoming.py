"""A C-STORE data set as it arrives: written to the spool, then stored or refused (PS3.4 B.2.3).

Both receive paths use it.  The streamed one (:mod:`cad_node.ingest.streaming`)
writes each P-DATA-TF PDU's fragments as they come, so an image is on its way
to the disk before its last byte arrives and is never held whole in memory;
pynetdicom's C-STORE handler (:mod:`cad_node.ingest.scp`) writes the data set
it assembled in one go.  Either way the data set is stored exactly as
received, its header parsed from the first bytes, and 0x0000 answered only
after its file is fsync'd in place and its journal row committed.

What a data set may cost is bounded (:class:`~cad_node.ingest.bounds.DataSetLimits`,
docs/security.md): past ``max_instance_bytes`` as received, or once inflated (a
Deflated data set is inflated as it arrives, with a cap, never whole), its file
is discarded at once and the rest of it only counted; a header past
``max_header_bytes`` is refused when it is parsed.  Either way the C-STORE-RSP is
0xA700 (Refused: Out of Resources) with an Error Comment naming the bound, and
the association goes on: a PACS marks that one instance failed, its log says why,
and the rest of its batch is stored.  (pynetdicom's path holds a whole data set in
memory before the handler sees it, so there the stream aborts an association
whose data set outgrows the bound: :mod:`cad_node.ingest.streaming`.)

Example::

    incoming = service.begin(request)  # when the C-STORE-RQ's command set has arrived
    incoming.write([fragment])         # for each data set fragment, in order
    status = incoming.finish()         # after the last one: the C-STORE-RSP's status
"""

import logging
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from cad_node.errors import StorageError
from cad_node.ingest.bounds import DataSetLimits, DataSetTooLargeError, InstanceTooLargeError
from cad_node.ingest.file_meta import file_header
from cad_node.ingest.header import (
    HEADER_PREFIX_BYTES,
    DatasetMismatchError,
    UndecodableDatasetError,
    check_matches_request,
    decode_header,
    decode_header_prefix,
    instance_record,
    is_deflated,
    read_header,
)
from cad_node.ingest.inflate import CappedInflater
from cad_node.ingest.journal_writer import GroupCommitter
from cad_node.ingest.spool import Buffer, Spool, SpoolFile, is_safe_uid, relative_instance_path
from cad_node.security.peers import PeerPolicy, PeerService
from cad_node.store.instances import RecordOutcome

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
"""PS3.4 B.2.3 Refused: Out of Resources (the sender retries)."""
STATUS_DATASET_MISMATCH = 0xA900
"""PS3.4 B.2.3 Error: Data Set does not match SOP Class."""
STATUS_CANNOT_UNDERSTAND = 0xC210
"""PS3.4 B.2.3 Error: Cannot understand (C000-CFFF): the data set cannot be parsed."""
STATUS_PROCESSING_FAILURE = 0xC211
"""Cannot understand, as pynetdicom answers a failing handler: an unexpected error."""
STATUS_NOT_AUTHORIZED = 0x0124
"""PS3.7 Annex C Refused: Not Authorized: the peer may not use this service (``peers``)."""
STATUS_IDENTITY_CONFLICT = 0xC212
"""PS3.4 B.2.3 Error: Cannot understand (C000-CFFF), a failure the sender does not retry:
the SOP Instance UID is already stored under another study or series."""

OnInstance = Callable[[RecordOutcome], None]
_DEFAULT_LIMITS = DataSetLimits()


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """What a C-STORE-RQ's command set says, and who sent it on which presentation context."""

    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    transfer_syntax_uid: str
    """Of the presentation context: how the data set is encoded, and stored."""
    calling_ae_title: str
    address: str
    """The peer's IP address."""


class StoreService:
    """Stores the instances C-STORE requests bring: spool file, journal row, then 0x0000.

    Parameters
    ----------
    spool
        Where received instances are written.
    journal
        Records them (group commit across associations; in an extra ingest process,
        through the node's process).
    peers
        Who may store.
    on_instance
        Called after each instance is committed (e.g. to complete a series early
        when its expected count is reached); its errors are logged, not answered.
    limits
        What one data set may cost (``limits`` in the settings).
    """

    def __init__(
        self,
        *,
        spool: Spool,
        journal: GroupCommitter,
        peers: PeerPolicy,
        on_instance: OnInstance | None = None,
        limits: DataSetLimits = _DEFAULT_LIMITS,
    ) -> None:
        self.spool = spool
        self.journal = journal
        self.peers = peers
        self.limits = limits
        self._on_instance = on_instance

    def begin(self, request: StoreRequest) -> "IncomingInstance":
        """An instance about to arrive.  Never raises: a refusal is the status it finishes with."""
        if not self.peers.permits(request.calling_ae_title, request.address, PeerService.STORE):
            logger.warning(
                "store refused (0x0124): calling AE %s at %s may not use it",
                request.calling_ae_title,
                request.address,
            )
            return IncomingInstance(self, request, refusal=STATUS_NOT_AUTHORIZED)
        try:
            return IncomingInstance(self, request, spool_file=self.spool.open_file())
        except StorageError as exc:
            logger.error(
                "C-STORE refused (0xA700) for %s: %s", request.affected_sop_instance_uid, exc
            )
            return IncomingInstance(self, request, refusal=STATUS_OUT_OF_RESOURCES)

    def notify(self, outcome: RecordOutcome) -> None:
        if self._on_instance is None:
            return
        try:
            self._on_instance(outcome)
        except Exception as exc:  # the instance is stored: the sender still gets 0x0000
            logger.error(
                "on_instance failed for series %s: %s",
                outcome.series_instance_uid,
                type(exc).__name__,
            )


class IncomingInstance:
    """One data set while it arrives: its fragments appended to a spool file, its first
    :data:`~cad_node.ingest.header.HEADER_PREFIX_BYTES` kept to read the header from.

    Made by :meth:`StoreService.begin`; used by one thread at a time.
    """

    def __init__(
        self,
        service: StoreService,
        request: StoreRequest,
        *,
        spool_file: SpoolFile | None = None,
        refusal: int | None = None,
    ) -> None:
        self._service = service
        self._request = request
        self._file = spool_file
        self._refusal = refusal
        self._error_comment: str | None = None
        self._file_header = _file_header(request)
        self._pending_file_header = spool_file is not None
        self._prefix = bytearray()
        self._length = 0
        self._inflater: CappedInflater | None = None
        if spool_file is not None and is_deflated(request.transfer_syntax_uid):
            self._inflater = CappedInflater(service.limits.max_instance_bytes, HEADER_PREFIX_BYTES)

    @property
    def length(self) -> int:
        """Bytes of the data set received so far."""
        return self._length

    @property
    def error_comment(self) -> str | None:
        """Error Comment (0000,0902) for the C-STORE-RSP of a refusal that says why (PS3.7
        C.4.2.1.8): the bound the data set exceeded; None otherwise."""
        return self._error_comment

    def write(self, fragments: Sequence[Buffer]) -> None:
        """Append data set fragments, in order.  Never raises: once the disk refuses, or the
        data set outgrows its bound, the rest is only counted, and :meth:`finish` answers
        0xA700."""
        self._length += sum(len(fragment) for fragment in fragments)
        if self._file is None or self._refusal is not None:
            return
        if self._length > self._service.limits.max_instance_bytes:
            self._refuse(
                STATUS_OUT_OF_RESOURCES,
                InstanceTooLargeError(self._service.limits.max_instance_bytes),
            )
            return
        if self._inflater is None:
            self._keep_prefix(fragments)
        elif not self._inflate(fragments):
            return
        parts = fragments
        if self._pending_file_header:
            parts = [self._file_header, *fragments]
            self._pending_file_header = False
        try:
            self._file.write(parts)
        except StorageError as exc:
            logger.error(
                "C-STORE refused (0xA700) for %s: %s", self._request.affected_sop_instance_uid, exc
            )
            self._refusal = STATUS_OUT_OF_RESOURCES

    def finish(self) -> int:
        """Store the instance now that its last fragment has arrived, and return the C-STORE-RSP
        status (PS3.4 B.2.3).  Never raises: whatever goes wrong becomes a status."""
        try:
            if self._refusal is not None:
                return self._refusal
            return self._store()
        except Exception as exc:  # the end of a C-STORE: any failure is a status
            _log_failure(self._request.affected_sop_instance_uid, exc)
            return STATUS_PROCESSING_FAILURE
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop what was written unless it was stored (an association that ended mid-transfer)."""
        if self._file is not None:
            self._file.discard()

    def _inflate(self, fragments: Sequence[Buffer]) -> bool:
        """Feed the inflater; False (and refused) once it inflates past its cap or fails."""
        assert self._inflater is not None
        try:
            for fragment in fragments:
                self._inflater.feed(fragment)
        except DataSetTooLargeError as exc:
            self._refuse(STATUS_OUT_OF_RESOURCES, exc)
            return False
        except zlib.error:
            self._refuse(
                STATUS_CANNOT_UNDERSTAND, UndecodableDatasetError("not valid deflate data")
            )
            return False
        return True

    def _refuse(self, status: int, reason: Exception) -> None:
        """Refuse the instance with ``status`` while it still arrives, and drop its file now."""
        logger.warning(
            "C-STORE refused (0x%04X) for %s: %s",
            status,
            self._request.affected_sop_instance_uid,
            reason,
        )
        self._refusal = status
        if isinstance(reason, DataSetTooLargeError):
            self._error_comment = str(reason)
        self.discard()

    def _keep_prefix(self, fragments: Sequence[Buffer]) -> None:
        for fragment in fragments:
            missing = HEADER_PREFIX_BYTES - len(self._prefix)
            if missing <= 0:
                return
            self._prefix += memoryview(fragment).cast("B")[:missing]

    def _store(self) -> int:
        assert self._file is not None  # opened, or refused above
        request = self._request
        try:
            header = self._header()
            identity = check_matches_request(
                header, request.affected_sop_class_uid, request.affected_sop_instance_uid
            )
            sop_instance_uid, _, series_instance_uid, study_instance_uid = identity
            record = instance_record(
                header,
                transfer_syntax_uid=request.transfer_syntax_uid,
                calling_ae_title=request.calling_ae_title,
                path=relative_instance_path(
                    study_instance_uid, series_instance_uid, sop_instance_uid
                ),
                size_bytes=len(self._file_header) + self._length,
                identity=identity,
            )
        except UndecodableDatasetError as exc:
            logger.warning(
                "C-STORE refused (0xC210) for %s: %s", request.affected_sop_instance_uid, exc
            )
            return STATUS_CANNOT_UNDERSTAND
        except DatasetMismatchError as exc:
            logger.warning(
                "C-STORE refused (0xA900) for %s: %s", request.affected_sop_instance_uid, exc
            )
            return STATUS_DATASET_MISMATCH
        except DataSetTooLargeError as exc:
            self._refuse(STATUS_OUT_OF_RESOURCES, exc)
            return STATUS_OUT_OF_RESOURCES
        try:
            if self._pending_file_header:  # an empty data set: nothing was written yet
                self.write([])
            self._file.commit(study_instance_uid, series_instance_uid, sop_instance_uid)
            outcome = self._service.journal.record(record)
        except StorageError as exc:
            logger.error("C-STORE refused (0xA700) for %s: %s", sop_instance_uid, exc)
            return STATUS_OUT_OF_RESOURCES
        if outcome.conflict is not None:
            return self._refuse_identity_conflict(record.path, outcome)
        self._service.notify(outcome)
        return STATUS_SUCCESS

    def _refuse_identity_conflict(self, path: str, outcome: RecordOutcome) -> int:
        """The journal holds this SOP Instance UID under another study or series: its row and
        file stay as they are, and the file just placed at ``path`` is removed."""
        assert outcome.conflict is not None
        self._service.spool.absolute(path).unlink(missing_ok=True)
        logger.warning(
            "C-STORE refused (0xC212) from calling AE %s at %s: SOP Instance %s is stored "
            "under study %s series %s, not study %s series %s",
            self._request.calling_ae_title,
            self._request.address,
            outcome.sop_instance_uid,
            outcome.conflict.study_instance_uid,
            outcome.conflict.series_instance_uid,
            outcome.study_instance_uid,
            outcome.series_instance_uid,
        )
        return STATUS_IDENTITY_CONFLICT

    def _header(self) -> Dataset:
        """From the first bytes when they hold it, else from the data set on disk, read
        within the limits."""
        transfer_syntax_uid = self._request.transfer_syntax_uid
        limits = self._service.limits
        if self._inflater is not None:
            return self._inflated_header()
        header = decode_header_prefix(self._prefix, self._length, transfer_syntax_uid)
        if header is not None:
            return header
        if len(self._prefix) == self._length:
            return decode_header(bytes(self._prefix), transfer_syntax_uid, limits)
        assert self._file is not None
        source = self._file.source(len(self._file_header))
        return read_header(source, transfer_syntax_uid, limits, length=self._length)

    def _inflated_header(self) -> Dataset:
        """The header of a Deflated data set (PS3.5 A.5): from its first inflated bytes, else
        inflated again from the disk as far as the header goes."""
        inflater = self._inflater
        assert inflater is not None
        assert self._file is not None
        if not inflater.finished:
            raise UndecodableDatasetError("the deflated data set ends before its last block")
        header = decode_header_prefix(inflater.prefix, inflater.length, ExplicitVRLittleEndian)
        if header is not None:
            return header
        return read_header(
            self._file.source(len(self._file_header)),
            self._request.transfer_syntax_uid,
            self._service.limits,
            length=self._length,
            inflated_length=inflater.length,
        )


def status_with_comment(status: int, error_comment: str | None) -> int | Dataset:
    """A C-STORE status as pynetdicom's handler returns it: with Error Comment (0000,0902)
    when there is one (PS3.7 C.4.2.1.8), else the bare status."""
    if error_comment is None:
        return status
    response = Dataset()
    response.Status = status
    response.ErrorComment = error_comment[:64]
    return response


def _file_header(request: StoreRequest) -> bytes:
    """What comes before the data set in the DICOM file (PS3.10 7.1): preamble and File Meta
    Information.

    Source Application Entity Title (0002,0016) records the sender, so a file
    re-indexed after a crash keeps its calling AE title.  Empty when an Affected
    UID is not a valid UID: such a request ends in 0xA900 (or 0xC210) and its
    file is never kept.
    """
    if not (
        is_safe_uid(request.affected_sop_class_uid)
        and is_safe_uid(request.affected_sop_instance_uid)
        and request.transfer_syntax_uid.isascii()
        and request.calling_ae_title.isascii()
    ):
        return b""
    return file_header(
        sop_class_uid=request.affected_sop_class_uid,
        sop_instance_uid=request.affected_sop_instance_uid,
        transfer_syntax_uid=request.transfer_syntax_uid,
        source_ae_title=request.calling_ae_title,
    )


def _log_failure(affected_sop_instance_uid: str, exc: Exception) -> None:
    # Class name and code locations only: an exception message may quote element values.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error(
        "C-STORE failed (0xC211) for SOP Instance %s: %s\n%s",
        affected_sop_instance_uid,
        type(exc).__name__,
        frames,
    )

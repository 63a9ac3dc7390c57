"""STOW-RS into the node: the parts of one request stored through the C-STORE path (PS3.18 10.5).

Each part of a ``multipart/related; type="application/dicom"`` body is a DICOM file
(PS3.10): its File Meta Information gives the SOP Class, SOP Instance and Transfer
Syntax UIDs a C-STORE-RQ and its presentation context would, and its data set goes to
an :class:`~cad_node.ingest.incoming.IncomingInstance` of the same
:class:`~cad_node.ingest.incoming.StoreService` the Storage SCP uses: written to a
spool file as it arrives, bounded by ``limits``, never held whole.

Nothing is kept until the whole body has arrived well formed: then each instance is
stored (fsync'd, renamed, its journal row committed) and its status taken, before the
response is sent. A malformed body, or one over the bounds, discards every part.

Example::

    receiver = StowReceiver(service, calling_ae_title="STOW-RS", address="10.0.0.5")
    reader = MultipartReader(boundary, receiver)
    ...  # reader.feed(chunk) for each chunk, then reader.close()
    stored = receiver.store()  # one StowInstance per part, in order
"""

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from cad_node.ingest.file_meta import PREAMBLE_AND_PREFIX
from cad_node.ingest.header import HEADER_PREFIX_BYTES, decode_header_prefix
from cad_node.ingest.incoming import (
    STATUS_DATASET_MISMATCH,
    STATUS_SUCCESS,
    IncomingInstance,
    StoreRequest,
    StoreService,
)
from cad_node.ingest.multipart import MalformedMultipartError
from cad_node.security.peers import PeerPolicy

logger = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
MAX_FILE_META_BYTES = 64 << 10
"""A part's File Meta Information (group 0002), at most; real ones are a few hundred bytes."""
_GROUP_LENGTH_END = len(PREAMBLE_AND_PREFIX) + 12
"""Preamble, "DICM" and the (0002,0000) UL element (explicit VR little endian, PS3.10 7.1)."""


class TooManyPartsError(MalformedMultipartError):
    """More parts than ``dicomweb.max_instances``."""


class UnsupportedPartError(MalformedMultipartError):
    """A part that is not ``application/dicom`` (answered 415)."""


@dataclass(frozen=True, slots=True)
class StowInstance:
    """What became of one part: its UIDs (from its File Meta Information) and its status
    (PS3.4 B.2.3, as a C-STORE-RSP would say; 0x0000 stored)."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int


class _Part:
    """One part while it arrives: its File Meta Information buffered and read, then its data
    set streamed into an :class:`IncomingInstance`."""

    def __init__(self, receiver: "StowReceiver", number: int) -> None:
        self._receiver = receiver
        self._number = number
        self._meta = bytearray()
        self._meta_length: int | None = None
        self._dataset_prefix = bytearray()
        self.request: StoreRequest | None = None
        self.incoming: IncomingInstance | None = None

    def write(self, data: bytes) -> None:
        if self.incoming is None:
            data = self._read_meta(data)
            if self.incoming is None:
                return
        self._keep_prefix(data)
        self.incoming.write([data])

    def end(self) -> None:
        if self.incoming is None:
            raise MalformedMultipartError(
                f"part {self._number} ends inside its File Meta Information (not a DICOM file?)"
            )

    def _read_meta(self, data: bytes) -> bytes:
        """Buffer the file's start until its File Meta Information is whole; then open the
        instance and return the bytes after it (the data set's start)."""
        self._meta += data
        if self._meta_length is None:
            if len(self._meta) < _GROUP_LENGTH_END:
                return b""
            self._meta_length = _GROUP_LENGTH_END + self._group_length()
        if len(self._meta) < self._meta_length:
            return b""
        rest = bytes(self._meta[self._meta_length :])
        self.request = self._store_request(bytes(self._meta[: self._meta_length]))
        self.incoming = self._receiver.service.begin(self.request)
        self._meta.clear()
        return rest

    def _group_length(self) -> int:
        start = len(PREAMBLE_AND_PREFIX)
        if bytes(self._meta[128:start]) != b"DICM":
            raise MalformedMultipartError(
                f"part {self._number} is not a DICOM file (no DICM prefix at byte 128, PS3.10 7.1)"
            )
        element = bytes(self._meta[start:_GROUP_LENGTH_END])
        if element[:6] != b"\x02\x00\x00\x00UL":
            raise MalformedMultipartError(
                f"part {self._number}: its File Meta Information does not start with "
                "(0002,0000) File Meta Information Group Length"
            )
        length = int.from_bytes(element[8:12], "little")
        if length > MAX_FILE_META_BYTES:
            raise MalformedMultipartError(
                f"part {self._number}: File Meta Information of {length} bytes (over "
                f"{MAX_FILE_META_BYTES})"
            )
        return length

    def _store_request(self, meta: bytes) -> StoreRequest:
        try:
            file_meta = dcmread(io.BytesIO(meta)).file_meta
        except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
            raise MalformedMultipartError(
                f"part {self._number}: unreadable File Meta Information: {type(exc).__name__}"
            ) from None
        values = [
            str(file_meta.get(keyword, "")).strip()
            for keyword in (
                "MediaStorageSOPClassUID",
                "MediaStorageSOPInstanceUID",
                "TransferSyntaxUID",
            )
        ]
        if not all(values):
            raise MalformedMultipartError(
                f"part {self._number}: File Meta Information lacks a SOP Class, SOP Instance "
                "or Transfer Syntax UID"
            )
        return StoreRequest(
            affected_sop_class_uid=values[0],
            affected_sop_instance_uid=values[1],
            transfer_syntax_uid=values[2],
            calling_ae_title=self._receiver.calling_ae_title,
            address=self._receiver.address,
        )

    def _keep_prefix(self, data: bytes) -> None:
        missing = HEADER_PREFIX_BYTES - len(self._dataset_prefix)
        if missing > 0:
            self._dataset_prefix += data[:missing]

    def study_matches(self, length: int, study_instance_uid: str) -> bool:
        """Whether the data set's Study Instance UID is ``study_instance_uid``; True when its
        header lies beyond the first bytes kept (then the instance is stored as sent)."""
        assert self.request is not None
        header = decode_header_prefix(
            self._dataset_prefix, length, self.request.transfer_syntax_uid
        )
        if header is None or "StudyInstanceUID" not in header:
            return True
        return str(header.StudyInstanceUID) == study_instance_uid


class StowReceiver:
    """The :class:`~cad_node.ingest.multipart.PartSink` of one STOW-RS request.

    Parameters
    ----------
    service
        The Storage SCP's store service (spool, journal, limits); its peer policy must
        admit ``calling_ae_title`` at ``address`` (the caller passes one that admits all:
        a STOW-RS client is authorized by its token).
    calling_ae_title
        Recorded as the instances' calling AE title (Source Application Entity Title).
    address
        The client's IP address.
    max_instances
        Parts allowed; one more raises :class:`TooManyPartsError`.
    study_instance_uid
        The target study (``POST /studies/{study}``): an instance of another study fails
        with 0xA900 and is not kept.
    """

    def __init__(
        self,
        service: StoreService,
        *,
        calling_ae_title: str,
        address: str,
        max_instances: int,
        study_instance_uid: str | None = None,
    ) -> None:
        self.service = service
        self.calling_ae_title = calling_ae_title
        self.address = address
        self._max_instances = max_instances
        self._study_instance_uid = study_instance_uid
        self._parts: list[_Part] = []

    def start_part(self, headers: Mapping[str, str]) -> None:
        media_type = headers.get("content-type", DICOM_MEDIA_TYPE).split(";")[0].strip().lower()
        number = len(self._parts) + 1
        if media_type != DICOM_MEDIA_TYPE:
            raise UnsupportedPartError(
                f"part {number} is {media_type!r}: only {DICOM_MEDIA_TYPE} parts are accepted"
            )
        if number > self._max_instances:
            raise TooManyPartsError(
                f"more than {self._max_instances} instances in one request (dicomweb.max_instances)"
            )
        self._parts.append(_Part(self, number))

    def part_data(self, data: bytes) -> None:
        self._parts[-1].write(data)

    def end_part(self) -> None:
        self._parts[-1].end()

    def store(self) -> list[StowInstance]:
        """Store every part (the body arrived whole and well formed); a status per part."""
        if not self._parts:
            raise MalformedMultipartError("the body holds no part")
        return [self._store_one(part) for part in self._parts]

    def _store_one(self, part: _Part) -> StowInstance:
        assert part.incoming is not None  # end() checked
        assert part.request is not None
        request = part.request
        target = self._study_instance_uid
        if target is not None and not part.study_matches(part.incoming.length, target):
            part.incoming.discard()
            logger.warning(
                "STOW-RS refused (0xA900) for %s: not of the study the request names",
                request.affected_sop_instance_uid,
            )
            status = STATUS_DATASET_MISMATCH
        else:
            status = part.incoming.finish()
        return StowInstance(
            request.affected_sop_class_uid, request.affected_sop_instance_uid, status
        )

    def discard(self) -> None:
        """Drop every part's spool file (a malformed or refused body): nothing is kept."""
        for part in self._parts:
            if part.incoming is not None:
                part.incoming.discard()


def is_stored(instance: StowInstance) -> bool:
    return instance.status == STATUS_SUCCESS


def stow_store_service(scp_service: StoreService) -> StoreService:
    """The Storage SCP's store service (spool, journal, limits, on_instance) for STOW-RS:
    any client address, since a STOW-RS client is authorized by its token, not ``peers``."""
    return StoreService(
        spool=scp_service.spool,
        journal=scp_service.journal,
        peers=PeerPolicy.from_calling_aets(()),
        on_instance=scp_service.notify,
        limits=scp_service.limits,
    )

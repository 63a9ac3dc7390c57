"""C-STORE SCU: send a batch of DICOM files to one destination over one association.

Each file's outcome is classified from its C-STORE response status (PS3.4
Annex B.2.3, PS3.7 Annex C): success, success with a warning, retry later, or a
permanent failure. pynetdicom errors stop here; callers see only outcomes.
"""

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from cad_node.config import DestinationSettings, TimeoutSettings
from cad_node.errors import ConfigError
from cad_node.export.outcomes import OutcomeKind, StoreOutcome, classify_status
from cad_node.security.tls import client_context

logger = logging.getLogger(__name__)

MAX_PRESENTATION_CONTEXTS = 128
"""PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) per association."""

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# Send files as stored, byte for byte (no decode and re-encode) whenever the
# destination accepts their transfer syntax; pynetdicom reads this flag per call.
_config.STORE_SEND_CHUNKED_DATASET = True
# pynetdicom logs identifiers (patient data) at debug level unless told not to.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

REQUESTOR_FAILURES: dict[str, tuple[str, ...]] = {
    "pynetdicom.transport": (
        "Association request failed: unable to connect to remote",
        "TCP Initialisation Error:",
    ),
    "pynetdicom.acse": (
        "Association Rejected",
        "Result: ",
        "Reason: ",
        "Association Aborted",
        "ACSE timeout reached while waiting for response to association request",
    ),
}
"""What pynetdicom logs as ERRORs when an association this node requests does not come
about: the node says it once itself, as a WARNING (a retry) or an ERROR (given up)."""


class RequestorFailureFilter(logging.Filter):
    """Turns pynetdicom's ERRORs about a failed association request into DEBUG records.

    A PACS that is down is expected now and then: each retry would otherwise log two or
    three ERRORs besides the node's own line that says what happens next (issue 24).
    The messages filtered are written only by the requesting side, never by the
    Storage SCP's associations.
    """

    def __init__(self, messages: tuple[str, ...]) -> None:
        super().__init__()
        self._messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        # pynetdicom logs a failed TLS handshake of a request as the bare exception
        failed = isinstance(record.msg, ssl.SSLError) or str(record.msg).startswith(self._messages)
        if record.levelno >= logging.ERROR and failed:
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _quieten_requestor_failures() -> None:
    for name, messages in REQUESTOR_FAILURES.items():
        library_logger = logging.getLogger(name)
        if not any(isinstance(f, RequestorFailureFilter) for f in library_logger.filters):
            library_logger.addFilter(RequestorFailureFilter(messages))


_quieten_requestor_failures()


@dataclass(frozen=True)
class _FileMeta:
    path: Path
    sop_class_uid: UID
    sop_instance_uid: str
    transfer_syntax_uid: UID


def describe_status(status: int) -> str:
    """``0xA700 (Refused: Out of resources)``-style text for a status code."""
    known = STORAGE_SERVICE_CLASS_STATUS.get(status)
    if known is None and status & 0xFF00 in (0xA700, 0xA900):
        known = STORAGE_SERVICE_CLASS_STATUS.get(status & 0xFF00)
    meaning = f" ({known[0]}: {known[1]})" if known else ""
    return f"status 0x{status:04X}{meaning}"


def send_files(
    destination: DestinationSettings,
    calling_ae_title: str,
    paths: Sequence[Path],
    timeouts: TimeoutSettings,
) -> list[StoreOutcome]:
    """Send ``paths`` to ``destination`` over one association; one outcome per path, in order.

    The association proposes exactly the SOP classes of the files (from their file
    meta information, PS3.10 7.1), each with Explicit and Implicit VR Little
    Endian and the file's own transfer syntax, one presentation context per
    syntax. A refused, aborted or unreachable association gives RETRY outcomes
    for every file; an unreadable file, or a SOP class the destination refuses,
    a FAIL outcome for that file alone.
    """
    outcomes: dict[Path, StoreOutcome] = {}
    metas: list[_FileMeta] = []
    for path in paths:
        meta_or_outcome = _read_meta(path)
        if isinstance(meta_or_outcome, StoreOutcome):
            outcomes[path] = meta_or_outcome
        else:
            metas.append(meta_or_outcome)
    if metas:
        outcomes.update(
            {
                o.path: o
                for o in _send_over_association(destination, calling_ae_title, metas, timeouts)
            }
        )
    return [outcomes[path] for path in paths]


def _read_meta(path: Path) -> "_FileMeta | StoreOutcome":
    try:
        meta = read_file_meta_info(path)
    except (OSError, InvalidDicomError) as exc:
        return StoreOutcome(path, None, OutcomeKind.FAIL, error=f"cannot read {path.name}: {exc}")
    missing = [
        keyword
        for keyword in (
            "MediaStorageSOPClassUID",
            "MediaStorageSOPInstanceUID",
            "TransferSyntaxUID",
        )
        if not meta.get(keyword)
    ]
    if missing:
        error = f"{path.name} lacks file meta information: {', '.join(missing)}"
        return StoreOutcome(path, None, OutcomeKind.FAIL, error=error)
    return _FileMeta(
        path=path,
        sop_class_uid=UID(meta.MediaStorageSOPClassUID),
        sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
        transfer_syntax_uid=UID(meta.TransferSyntaxUID),
    )


def presentation_contexts(metas: Sequence[_FileMeta]) -> list[PresentationContext]:
    """For each SOP class, one context per transfer syntax: the files' own, then both uncompressed.

    The acceptor picks one transfer syntax per context (PS3.8 9.3.3.2), so
    proposing each syntax in its own context lets it accept the one the file
    is stored in, and the file goes out byte for byte; the uncompressed ones
    remain for an acceptor that takes neither.
    """
    syntaxes: dict[UID, list[UID]] = {}
    for meta in metas:
        syntaxes.setdefault(meta.sop_class_uid, []).append(meta.transfer_syntax_uid)
    contexts = [
        build_context(sop_class, [syntax])
        for sop_class, used in syntaxes.items()
        for syntax in dict.fromkeys([*used, *UNCOMPRESSED])
    ]
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts exceed the 128 allowed")
    return contexts


def _send_over_association(
    destination: DestinationSettings,
    calling_ae_title: str,
    metas: Sequence[_FileMeta],
    timeouts: TimeoutSettings,
) -> list[StoreOutcome]:
    contexts = presentation_contexts(metas)
    try:
        assoc, connected = associate(destination, calling_ae_title, contexts, timeouts)
    except OSError as exc:  # socket.gaierror: the host name does not resolve
        reason = f"no association with {_peer(destination)}: {exc}"
        return _retry_all(metas, reason, destination)
    except ConfigError as exc:  # a TLS file went missing since start-up
        return _retry_all(metas, str(exc), destination)
    if not assoc.is_established:
        reason = association_failure(assoc, connected, tls=destination.tls is not None)
        return _retry_all(metas, f"no association with {_peer(destination)}: {reason}", destination)
    try:
        return [
            _send_one(assoc, meta, message_id) for message_id, meta in enumerate(metas, start=1)
        ]
    finally:
        if assoc.is_established:
            assoc.release()


def _peer(destination: DestinationSettings) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def _retry_all(
    metas: Sequence[_FileMeta], reason: str, destination: DestinationSettings
) -> list[StoreOutcome]:
    """Every file to be tried again; the export service logs it, once per batch."""
    logger.debug("export to %s: %s", destination.ae_title, reason)
    return [
        StoreOutcome(meta.path, meta.sop_instance_uid, OutcomeKind.RETRY, error=reason)
        for meta in metas
    ]


def associate(
    destination: DestinationSettings,
    calling_ae_title: str,
    contexts: list[PresentationContext],
    timeouts: TimeoutSettings,
) -> tuple[Association, bool]:
    """The association (established or not) and whether the TCP connection was made.

    Timeouts and TLS come from the destination's settings; C-STORE and the
    admin page's C-ECHO both associate through here.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeouts.connect_seconds
    ae.acse_timeout = timeouts.acse_seconds
    ae.dimse_timeout = timeouts.dimse_seconds
    ae.network_timeout = timeouts.network_seconds
    connected: list[bool] = []
    assoc = ae.associate(
        destination.host,
        destination.port,
        contexts=contexts,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True))],
        tls_args=_tls_args(destination),
    )
    return assoc, bool(connected)


def _tls_args(destination: DestinationSettings) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args``: the context and the name the certificate must carry."""
    if destination.tls is None:
        return None
    hostname = destination.tls.server_hostname or destination.host
    return client_context(destination.tls), hostname


def association_failure(assoc: Association, connected: bool, *, tls: bool) -> str:
    """Why no association was established, for the journal and the admin page."""
    if not connected:
        return f"cannot connect (down or unreachable{' or TLS handshake failed' if tls else ''})"
    if assoc.is_rejected:
        return "association rejected"
    if assoc.is_aborted:
        return "association aborted"
    return "no answer within the ACSE timeout"


def _send_one(assoc: Association, meta: _FileMeta, message_id: int) -> StoreOutcome:
    """Send one file and classify the response (PS3.7 9.1.1)."""
    if not assoc.is_established:
        return _outcome(meta, OutcomeKind.RETRY, None, "the association ended before this file")
    accepted = _accepted_syntaxes(assoc, meta.sop_class_uid)
    if not accepted:
        error = f"the destination does not accept SOP class {meta.sop_class_uid.name}"
        return _outcome(meta, OutcomeKind.FAIL, None, error)
    try:
        if meta.transfer_syntax_uid in accepted:
            response = assoc.send_c_store(meta.path, msg_id=message_id)
        else:
            response = assoc.send_c_store(_decoded(meta.path), msg_id=message_id)
    except (OSError, InvalidDicomError, AttributeError) as exc:
        return _outcome(meta, OutcomeKind.FAIL, None, f"cannot send {meta.path.name}: {exc}")
    except ValueError as exc:  # pynetdicom: no usable context, or not encodable in it
        return _outcome(meta, OutcomeKind.FAIL, None, f"cannot send {meta.path.name}: {exc}")
    except RuntimeError:  # pynetdicom: the association ended under us
        return _outcome(meta, OutcomeKind.RETRY, None, "the association ended during the send")
    return _classify_response(meta, response)


def _accepted_syntaxes(assoc: Association, sop_class_uid: UID) -> set[UID]:
    return {
        UID(context.transfer_syntax[0])
        for context in assoc.accepted_contexts
        if context.abstract_syntax == sop_class_uid and context.transfer_syntax
    }


def _decoded(path: Path) -> Dataset:
    """The file as a dataset, for pynetdicom to convert to the accepted uncompressed syntax."""
    return dcmread(path)


def _classify_response(meta: _FileMeta, response: Dataset) -> StoreOutcome:
    status = response.get("Status")
    if status is None:
        error = "no C-STORE response (timeout, abort or invalid response)"
        return _outcome(meta, OutcomeKind.RETRY, None, error)
    status = int(status)
    kind = classify_status(status)
    if kind is OutcomeKind.SUCCESS:
        return _outcome(meta, kind, status, None)
    comment = response.get("ErrorComment")
    error = describe_status(status) + (f": {comment}" if comment else "")
    logger.info("C-STORE of %s answered %s", meta.sop_instance_uid, describe_status(status))
    return _outcome(meta, kind, status, error)


def _outcome(
    meta: _FileMeta, kind: OutcomeKind, status: int | None, error: str | None
) -> StoreOutcome:
    return StoreOutcome(meta.path, meta.sop_instance_uid, kind, status, error)

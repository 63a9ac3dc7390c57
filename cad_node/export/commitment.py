"""Storage Commitment Push Model SCU (PS3.4 Annex J): ask a destination to commit, read its answer.

The node asks with an N-ACTION-RQ (Action Type ID 1, "Request Storage Commitment")
naming each object in its Referenced SOP Sequence under one Transaction UID
(PS3.4 J.3.2). The destination answers with an N-EVENT-REPORT-RQ (Event Type ID 1:
every object committed; 2: some failed, each with its Failure Reason, PS3.4 J.3.3),
either on the same association or on one it opens back to the node (the node's SCP
accepts it in the SCU role, :mod:`cad_node.ingest.scp`). Both arrive here as a
:class:`CommitmentReport`; the journal is :mod:`cad_node.export.commitment_service`'s.

pynetdicom errors stop here; callers see a :class:`CommitmentRequestOutcome`.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import build_context

from cad_node.config import DestinationSettings, TimeoutSettings
from cad_node.domain.commitment import CommitmentReport, FailedSopReference, SopReference
from cad_node.errors import ConfigError
from cad_node.export.scu import associate, association_failure

logger = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH_MODEL = UID("1.2.840.10008.1.20.1")
"""Storage Commitment Push Model SOP Class (PS3.4 J.3)."""
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = UID("1.2.840.10008.1.20.1.1")
"""Its well-known SOP Instance (PS3.4 J.3.5)."""
REQUEST_STORAGE_COMMITMENT = 1
"""N-ACTION Action Type ID (PS3.4 J.3.2.1)."""
EVENT_ALL_COMMITTED = 1
"""N-EVENT-REPORT Event Type ID: "Storage Commitment Request Successful" (PS3.4 J.3.3.1)."""
EVENT_SOME_FAILED = 2
"""N-EVENT-REPORT Event Type ID: "Storage Commitment Request Complete - Failures Exist"."""
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
REPORT_NOT_RECORDED = STATUS_PROCESSING_FAILURE
"""The answer to a report the node could not journal: the sender may send it again."""
STATUS_INVALID_ARGUMENT_VALUE = 0x0115
"""PS3.7 Annex C: the report is not one the node can read."""
STATUS_NO_SUCH_EVENT_TYPE = 0x0113

RecordReport = Callable[[CommitmentReport], int]
"""Journals a report and says the status to answer it with (0x0000 once it is recorded)."""


@dataclass(frozen=True, slots=True)
class CommitmentRequestOutcome:
    """What asking for commitment did: accepted or not, and a report if one came on the
    N-ACTION's own association."""

    accepted: bool
    """The N-ACTION-RSP said Success: the destination will report."""
    status: int | None = None
    error: str | None = None
    report: CommitmentReport | None = None


def action_information(transaction_uid: str, references: Sequence[SopReference]) -> Dataset:
    """The N-ACTION-RQ's Action Information (PS3.4 Table J.3-1)."""
    information = Dataset()
    information.TransactionUID = transaction_uid
    information.ReferencedSOPSequence = [_item(reference) for reference in references]
    return information


def _item(reference: SopReference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = reference.sop_class_uid
    item.ReferencedSOPInstanceUID = reference.sop_instance_uid
    return item


def parse_report(event_type_id: int, information: Dataset) -> CommitmentReport:
    """The report in an N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2).

    Raises
    ------
    ValueError
        An event type other than 1 or 2, or no Transaction UID.
    """
    if event_type_id not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
        raise ValueError(f"Event Type ID {event_type_id} is not a storage commitment result")
    committed = tuple(
        SopReference(*_uids(item)) for item in information.get("ReferencedSOPSequence", [])
    )
    failed = tuple(
        FailedSopReference(*_uids(item), _failure_reason(item))
        for item in information.get("FailedSOPSequence", [])
    )
    return CommitmentReport(str(information.get("TransactionUID", "")), committed, failed)


def _uids(item: Dataset) -> tuple[str, str]:
    return (
        str(item.get("ReferencedSOPClassUID", "")),
        str(item.get("ReferencedSOPInstanceUID", "")),
    )


def _failure_reason(item: Dataset) -> int | None:
    reason = item.get("FailureReason")
    return None if reason is None else int(reason)


def request_commitment(
    destination: DestinationSettings,
    calling_ae_title: str,
    transaction_uid: str,
    references: Sequence[SopReference],
    timeouts: TimeoutSettings,
    *,
    record: RecordReport | None = None,
) -> CommitmentRequestOutcome:
    """Ask ``destination`` to commit ``references`` under ``transaction_uid`` (one N-ACTION).

    The association stays open up to ``commitment_report_wait_seconds`` after the
    N-ACTION-RSP for a report on it (PS3.4 J.3.3: the SCP may use it), which ``record``
    journals before it is answered; a report that comes later comes on an association
    of the destination's own.
    """
    contexts = [
        build_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian]),
        build_context(STORAGE_COMMITMENT_PUSH_MODEL, [ImplicitVRLittleEndian]),
    ]
    try:
        assoc, connected = associate(destination, calling_ae_title, contexts, timeouts)
    except (OSError, ConfigError) as exc:
        return CommitmentRequestOutcome(False, error=f"no association: {exc}")
    if not assoc.is_established:
        reason = association_failure(assoc, connected, tls=destination.tls is not None)
        return CommitmentRequestOutcome(False, error=f"no association: {reason}")
    try:
        listener = _ReportListener(transaction_uid, record)
        return _ask(assoc, destination, listener, action_information(transaction_uid, references))
    finally:
        if assoc.is_established:
            assoc.release()


def _ask(
    assoc: Association,
    destination: DestinationSettings,
    listener: "_ReportListener",
    information: Dataset,
) -> CommitmentRequestOutcome:
    assoc.bind(evt.EVT_N_EVENT_REPORT, listener.handle)
    outcome = _send_action(assoc, information)
    if not outcome.accepted:
        return outcome
    report = listener.wait(destination.commitment_report_wait_seconds)
    return CommitmentRequestOutcome(True, outcome.status, None, report)


def _send_action(assoc: Association, information: Dataset) -> CommitmentRequestOutcome:
    try:
        status, _reply = assoc.send_n_action(
            information,
            REQUEST_STORAGE_COMMITMENT,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
        )
    except ValueError as exc:  # pynetdicom: no accepted presentation context
        return CommitmentRequestOutcome(False, error=f"storage commitment not accepted: {exc}")
    except RuntimeError:  # pynetdicom: the association ended under us
        return CommitmentRequestOutcome(False, error="the association ended during the N-ACTION")
    code = status.get("Status")
    if code is None:
        return CommitmentRequestOutcome(False, error="no N-ACTION response (timeout or abort)")
    if int(code) != STATUS_SUCCESS:
        error = f"N-ACTION answered status 0x{int(code):04X}"
        return CommitmentRequestOutcome(False, int(code), error)
    return CommitmentRequestOutcome(True, int(code))


class _ReportListener:
    """Takes the N-EVENT-REPORT of one transaction on the requesting association."""

    def __init__(self, transaction_uid: str, record: RecordReport | None) -> None:
        self._transaction_uid = transaction_uid
        self._record = record
        self._received = threading.Event()
        self.report: CommitmentReport | None = None

    def handle(self, event: Event) -> tuple[int, Dataset | None]:
        """EVT_N_EVENT_REPORT on the requestor's association: read, journal, answer."""
        status, report = answer_report(event)
        if report is None:
            return status, None
        if self._record is not None:
            status = self._record(report)
        if report.transaction_uid == self._transaction_uid:
            self.report = report
            self._received.set()
        return status, None

    def wait(self, seconds: float) -> CommitmentReport | None:
        if seconds > 0:
            self._received.wait(seconds)
        return self.report


def answer_report(event: Event) -> tuple[int, CommitmentReport | None]:
    """The status an EVT_N_EVENT_REPORT is answered (PS3.7 10.1.1.1.8) and the report read.

    Used by the requesting association and by the node's SCP alike: a report of another
    SOP class, or one the node cannot read, is answered with a failure status.
    """
    request = event.request
    if str(getattr(request, "AffectedSOPClassUID", "")) != STORAGE_COMMITMENT_PUSH_MODEL:
        return STATUS_PROCESSING_FAILURE, None
    try:
        report = parse_report(int(getattr(request, "EventTypeID", 0) or 0), event.event_information)
    except ValueError as exc:
        logger.warning("storage commitment report not understood: %s", exc)
        return STATUS_INVALID_ARGUMENT_VALUE, None
    except Exception as exc:  # top of an SCP handler: an undecodable report is a status
        logger.warning("storage commitment report not decodable: %s", type(exc).__name__)
        return STATUS_INVALID_ARGUMENT_VALUE, None
    return STATUS_SUCCESS, report

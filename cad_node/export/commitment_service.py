"""Storage Commitment for the destinations that ask for it (``commitment: true``).

- :func:`awaiting_commitment`: the export service's successful C-STOREs to such a
  destination end ``sent``, not ``delivered``;
- :func:`request_due_commitments`: the commitment sweep asks for the sent ones
  (one N-ACTION per batch), asks again when no answer came within
  ``commitment_timeout_seconds`` and gives up after ``commitment_max_requests``;
- :class:`CommitmentReports`: journals each N-EVENT-REPORT, whether it came on the
  N-ACTION's association or on one the destination opened back to the node's SCP.

Example::

    reports = CommitmentReports(sessions, utc_now, settings.export.max_attempts)
    request_due_commitments(
        sessions, destinations, "CADNODE", utc_now(), export=settings.export, record=reports
    )
"""

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom.uid import generate_uid
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cad_node.config import AnyDestinationSettings, DestinationSettings, ExportSettings
from cad_node.domain.commitment import CommitmentReport, SopReference
from cad_node.domain.states import DeliveryState
from cad_node.export.commitment import (
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    CommitmentRequestOutcome,
    request_commitment,
)
from cad_node.export.policy import DeliveryUpdate, RetryPolicy
from cad_node.store.commitments import (
    AwaitingCommitment,
    ReportTally,
    claim_awaiting,
    commitment_destinations,
    end_as_stored,
    give_up,
    mark_requested,
    note_request_failure,
    record_report,
)

logger = logging.getLogger(__name__)

MAX_BATCHES_PER_DESTINATION = 1000
"""A bound on requests per sweep and destination, so one sweep cannot loop for ever."""
STORED = frozenset({DeliveryState.DELIVERED, DeliveryState.DELIVERED_WITH_WARNING})


def commits(destination: AnyDestinationSettings | None) -> bool:
    """Whether ``destination`` is a DIMSE destination asked for Storage Commitment."""
    return isinstance(destination, DestinationSettings) and destination.commitment


def awaiting_commitment(
    updates: Sequence[DeliveryUpdate], destination: AnyDestinationSettings | None, now: datetime
) -> list[DeliveryUpdate]:
    """``updates`` with each stored object ``sent`` where ``destination`` commits: its
    commitment is asked for ``commitment_delay_seconds`` from ``now``."""
    if not isinstance(destination, DestinationSettings) or not destination.commitment:
        return list(updates)
    ask_at = now + timedelta(seconds=destination.commitment_delay_seconds)
    return [
        dataclasses.replace(update, state=DeliveryState.SENT, next_attempt_at=ask_at)
        if update.state in STORED
        else update
        for update in updates
    ]


@dataclass
class CommitmentReports:
    """Journals storage commitment reports (the handler of every N-EVENT-REPORT).

    ``max_attempts`` is the export retry policy's; ``on_resend`` is called when a report
    put deliveries back to be sent (the node kicks its export sweep).
    """

    sessions: sessionmaker[Session]
    clock: Callable[[], datetime]
    max_attempts: int
    on_resend: Callable[[], None] | None = None

    def __call__(self, report: CommitmentReport) -> int:
        """Record ``report``; the status to answer its N-EVENT-REPORT with (PS3.7 10.1.1)."""
        try:
            with self.sessions.begin() as session:
                tally = record_report(session, report, self.clock(), self.max_attempts)
        except SQLAlchemyError as exc:
            logger.error(
                "storage commitment report %s not recorded: %s",
                report.transaction_uid,
                type(exc).__name__,
            )
            return STATUS_PROCESSING_FAILURE
        _log_tally(report, tally)
        if tally.resent and self.on_resend is not None:
            self.on_resend()
        return STATUS_SUCCESS


def _log_tally(report: CommitmentReport, tally: ReportTally) -> None:
    if not tally.known:
        logger.warning(
            "storage commitment report for transaction %s, which no delivery awaits (answered "
            "before, or superseded by a later request): ignored",
            report.transaction_uid,
        )
        return
    logger.info(
        "storage commitment %s: %d committed, %d to send again, %d failed",
        report.transaction_uid,
        tally.committed,
        tally.resent,
        tally.failed,
    )
    for failed in report.failed:
        logger.warning(
            "storage commitment %s: %s not committed: %s",
            report.transaction_uid,
            failed.sop_instance_uid,
            failed.reason,
        )


@dataclass(frozen=True)
class CommitmentSweepReport:
    """The requests one sweep made."""

    requested: int = 0
    """Deliveries whose commitment was asked for (accepted N-ACTIONs)."""
    refused: int = 0
    """Deliveries whose N-ACTION failed: asked again later."""
    given_up: int = 0


def request_due_commitments(
    sessions: sessionmaker[Session],
    destinations: Mapping[str, AnyDestinationSettings],
    calling_ae_title: str,
    now: datetime,
    *,
    export: ExportSettings,
    record: CommitmentReports | None = None,
) -> CommitmentSweepReport:
    """Ask every destination for the commitment of its sent deliveries due at ``now``."""
    with sessions() as session:
        names = commitment_destinations(session, now)
    total = CommitmentSweepReport()
    for name in names:
        run = _DestinationRun(
            sessions, name, destinations.get(name), calling_ae_title, now, export, record
        )
        total = _add(total, run.request_all())
    return total


def _add(a: CommitmentSweepReport, b: CommitmentSweepReport) -> CommitmentSweepReport:
    return CommitmentSweepReport(
        a.requested + b.requested, a.refused + b.refused, a.given_up + b.given_up
    )


@dataclass(frozen=True)
class _DestinationRun:
    """One destination's part of one sweep."""

    sessions: sessionmaker[Session]
    name: str
    destination: AnyDestinationSettings | None
    calling_ae_title: str
    now: datetime
    export: ExportSettings
    record: CommitmentReports | None

    def request_all(self) -> CommitmentSweepReport:
        total = CommitmentSweepReport()
        for _ in range(MAX_BATCHES_PER_DESTINATION):
            report = self._one_batch()
            if report is None:
                break
            total = _add(total, report)
            if report.refused:
                break  # the destination is struggling: leave the rest for the next sweep
        return total

    def _one_batch(self) -> CommitmentSweepReport | None:
        """Claim, stamp and ask one batch; None when none is due."""
        with self.sessions.begin() as session:
            batch = claim_awaiting(
                session, self.name, self.now, self.export.max_files_per_association
            )
            if not batch:
                return None
            if not isinstance(self.destination, DestinationSettings) or not commits(
                self.destination
            ):
                return self._without_destination(session, batch)
            asking, given_up = self._split(session, self.destination, batch)
            if not asking:
                return CommitmentSweepReport(given_up=given_up)
            transaction_uid = str(generate_uid())
            answer_by = self.now + timedelta(seconds=self.destination.commitment_timeout_seconds)
            ids = [item.delivery_id for item in asking]
            mark_requested(session, ids, transaction_uid, self.now, answer_by)
        outcome = self._ask(self.destination, transaction_uid, asking)
        if outcome.accepted:
            return CommitmentSweepReport(requested=len(asking), given_up=given_up)
        self._note_refusal(self.destination, transaction_uid, asking, outcome)
        return CommitmentSweepReport(refused=len(asking), given_up=given_up)

    def _split(
        self, session: Session, destination: DestinationSettings, batch: list[AwaitingCommitment]
    ) -> tuple[list[AwaitingCommitment], int]:
        """Those to ask, and how many were given up (asked ``commitment_max_requests`` times)."""
        limit = destination.commitment_max_requests
        exhausted = [item.delivery_id for item in batch if item.commitment_attempts >= limit]
        if exhausted:
            error = f"no storage commitment answer after {limit} request(s)"
            give_up(session, exhausted, error, self.now)
            logger.error(
                "export to %s: %d deliver%s failed: %s",
                self.name,
                len(exhausted),
                "y" if len(exhausted) == 1 else "ies",
                error,
            )
        return [item for item in batch if item.commitment_attempts < limit], len(exhausted)

    def _without_destination(
        self, session: Session, batch: list[AwaitingCommitment]
    ) -> CommitmentSweepReport:
        """The destination was removed, or no longer commits: stored is as far as it goes."""
        ids = [item.delivery_id for item in batch]
        if self.destination is None:
            error = f"destination {self.name!r} is not configured (removed from the config?)"
            give_up(session, ids, error, self.now)
            return CommitmentSweepReport(given_up=len(ids))
        end_as_stored(session, ids)
        return CommitmentSweepReport()

    def _ask(
        self,
        destination: DestinationSettings,
        transaction_uid: str,
        asking: list[AwaitingCommitment],
    ) -> CommitmentRequestOutcome:
        references = [SopReference(i.sop_class_uid, i.sop_instance_uid) for i in asking]
        logger.info(
            "export to %s: storage commitment of %d object(s) asked, transaction %s",
            self.name,
            len(references),
            transaction_uid,
        )
        return request_commitment(
            destination,
            self.calling_ae_title,
            transaction_uid,
            references,
            self.export.timeouts,
            record=self.record,
        )

    def _note_refusal(
        self,
        destination: DestinationSettings,
        transaction_uid: str,
        asking: list[AwaitingCommitment],
        outcome: CommitmentRequestOutcome,
    ) -> None:
        """Ask again after the retry policy's backoff (at most the commitment timeout)."""
        attempts = max(item.commitment_attempts for item in asking) + 1
        wait = min(
            RetryPolicy.from_settings(self.export).backoff(attempts),
            timedelta(seconds=destination.commitment_timeout_seconds),
        )
        error = outcome.error or "refused"
        with self.sessions.begin() as session:
            note_request_failure(session, transaction_uid, error, self.now + wait)
        logger.warning(
            "export to %s: storage commitment request %s failed (request %d of %d), asked "
            "again in %.0f s: %s",
            self.name,
            transaction_uid,
            attempts,
            destination.commitment_max_requests,
            wait.total_seconds(),
            error,
        )

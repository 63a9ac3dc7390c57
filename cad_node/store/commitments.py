"""Journal operations of Storage Commitment: deliveries sent -> committed, failed, or sent again.

A delivery to a destination that commits is ``sent`` once stored there; its
``next_attempt_at`` is then when the node next asks for commitment (at once, after
``commitment_delay_seconds``, or when the last request went unanswered). Asking
stamps the batch with its Transaction UID (0008,1195) *before* the N-ACTION goes
out, so a report that arrives before the N-ACTION-RSP finds its deliveries. The
report (PS3.4 J.3.3) commits each object it lists as committed, and sends again,
under the retry policy, each one it lists as failed.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cad_node.domain.commitment import CommitmentReport, FailedSopReference
from cad_node.domain.states import DeliveryState
from cad_node.store.deliveries import claim_in_state
from cad_node.store.rulesets import record_audit
from cad_node.store.schema import Delivery, Result

NODE_ACTOR = "node"


@dataclass(frozen=True, slots=True)
class AwaitingCommitment:
    """A delivery stored at its destination whose commitment the node is to ask for now."""

    delivery_id: int
    destination: str
    sop_class_uid: str
    sop_instance_uid: str
    commitment_attempts: int
    """Requests already made for it (without an answer)."""


@dataclass(frozen=True, slots=True)
class ReportTally:
    """What one report did to the journal."""

    committed: int = 0
    resent: int = 0
    """Reported failed, pending again: to be sent anew."""
    failed: int = 0
    """Reported failed with the retry policy's attempts used up: a dead letter."""
    known: bool = True
    """Whether the Transaction UID was one the node awaits."""


def commitment_destinations(session: Session, now: datetime) -> list[str]:
    """Destinations with a sent delivery whose commitment request is due at ``now``."""
    query = (
        select(Delivery.destination)
        .where(Delivery.state == DeliveryState.SENT, Delivery.next_attempt_at <= now)
        .distinct()
        .order_by(Delivery.destination)
    )
    return list(session.scalars(query))


def claim_awaiting(
    session: Session, destination: str, now: datetime, limit: int
) -> list[AwaitingCommitment]:
    """Up to ``limit`` sent deliveries to ``destination`` due at ``now``, oldest first, locked."""
    rows = claim_in_state(session, destination, DeliveryState.SENT, now, limit)
    return [
        AwaitingCommitment(
            delivery.id,
            delivery.destination,
            result.sop_class_uid,
            result.sop_instance_uid,
            delivery.commitment_attempts,
        )
        for delivery, result in rows
    ]


def mark_requested(
    session: Session,
    delivery_ids: Sequence[int],
    transaction_uid: str,
    now: datetime,
    answer_by: datetime,
) -> None:
    """The batch is asked under ``transaction_uid``; no answer by ``answer_by``: ask again."""
    for delivery in _deliveries(session, delivery_ids):
        delivery.commitment_transaction_uid = transaction_uid
        delivery.commitment_requested_at = now
        delivery.commitment_attempts += 1
        delivery.next_attempt_at = answer_by


def note_request_failure(
    session: Session, transaction_uid: str, error: str, retry_at: datetime
) -> int:
    """The N-ACTION of ``transaction_uid`` went unanswered or was refused: ask again at
    ``retry_at``. Returns how many deliveries wait."""
    waiting = _awaiting(session, transaction_uid)
    for delivery in waiting:
        delivery.last_error = f"storage commitment request failed: {error}"
        delivery.next_attempt_at = retry_at
    return len(waiting)


def give_up(session: Session, delivery_ids: Sequence[int], error: str, now: datetime) -> None:
    """No answer after the last request allowed: failed (a dead letter for the admin)."""
    for delivery in _deliveries(session, delivery_ids):
        delivery.state = DeliveryState.FAILED
        delivery.last_error = error
        delivery.next_attempt_at = now
        _audit(session, delivery, "delivery.failed", now, {"commitment": error})


def end_as_stored(session: Session, delivery_ids: Sequence[int]) -> None:
    """Its destination no longer asks for commitment: stored there is delivered."""
    for delivery in _deliveries(session, delivery_ids):
        delivery.state = DeliveryState.DELIVERED
        delivery.commitment_transaction_uid = None


def record_report(
    session: Session, report: CommitmentReport, now: datetime, max_attempts: int
) -> ReportTally:
    """Apply a storage commitment report to the deliveries of its transaction (the caller
    commits). An object the report does not name stays sent: its request times out and is
    made again. ``max_attempts`` is the retry policy's, counted in C-STORE attempts."""
    by_instance = {
        result.sop_instance_uid: delivery
        for delivery, result in session.execute(
            select(Delivery, Result)
            .join(Result, Result.id == Delivery.result_id)
            .where(
                Delivery.commitment_transaction_uid == report.transaction_uid,
                Delivery.state == DeliveryState.SENT,
            )
            .with_for_update(of=Delivery)
        ).all()
    }
    if not by_instance:
        return ReportTally(known=False)
    committed = sum(
        _commit(session, by_instance[ref.sop_instance_uid], report.transaction_uid, now)
        for ref in report.committed
        if ref.sop_instance_uid in by_instance
    )
    failures = [
        _not_committed(session, by_instance[ref.sop_instance_uid], ref, now, max_attempts)
        for ref in report.failed
        if ref.sop_instance_uid in by_instance
    ]
    return ReportTally(
        committed, failures.count(DeliveryState.PENDING), failures.count(DeliveryState.FAILED)
    )


def _commit(session: Session, delivery: Delivery, transaction_uid: str, now: datetime) -> int:
    delivery.state = DeliveryState.COMMITTED
    delivery.committed_at = now
    delivery.last_error = None
    _audit(session, delivery, "delivery.committed", now, {"transaction_uid": transaction_uid})
    return 1


def _not_committed(
    session: Session,
    delivery: Delivery,
    failed: FailedSopReference,
    now: datetime,
    max_attempts: int,
) -> DeliveryState:
    """Send it again (pending, due now) unless the retry policy's attempts are used up."""
    given_up = delivery.attempts >= max_attempts
    reason = f"not committed by the destination: {failed.reason}"
    if given_up:
        reason += f"; gave up after {delivery.attempts} attempts"
    delivery.state = DeliveryState.FAILED if given_up else DeliveryState.PENDING
    delivery.last_error = reason
    delivery.next_attempt_at = now
    delivery.commitment_transaction_uid = None
    delivery.commitment_attempts = 0
    _audit(
        session,
        delivery,
        "delivery.failed",
        now,
        {"commitment": reason, "will_retry": not given_up},
    )
    return delivery.state


def _deliveries(session: Session, delivery_ids: Sequence[int]) -> list[Delivery]:
    if not delivery_ids:
        return []
    return list(session.scalars(select(Delivery).where(Delivery.id.in_(delivery_ids))))


def _awaiting(session: Session, transaction_uid: str) -> list[Delivery]:
    query = select(Delivery).where(
        Delivery.commitment_transaction_uid == transaction_uid,
        Delivery.state == DeliveryState.SENT,
    )
    return list(session.scalars(query))


def _audit(
    session: Session, delivery: Delivery, action: str, now: datetime, detail: dict[str, Any]
) -> None:
    record_audit(
        session,
        actor=NODE_ACTOR,
        action=action,
        target=f"delivery {delivery.id}",
        now=now,
        detail={"destination": delivery.destination, "state": str(delivery.state), **detail},
    )

"""Journal operations on deliveries: find the due ones, claim a batch, record each outcome.

A delivery is one result object for one destination. Its ``next_attempt_at``
lives in the journal, so a retry planned before a restart happens after it.
Claiming uses ``SELECT ... FOR UPDATE SKIP LOCKED``: on PostgreSQL, nodes sharing
the journal never send the same batch (the rows stay locked until the caller
commits the outcomes); SQLite ignores the clause and has a single sender.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cad_node.domain.states import DeliveryState
from cad_node.export.policy import DeliveryUpdate
from cad_node.store.schema import Delivery, Result


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A pending delivery whose attempt is due, with what is needed to send its file."""

    delivery_id: int
    destination: str
    attempts: int
    path: str
    """The result file, relative to storage_dir."""
    sop_instance_uid: str
    sop_class_uid: str


def due_destinations(session: Session, now: datetime) -> list[str]:
    """Names of the destinations with at least one pending delivery due at ``now``."""
    query = (
        select(Delivery.destination)
        .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
        .distinct()
        .order_by(Delivery.destination)
    )
    return list(session.scalars(query))


def claim_due(session: Session, destination: str, now: datetime, limit: int) -> list[DueDelivery]:
    """Up to ``limit`` due pending deliveries to ``destination``, oldest due first, locked.

    The caller sends them and records every outcome in the same transaction.
    """
    rows = claim_in_state(session, destination, DeliveryState.PENDING, now, limit)
    return [_due(delivery, result) for delivery, result in rows]


def claim_in_state(
    session: Session, destination: str, state: DeliveryState, now: datetime, limit: int
) -> list[tuple[Delivery, Result]]:
    """Up to ``limit`` deliveries to ``destination`` in ``state`` and due at ``now``, with
    their results, oldest due first, locked (SKIP LOCKED: another node takes the rest)."""
    query = (
        select(Delivery, Result)
        .join(Result, Result.id == Delivery.result_id)
        .where(
            Delivery.destination == destination,
            Delivery.state == state,
            Delivery.next_attempt_at <= now,
        )
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Delivery)
    )
    return [(delivery, result) for delivery, result in session.execute(query).all()]


def _due(delivery: Delivery, result: Result) -> DueDelivery:
    return DueDelivery(
        delivery_id=delivery.id,
        destination=delivery.destination,
        attempts=delivery.attempts,
        path=result.path,
        sop_instance_uid=result.sop_instance_uid,
        sop_class_uid=result.sop_class_uid,
    )


def record_update(session: Session, delivery_id: int, update: DeliveryUpdate) -> None:
    """Write one attempt's outcome to its delivery row (the caller commits)."""
    delivery = session.get_one(Delivery, delivery_id)
    delivery.state = update.state
    delivery.attempts = update.attempts
    delivery.next_attempt_at = update.next_attempt_at
    delivery.last_status = update.last_status
    delivery.last_error = update.last_error
    delivery.delivered_at = update.delivered_at
    if update.state == DeliveryState.SENT:  # stored anew: its commitment is asked afresh
        delivery.commitment_transaction_uid = None
        delivery.commitment_requested_at = None
        delivery.commitment_attempts = 0
        delivery.committed_at = None


def counts_by_state(session: Session) -> dict[DeliveryState, int]:
    """How many deliveries are in each state (every state present, zero included)."""
    rows = session.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
    counts = dict.fromkeys(DeliveryState, 0)
    counts.update({DeliveryState(state): int(count) for state, count in rows.all()})
    return counts


def deliveries_of(session: Session, result_ids: Sequence[int]) -> list[Delivery]:
    """The delivery rows of the given results, by id."""
    query = select(Delivery).where(Delivery.result_id.in_(result_ids)).order_by(Delivery.id)
    return list(session.scalars(query))

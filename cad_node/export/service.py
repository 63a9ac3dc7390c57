"""Deliver the due results: one association per destination batch, every outcome journaled.

``deliver_due`` is what the node's export sweep calls. Each batch is claimed,
sent and recorded in one transaction; a crash mid-send leaves the rows pending
and due, so they are sent again (the same objects: their UIDs are fixed) after
a restart.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from cad_node.config import AnyDestinationSettings, ExportSettings, Settings
from cad_node.domain.states import DeliveryState
from cad_node.export.commitment_service import awaiting_commitment
from cad_node.export.dispatch import send_batch
from cad_node.export.policy import DeliveryUpdate, RetryPolicy, decide, failed
from cad_node.store.deliveries import DueDelivery, claim_due, due_destinations, record_update
from cad_node.store.rulesets import record_audit

logger = logging.getLogger(__name__)

MAX_BATCHES_PER_DESTINATION = 1000
"""A bound on batches per call, so one call cannot loop for ever."""


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did to one delivery."""

    delivery_id: int
    destination: str
    sop_instance_uid: str
    state: DeliveryState
    attempts: int
    status: int | None
    error: str | None
    next_attempt_at: datetime | None = None
    """When a pending delivery is tried again."""


@dataclass(frozen=True)
class DeliveryReport:
    """The deliveries one ``deliver_due`` call attempted, in the order attempted."""

    outcomes: tuple[DeliveryOutcome, ...] = ()

    def count(self, state: DeliveryState) -> int:
        return sum(1 for outcome in self.outcomes if outcome.state is state)

    @property
    def delivered(self) -> int:
        return self.count(DeliveryState.DELIVERED)

    @property
    def delivered_with_warning(self) -> int:
        return self.count(DeliveryState.DELIVERED_WITH_WARNING)

    @property
    def pending(self) -> int:
        """Attempts that failed transiently and will be retried."""
        return self.count(DeliveryState.PENDING)

    @property
    def failed(self) -> int:
        return self.count(DeliveryState.FAILED)


def deliver_due(
    sessions: sessionmaker[Session],
    settings_or_destinations: Settings | Mapping[str, AnyDestinationSettings],
    storage_dir: Path,
    calling_ae_title: str,
    now: datetime,
    *,
    export: ExportSettings | None = None,
) -> DeliveryReport:
    """Send every pending delivery due at ``now``, grouped by destination, and journal each outcome.

    Parameters
    ----------
    sessions
        The journal's session factory.
    settings_or_destinations
        The node settings, or just the destinations by name (then ``export``, or
        its defaults, gives the retry policy and timeouts).
    storage_dir
        The folder result paths are relative to.
    calling_ae_title
        The node's AE title, sent as the Calling AE Title (PS3.8 7.1.1.3).
    now
        The clock's time: due means ``next_attempt_at <= now``; retries are planned from it.
    """
    destinations, export = _destinations_and_export(settings_or_destinations, export)
    run = _Run(
        sessions, storage_dir, calling_ae_title, now, export, RetryPolicy.from_settings(export)
    )
    with sessions() as session:
        names = due_destinations(session, now)
    outcomes: list[DeliveryOutcome] = []
    for name in names:
        outcomes += run.deliver_to(name, destinations.get(name))
    return DeliveryReport(tuple(outcomes))


def _destinations_and_export(
    settings_or_destinations: Settings | Mapping[str, AnyDestinationSettings],
    export: ExportSettings | None,
) -> tuple[Mapping[str, AnyDestinationSettings], ExportSettings]:
    if isinstance(settings_or_destinations, Settings):
        return settings_or_destinations.destinations, export or settings_or_destinations.export
    return settings_or_destinations, export or ExportSettings()


@dataclass(frozen=True)
class _Run:
    """One ``deliver_due`` call: what every batch shares."""

    sessions: sessionmaker[Session]
    storage_dir: Path
    calling_ae_title: str
    now: datetime
    export: ExportSettings
    policy: RetryPolicy

    def deliver_to(
        self, name: str, destination: AnyDestinationSettings | None
    ) -> list[DeliveryOutcome]:
        """Batches to one destination until none is due, or until one needs a retry."""
        outcomes: list[DeliveryOutcome] = []
        for _ in range(MAX_BATCHES_PER_DESTINATION):
            with self.sessions.begin() as session:
                due = claim_due(session, name, self.now, self.export.max_files_per_association)
                if not due:
                    break
                updates = self._attempt(due, name, destination)
                for item, update in zip(due, updates, strict=True):
                    record_update(session, item.delivery_id, update)
                    _audit(session, item, update, self.now)
            batch = [_outcome(item, update) for item, update in zip(due, updates, strict=True)]
            _log_batch(name, batch)
            outcomes += batch
            if any(outcome.state is DeliveryState.PENDING for outcome in batch):
                break  # the destination is struggling: leave the rest for the next sweep
        return outcomes

    def _attempt(
        self, due: list[DueDelivery], name: str, destination: AnyDestinationSettings | None
    ) -> list[DeliveryUpdate]:
        if destination is None:
            error = f"destination {name!r} is not configured (removed from the config?)"
            return [failed(error, item.attempts, self.now) for item in due]
        paths = [self.storage_dir / item.path for item in due]
        sent = send_batch(destination, self.calling_ae_title, paths, self.export.timeouts)
        updates = [
            decide(outcome, item.attempts, self.policy, self.now)
            for item, outcome in zip(due, sent, strict=True)
        ]
        return awaiting_commitment(updates, destination, self.now)


SENT_STATES = frozenset(
    {DeliveryState.DELIVERED, DeliveryState.DELIVERED_WITH_WARNING, DeliveryState.SENT}
)


def _audit(session: Session, item: DueDelivery, update: DeliveryUpdate, now: datetime) -> None:
    """The attempt's "sent" or "failed" audit event, in the transaction of its outcome."""
    record_audit(
        session,
        actor="node",
        action="delivery.sent" if update.state in SENT_STATES else "delivery.failed",
        target=f"delivery {item.delivery_id}",
        now=now,
        detail={
            "destination": item.destination,
            "sop_instance_uid": item.sop_instance_uid,
            "state": update.state.value,
            "status": update.last_status,
            "attempt": update.attempts,
            "will_retry": update.state is DeliveryState.PENDING,
        },
    )


def _outcome(item: DueDelivery, update: DeliveryUpdate) -> DeliveryOutcome:
    return DeliveryOutcome(
        delivery_id=item.delivery_id,
        destination=item.destination,
        sop_instance_uid=item.sop_instance_uid,
        state=update.state,
        attempts=update.attempts,
        status=update.last_status,
        error=update.last_error,
        next_attempt_at=update.next_attempt_at if update.state is DeliveryState.PENDING else None,
    )


def _log_batch(name: str, batch: list[DeliveryOutcome]) -> None:
    counts = {state: sum(1 for o in batch if o.state is state) for state in DeliveryState}
    logger.info(
        "export to %s: %d delivered, %d with warning, %d to retry, %d failed%s",
        name,
        counts[DeliveryState.DELIVERED],
        counts[DeliveryState.DELIVERED_WITH_WARNING],
        counts[DeliveryState.PENDING],
        counts[DeliveryState.FAILED],
        f", {counts[DeliveryState.SENT]} stored, commitment awaited"
        if counts[DeliveryState.SENT]
        else "",
    )
    _log_retries(name, [o for o in batch if o.state is DeliveryState.PENDING])
    for outcome in batch:
        if outcome.state is DeliveryState.FAILED:
            logger.error(
                "delivery %d of %s to %s failed: %s",
                outcome.delivery_id,
                outcome.sop_instance_uid,
                name,
                outcome.error,
            )


def _log_retries(name: str, retries: list[DeliveryOutcome]) -> None:
    """One WARNING per attempt that will be retried (a PACS down, busy, refusing), naming
    the reason once and when the next attempt is; a destination down is expected now
    and then, so not an ERROR (that is for a delivery given up)."""
    if not retries:
        return
    reasons = sorted({outcome.error or "no reason given" for outcome in retries})
    next_attempt = min(
        (o.next_attempt_at for o in retries if o.next_attempt_at is not None), default=None
    )
    logger.warning(
        "export to %s: %d deliver%s to retry%s (attempt %d): %s",
        name,
        len(retries),
        "y" if len(retries) == 1 else "ies",
        f" at {next_attempt:%Y-%m-%d %H:%M:%S} UTC" if next_attempt else "",
        max(outcome.attempts for outcome in retries),
        "; ".join(reasons),
    )

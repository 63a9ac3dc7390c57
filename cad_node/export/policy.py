"""From a C-STORE outcome to the next state of a delivery: retry backoff, give up, done.

Pure functions on frozen data; the clock is passed in.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from cad_node.config import ExportSettings
from cad_node.domain.states import DeliveryState
from cad_node.export.outcomes import OutcomeKind, StoreOutcome


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with a cap, and a maximum number of attempts."""

    initial_backoff: timedelta = timedelta(seconds=5)
    max_backoff: timedelta = timedelta(seconds=300)
    max_attempts: int = 20

    def __post_init__(self) -> None:
        if self.initial_backoff <= timedelta(0) or self.max_backoff < self.initial_backoff:
            raise ValueError("backoffs must be positive and max_backoff >= initial_backoff")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    @classmethod
    def from_settings(cls, export: ExportSettings) -> "RetryPolicy":
        return cls(
            initial_backoff=timedelta(seconds=export.initial_backoff_seconds),
            max_backoff=timedelta(seconds=export.max_backoff_seconds),
            max_attempts=export.max_attempts,
        )

    def backoff(self, attempts: int) -> timedelta:
        """The wait after ``attempts`` failed attempts: initial × 2^(attempts-1), capped."""
        exponent = max(attempts - 1, 0)
        if exponent >= 32:  # 2**32 × any initial backoff exceeds any sensible cap
            return self.max_backoff
        grown: timedelta = self.initial_backoff * (2**exponent)
        return min(grown, self.max_backoff)


@dataclass(frozen=True)
class DeliveryUpdate:
    """The new values of a delivery row after one attempt."""

    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None


def decide(
    outcome: StoreOutcome, attempts_before: int, policy: RetryPolicy, now: datetime
) -> DeliveryUpdate:
    """The delivery's next state after ``outcome`` (PS3.4 Annex B.2.3 status classes).

    Success and warning are delivered; a retryable outcome waits
    ``policy.backoff(attempts)`` unless the attempts are used up, then fails.
    """
    attempts = attempts_before + 1
    if outcome.kind is OutcomeKind.SUCCESS:
        return _update(DeliveryState.DELIVERED, attempts, now, outcome, delivered_at=now)
    if outcome.kind is OutcomeKind.WARNING:
        return _update(DeliveryState.DELIVERED_WITH_WARNING, attempts, now, outcome, now)
    if outcome.kind is OutcomeKind.RETRY and attempts < policy.max_attempts:
        return _update(DeliveryState.PENDING, attempts, now + policy.backoff(attempts), outcome)
    error = outcome.error
    if outcome.kind is OutcomeKind.RETRY:
        error = f"gave up after {attempts} attempts; last: {outcome.error}"
    return DeliveryUpdate(DeliveryState.FAILED, attempts, now, outcome.status, error, None)


def failed(error: str, attempts_before: int, now: datetime) -> DeliveryUpdate:
    """A permanent failure found before any attempt (an unknown destination, say)."""
    return DeliveryUpdate(DeliveryState.FAILED, attempts_before, now, None, error, None)


def _update(
    state: DeliveryState,
    attempts: int,
    next_attempt_at: datetime,
    outcome: StoreOutcome,
    delivered_at: datetime | None = None,
) -> DeliveryUpdate:
    return DeliveryUpdate(
        state, attempts, next_attempt_at, outcome.status, outcome.error, delivered_at
    )

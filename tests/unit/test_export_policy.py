"""C-STORE status classes and the retry policy (pure functions, a fixed clock)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cad_node.config import ExportSettings
from cad_node.domain.states import DeliveryState
from cad_node.export.outcomes import OutcomeKind, StoreOutcome, classify_status
from cad_node.export.policy import RetryPolicy, decide, failed

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(timedelta(seconds=5), timedelta(seconds=300), max_attempts=4)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (None, OutcomeKind.RETRY),
        (0x0000, OutcomeKind.SUCCESS),
        (0xB000, OutcomeKind.WARNING),
        (0xB007, OutcomeKind.WARNING),
        (0xB006, OutcomeKind.WARNING),
        (0xA700, OutcomeKind.RETRY),
        (0xA7FF, OutcomeKind.RETRY),
        (0xA900, OutcomeKind.FAIL),
        (0xC000, OutcomeKind.FAIL),
        (0xC211, OutcomeKind.FAIL),
        (0x0122, OutcomeKind.FAIL),
        (0x0001, OutcomeKind.FAIL),
        (0xB100, OutcomeKind.FAIL),
    ],
)
def test_classify_status(status: int | None, kind: OutcomeKind) -> None:
    assert classify_status(status) is kind


def test_backoff_doubles_up_to_the_cap() -> None:
    seconds = [POLICY.backoff(n).total_seconds() for n in range(1, 10)]
    assert seconds == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert POLICY.backoff(10_000) == timedelta(seconds=300)


def test_policy_from_settings() -> None:
    export = ExportSettings(initial_backoff_seconds=1, max_backoff_seconds=2, max_attempts=3)
    assert RetryPolicy.from_settings(export) == RetryPolicy(
        timedelta(seconds=1), timedelta(seconds=2), 3
    )


@pytest.mark.parametrize(
    "arguments",
    [
        (timedelta(0), timedelta(seconds=1), 1),
        (timedelta(seconds=10), timedelta(seconds=1), 1),
        (timedelta(seconds=1), timedelta(seconds=1), 0),
    ],
)
def test_invalid_policies_are_refused(arguments: tuple[timedelta, timedelta, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(*arguments)


def outcome(kind: OutcomeKind, status: int | None = None, error: str | None = None) -> StoreOutcome:
    return StoreOutcome(Path("r.dcm"), "1.2.3", kind, status, error)


def test_success_is_delivered() -> None:
    update = decide(outcome(OutcomeKind.SUCCESS, 0), attempts_before=2, policy=POLICY, now=NOW)
    assert (update.state, update.attempts, update.delivered_at) == (DeliveryState.DELIVERED, 3, NOW)
    assert (update.last_status, update.last_error) == (0, None)


def test_warning_is_delivered_with_warning() -> None:
    update = decide(outcome(OutcomeKind.WARNING, 0xB000, "coerced"), 0, POLICY, NOW)
    assert update.state is DeliveryState.DELIVERED_WITH_WARNING
    assert (update.last_status, update.last_error, update.delivered_at) == (0xB000, "coerced", NOW)


def test_retry_waits_the_backoff_of_its_attempt() -> None:
    update = decide(outcome(OutcomeKind.RETRY, 0xA700, "full"), 1, POLICY, NOW)
    assert (update.state, update.attempts) == (DeliveryState.PENDING, 2)
    assert update.next_attempt_at == NOW + timedelta(seconds=10)
    assert (update.last_status, update.last_error, update.delivered_at) == (0xA700, "full", None)


def test_retry_gives_up_after_max_attempts() -> None:
    update = decide(outcome(OutcomeKind.RETRY, None, "no association"), 3, POLICY, NOW)
    assert (update.state, update.attempts) == (DeliveryState.FAILED, 4)
    assert update.last_error == "gave up after 4 attempts; last: no association"


def test_failure_is_permanent_at_once() -> None:
    update = decide(outcome(OutcomeKind.FAIL, 0xC000, "cannot understand"), 0, POLICY, NOW)
    assert (update.state, update.attempts, update.last_status) == (DeliveryState.FAILED, 1, 0xC000)


def test_failed_before_any_attempt_keeps_the_count() -> None:
    update = failed("destination 'old' is not configured", 2, NOW)
    assert (update.state, update.attempts, update.last_status) == (DeliveryState.FAILED, 2, None)

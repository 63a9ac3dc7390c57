"""The node's clock, injected everywhere time matters so tests never sleep."""

import threading
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


SIGNAL_CHECK_SECONDS = 0.5
"""How often a main thread waiting in :func:`wait_until_set` lets Python run signal handlers."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def wait_until_set(event: threading.Event) -> None:
    """Block until ``event`` is set, in slices of :data:`SIGNAL_CHECK_SECONDS`.

    The kernel may hand SIGTERM to any thread, and a main thread blocked
    without a timeout would not run Python's handler until something else woke it.
    """
    while not event.wait(SIGNAL_CHECK_SECONDS):
        pass

"""Destination health: a C-ECHO (PS3.7 9.3.5) to every destination in force, now and then.

The node's health sweep calls :meth:`DestinationMonitor.check_all` every
``health.echo_interval_seconds``; the last outcome per destination is kept in the
node's memory (not the journal: it says how the peer answers now, not a history) and
shown by the dashboard and the metric ``cad_node_destination_up``. A destination
going down is logged once, as a WARNING, and its return once, at INFO.

Example::

    monitor = DestinationMonitor(book.current, "CADNODE", export.timeouts, utc_now)
    monitor.check_all()
    monitor.current()["pacs"].ok  # False while the PACS is down
"""

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cad_node.admin.echo import EchoOutcome, echo
from cad_node.config import AnyDestinationSettings, TimeoutSettings

logger = logging.getLogger(__name__)

Echo = Callable[[AnyDestinationSettings, str, TimeoutSettings], EchoOutcome]


@dataclass(frozen=True, slots=True)
class DestinationHealth:
    """The last C-ECHO of one destination."""

    destination: str
    ok: bool
    """Whether it answered the C-ECHO with Success (0x0000)."""
    detail: str
    """``success``, or why not (``cannot connect (down or unreachable)``, a status)."""
    seconds: float
    """Round trip: association, C-ECHO and release."""
    checked_at: datetime


class DestinationMonitor:
    """C-ECHOes every destination ``destinations()`` names; keeps the last outcome of each."""

    def __init__(
        self,
        destinations: Callable[[], Mapping[str, AnyDestinationSettings]],
        calling_ae_title: str,
        timeouts: TimeoutSettings,
        clock: Callable[[], datetime],
        *,
        echo_one: Echo = echo,
    ) -> None:
        self._destinations = destinations
        self._calling_ae_title = calling_ae_title
        self._timeouts = timeouts
        self._clock = clock
        self._echo = echo_one
        self._lock = threading.Lock()
        self._health: dict[str, DestinationHealth] = {}

    def current(self) -> dict[str, DestinationHealth]:
        """The last outcome per destination checked (a destination removed is dropped)."""
        with self._lock:
            return dict(self._health)

    def check_all(self) -> dict[str, DestinationHealth]:
        """C-ECHO each destination in force, one after the other; the outcomes by name."""
        destinations = dict(self._destinations())
        checked = {name: self.check(name, d) for name, d in sorted(destinations.items())}
        with self._lock:
            for name in set(self._health) - set(destinations):
                del self._health[name]
        return checked

    def check(self, name: str, destination: AnyDestinationSettings) -> DestinationHealth:
        """One C-ECHO to ``destination``, kept as its health; a change of state is logged."""
        outcome = self._echo(destination, self._calling_ae_title, self._timeouts)
        health = DestinationHealth(
            destination=name,
            ok=outcome.ok,
            detail=outcome.detail,
            seconds=outcome.seconds,
            checked_at=self._clock(),
        )
        with self._lock:
            before = self._health.get(name)
            self._health[name] = health
        _log_change(before, health)
        return health


def _log_change(before: DestinationHealth | None, after: DestinationHealth) -> None:
    """One line when a destination goes down (WARNING) or comes back (INFO), none otherwise."""
    if not after.ok and (before is None or before.ok):
        logger.warning(
            "destination %s does not answer C-ECHO: %s; deliveries to it wait and retry",
            after.destination,
            after.detail,
        )
    elif after.ok and before is not None and not before.ok:
        logger.info("destination %s answers C-ECHO again", after.destination)

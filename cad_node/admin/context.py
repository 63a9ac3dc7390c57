"""What the admin API needs from a running node, and nothing more."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from sqlalchemy.orm import Session, sessionmaker

from cad_node.config import Settings
from cad_node.export.health import DestinationHealth
from cad_node.ingest.incoming import StoreService
from cad_node.models.registry import ModelRegistry
from cad_node.monitoring.drift import DriftWatch
from cad_node.store.rulesets import RuleBook


@dataclass(frozen=True)
class AdminContext:
    """The parts of a node the admin API reads and changes."""

    settings: Settings
    sessions: sessionmaker[Session]
    rule_book: RuleBook
    registry: ModelRegistry
    clock: Callable[[], datetime]
    ready: Callable[[], bool]
    """Whether the node receives images (its Storage SCP is listening)."""
    wake_worker: Callable[[], None] = lambda: None
    """Tell the worker a job was queued (retry), so it does not wait for the next sweep."""
    destination_health: Callable[[], Mapping[str, DestinationHealth]] = lambda: {}
    """The last C-ECHO of each destination (the node's health sweep)."""
    stow_service: StoreService | None = None
    """Where STOW-RS instances go (the Storage SCP's spool and journal); ``None``: the
    STOW-RS endpoint answers 503."""

    @cached_property
    def model_drift(self) -> DriftWatch:
        """Each model's drift for /metrics and the banner, recomputed in the background
        every ``monitoring.check_interval_seconds`` (:class:`DriftWatch`)."""
        return DriftWatch(self.sessions, self.clock, self.settings.monitoring)

"""What the admin changes on a live node besides the rules: model switches and destinations.

Both live in the journal, so every part of the node (and every ``cad-node
worker`` sharing the journal) reads the current value at its next step,
without restart. Destinations are seeded from the config on the journal's
first start, as the rules are; afterwards the journal is in force.
"""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cad_node.config import AnyDestinationSettings, format_validation_error
from cad_node.domain.states import ResultKind
from cad_node.errors import ConfigError
from cad_node.routing.rules import RuleMode
from cad_node.store.schema import DestinationRow, ModelSetting

logger = logging.getLogger(__name__)

SEED_AUTHOR = "config"

_DESTINATION: TypeAdapter[AnyDestinationSettings] = TypeAdapter(AnyDestinationSettings)
"""Checks a destination of either type (C-STORE or STOW-RS) as the config does."""


# -- model switches -----------------------------------------------------------------------


def model_mode(session: Session, model_name: str) -> RuleMode:
    """The admin's switch for ``model_name``; ``active`` when never switched."""
    row = session.get(ModelSetting, model_name)
    return RuleMode.ACTIVE if row is None else RuleMode(row.mode)


def model_modes(session: Session) -> dict[str, RuleMode]:
    """Every model switched at least once, with its switch."""
    return {row.model_name: RuleMode(row.mode) for row in session.scalars(select(ModelSetting))}


def set_model_mode(
    session: Session, model_name: str, mode: RuleMode, changed_by: str, now: datetime
) -> RuleMode:
    """Switch ``model_name`` to ``mode`` (the caller commits); the mode it had before."""
    row = session.get(ModelSetting, model_name)
    before = RuleMode.ACTIVE if row is None else RuleMode(row.mode)
    if row is None:
        row = ModelSetting(model_name=model_name, mode=mode.value, changed_by=changed_by)
        session.add(row)
    row.mode = mode.value
    row.changed_by = changed_by
    row.changed_at = now
    return before


# -- destinations -------------------------------------------------------------------------


def destination_data(destination: AnyDestinationSettings) -> dict[str, object]:
    """``destination`` as a JSON-ready mapping, in the shape the YAML config takes."""
    return destination.model_dump(mode="json", exclude_none=True)


def parse_destination(data: Mapping[str, object], where: str) -> AnyDestinationSettings:
    """``data`` checked by the config's own model; ConfigError naming the field otherwise."""
    try:
        return _DESTINATION.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from exc


def current_destinations(session: Session) -> dict[str, AnyDestinationSettings]:
    """The destinations in force (not deleted), by name."""
    query = select(DestinationRow).where(DestinationRow.deleted_at.is_(None))
    return {
        row.name: parse_destination(row.settings, f"destination {row.name}")
        for row in session.scalars(query.order_by(DestinationRow.name))
    }


def seed_destinations(
    session: Session, destinations: Mapping[str, AnyDestinationSettings], now: datetime
) -> bool:
    """Write the config's destinations when the journal has never held any; whether it did."""
    if session.scalars(select(DestinationRow.name).limit(1)).first() is not None:
        return False
    for name, destination in destinations.items():
        session.add(
            DestinationRow(
                name=name,
                settings=destination_data(destination),
                changed_by=SEED_AUTHOR,
                changed_at=now,
                deleted_at=None,
            )
        )
    session.flush()
    return True


def save_destination(
    session: Session, name: str, destination: AnyDestinationSettings, changed_by: str, now: datetime
) -> bool:
    """Add or replace the destination ``name`` (the caller commits); whether it is new."""
    row = session.get(DestinationRow, name)
    created = row is None or row.deleted_at is not None
    if row is None:
        row = DestinationRow(name=name, settings={}, changed_by=changed_by, changed_at=now)
        session.add(row)
    row.settings = destination_data(destination)
    row.changed_by = changed_by
    row.changed_at = now
    row.deleted_at = None
    return created


def delete_destination(session: Session, name: str, changed_by: str, now: datetime) -> bool:
    """Mark ``name`` deleted (the caller commits); False when there was no such destination."""
    row = session.get(DestinationRow, name)
    if row is None or row.deleted_at is not None:
        return False
    row.changed_by = changed_by
    row.changed_at = now
    row.deleted_at = now
    return True


def result_kinds_of(
    destinations: Mapping[str, AnyDestinationSettings],
) -> dict[str, tuple[ResultKind, ...]]:
    """For each destination, the kinds of result it receives."""
    return {name: tuple(ResultKind(k) for k in d.results) for name, d in destinations.items()}


@dataclass
class DestinationBook:
    """The destinations in force, read from the journal at each use (a change needs no restart)."""

    sessions: sessionmaker[Session]
    clock: Callable[[], datetime]

    def seed(self, destinations: Mapping[str, AnyDestinationSettings]) -> None:
        """Seed the config's destinations on the journal's first start."""
        with self.sessions.begin() as session:
            if seed_destinations(session, destinations, self.clock()):
                logger.info("destinations seeded from the configuration (%d)", len(destinations))
            elif dict(current_destinations(session)) != dict(destinations):
                logger.warning(
                    "the destinations in the configuration file differ from those in the "
                    "journal, which stay in force: see them with cad-node config diff, put "
                    "the file in force with cad-node config apply, or edit the destinations "
                    "through the admin API"
                )

    def current(self) -> dict[str, AnyDestinationSettings]:
        with self.sessions() as session:
            return current_destinations(session)

"""Routing rules versioned in the journal, and the audit log of admin changes.

Every change to the rules writes a whole new rule set version (who, when, what
changed); the highest version is in force. A node seeds version 1 from its
config on first start, and afterwards reads the journal, so a change made
through the admin API takes effect at the next assembly sweep, without restart.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cad_node.config import parse_rules
from cad_node.routing.rules import Rule
from cad_node.store.schema import AuditEvent, RuleSetVersion

logger = logging.getLogger(__name__)

SEED_AUTHOR = "config"


def rules_as_data(rules: Sequence[Rule]) -> list[dict[str, Any]]:
    """``rules`` as JSON-ready mappings, in the shape the YAML rules file takes."""
    return [rule.model_dump(mode="json", by_alias=True, exclude_none=True) for rule in rules]


def latest_version(session: Session) -> RuleSetVersion | None:
    """The rule set version in force, or ``None`` before the journal was seeded."""
    query = select(RuleSetVersion).order_by(RuleSetVersion.version.desc()).limit(1)
    return session.scalars(query).first()


def version_number(session: Session) -> int:
    """The number of the version in force; 0 before seeding."""
    return int(session.scalar(select(func.max(RuleSetVersion.version))) or 0)


def rules_of(version: RuleSetVersion) -> tuple[Rule, ...]:
    """The checked rules a stored version holds (ConfigError if the journal was edited badly)."""
    return parse_rules(list(version.rules), f"rule set version {version.version}")


def save_version(
    session: Session, rules: Sequence[Rule], author: str, change: str, now: datetime
) -> RuleSetVersion:
    """Write ``rules`` as the next version, in force once the caller commits."""
    version = RuleSetVersion(
        version=version_number(session) + 1,
        rules=rules_as_data(rules),
        author=author,
        change=change,
        created_at=now,
    )
    session.add(version)
    session.flush()
    return version


def seed_if_empty(session: Session, rules: Sequence[Rule], now: datetime) -> bool:
    """Write the config's rules as version 1 when the journal has none; whether it did."""
    if version_number(session):
        return False
    save_version(session, rules, SEED_AUTHOR, "seeded from the configuration", now)
    return True


def record_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one admin change to the audit log (the caller commits with the change itself)."""
    event = AuditEvent(at=now, actor=actor, action=action, target=target, detail=detail or {})
    session.add(event)
    return event


@dataclass
class RuleBook:
    """The rules in force, read from the journal; cached until the version number changes."""

    sessions: sessionmaker[Session]
    clock: Callable[[], datetime]
    _cached: tuple[int, tuple[Rule, ...]] | None = None

    def seed(self, rules: Sequence[Rule]) -> None:
        """Seed version 1 from the config's rules on the journal's first start."""
        with self.sessions.begin() as session:
            if seed_if_empty(session, rules, self.clock()):
                logger.info("routing rules seeded from the configuration (%d rules)", len(rules))
            elif self._differs(session, rules):
                logger.warning(
                    "the rules in the configuration file differ from rule set version %d in "
                    "the journal, which stays in force: see them with cad-node config diff, "
                    "put the file in force with cad-node config apply, or edit the rules "
                    "through the admin API",
                    version_number(session),
                )

    def _differs(self, session: Session, rules: Sequence[Rule]) -> bool:
        latest = latest_version(session)
        return latest is not None and latest.rules != rules_as_data(rules)

    def current(self) -> tuple[Rule, ...]:
        """The rules of the highest version (empty before seeding)."""
        with self.sessions() as session:
            number = version_number(session)
            if self._cached is not None and self._cached[0] == number:
                return self._cached[1]
            latest = latest_version(session)
            rules = () if latest is None else rules_of(latest)
        self._cached = (number, rules)
        return rules

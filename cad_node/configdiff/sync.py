"""node.yaml's rules and destinations against the journal's: read, compare, apply.

Applying goes through the same store functions as the admin API
(:func:`~cad_node.store.rulesets.save_version`,
:func:`~cad_node.store.model_modes_and_destinations.save_destination` and
:func:`~cad_node.store.model_modes_and_destinations.delete_destination`) and writes the same audit
events, in one transaction with the change.
"""

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from cad_node.config import Settings
from cad_node.configdiff.diff import FILE_LABEL, ConfigDiff, compare
from cad_node.errors import RuleError
from cad_node.export.dispatch import check_destination
from cad_node.routing.rules import check_rule_set, unknown_references
from cad_node.store.model_modes_and_destinations import (
    current_destinations,
    delete_destination,
    destination_data,
    save_destination,
)
from cad_node.store.rulesets import (
    latest_version,
    record_audit,
    rules_as_data,
    rules_of,
    save_version,
)

APPLY_CHANGE = "applied from the configuration file"


def file_rules(settings: Settings) -> list[dict[str, Any]]:
    return rules_as_data(settings.rules)


def file_destinations(settings: Settings) -> dict[str, dict[str, Any]]:
    return {name: destination_data(d) for name, d in settings.destinations.items()}


def journal_rules(session: Session) -> list[dict[str, Any]]:
    """The rules in force as data (empty before the journal was seeded)."""
    latest = latest_version(session)
    return [] if latest is None else rules_as_data(rules_of(latest))


def journal_destinations(session: Session) -> dict[str, dict[str, Any]]:
    return {name: destination_data(d) for name, d in current_destinations(session).items()}


def diff_against_journal(
    session: Session, settings: Settings, file_label: str = FILE_LABEL
) -> ConfigDiff:
    """What ``settings`` (node.yaml) says against what the journal holds."""
    return compare(
        file_rules(settings),
        journal_rules(session),
        file_destinations(settings),
        journal_destinations(session),
        file_label=file_label,
    )


def check_applicable(settings: Settings, installed_models: Collection[str]) -> None:
    """The checks the admin API makes on a save, beyond those of loading node.yaml.

    Raises ``ValueError`` (rule set), :class:`~cad_node.errors.RuleError` (a rule naming a
    model not installed) or :class:`~cad_node.errors.ConfigError` (TLS files).
    """
    check_rule_set(tuple(settings.rules))
    problems = unknown_references(settings.rules, installed_models, settings.destinations)
    if problems:
        raise RuleError("; ".join(problems))
    for destination in settings.destinations.values():
        check_destination(destination)


def apply_to_journal(
    session: Session,
    settings: Settings,
    actor: str,
    now: datetime,
    *,
    source: str,
    installed_models: Collection[str],
) -> list[str]:
    """Make the journal hold node.yaml's rules and destinations (the caller commits).

    Only what differs is written: a new rule set version when the rules differ, a save
    per added or changed destination, a delete per destination node.yaml lacks; each
    with its audit event, as the admin API writes them. The changes made, one a line.
    """
    check_applicable(settings, installed_models)
    done: list[str] = []
    in_journal = current_destinations(session)
    for name, destination in settings.destinations.items():
        if in_journal.get(name) == destination:
            continue
        created = save_destination(session, name, destination, actor, now)
        record_audit(
            session,
            actor=actor,
            action="destination.create" if created else "destination.update",
            target=f"destination {name}",
            now=now,
            detail={**destination_data(destination), "source": source},
        )
        done.append(f"destination {name}: {'added' if created else 'updated'}")
    for name in in_journal:
        if name not in settings.destinations:
            delete_destination(session, name, actor, now)
            record_audit(
                session,
                actor=actor,
                action="destination.delete",
                target=f"destination {name}",
                now=now,
                detail={"source": source},
            )
            done.append(f"destination {name}: deleted")
    if journal_rules(session) != file_rules(settings):
        version = save_version(session, settings.rules, actor, APPLY_CHANGE, now)
        record_audit(
            session,
            actor=actor,
            action="rules.apply",
            target=f"version {version.version}",
            now=now,
            detail={"version": version.version, "source": source},
        )
        done.append(f"rules: saved as version {version.version}")
    return done

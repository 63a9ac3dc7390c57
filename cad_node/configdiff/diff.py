"""Compare the rules and destinations of node.yaml with those the journal holds.

Framework-free: both sides are plain JSON-ready data (rules as a list of mappings in
the shape ``rules.yaml`` takes, destinations as name -> settings mapping), so the
comparison can be tested on literals. The result is a list of plain-language changes
and a unified diff of the YAML, journal first ("what applying node.yaml would do").
"""

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

RuleData = Mapping[str, Any]
DestinationData = Mapping[str, Any]

JOURNAL_LABEL = "journal"
FILE_LABEL = "node.yaml"


@dataclass(frozen=True)
class ConfigDiff:
    """What differs between node.yaml and the journal (empty tuples: nothing)."""

    rule_changes: tuple[str, ...]
    destination_changes: tuple[str, ...]
    unified: tuple[str, ...]
    """A unified diff of the YAML of both sides (journal ``---``, node.yaml ``+++``)."""
    file_label: str = FILE_LABEL

    @property
    def differs(self) -> bool:
        return bool(self.rule_changes or self.destination_changes)

    @property
    def sections(self) -> tuple[str, ...]:
        """``rules`` and/or ``destinations``: the parts that differ."""
        return tuple(
            name
            for name, changes in (
                ("rules", self.rule_changes),
                ("destinations", self.destination_changes),
            )
            if changes
        )

    def text(self) -> str:
        """The changes, then the unified diff; one line when nothing differs."""
        if not self.differs:
            return f"{self.file_label} and the journal hold the same rules and destinations"
        lines = [f"{self.file_label} differs from the journal:"]
        lines += [f"  {change}" for change in (*self.rule_changes, *self.destination_changes)]
        return "\n".join([*lines, "", *self.unified])


def compare(
    file_rules: Sequence[RuleData],
    journal_rules: Sequence[RuleData],
    file_destinations: Mapping[str, DestinationData],
    journal_destinations: Mapping[str, DestinationData],
    *,
    file_label: str = FILE_LABEL,
) -> ConfigDiff:
    """The difference between node.yaml (``file_*``) and the journal (``journal_*``)."""
    journal_doc = _document(journal_rules, journal_destinations)
    file_doc = _document(file_rules, file_destinations)
    unified = tuple(
        line.rstrip("\n")
        for line in difflib.unified_diff(
            journal_doc, file_doc, fromfile=JOURNAL_LABEL, tofile=file_label
        )
    )
    return ConfigDiff(
        rule_changes=tuple(compare_rules(file_rules, journal_rules)),
        destination_changes=tuple(compare_destinations(file_destinations, journal_destinations)),
        unified=unified,
        file_label=file_label,
    )


def compare_rules(file_rules: Sequence[RuleData], journal_rules: Sequence[RuleData]) -> list[str]:
    """Rules by name (only on one side), content (which keys differ) and order."""
    in_file = {str(rule.get("name")): rule for rule in file_rules}
    in_journal = {str(rule.get("name")): rule for rule in journal_rules}
    changes: list[str] = []
    for name, rule in in_file.items():
        if name not in in_journal:
            changes.append(f"rule {name}: only in {FILE_LABEL}")
        elif rule != in_journal[name]:
            keys = _differing_keys(rule, in_journal[name])
            changes.append(f"rule {name}: changed ({', '.join(keys)})")
    changes += [f"rule {name}: only in the journal" for name in in_journal if name not in in_file]
    common_file = [name for name in in_file if name in in_journal]
    common_journal = [name for name in in_journal if name in in_file]
    if common_file != common_journal:
        changes.append(
            f"rules: order differs ({FILE_LABEL}: {', '.join(common_file)}; "
            f"journal: {', '.join(common_journal)})"
        )
    return changes


def compare_destinations(
    file_destinations: Mapping[str, DestinationData],
    journal_destinations: Mapping[str, DestinationData],
) -> list[str]:
    """Destinations by name (only on one side) and each setting (journal -> node.yaml)."""
    changes: list[str] = []
    for name in sorted(set(file_destinations) | set(journal_destinations)):
        if name not in journal_destinations:
            changes.append(f"destination {name}: only in {FILE_LABEL}")
        elif name not in file_destinations:
            changes.append(f"destination {name}: only in the journal")
        else:
            file_side, journal_side = file_destinations[name], journal_destinations[name]
            for key in _differing_keys(file_side, journal_side):
                before = _inline(journal_side.get(key))
                after = _inline(file_side.get(key))
                changes.append(f"destination {name}: {key}: journal {before}, {FILE_LABEL} {after}")
    return changes


def _differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = [*a, *(key for key in b if key not in a)]
    return [key for key in keys if a.get(key) != b.get(key)]


def _inline(value: Any) -> str:
    if value is None:
        return "(not set)"
    return json.dumps(value, ensure_ascii=False)


def _document(rules: Sequence[RuleData], destinations: Mapping[str, DestinationData]) -> list[str]:
    data = {
        "destinations": {name: dict(destinations[name]) for name in sorted(destinations)},
        "rules": [dict(rule) for rule in rules],
    }
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    return str(text).splitlines(keepends=True)

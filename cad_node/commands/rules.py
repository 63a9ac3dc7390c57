"""``cad-node rules test FOLDER`` and ``cad-node rules check``: try the routing rules offline.

``rules test`` reads the headers of every DICOM file under a folder, groups them by
series, and prints for each series which rule matched and, for every rule, why it
did or did not. Nothing is sent and the journal is not touched.
"""

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from cad_node.config import load_settings
from cad_node.errors import RuleError
from cad_node.models.registry import ModelRegistry
from cad_node.routing.attributes import (
    ROUTING_KEYWORDS,
    JsonValue,
    extract_attributes,
    series_attributes,
)
from cad_node.routing.match import RouteDecision, route
from cad_node.routing.rules import Rule, keywords_of, unknown_references

UNKNOWN_CALLING_AE = "-"


@dataclass(frozen=True)
class SeriesHeaders:
    """The routing attributes of one series found in a folder."""

    series_instance_uid: str
    attributes: dict[str, JsonValue]
    instance_count: int


def add_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``rules test`` and ``rules check`` to the ``cad-node`` command line."""
    rules = subparsers.add_parser("rules", help="check and test the routing rules")
    commands = rules.add_subparsers(title="rules commands", required=True)
    test = commands.add_parser(
        "test", help="show which rule each series in a folder of DICOM files matches, and why"
    )
    test.add_argument("folder", type=Path, help="folder searched recursively for DICOM files")
    _config_argument(test)
    test.add_argument(
        "--calling-ae",
        default=UNKNOWN_CALLING_AE,
        help="the CallingAETitle the rules see (default: %(default)s)",
    )
    test.set_defaults(func=run_test)
    check = commands.add_parser("check", help="validate the rules of a config and list them")
    _config_argument(check)
    check.set_defaults(func=run_check)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="node YAML config (default: embedded defaults)"
    )


def run_check(args: argparse.Namespace) -> int:
    """Print each rule of the config, by priority; a bad config raises ConfigError, a rule
    naming a model not installed (shipped or in ``models_dir``, read now) or a destination
    not configured raises RuleError naming them and the names known."""
    settings = load_settings(args.config)
    installed = ModelRegistry([settings.resolved_models_dir]).entries()
    problems = unknown_references(settings.rules, installed, settings.destinations)
    if problems:
        raise RuleError("; ".join(problems))
    print(f"{len(settings.rules)} rule(s) valid")
    for rule in sorted(settings.rules, key=lambda rule: -rule.priority):
        targets = ", ".join(rule.destinations) or "-"
        print(f"  {rule.priority:>5}  {rule.mode:<6}  {rule.name}: {rule.model} -> {targets}")
    _warn_unrecorded_keywords(settings.rules)
    return 0


def run_test(args: argparse.Namespace) -> int:
    """Route every series under ``args.folder`` and print the decisions; 1 if none found."""
    settings = load_settings(args.config)
    folder: Path = args.folder
    if not folder.is_dir():
        print(f"{folder}: not a folder")
        return 1
    series, skipped = read_series(folder, args.calling_ae)
    if not series:
        print(f"{folder}: no DICOM files found ({skipped} other files)")
        return 1
    print(f"{len(series)} series in {folder} ({skipped} non-DICOM files skipped)")
    for headers in series:
        print()
        print(render_series(headers, route(headers.attributes, settings.rules)))
    _warn_unrecorded_keywords(settings.rules)
    return 0


def read_series(folder: Path, calling_ae_title: str) -> tuple[list[SeriesHeaders], int]:
    """The series under ``folder`` (headers only) and the count of files that are not DICOM."""
    attributes: dict[str, dict[str, JsonValue]] = {}
    counts: dict[str, int] = {}
    skipped = 0
    for path in _files(folder):
        try:
            dataset = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            skipped += 1
            continue
        uid = str(dataset.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        found = extract_attributes(dataset, calling_ae_title)
        attributes[uid] = series_attributes(attributes[uid], found) if uid in attributes else found
        counts[uid] = counts.get(uid, 0) + 1
    series = [SeriesHeaders(uid, attributes[uid], counts[uid]) for uid in sorted(attributes)]
    return series, skipped


def _files(folder: Path) -> Iterator[Path]:
    return (path for path in sorted(folder.rglob("*")) if path.is_file())


def render_series(headers: SeriesHeaders, decision: RouteDecision) -> str:
    """The series' identity, the decision and every rule's explanation, indented."""
    attributes = headers.attributes
    description = attributes.get("SeriesDescription") or "(no description)"
    lines = [
        f"series {headers.series_instance_uid}",
        f"  modality {attributes.get('Modality', '?')}, {description}, "
        f"{headers.instance_count} instance(s)",
        f"  {decision.summary()}",
    ]
    for explanation in decision.explanations:
        lines.extend("  " + line for line in explanation.text().splitlines())
    return "\n".join(lines)


def _warn_unrecorded_keywords(rules: Sequence[Rule]) -> None:
    recorded = {*ROUTING_KEYWORDS, "CallingAETitle"}
    for rule in rules:
        for keyword in sorted(keywords_of(rule) - recorded):
            print(
                f"note: rule {rule.name} tests {keyword}, which the node does not record "
                "with a series: in the running node that condition sees it absent"
            )

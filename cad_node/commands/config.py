"""``cad-node config diff`` and ``cad-node config apply``: node.yaml against the journal.

After its first start a node takes its rules and destinations from the journal (the
admin API edits them there); an edit to node.yaml is then not in force. ``diff`` shows
the difference (exit 0: none, 1: some); ``apply`` makes the journal hold node.yaml's
rules and destinations, checked first, audited with actor ``cli``.
"""

import argparse
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url

from cad_node.clock import utc_now
from cad_node.config import Settings, load_settings
from cad_node.configdiff.sync import apply_to_journal, diff_against_journal
from cad_node.errors import ConfigError, RuleError
from cad_node.models.registry import ModelRegistry
from cad_node.store.db import make_engine, session_factory
from cad_node.store.schema import RuleSetVersion

ACTOR = "cli"


def add_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``config diff`` and ``config apply`` to the ``cad-node`` command line."""
    config = subparsers.add_parser(
        "config", help="compare node.yaml's rules and destinations with the journal's, or apply"
    )
    commands = config.add_subparsers(title="config commands", required=True)
    diff = commands.add_parser(
        "diff",
        help="show node.yaml's rules and destinations against the journal's "
        "(exit 0: the same, 1: they differ)",
    )
    _config_argument(diff)
    diff.set_defaults(func=run_diff)
    apply = commands.add_parser(
        "apply",
        help="replace the journal's rules and destinations with node.yaml's (checked first, "
        "audited as actor 'cli'; the running node follows at its next step)",
    )
    _config_argument(apply)
    apply.set_defaults(func=run_apply)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="node YAML config (default: embedded defaults)"
    )


def _label(path: Path | None) -> str:
    return str(path) if path is not None else "<embedded defaults>"


def run_diff(args: argparse.Namespace) -> int:
    """Print the difference; 0 when there is none, 1 otherwise."""
    settings = load_settings(args.config)
    engine = _open_journal(settings)
    try:
        with session_factory(engine)() as session:
            difference = diff_against_journal(session, settings, _label(args.config))
    finally:
        engine.dispose()
    print(difference.text())
    if difference.differs:
        where = f" --config {args.config}" if args.config is not None else ""
        print(f"\nto put {_label(args.config)} in force: cad-node config apply{where}")
    return 1 if difference.differs else 0


def run_apply(args: argparse.Namespace) -> int:
    """Write node.yaml's rules and destinations into the journal; 0 when done (or nothing to do)."""
    settings = load_settings(args.config)  # ConfigError (exit 2) on invalid content
    installed = ModelRegistry([settings.resolved_models_dir]).entries()
    engine = _open_journal(settings)
    try:
        with session_factory(engine).begin() as session:
            try:
                done = apply_to_journal(
                    session,
                    settings,
                    ACTOR,
                    utc_now(),
                    source=_label(args.config),
                    installed_models=installed,
                )
            except ValueError as exc:
                raise ConfigError(f"{_label(args.config)}: {exc}; nothing applied") from exc
            except RuleError as exc:
                raise RuleError(f"{_label(args.config)}: {exc}; nothing applied") from exc
            except ConfigError as exc:
                raise ConfigError(f"{exc}; nothing applied") from exc
    finally:
        engine.dispose()
    if not done:
        print("nothing to apply: the journal holds node.yaml's rules and destinations")
        return 0
    print(f"applied {_label(args.config)} to the journal (audited as {ACTOR}):")
    for line in done:
        print(f"  {line}")
    return 0


def _open_journal(settings: Settings) -> Engine:
    """The node's journal, which must exist: neither command creates one."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not Path(database).exists():
            raise ConfigError(
                f"no journal at {database}: start the node once with this config "
                "(it seeds the rules and destinations from it)"
            )
    engine = make_engine(url)
    if not inspect(engine).has_table(RuleSetVersion.__tablename__):
        engine.dispose()
        raise ConfigError(
            f"the journal at {make_url(url).render_as_string(hide_password=True)} has no "
            "rule sets yet: start the node once with this config"
        )
    return engine

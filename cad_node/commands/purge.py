"""``cad-node purge``: remove the files retention allows now, beside a running node or not.

What may go is what the node's retention sweep removes (:mod:`cad_node.store.retention`):
series whose every job ended and every delivery ended delivered, settled longer ago
than ``retention.keep_hours`` (``--older-than`` shortens or lengthens that), and with
``--unrouted`` the series no rule matched. ``--dry-run`` lists them and removes
nothing. The journal keeps every row; each purge is audited (``series.purged``, actor
``cli``). Output: UIDs, counts and sizes, no patient data.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from cad_node.clock import utc_now
from cad_node.commands.status import require_sqlite_journal
from cad_node.config import load_settings
from cad_node.store.db import make_engine, session_factory
from cad_node.store.retention import PurgeCandidate, RetentionPolicy, purge, purgeable_series

MEGABYTE = 1_000_000
ACTOR = "cli"
"""The audit's actor of a purge from the command line (as for ``config apply``)."""


def add_command(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``purge`` to the ``cad-node`` command line."""
    command = subparsers.add_parser(
        "purge",
        help="remove spooled images and result files of delivered series (rows stay)",
    )
    command.add_argument(
        "--config", type=Path, default=None, help="node YAML config (default: embedded defaults)"
    )
    command.add_argument(
        "--dry-run", action="store_true", help="list what would be removed; remove nothing"
    )
    command.add_argument(
        "--older-than",
        type=_hours,
        default=None,
        metavar="HOURS",
        help="keep series settled for less than HOURS (default: retention.keep_hours)",
    )
    command.add_argument(
        "--unrouted",
        action="store_true",
        help="also series no rule matched (kept --older-than, else keep_unrouted_hours, "
        "else keep_hours)",
    )
    command.set_defaults(func=run_purge)


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not hours >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"hours must be 0 or more: {text!r}")
    return hours


def run_purge(args: argparse.Namespace) -> int:
    """List or remove what may go now; 0 when done (also when nothing may go)."""
    settings = load_settings(args.config)
    require_sqlite_journal(settings.resolved_database_url)
    policy = RetentionPolicy.from_settings(
        settings.retention, older_than_hours=args.older_than, unrouted=args.unrouted
    )
    engine = make_engine(settings.resolved_database_url)
    try:
        sessions = session_factory(engine)
        now = utc_now()
        if args.dry_run:
            with sessions() as session:
                candidates = purgeable_series(session, policy, now)
            print(_listing("would remove (dry run, nothing removed)", candidates))
            return 0
        report = purge(sessions, settings.storage_dir, policy, now, actor=ACTOR)
    finally:
        engine.dispose()
    print(_listing("removed", report.purged))
    print(f"{report.files_removed} files, {report.bytes_removed / MEGABYTE:.1f} MB freed")
    return 0


def _listing(title: str, candidates: Sequence[PurgeCandidate]) -> str:
    """One line per series: UID, state, settled at, instances, MB (journal's sizes)."""
    total = sum(candidate.size_bytes for candidate in candidates)
    lines = [f"{title}: {len(candidates)} series, {total / MEGABYTE:.1f} MB of instances"]
    lines += [
        f"  {c.series_instance_uid}  {c.state}  settled {c.settled_at:%Y-%m-%d %H:%M} UTC  "
        f"{c.instance_count} instances  {c.size_bytes / MEGABYTE:.1f} MB"
        for c in candidates
    ]
    return "\n".join(lines)

"""``cad-node report``: a model's monitoring report (HTML and PNGs) for a quality committee.

``cad-node report --model NAME --since DATE [--until DATE] --out DIR`` reads the node's
journal (``--config``, as ``status`` does) and writes ``DIR/index.html`` with its figures
(:mod:`cad_node.monitoring.report`). Dates are UTC: ``2026-11-01`` (midnight) or an ISO 8601
time; ``--until`` is excluded and defaults to now. UIDs, counts and figures only.
"""

import argparse
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from cad_node.clock import utc_now
from cad_node.commands.status import require_sqlite_journal
from cad_node.config import load_settings
from cad_node.errors import CadNodeError, StorageError
from cad_node.store.db import make_engine, session_factory


def add_command(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``report`` to the ``cad-node`` command line."""
    command = subparsers.add_parser(
        "report",
        help="a model's local performance and drift as HTML with PNG plots",
        description="Write DIR/index.html and its PNG figures: a model's local performance "
        "(overall and per version, with 95 % intervals and n), a comparison with models that "
        "read the same studies, and its drift. UIDs, counts and figures only.",
    )
    command.add_argument(
        "--config", type=Path, default=None, help="node YAML config (default: embedded defaults)"
    )
    command.add_argument("--model", required=True, help="the model's name (as in the rules)")
    command.add_argument(
        "--since", required=True, type=parse_date, metavar="DATE", help="from (UTC, included)"
    )
    command.add_argument(
        "--until",
        type=parse_date,
        default=None,
        metavar="DATE",
        help="to (UTC, excluded; default: now)",
    )
    command.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    command.set_defaults(func=run_report)


def parse_date(text: str) -> datetime:
    """``2026-11-01`` (midnight UTC) or an ISO 8601 time (naive: UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date: {text!r} (use YYYY-MM-DD or an ISO 8601 time, UTC)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_report(args: argparse.Namespace) -> int:
    """Write the report; 0 when written. A bad period or an unknown model: one line, exit 2."""
    from cad_node.monitoring.report import write_report

    now = utc_now()
    until = args.until or now
    if until <= args.since:
        raise CadNodeError(
            f"--until ({until:%Y-%m-%d %H:%M}) is not after --since ({args.since:%Y-%m-%d %H:%M})"
        )
    settings = load_settings(args.config)
    database_url = settings.resolved_database_url
    require_sqlite_journal(database_url)
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            files = write_report(
                session,
                args.model,
                args.since,
                until,
                args.out,
                monitoring=settings.monitoring,
                now=now,
            )
    except DBAPIError as exc:
        where = make_url(database_url).render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else repr(exc)
        raise StorageError(f"cannot read the journal at {where}: {reason}") from exc
    finally:
        engine.dispose()
    counts = files.performance.counts
    print(
        f"{files.index}: {args.model}, {counts.studies_read} studies "
        f"({counts.abstained} abstained, {counts.reviewed} reviewed), "
        f"{len(files.figures)} figures"
    )
    return 0

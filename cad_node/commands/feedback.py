"""``cad-node feedback``: outcome labels into the journal, and what feedback it holds (issue 22).

``feedback import FILE --reviewer NAME`` reads an outcomes CSV
(:mod:`cad_node.monitoring.csv_outcomes`) and journals every row
(:func:`cad_node.store.feedback.record_feedback`), matched to the jobs and findings it is
about; a bad file is refused as a whole (exit 2, every problem with its line number) and
nothing is recorded. ``feedback list [--study UID]`` prints the journal's feedback rows.
Output: UIDs, verdicts and counts; never a note (it may name a patient).
"""

import argparse
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cad_node.clock import utc_now
from cad_node.commands.status import require_sqlite_journal
from cad_node.config import load_settings
from cad_node.errors import StorageError
from cad_node.monitoring.csv_outcomes import parse_outcomes_csv
from cad_node.store.db import make_engine, session_factory
from cad_node.store.feedback import record_feedback
from cad_node.store.schema import FeedbackRow

DEFAULT_LIMIT = 200
"""Rows ``feedback list`` prints unless told otherwise (the counts cover every row)."""
_EMPTY = "-"


def add_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``feedback import`` and ``feedback list`` to the ``cad-node`` command line."""
    feedback = subparsers.add_parser(
        "feedback", help="import outcome labels (CSV) and list the feedback the journal holds"
    )
    commands = feedback.add_subparsers(title="feedback commands", required=True)
    imported = commands.add_parser(
        "import",
        help="journal the verdicts and outcomes of a CSV file (header row; "
        "study_instance_uid, verdict, truth, laterality, tracking_uid, model, "
        "sop_instance_uid, row, column, frame_number, note)",
    )
    imported.add_argument("file", type=Path, help="the CSV file (UTF-8)")
    imported.add_argument(
        "--reviewer", required=True, help="who the outcomes are from (kept with each row)"
    )
    _config_argument(imported)
    imported.set_defaults(func=run_import)
    listed = commands.add_parser("list", help="print the feedback rows, newest first")
    listed.add_argument("--study", default=None, metavar="UID", help="one study's rows only")
    listed.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help="rows printed at most (default: %(default)s; the counts cover all)",
    )
    _config_argument(listed)
    listed.set_defaults(func=run_list)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="node YAML config (default: embedded defaults)"
    )


def run_import(args: argparse.Namespace) -> int:
    """Journal the file's rows; 0 when recorded, 2 (the reasons on stderr) for a bad file."""
    reviewer = str(args.reviewer).strip()
    if not reviewer or len(reviewer) > 64:
        return _refused("--reviewer must be 1 to 64 characters")
    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except OSError as exc:
        return _refused(f"cannot read {args.file}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        return _refused(f"{args.file} is not UTF-8 text")
    try:
        items = parse_outcomes_csv(text, reviewer)
    except ValueError as exc:
        return _refused(f"{args.file}: {exc}")
    with _journal(args.config) as session:
        recorded = record_feedback(session, items, utc_now())
        session.commit()
    print(
        f"{len(items)} rows read, {recorded.recorded} feedback rows recorded, "
        f"{len(recorded.unmatched)} unmatched"
    )
    for why in recorded.unmatched:
        print(f"  unmatched: {why}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print the counts by verdict and the newest rows; 0."""
    with _journal(args.config) as session:
        query = select(FeedbackRow).order_by(FeedbackRow.received_at.desc(), FeedbackRow.id.desc())
        if args.study:
            query = query.where(FeedbackRow.study_instance_uid == args.study)
        rows = list(session.scalars(query))
    print(_listing(rows, max(args.limit, 0)))
    return 0


def _listing(rows: Sequence[FeedbackRow], limit: int) -> str:
    verdicts = Counter(row.verdict for row in rows)
    matched = sum(1 for row in rows if row.job_id is not None)
    counts = ", ".join(f"{verdict} {count}" for verdict, count in sorted(verdicts.items()))
    lines = [
        f"feedback: {len(rows)} rows ({counts or 'none'}); {matched} matched to a job, "
        f"{len(rows) - matched} unmatched"
    ]
    lines += [_row_line(row) for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more (--limit)")
    return "\n".join(lines)


def _row_line(row: FeedbackRow) -> str:
    job = f"job {row.job_id}" if row.job_id is not None else "unmatched"
    fields = (
        f"{row.received_at:%Y-%m-%d %H:%M}",
        row.source,
        row.verdict,
        f"study {row.study_instance_uid}",
        f"model {row.model_name or _EMPTY}",
        f"tracking {row.tracking_uid or _EMPTY}",
        f"laterality {row.laterality or _EMPTY}",
        f"truth {row.truth or _EMPTY}",
        job,
    )
    return "  " + "  ".join(fields)


def _refused(reason: str) -> int:
    print(f"cad-node feedback: {reason}", file=sys.stderr)
    return 2


@contextmanager
def _journal(config: Path | None) -> Iterator[Session]:
    """A session on the node's journal; a journal without the feedback tables (or none)
    raises :class:`StorageError` with the reason."""
    settings = load_settings(config)
    database_url = settings.resolved_database_url
    require_sqlite_journal(database_url)
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            yield session
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else repr(exc)
        if "no such table" in reason or "does not exist" in reason:
            reason += " (the journal predates feedback: `cad-node serve` upgrades it)"
        where = make_url(database_url).render_as_string(hide_password=True)
        raise StorageError(f"cannot use the journal at {where}: {reason}") from exc
    finally:
        engine.dispose()

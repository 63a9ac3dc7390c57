"""``cad-node status``: what the journal says, for the admin (UIDs and counts, no patient data)."""

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session

from cad_node.config import Settings
from cad_node.domain.states import DeliveryState, SeriesState
from cad_node.errors import StorageError
from cad_node.store.abstentions import abstention_counts
from cad_node.store.db import make_engine, session_factory
from cad_node.store.disk import storage_use
from cad_node.store.retention import purged_series_count
from cad_node.store.schema import Delivery, Instance, Job, Result, Series


def render_status(settings: Settings, limit: int = 20) -> str:
    """The journal's counts and newest rows, as text.

    Reads only: a missing SQLite journal is reported, not created.

    Raises
    ------
    StorageError
        There is no journal at the configured place, or it cannot be read (one line).
    ConfigError
        ``database_url``'s driver is not installed (:func:`~cad_node.store.db.make_engine`).
    """
    database_url = settings.resolved_database_url
    require_sqlite_journal(database_url)
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            return _render(session, limit, _disk_line(settings, session))
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else repr(exc)
        where = make_url(database_url).render_as_string(hide_password=True)
        if "no such table" in reason or "does not exist" in reason:
            reason += " (not a cad-node journal yet: `cad-node serve` creates and upgrades it)"
        raise StorageError(f"cannot read the journal at {where}: {reason}") from exc
    finally:
        engine.dispose()


def _disk_line(settings: Settings, session: Session) -> str:
    """The storage folder's disk use: free of total, spool and results, series purged."""
    folder = settings.storage_dir
    if not folder.is_dir():
        return f"storage: {folder} is not on this host"
    use = storage_use(folder, settings.health.min_free_disk_fraction)
    share = use.free_bytes / use.total_bytes if use.total_bytes else 0.0
    low = " LOW" if use.low else ""
    return (
        f"storage: {_size(use.free_bytes)} free of {_size(use.total_bytes)} ({share:.0%}){low}; "
        f"spool {_size(use.spool_bytes)}, results {_size(use.results_bytes)}; "
        f"purged series {purged_series_count(session)}"
    )


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 1e3:.1f} kB"


def require_sqlite_journal(database_url: str) -> None:
    """Raise :class:`StorageError` if ``database_url`` names an SQLite file that is not there."""
    try:
        url = make_url(database_url)
    except ArgumentError:  # make_engine says what is wrong with it
        return
    if url.get_backend_name() != "sqlite":
        return
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).absolute()
    if not path.is_file():
        raise StorageError(
            f"no journal at {path}: start `cad-node serve` first, "
            "or pass the node's config with --config"
        )


def _render(session: Session, limit: int, disk_line: str) -> str:
    return "\n".join(
        [
            _counts(session),
            disk_line,
            "",
            _series_table(session, limit),
            "",
            _jobs_table(session, limit),
            "",
            _deliveries_table(session, limit),
        ]
    )


def _counts(session: Session) -> str:
    instances = session.scalar(select(func.count()).select_from(Instance)) or 0
    lines = [f"instances: {instances}"]
    for label, column in (
        ("series", Series.state),
        ("jobs", Job.state),
        ("deliveries", Delivery.state),
    ):
        rows = session.execute(select(column, func.count()).group_by(column)).all()
        summary = ", ".join(f"{state} {count}" for state, count in sorted(rows)) or "none"
        lines.append(f"{label}: {summary}")
    lines.append(_abstentions_line(session))
    return "\n".join(lines)


def _abstentions_line(session: Session) -> str:
    """Done jobs whose model abstained, per model, reason and the rule's choice."""
    counts = abstention_counts(session)
    summary = ", ".join(
        f"{c.model_name} {c.reason} {c.count} ({c.on_out_of_domain})" for c in counts
    )
    return f"abstentions: {summary or 'none'}"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title] + [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def _series_table(session: Session, limit: int) -> str:
    series = session.scalars(select(Series).order_by(Series.last_received_at.desc()).limit(limit))
    rows = [
        (
            s.series_instance_uid,
            s.modality,
            s.instance_count,
            s.revision,
            s.state,
            s.rule_name or "-",
            _when(s.last_received_at),
            s.quarantine_reason if s.state == SeriesState.QUARANTINED else "",
        )
        for s in series
    ]
    header = (
        "SeriesInstanceUID",
        "Modality",
        "Instances",
        "Rev",
        "State",
        "Rule",
        "Last received",
        "Quarantine reason",
    )
    return _table("Series", header, rows)


def _jobs_table(session: Session, limit: int) -> str:
    jobs = list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))
    rows = [
        (
            j.id,
            j.series_instance_uid,
            j.series_revision,
            j.model_name,
            j.state,
            "-" if j.finding_count is None else j.finding_count,
            len(j.warnings or ()),
            j.error or "",
        )
        for j in jobs
    ]
    header = ("Job", "SeriesInstanceUID", "Rev", "Model", "State", "Findings", "Warnings", "Error")
    notes = [_table("Jobs", header, rows), _job_warnings(jobs), _job_abstentions(jobs)]
    return "\n\n".join(filter(None, notes))


def _job_abstentions(jobs: Sequence[Job]) -> str:
    """Why each job of the table was not assessed (or assessed under ``run_anyway``)."""
    lines = [
        f"job {j.id}: {j.abstention.get('reason')} ({j.on_out_of_domain or 'report'}): "
        + "; ".join(map(str, j.abstention.get("details") or ()))
        for j in jobs
        if j.abstention
    ]
    return "\n".join(["Job abstentions", *lines]) if lines else ""


def _job_warnings(jobs: Sequence[Job]) -> str:
    """What each job of the table derived or left out (its ``warnings``), one line each."""
    lines = [f"job {j.id}: {note}" for j in jobs for note in j.warnings or ()]
    return "\n".join(["Job warnings", *lines]) if lines else ""


def _deliveries_table(session: Session, limit: int) -> str:
    statement = (
        select(Delivery, Result)
        .join(Result, Delivery.result_id == Result.id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    rows = [
        (
            d.id,
            r.kind,
            r.sop_instance_uid,
            d.destination,
            d.state,
            d.attempts,
            "-" if d.last_status is None else f"0x{d.last_status:04X}",
            _commitment(d),
            d.last_error or "",
        )
        for d, r in session.execute(statement)
    ]
    header = (
        "Delivery",
        "Kind",
        "SOPInstanceUID",
        "Destination",
        "State",
        "Tries",
        "Status",
        "Commitment",
        "Error",
    )
    return _table("Deliveries", header, rows)


def _commitment(delivery: Delivery) -> str:
    """Storage Commitment: when committed, or since when awaited and after how many requests."""
    if delivery.committed_at is not None:
        return f"committed {_when(delivery.committed_at)}"
    if delivery.state != DeliveryState.SENT:
        return "-"
    if delivery.commitment_requested_at is None:
        return "to be asked"
    return (
        f"awaited since {_when(delivery.commitment_requested_at)} "
        f"(request {delivery.commitment_attempts})"
    )

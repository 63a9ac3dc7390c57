"""Crash recovery of the spool: files the journal never heard of are recorded at start-up.

A crash between the rename of an instance's file and the journal commit
leaves a complete file (it was fsync'd before the rename) with no row; its
sender got no 0x0000 and will likely resend, which is idempotent.  A crash
before the rename leaves a temp file, which is removed.

Files are read within :class:`~cad_node.ingest.bounds.DataSetLimits`, as at ingest:
one over a bound is logged and left in place, never parsed whole.
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cad_node.errors import CadNodeError
from cad_node.ingest.bounds import DataSetLimits
from cad_node.ingest.header import (
    PARSE_ERRORS,
    identifying_uids,
    instance_record,
    read_file_header,
)
from cad_node.ingest.spool import Spool
from cad_node.store.instances import InstanceRecord, record_instance
from cad_node.store.schema import Instance

logger = logging.getLogger(__name__)

_BATCH_SIZE = 500
_DEFAULT_LIMITS = DataSetLimits()


def reindex_spool(
    storage_dir: Path,
    sessionmaker: sessionmaker[Session],
    clock: Callable[[], datetime],
    limits: DataSetLimits = _DEFAULT_LIMITS,
) -> int:
    """Record spool files missing from the journal, remove stale temp files.

    Run it before the SCP starts: every temp file is then stale.

    Returns
    -------
    int
        How many instances were re-indexed.
    """
    spool = Spool(storage_dir)
    removed = remove_temp_files(spool)
    reindexed = 0
    for batch in _batches(spool.instance_files(), _BATCH_SIZE):
        for relative in _missing_from_journal(sessionmaker, batch):
            reindexed += _reindex_file(spool, relative, sessionmaker, clock, limits)
    logger.info(
        "spool recovery: %d instances re-indexed, %d temp files removed", reindexed, removed
    )
    return reindexed


def remove_temp_files(spool: Spool) -> int:
    """Remove the temp files of writes that never reached their rename; returns how many."""
    removed = 0
    for temp_file in spool.temp_files():
        temp_file.unlink(missing_ok=True)
        removed += 1
    return removed


def _missing_from_journal(
    sessionmaker: sessionmaker[Session], relative_paths: list[Path]
) -> list[Path]:
    by_sop_instance_uid = {path.stem: path for path in relative_paths}
    statement = select(Instance.sop_instance_uid).where(
        Instance.sop_instance_uid.in_(by_sop_instance_uid)
    )
    with sessionmaker() as session:
        known = set(session.scalars(statement))
    return [path for uid, path in by_sop_instance_uid.items() if uid not in known]


def _reindex_file(
    spool: Spool,
    relative: Path,
    sessionmaker: sessionmaker[Session],
    clock: Callable[[], datetime],
    limits: DataSetLimits,
) -> int:
    """Record one orphan file; 1 if recorded, 0 if it cannot be (logged, left in place)."""
    try:
        record = _record_of_file(spool, relative, limits)
    except (CadNodeError, OSError, *PARSE_ERRORS) as exc:
        logger.error("spool recovery: cannot re-index %s: %s", relative, type(exc).__name__)
        return 0
    with sessionmaker.begin() as session:
        record_instance(session, record, clock())
    return 1


def _record_of_file(spool: Spool, relative: Path, limits: DataSetLimits) -> InstanceRecord:
    absolute = spool.absolute(relative)
    dataset = read_file_header(absolute, limits)
    sop_instance_uid, _, series_instance_uid, study_instance_uid = identifying_uids(dataset)
    if relative.parts[1:] != (study_instance_uid, series_instance_uid, sop_instance_uid + ".dcm"):
        raise CadNodeError("the file's UIDs do not match its spool path")
    return instance_record(
        dataset,
        transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
        calling_ae_title=str(dataset.file_meta.get("SourceApplicationEntityTitle", "")),
        path=relative,
        size_bytes=absolute.stat().st_size,
    )


def _batches(paths: Iterable[Path], size: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    for path in paths:
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

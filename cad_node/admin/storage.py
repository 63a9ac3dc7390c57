"""``GET /api/storage``: the storage folder's disk use and what retention may remove.

Read token. The dashboard's disk card reads it. Sizes are measured when asked: the file
system by ``statvfs``, the spool and results folders walked (on a spool of a million
files that takes seconds; the dashboard asks when it loads, not in a loop).
"""

from fastapi import APIRouter
from pydantic import BaseModel

from cad_node.admin.auth import Reader
from cad_node.admin.deps import Context, Journal
from cad_node.store.disk import storage_use
from cad_node.store.retention import RetentionPolicy, purgeable_series, purged_series_count

router = APIRouter(prefix="/api", tags=["node"])


class StorageOut(BaseModel):
    storage_dir_total_bytes: int
    """Size of the file system holding ``storage_dir``."""
    free_bytes: int
    """Free on it for the node's user."""
    spool_bytes: int
    """Received instances kept (``storage_dir/spool``)."""
    results_bytes: int
    """Result objects kept (``storage_dir/results``)."""
    purgeable_series: int
    """Series whose files retention may remove now (the next sweep, or ``cad-node purge``)."""
    purged_series: int
    """Series whose files retention has removed (their rows stay)."""
    low: bool
    """Free / total under ``health.min_free_disk_fraction``."""


@router.get("/storage", response_model=StorageOut)
def storage(node: Context, session: Journal, _caller: Reader) -> StorageOut:
    """Disk use of the storage folder, and series purgeable now and purged so far."""
    settings = node.settings
    use = storage_use(settings.storage_dir, settings.health.min_free_disk_fraction)
    policy = RetentionPolicy.from_settings(settings.retention)
    return StorageOut(
        storage_dir_total_bytes=use.total_bytes,
        free_bytes=use.free_bytes,
        spool_bytes=use.spool_bytes,
        results_bytes=use.results_bytes,
        purgeable_series=len(purgeable_series(session, policy, node.clock())),
        purged_series=purged_series_count(session),
        low=use.low,
    )

"""Disk use of the storage folder: its file system, and the spool and results in it.

Read by ``GET /api/storage`` and ``cad-node status`` (issue 24: "disk use is shown").
"""

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """The file system holding the storage folder."""

    total_bytes: int
    free_bytes: int
    """Free for the node's user (``statvfs`` f_bavail)."""
    low: bool
    """Free / total under ``health.min_free_disk_fraction``."""


def disk_space(storage_dir: Path, min_free_fraction: float) -> DiskSpace:
    """The file system of ``storage_dir`` now (cheap: one ``statvfs``)."""
    stats = os.statvfs(storage_dir)
    total, free = stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize
    return DiskSpace(total, free, low=total > 0 and free / total < min_free_fraction)


@dataclass(frozen=True, slots=True)
class StorageUse:
    """The storage folder's file system and what the node keeps in it."""

    total_bytes: int
    free_bytes: int
    """Free for the node's user (``statvfs`` f_bavail)."""
    spool_bytes: int
    """Received instances (``storage_dir/spool``)."""
    results_bytes: int
    """Result objects (``storage_dir/results``)."""
    low: bool
    """Free / total under ``health.min_free_disk_fraction``."""


def storage_use(storage_dir: Path, min_free_fraction: float) -> StorageUse:
    """Measured now: :func:`disk_space`, and the spool and results walked."""
    disk = disk_space(storage_dir, min_free_fraction)
    return StorageUse(
        total_bytes=disk.total_bytes,
        free_bytes=disk.free_bytes,
        spool_bytes=folder_bytes(storage_dir / "spool"),
        results_bytes=folder_bytes(storage_dir / "results"),
        low=disk.low,
    )


def folder_bytes(folder: Path) -> int:
    """The sizes of the files under ``folder`` (0 if it is missing); links not followed."""
    size = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                size += folder_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                size += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # removed while walked
    return size

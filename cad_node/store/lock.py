"""One ``cad-node serve`` per storage folder: an exclusive lock held for the process's life.

``serve`` takes :data:`LOCK_FILE_NAME` in ``storage_dir`` with ``flock(LOCK_EX |
LOCK_NB)`` before it touches the journal or the spool, and writes its pid into the
file for the message a second ``serve`` prints.  The kernel drops the lock when the
process ends, however it ends (SIGKILL, power loss): a crashed node's successor
starts normally, whatever pid the file still holds.  ``cad-node worker`` processes
take no lock, so they share the folder with their one ``serve`` (docs/scale-out.md).
The descriptor is close-on-exec: the ingest and decoder processes ``serve`` starts
do not hold the lock after it dies.
"""

import fcntl
import os
from pathlib import Path

from cad_node.errors import CadNodeError, StorageError

LOCK_FILE_NAME = "cad-node-serve.lock"


class FolderInUseError(CadNodeError):
    """Another ``cad-node serve`` holds the storage folder's lock."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        holder = "another cad-node" if pid is None else f"another cad-node (pid {pid})"
        super().__init__(
            f"{holder} owns {folder}: one cad-node serve per storage folder "
            "(stop that one first, or give this one another storage_dir)"
        )
        self.folder = folder
        self.pid = pid


class StorageLock:
    """The exclusive lock on a storage folder (:data:`LOCK_FILE_NAME` inside it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's pid into the file; never waits.

        Raises :class:`FolderInUseError` when another process holds it, and
        :class:`~cad_node.errors.StorageError` when the file cannot be opened or the
        file system refuses locks.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _storage_error(self.path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise FolderInUseError(self.folder, holder) from None
        except OSError as exc:
            os.close(fd)
            raise _storage_error(self.path, exc) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor drops it); idempotent.

        The file stays: removing it would let a process that opened it just before
        lock a file no longer in the folder while a third locks a new one.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote; None while it has not written it yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _storage_error(path: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot lock {path}: {exc.strerror or exc}")

"""The spool: received instances as DICOM files, written atomically.

An instance is acknowledged only after its bytes are on disk, so every write is
temp file -> fsync -> rename -> fsync of the directory (DESIGN: "each hop
durable").  Temp files live inside ``storage_dir`` so the rename never crosses a
filesystem (no EXDEV).
"""

import contextlib
import errno
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from cad_node.errors import StorageError
from cad_node.ingest.bounds import FileSource

SPOOL_DIRNAME = "spool"
TEMP_DIRNAME = ".tmp"
"""Inside the spool; a UID is digits and dots, so it can never collide with this name."""
TEMP_SUFFIX = ".part"
FILE_SUFFIX = ".dcm"
KNOWN_DIRS_LIMIT = 10_000

Buffer = bytes | bytearray | memoryview
"""Bytes to write, copied or not (``collections.abc.Buffer`` needs Python 3.12)."""

_TEMP_NUMBERS = itertools.count()
"""Numbers the temp files of this process, across every :class:`Spool` in it."""
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_UID_MAX_LENGTH = 64


def is_safe_uid(uid: str) -> bool:
    """Whether ``uid`` is digits separated by single dots, at most 64 characters (PS3.5 9.1).

    Leading zeros in a component are tolerated (some senders emit them); what
    matters here is that the UID is a safe file name.
    """
    return len(uid) <= _UID_MAX_LENGTH and _UID_PATTERN.fullmatch(uid) is not None


def relative_instance_path(
    study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
) -> PurePosixPath:
    """``spool/<study>/<series>/<sop>.dcm``: the path the journal stores, relative to storage_dir.

    Raises
    ------
    ValueError
        If a UID is not a safe file name (see :func:`is_safe_uid`).
    """
    for uid in (study_instance_uid, series_instance_uid, sop_instance_uid):
        if not is_safe_uid(uid):
            raise ValueError(f"not a valid UID for a spool path: {uid!r}")
    return PurePosixPath(
        SPOOL_DIRNAME, study_instance_uid, series_instance_uid, sop_instance_uid + FILE_SUFFIX
    )


class SpoolWriteError(StorageError):
    """The disk refused a spool write; ``errno`` tells ENOSPC, EROFS, ENOTDIR ... apart."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


class Spool:
    """Writes received instances under ``storage_dir`` atomically.

    Parameters
    ----------
    storage_dir
        The node's storage directory; the spool lives in ``storage_dir/spool``.
    fsync
        Flush each file and its directory entry to the disk before ``write``
        returns (default).  Two fsyncs cost about 7 ms per instance on a VM
        disk; ``False`` survives a process crash but not a power loss, so keep
        it for benchmarks and throwaway nodes.
    """

    def __init__(self, storage_dir: Path, *, fsync: bool = True) -> None:
        self.storage_dir = storage_dir
        self.fsync = fsync
        self.root = storage_dir / SPOOL_DIRNAME
        self.temp_dir = self.root / TEMP_DIRNAME
        self._known_dirs: set[Path] = set()
        """Directories this spool made or found: not looked at again for every instance."""

    def write(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        data: Buffer | Sequence[Buffer],
    ) -> Path:
        """Write ``data`` as the instance's file and return its path relative to storage_dir.

        ``data`` may come in parts (e.g. file header, then the data set as
        received), written one after the other without joining them.

        A resend of the same SOP Instance replaces the earlier file atomically:
        a reader sees either the old or the new file, never a mix.

        Raises
        ------
        ValueError
            If a UID is not a safe file name.
        SpoolWriteError
            A :class:`~cad_node.errors.StorageError` if the disk refuses (full,
            read-only, not a directory ...), with the ``errno``.
        """
        relative_instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        spool_file = self.open_file()
        try:
            spool_file.write([data] if isinstance(data, Buffer) else data)
            return spool_file.commit(study_instance_uid, series_instance_uid, sop_instance_uid)
        finally:
            spool_file.discard()

    def open_file(self) -> "SpoolFile":
        """A new temp file in the spool, to be written in parts, then committed or discarded.

        Raises
        ------
        SpoolWriteError
            If the disk refuses to create it.
        """
        try:
            try:
                self._ensure_dir(self.temp_dir)
                return SpoolFile(self, self._open_temp())
            except FileNotFoundError:  # the spool went away since it was made: make it again
                self._known_dirs.clear()
                self._ensure_dir(self.temp_dir)
                return SpoolFile(self, self._open_temp())
        except OSError as exc:
            raise _storage_error(exc, "a new instance") from exc

    def _open_temp(self) -> tuple[Path, int]:
        # Unique per process and call: the name never comes from what a peer sent.
        name = f"{os.getpid()}.{next(_TEMP_NUMBERS)}{TEMP_SUFFIX}"
        path = self.temp_dir / name
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def place(self, temp_path: Path, relative: PurePosixPath) -> None:
        """Rename the temp file to ``relative``, durably (the directory made if missing)."""
        target = self.storage_dir / relative
        try:
            self._ensure_dir(target.parent)
            self._replace(temp_path, target)
        except FileNotFoundError:  # a directory went away since it was made: make it again
            self._known_dirs.clear()
            self._ensure_dir(target.parent)
            self._replace(temp_path, target)

    def absolute(self, relative_path: str | Path) -> Path:
        """The absolute path of a path the journal stores."""
        return self.storage_dir / relative_path

    def temp_files(self) -> Iterator[Path]:
        """Temp files left by writes that never reached their rename (e.g. a crash)."""
        if self.temp_dir.is_dir():
            yield from self.temp_dir.glob("*" + TEMP_SUFFIX)

    def instance_files(self) -> Iterator[Path]:
        """Every ``spool/<study>/<series>/<sop>.dcm`` file, as paths relative to storage_dir."""
        if not self.root.is_dir():
            return
        for path in self.root.glob("*/*/*" + FILE_SUFFIX):
            relative = path.relative_to(self.storage_dir)
            if all(is_safe_uid(part) for part in (*relative.parts[1:3], path.stem)):
                yield relative

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` (and parents) durably: a new entry is fsync'd in its parent."""
        if directory in self._known_dirs:
            return
        if len(self._known_dirs) >= KNOWN_DIRS_LIMIT:  # one per series: bound the memory
            self._known_dirs.clear()
        if directory.is_dir():
            self._known_dirs.add(directory)
            return
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        for new_dir in reversed(missing):
            new_dir.mkdir(mode=0o700, exist_ok=True)  # instances: the node's user only
            if self.fsync:
                _fsync_dir(new_dir.parent)
        if not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
        self._known_dirs.add(directory)

    def _replace(self, temp_path: Path, target: Path) -> None:
        os.replace(temp_path, target)
        if self.fsync:
            _fsync_dir(target.parent)


class SpoolFile:
    """An instance's file while it is written: a temp file in the spool, written in parts as
    the data set arrives, then renamed into place by :meth:`commit` or removed by
    :meth:`discard`.  Made by :meth:`Spool.open_file`; used by one thread at a time.
    """

    def __init__(self, spool: Spool, temp: tuple[Path, int]) -> None:
        self._spool = spool
        path, self._fd = temp
        self._path: Path | None = path
        self._open = True
        self.size = 0
        """Bytes written so far."""

    def write(self, parts: Sequence[Buffer]) -> None:
        """Append ``parts``, in order.

        Raises
        ------
        SpoolWriteError
            If the disk refuses (the file is then useless: :meth:`discard` it).
        """
        self._check_open()
        try:
            self.size += _write_all(self._fd, parts)
        except OSError as exc:
            raise _storage_error(exc, "an arriving instance") from exc

    def source(self, start: int) -> FileSource:
        """The bytes written from ``start`` on, read by offset without reading them all (the
        header of a data set the first bytes did not hold)."""
        self._check_open()
        return FileSource(self._fd, start)

    def read(self, offset: int) -> bytes:
        """The bytes written from ``offset`` on (to parse what a first look could not)."""
        self._check_open()
        return os.pread(self._fd, self.size - offset, offset)

    def commit(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> Path:
        """Make the file the instance's, durably (fsync'd, renamed, directory fsync'd), and
        return its path relative to storage_dir; a resend replaces the earlier file whole.

        Raises
        ------
        ValueError
            If a UID is not a safe file name.
        SpoolWriteError
            If the disk refuses; the temp file is then removed.
        """
        temp_path = self._check_open()
        relative = relative_instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        try:
            if self._spool.fsync:
                os.fsync(self._fd)
            self._close()
            self._spool.place(temp_path, relative)
        except OSError as exc:
            self.discard()
            raise _storage_error(exc, f"SOP Instance {sop_instance_uid}") from exc
        self._path = None
        return Path(relative)

    def discard(self) -> None:
        """Close and remove the temp file unless it was committed; idempotent."""
        self._close()
        if self._path is not None:
            _remove_quietly(self._path)
            self._path = None

    def _close(self) -> None:
        if self._open:
            self._open = False
            os.close(self._fd)

    def _check_open(self) -> Path:
        """The temp file's path, unless it is committed or discarded."""
        if not self._open or self._path is None:
            raise ValueError("the spool file is already committed or discarded")
        return self._path


def _write_all(fd: int, parts: Sequence[Buffer]) -> int:
    """Write ``parts`` in order, in one ``writev`` when the disk takes them whole; returns
    the bytes written."""
    views = [memoryview(part).cast("B") for part in parts]
    total = sum(len(view) for view in views)
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views and written:
            views[0] = views[0][written:]
    return total


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    # Best effort: the write already failed; a leftover temp file is removed at start-up.
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _storage_error(exc: OSError, what: str) -> SpoolWriteError:
    message = f"cannot write {what} to the spool: [errno {exc.errno}] {exc.strerror}"
    return SpoolWriteError(message, exc.errno)

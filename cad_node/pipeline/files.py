"""Writing result objects durably (temp file, fsync, rename), and reading received instances
within the node's bounds (docs/security.md)."""

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset, dcmread

from cad_node.errors import StorageError
from cad_node.ingest.bounds import DataSetLimits, DataSetTooLargeError
from cad_node.ingest.header import read_file_header


def write_dataset_atomically(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` as a DICOM file (PS3.10) so that ``path`` is either whole or absent."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".dcm")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except OSError as exc:
        Path(temp_name).unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


def read_headers(paths: Sequence[Path], limits: DataSetLimits) -> list[Dataset]:
    """The File Meta Information and elements before Pixel Data of each received instance,
    read within ``limits`` (:func:`~cad_node.ingest.header.read_file_header`): the worker's
    process never inflates a Deflated file beyond its header, nor reads a header past
    ``max_header_bytes``.

    Raises
    ------
    DataSetTooLargeError
        If a file exceeds a bound; the message names the file.
    """
    return [_read_header(path, limits) for path in paths]


def read_datasets(paths: Sequence[Path], limits: DataSetLimits) -> list[Dataset]:
    """Whole instances (pixel data included), for a model run in this process; each
    header is read within ``limits`` first (see :func:`read_headers`)."""
    read_headers(paths, limits)
    return [dcmread(path) for path in paths]


def _read_header(path: Path, limits: DataSetLimits) -> Dataset:
    try:
        return read_file_header(path, limits)
    except DataSetTooLargeError as exc:
        raise DataSetTooLargeError(f"instance {path.name}: {exc}") from exc

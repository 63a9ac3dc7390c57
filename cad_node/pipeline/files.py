"""Writing result objects durably: temp file, fsync, rename."""

import os
import tempfile
from pathlib import Path

from pydicom import Dataset, dcmread

from cad_node.errors import StorageError


def write_dataset_atomically(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` as a DICOM file (PS3.10) so that ``path`` is either whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
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


def read_datasets(paths: list[Path]) -> list[Dataset]:
    """Read whole instances (pixel data included) for a model run."""
    return [dcmread(path) for path in paths]

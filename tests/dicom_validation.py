"""Validate DICOM files with dicom3tools' ``dciodvfy`` (Debian package ``dicom3tools``)."""

import shutil
import subprocess
from pathlib import Path

DCIODVFY = "dciodvfy"


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The "Error" lines ``dciodvfy`` reports for the file at ``path`` (PS3.3 IOD checks).

    Raises
    ------
    FileNotFoundError
        When ``dciodvfy`` is not installed.
    """
    executable = shutil.which(DCIODVFY)
    if executable is None:
        raise FileNotFoundError("dciodvfy not found: apt-get install dicom3tools")
    completed = subprocess.run(
        [executable, str(path)], capture_output=True, text=True, check=False, timeout=120
    )
    output = completed.stdout + completed.stderr
    return [line for line in output.splitlines() if line.lstrip().startswith("Error")]


def assert_valid_dicom(path: str | Path) -> None:
    """Fail with dciodvfy's errors unless the file at ``path`` has none."""
    errors = dciodvfy_errors(path)
    assert not errors, f"dciodvfy found {len(errors)} error(s) in {path}:\n" + "\n".join(errors)

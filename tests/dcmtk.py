"""Where the DCMTK tools are, and the environment they need on loopback."""

import os
from pathlib import Path

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
"""Without TCP_NODELAY, Nagle and delayed ACK cost DCMTK about 45 ms per image (FIELD-NOTES)."""


def program(tool: str) -> str:
    """DCMTK's ``tool`` from Debian: pynetdicom puts a ``storescu`` of its own in the venv."""
    debian = Path("/usr/bin") / tool
    return str(debian) if debian.exists() else tool

"""Loopback peers shared by the tests and the benchmarks: where the DCMTK tools are, the
environment they need on loopback, free ports and ``storescu``.

Framework-free (no pytest): ``bench/`` imports it too.
"""

import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
"""Without TCP_NODELAY, Nagle and delayed ACK cost DCMTK 46-51 ms per image on loopback
(docs/benchmarks.md, "DCMTK on loopback: TCP_NODELAY")."""

NODE_AE_TITLE = "CADNODE"
"""The AE title the tests' and benchmarks' nodes answer to."""


def program(tool: str) -> str:
    """DCMTK's ``tool`` from Debian: pynetdicom puts a ``storescu`` of its own in the venv."""
    debian = Path("/usr/bin") / tool
    return str(debian) if debian.exists() else tool


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def storescu_argv(
    port: int,
    files: Sequence[Path],
    *options: str,
    calling_ae: str = "SCANNER",
    called_ae: str = NODE_AE_TITLE,
) -> list[str]:
    """The ``storescu`` command sending ``files`` in one association, proposing only what
    they need (``-R``); ``options`` go before the peer (``-xs``, ``+tla`` ...)."""
    return [
        program("storescu"),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "-R",
        *options,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]


def storescu(
    port: int,
    files: Sequence[Path],
    *options: str,
    calling_ae: str = "SCANNER",
    called_ae: str = NODE_AE_TITLE,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run :func:`storescu_argv` to its end; its exit status and output."""
    return subprocess.run(
        storescu_argv(port, files, *options, calling_ae=calling_ae, called_ae=called_ae),
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

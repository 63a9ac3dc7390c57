"""Safe defaults of a real ``cad-node serve`` on 127.0.0.1 (docs/security.md, "Safe defaults").

The node refuses to start open to every machine or with a guessable admin token,
and what it writes (storage directories, spool files, the SQLite journal with its
-wal and -shm) is readable by its own user only.
"""

import hashlib
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import pydicom_file
from tests.dcmtk import free_port, storescu
from tests.integration.peers import NODE_STARTED, running_node, wait_for, write_config

CONFIG_ERROR = 2
"""``cad-node``'s exit status for a ConfigError."""


def serve_once(config_path: Path) -> subprocess.CompletedProcess[str]:
    """``cad-node serve`` with a config it refuses: it exits before listening."""
    return subprocess.run(
        [sys.executable, "-m", "cad_node", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_serve_refuses_every_interface_with_no_peers(tmp_path: Path) -> None:
    refused = serve_once(write_config(tmp_path, bind_address="0.0.0.0"))

    assert refused.returncode == CONFIG_ERROR, refused.stderr
    assert "bind_address 0.0.0.0 listens on every interface" in refused.stderr
    assert "accept_any_peer: true" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "storage").exists()


def test_serve_refuses_a_well_known_admin_token(tmp_path: Path) -> None:
    token = {"name": "alice", "role": "admin", "sha256": hashlib.sha256(b"changeme").hexdigest()}
    admin = {"enabled": True, "port": 0, "tokens": [token]}

    refused = serve_once(write_config(tmp_path, admin=admin))

    assert refused.returncode == CONFIG_ERROR, refused.stderr
    assert "admin.tokens[0]" in refused.stderr
    assert "'alice'" in refused.stderr


def test_accept_any_peer_opens_every_interface_and_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, bind_address="0.0.0.0", accept_any_peer=True)

    with running_node(config, tmp_path / "node.log") as node:
        wait_for(lambda: NODE_STARTED in node.log(), 60, "the start-up lines")
        assert storescu(node.port, [pydicom_file("CT_small.dcm")]).returncode == 0

    assert "WARNING cad_node.app: DICOM peers: any calling AE title from any address" in (
        node.log()
    )


def test_what_the_node_writes_is_its_users_alone(tmp_path: Path) -> None:
    config = write_config(tmp_path, port=free_port())
    storage = tmp_path / "storage"

    with running_node(config, tmp_path / "node.log") as node:
        assert storescu(node.port, [pydicom_file("CT_small.dcm")]).returncode == 0
        journal = [storage / f"journal.sqlite{suffix}" for suffix in ("", "-wal", "-shm")]
        wait_for(lambda: all(path.exists() for path in journal), 30, "the journal's files")
        modes = {path.name: mode(path) for path in journal}
        spool = sorted((storage / "spool").rglob("*"))

    assert mode(storage) == 0o700
    assert modes == dict.fromkeys(modes, 0o600)
    assert [path for path in spool if path.is_file() and mode(path) != 0o600] == []
    assert [path for path in spool if path.is_dir() and mode(path) != 0o700] == []
    assert any(path.suffix == ".dcm" for path in spool)
    assert "INFO cad_node.app: DICOM peers: any calling AE title that reaches 127.0.0.1" in (
        node.log()
    )

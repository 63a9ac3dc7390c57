"""The README's promises: the node runs on its embedded defaults, and CI runs the test command."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dcmtk import DCMTK_ENV, port_open, program
from tests.integration.peers import wait_for

ROOT = Path(__file__).parents[2]
DEFAULT_PORT = 11112


def readme_commands() -> list[str]:
    """The shell commands in the README's set-up section."""
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", setup, flags=re.DOTALL)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one() -> None:
    serve, tests = readme_commands()
    assert serve.endswith("cad-node serve")
    assert "torch==2.13.0" in serve
    assert tests == "bash .ci/run"
    assert "bash tests/run" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
@pytest.mark.skipif(port_open(DEFAULT_PORT), reason=f"port {DEFAULT_PORT} is in use here")
def test_serve_runs_on_the_embedded_defaults(tmp_path: Path) -> None:
    """``cad-node serve`` with no config: SQLite and spool in ./cad-node-data, port 11112 on
    127.0.0.1 only (it says so), the journal readable by its user only."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CAD_NODE")}
    node = subprocess.Popen(
        [sys.executable, "-m", "cad_node", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: port_open(DEFAULT_PORT), 120, "the node on port 11112")
        echo = subprocess.run(
            [program("echoscu"), "-aec", "CADNODE", "127.0.0.1", str(DEFAULT_PORT)],
            env=DCMTK_ENV,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert echo.returncode == 0, echo.stderr
        journal = tmp_path / "cad-node-data" / "journal.sqlite"
        assert journal.is_file()
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o700
    finally:
        node.terminate()
        output = node.communicate(timeout=60)[0].decode(errors="replace")
    assert node.returncode == 0, output
    assert "Traceback" not in output
    assert "DICOM peers: any calling AE title that reaches 127.0.0.1" in output

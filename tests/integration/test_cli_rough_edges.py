"""The command line's rough edges (issue 24, item 8), through the installed ``cad-node``:
``status`` with no journal, a reader that closes the pipe, and a database URL whose
driver is not installed answer in one line, never with a traceback."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cad_node.store.db import create_schema, make_engine, sqlite_url


def _cad_node() -> str:
    beside = Path(sys.executable).with_name("cad-node")  # .venv/bin/cad-node
    found = str(beside) if beside.exists() else shutil.which("cad-node")
    if found is None:
        pytest.skip("the cad-node console script is not installed")
    return found


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_cad_node(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cad-node: error: "), lines[0]
    return lines[0]


def _journal(folder: Path) -> None:
    folder.mkdir(parents=True)
    engine = make_engine(sqlite_url(folder / "journal.sqlite"))
    try:
        create_schema(engine)
    finally:
        engine.dispose()


def test_status_without_config_and_without_journal_says_where_it_looked(tmp_path: Path) -> None:
    line = _one_line_error(_run("status", cwd=tmp_path))

    journal = tmp_path.resolve() / "cad-node-data" / "journal.sqlite"
    assert f"no journal at {journal}" in line
    assert "cad-node serve" in line
    assert "--config" in line
    assert not (tmp_path / "cad-node-data").exists()  # status reads; it creates nothing


def test_status_in_an_empty_storage_folder_creates_no_journal(tmp_path: Path) -> None:
    (tmp_path / "cad-node-data").mkdir()

    line = _one_line_error(_run("status", cwd=tmp_path))

    assert "no journal at" in line
    assert list((tmp_path / "cad-node-data").iterdir()) == []


def test_status_on_a_file_that_is_not_a_journal_says_so(tmp_path: Path) -> None:
    (tmp_path / "cad-node-data").mkdir()
    (tmp_path / "cad-node-data" / "journal.sqlite").touch()

    line = _one_line_error(_run("status", cwd=tmp_path))

    assert "cannot read the journal" in line
    assert "not a cad-node journal yet" in line


@pytest.mark.parametrize("command", [("status",), ("status", "--limit", "5")])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """``cad-node status | head``: the pipe's reader is gone before the first write (the
    parent closes its end before the child has started), so every write fails with EPIPE."""
    _journal(tmp_path / "cad-node-data")
    process = subprocess.Popen(
        [_cad_node(), *command],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read().decode()
    returncode = process.wait(timeout=120)

    assert stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert returncode == 141  # as a shell reports a command ended by SIGPIPE


def test_status_prints_the_journal_when_the_pipe_stays_open(tmp_path: Path) -> None:
    _journal(tmp_path / "cad-node-data")

    result = _run("status", cwd=tmp_path)

    assert result.returncode == 0, result
    assert result.stdout.startswith("instances: 0\n")


@pytest.mark.parametrize("command", ["status", "serve", "worker"])
def test_a_database_url_without_its_driver_names_what_to_install(
    tmp_path: Path, command: str
) -> None:
    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed here: its URL would not miss its driver")
    config = tmp_path / "node.yaml"
    config.write_text(
        f"storage_dir: {tmp_path / 'storage'}\n"
        "port: 0\n"
        "database_url: postgresql+pg8000://cad:s3cret-pw@127.0.0.1:1/cadnode\n"
    )

    line = _one_line_error(_run(command, "--config", str(config), cwd=tmp_path))

    assert "'pg8000' is not installed" in line
    assert "pip install 'cad-node[postgresql]'" in line
    assert "postgresql+psycopg://" in line
    assert "s3cret-pw" not in line

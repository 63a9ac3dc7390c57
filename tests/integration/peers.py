"""Real peers for the end-to-end tests: cad-node itself, DCMTK storescp and storescu."""

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.dcmtk import DCMTK_ENV, free_port, port_open, program


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def write_config(folder: Path, **overrides: Any) -> Path:
    """A node config in ``folder`` with the shipped rules, run anyway outside a model's
    validated domain (the tests' synthetic CTs are small: 128 x 128 or less and a few dozen
    slices, outside the lung model's validated resolution and length, which its OOD score
    flags); ``overrides`` replace keys (a test of abstention gives its own rules)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "ae_title": "CADNODE",
        "port": free_port(),
        "bind_address": "127.0.0.1",
        "storage_dir": str(folder / "storage"),
        "quiet_seconds": 2,
        "destinations": {"pacs": {"host": "127.0.0.1", "port": free_port(), "ae_title": "PACS"}},
        "rules": str(shipped_rules_run_anyway(folder)),
        "export": {"initial_backoff_seconds": 1, "max_backoff_seconds": 2},
        "admin": {"enabled": False},
    }
    config.update(overrides)
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def shipped_rules_anyway() -> list[dict[str, Any]]:
    """config/rules.yaml's rules with ``on_out_of_domain: run_anyway``: for a test whose
    input lies outside a shipped model's validated domain (a small synthetic CT, a real
    image, a SOP class the model was not validated on) and expects its findings."""
    rules = yaml.safe_load((Path(__file__).parents[2] / "config" / "rules.yaml").read_text())
    return [{**rule, "on_out_of_domain": "run_anyway"} for rule in rules]


def shipped_rules_run_anyway(folder: Path) -> Path:
    """:func:`shipped_rules_anyway` written in ``folder``."""
    path = folder / "rules-run-anyway.yaml"
    path.write_text(yaml.safe_dump(shipped_rules_anyway()))
    return path


class NodeProcess:
    """``cad-node serve`` in a child process; ``kill()`` is a real SIGKILL."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config = yaml.safe_load(config_path.read_text())
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cad_node", "serve", "--config", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = log_path
        wait_for(self._alive_and_listening, 120, "cad-node to listen")

    @property
    def port(self) -> int:
        return int(self.config["port"])

    def _alive_and_listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"cad-node exited: {self.log_path.read_text()[-3000:]}")
        if self.config.get("ingest_processes", 1) > 1 and NODE_STARTED not in self.log():
            return False  # the port opens before the extra ingest processes accept on it
        return port_open(self.port)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


NODE_STARTED = "cad_node.app: cad-node "
"""Starts the line serve logs once everything has started."""


def journal_rows(storage_dir: Path, statement: Any) -> list[Any]:
    """``statement`` on the SQLite journal in ``storage_dir``, in a fresh read transaction."""
    engine = create_engine(f"sqlite:///{storage_dir / 'journal.sqlite'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(statement).all())
    finally:
        engine.dispose()


def query(config: dict[str, object], statement: Any) -> list[Any]:
    """``statement`` on the journal of the node ``config`` describes (see :func:`journal_rows`)."""
    return journal_rows(Path(str(config["storage_dir"])), statement)


def cad_node_status(config_path: Path) -> str:
    """What ``cad-node status --config config_path`` prints (it must exit 0)."""
    return subprocess.run(
        [sys.executable, "-m", "cad_node", "status", "--config", str(config_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


@contextmanager
def running_node(config_path: Path, log_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(config_path, log_path)
    try:
        yield node
    finally:
        node.stop()


@contextmanager
def storescp(port: int, out_dir: Path, ae_title: str = "PACS") -> Iterator[subprocess.Popen[bytes]]:
    """DCMTK storescp accepting every storage SOP class (SEG and SR included)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            program("storescp"),
            "--aetitle",
            ae_title,
            "--output-directory",
            str(out_dir),
            "--promiscuous",
            str(port),
        ],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), 30, "storescp to listen")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)

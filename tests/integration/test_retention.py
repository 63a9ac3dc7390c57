"""Retention on a running node (issue 24, item 5): only delivered series' files go, rows stay.

An in-process node (``cad_node.app.Node``) with an injected clock receives two synthetic
chest CTs by C-STORE (pynetdicom): one's results reach DCMTK's storescp, the other's
destination is down (its deliveries stay pending). ``cad-node purge --dry-run`` lists and
removes nothing; the keep time passes on the clock, not by sleeping; the retention sweep
removes the delivered series' files only; ``/api/storage`` and ``cad-node status`` show it;
a late instance of the purged series gets a re-run that fails naming the purge.
"""

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from cad_node.app import Node
from cad_node.clock import utc_now
from cad_node.config import Settings
from cad_node.domain.states import DeliveryState, JobState, ResultKind
from cad_node.store.schema import AuditEvent, Delivery, Instance, Job, Result, Series
from tests.conftest import send
from tests.dcmtk import NODE_AE_TITLE, free_port
from tests.integration.conftest import READ_TOKEN, in_process_node, sha256
from tests.integration.peers import storescp, wait_for
from tests.synthetic import SyntheticSeries, write_ct_series

pytestmark = pytest.mark.slow

KEEP_HOURS = 72.0
STORAGE_KEYS = {
    "storage_dir_total_bytes",
    "free_bytes",
    "spool_bytes",
    "results_bytes",
    "purgeable_series",
    "purged_series",
    "low",
}


class SteppedClock:
    """The node's clock, stepped by the test; starts at the real time (``cad-node purge``
    runs in its own process on the real clock)."""

    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, hours: float) -> None:
        self.now += timedelta(hours=hours)


def rule(name: str, description: str, destination: str) -> dict[str, Any]:
    return {
        "name": name,
        "priority": 10,
        "mode": "active",
        "model": "lung_nodule_ct",
        "destinations": [destination],
        # the suite's 128 x 128 CTs lie outside the lung model's validated domain
        "on_out_of_domain": "run_anyway",
        "when": {
            "all": [
                {"keyword": "Modality", "equals": "CT"},
                {"keyword": "SeriesDescription", "regex": f"(?i){description}"},
            ]
        },
    }


def settings_for(tmp_path: Path, pacs_port: int) -> dict[str, Any]:
    return {
        "ae_title": NODE_AE_TITLE,
        "port": 0,
        "bind_address": "127.0.0.1",
        "storage_dir": str(tmp_path / "storage"),
        "quiet_seconds": 30,
        "device": "cpu",
        "destinations": {
            "pacs": {"host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"},
            "down": {"host": "127.0.0.1", "port": free_port(), "ae_title": "DOWN"},
        },
        "rules": [rule("delivered", "delivered", "pacs"), rule("stuck", "stuck", "down")],
        "retention": {"keep_hours": KEEP_HOURS, "interval_seconds": 600},
        "admin": {
            "port": free_port(),
            "tokens": [{"name": "bob", "role": "read", "sha256": sha256(READ_TOKEN)}],
        },
    }


@pytest.fixture
def pacs_port() -> int:
    return free_port()


@pytest.fixture
def config(tmp_path: Path, pacs_port: int) -> Path:
    """The node's settings as node.yaml, for the command line beside the running node."""
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(settings_for(tmp_path, pacs_port)))
    return path


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def node(config: Path, clock: SteppedClock, tmp_path: Path, pacs_port: int) -> Iterator[Node]:
    settings = Settings.model_validate(yaml.safe_load(config.read_text()))
    with storescp(pacs_port, tmp_path / "pacs"), in_process_node(settings, clock=clock) as running:
        yield running


def cad_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cad_node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def delivery_states(node: Node, series_instance_uid: str) -> list[DeliveryState]:
    with node.sessions() as session:
        rows = session.scalars(
            select(Delivery.state)
            .join(Result, Result.id == Delivery.result_id)
            .join(Job, Job.id == Result.job_id)
            .where(Job.series_instance_uid == series_instance_uid)
        )
        return [DeliveryState(state) for state in rows]


def retrying(node: Node, series_instance_uid: str) -> bool:
    with node.sessions() as session:
        attempts = session.scalars(
            select(Delivery.attempts)
            .join(Result, Result.id == Delivery.result_id)
            .join(Job, Job.id == Result.job_id)
            .where(Job.series_instance_uid == series_instance_uid)
        ).all()
    states = delivery_states(node, series_instance_uid)
    return bool(attempts) and all(a > 0 for a in attempts) and set(states) == {"pending"}


def purged_at(node: Node, series_instance_uid: str) -> datetime | None:
    with node.sessions() as session:
        return session.get_one(Series, series_instance_uid).purged_at


def result_paths(node: Node, series_instance_uid: str) -> dict[ResultKind, Path]:
    with node.sessions() as session:
        rows = session.execute(
            select(Result.kind, Result.path)
            .join(Job, Job.id == Result.job_id)
            .where(Job.series_instance_uid == series_instance_uid)
        )
        return {ResultKind(kind): node.settings.storage_dir / path for kind, path in rows}


def row_counts(node: Node) -> tuple[int, int, int, int]:
    with node.sessions() as session:
        return tuple(  # type: ignore[return-value]
            int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in (Series, Instance, Result, Delivery)
        )


def spooled(node: Node, series: SyntheticSeries) -> list[Path]:
    folder = node.settings.storage_dir / "spool" / series.study_instance_uid
    return sorted((folder / series.series_instance_uid).glob("*.dcm"))


def late_instance(series: SyntheticSeries, folder: Path) -> Path:
    """One more image of ``series`` (a new SOP Instance), as a scanner sends a late one."""
    dataset = dcmread(series.paths[-1])
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.InstanceNumber = len(series.paths) + 1
    path = folder / "late.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_only_delivered_series_lose_their_files_after_the_keep_time(
    node: Node, clock: SteppedClock, config: Path, tmp_path: Path
) -> None:
    delivered = write_ct_series(
        tmp_path / "a", seed=3, images_in_acquisition=True, series_description="delivered"
    )
    stuck = write_ct_series(
        tmp_path / "b", seed=4, images_in_acquisition=True, series_description="stuck"
    )
    assert set(send(node.scp.port, list(delivered.paths))) == {0x0000}
    assert set(send(node.scp.port, list(stuck.paths))) == {0x0000}
    a, b = delivered.series_instance_uid, stuck.series_instance_uid
    wait_for(
        lambda: bool(delivery_states(node, a)) and set(delivery_states(node, a)) == {"delivered"},
        300,
        "the delivered series' results at the PACS",
    )
    wait_for(lambda: retrying(node, b), 300, "the stuck series' deliveries to retry")
    rows = row_counts(node)
    results_a, results_b = result_paths(node, a), result_paths(node, b)
    assert len(spooled(node, delivered)) == len(delivered.paths)

    # a dry run lists the delivered series only, and removes nothing
    listed = cad_node("purge", "--config", str(config), "--dry-run", "--older-than", "0")
    assert listed.returncode == 0, listed.stderr
    assert "would remove (dry run, nothing removed): 1 series" in listed.stdout
    assert a in listed.stdout
    assert b not in listed.stdout
    assert len(spooled(node, delivered)) == len(delivered.paths)
    assert all(path.exists() for path in results_a.values())
    assert purged_at(node, a) is None

    # before the keep time: nothing goes
    clock.advance(KEEP_HOURS - 1)
    node.purge_due()
    assert len(spooled(node, delivered)) == len(delivered.paths)
    assert purged_at(node, a) is None

    # after it: the sweep removes the delivered series' files, and only those
    clock.advance(2)
    node.kick_retention()
    wait_for(lambda: purged_at(node, a) is not None, 60, "the retention sweep to purge")
    assert purged_at(node, a) == clock.now
    assert spooled(node, delivered) == []
    assert not results_a[ResultKind.SEG].exists()
    assert results_a[ResultKind.SR].exists()  # a later revision's SR references it
    assert len(spooled(node, stuck)) == len(stuck.paths)
    assert all(path.exists() for path in results_b.values())
    assert purged_at(node, b) is None
    assert set(delivery_states(node, b)) == {"pending"}
    assert row_counts(node) == rows  # the journal keeps every row
    with node.sessions() as session:
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "series.purged")
        ).all()
    assert (event.actor, event.target) == ("node", f"series {a}")

    storage = httpx.get(
        f"http://127.0.0.1:{node.settings.admin.port}/api/storage",
        headers={"Authorization": f"Bearer {READ_TOKEN}"},
        timeout=30,
    ).json()
    assert set(storage) == STORAGE_KEYS
    assert storage["purged_series"] == 1
    assert storage["purgeable_series"] == 0
    assert storage["spool_bytes"] == sum(path.stat().st_size for path in spooled(node, stuck))
    assert 0 < storage["free_bytes"] <= storage["storage_dir_total_bytes"]
    assert isinstance(storage["low"], bool)

    status = cad_node("status", "--config", str(config), "--limit", "0")
    assert status.returncode == 0, status.stderr
    (line,) = [line for line in status.stdout.splitlines() if line.startswith("storage: ")]
    assert "purged series 1" in line

    # a late instance of the purged series: its re-run fails, naming the purge
    assert send(node.scp.port, [late_instance(delivered, tmp_path)]) == [0x0000]

    def rerun() -> Job | None:
        with node.sessions() as session:
            return session.scalars(
                select(Job).where(Job.series_instance_uid == a, Job.series_revision == 2)
            ).one_or_none()

    wait_for(lambda: (job := rerun()) is not None and job.state == JobState.FAILED, 120, "rerun")
    job = rerun()
    assert job is not None
    assert job.error is not None
    assert f"{len(delivered.paths)} of {len(delivered.paths) + 1} instance files" in job.error
    assert "removed by retention" in job.error
    assert "Send the whole series again" in job.error


def test_purge_needs_a_journal(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"storage_dir": str(tmp_path / "nothing")}))
    answer = cad_node("purge", "--config", str(config), "--dry-run")
    assert answer.returncode == 2
    assert "no journal at" in answer.stderr

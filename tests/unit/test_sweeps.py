"""A sweep runs on its interval, at once when kicked, and again when kicked mid-run."""

import threading
import time
from collections.abc import Iterator

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from cad_node.sweeps import Sweep

HOUR = 3600.0


@pytest.fixture
def scheduler() -> Iterator[BackgroundScheduler]:
    running = BackgroundScheduler(timezone="UTC")
    yield running
    if running.running:
        running.shutdown(wait=True)


def _wait_for(condition: threading.Event, seconds: float = 5.0) -> bool:
    return condition.wait(seconds)


def test_a_kick_runs_the_sweep_long_before_its_interval(scheduler: BackgroundScheduler) -> None:
    ran = threading.Event()
    sweep = Sweep(scheduler, "test-sweep", ran.set, seconds=HOUR)
    scheduler.start()
    assert not ran.wait(0.3), "nothing asked for a run yet"
    started = time.monotonic()
    sweep.kick()
    assert _wait_for(ran)
    assert time.monotonic() - started < 2.0


def test_a_kick_during_a_run_runs_it_once_more(scheduler: BackgroundScheduler) -> None:
    inside, release, second = threading.Event(), threading.Event(), threading.Event()
    runs: list[int] = []

    def slow_sweep() -> None:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            inside.set()
            release.wait(5)
        else:
            second.set()

    sweep = Sweep(scheduler, "test-sweep", slow_sweep, seconds=HOUR)
    scheduler.start()
    sweep.kick()
    assert _wait_for(inside)
    sweep.kick()  # work arrived while the first run was reading
    sweep.kick()  # kicks during one run coalesce
    release.set()
    assert _wait_for(second)
    time.sleep(0.3)
    assert runs == [1, 2]


def test_a_kick_before_start_or_after_shutdown_does_nothing(
    scheduler: BackgroundScheduler,
) -> None:
    ran = threading.Event()
    sweep = Sweep(scheduler, "test-sweep", ran.set, seconds=HOUR)
    sweep.kick()
    scheduler.start()
    scheduler.shutdown(wait=True)
    sweep.kick()
    assert not ran.is_set()

"""Periodic sweeps (assembly, export) that can also be asked to run at once.

A sweep runs every few seconds on APScheduler; :meth:`Sweep.kick` runs it now,
when the node knows there is work: a series whose last announced image has just
been committed, a job whose results have just been written.  That takes the
sweep interval out of the time from the last image to the results at the PACS.

Example::

    scheduler = BackgroundScheduler(timezone="UTC")
    exports = Sweep(scheduler, "export-sweep", deliver, seconds=1.0)
    scheduler.start()
    exports.kick()  # results are ready: deliver them now
"""

import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.base import BaseScheduler


class Sweep:
    """``function`` run by ``scheduler`` every ``seconds``, one run at a time, and on a kick.

    A kick during a run makes the function run once more right after it, so work
    that arrived meanwhile does not wait for the next interval.
    """

    def __init__(
        self,
        scheduler: BaseScheduler,
        job_id: str,
        function: Callable[[], None],
        seconds: float,
    ) -> None:
        self._scheduler = scheduler
        self._job_id = job_id
        self._function = function
        self._running = threading.Lock()
        self._again = threading.Event()
        scheduler.add_job(
            self._run,
            "interval",
            seconds=seconds,
            id=job_id,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=30,
        )

    def kick(self) -> None:
        """Run the sweep as soon as possible (again after the current run, if one is on)."""
        if self._running.locked():
            self._again.set()
            return
        with suppress(JobLookupError, SchedulerNotRunningError):  # the node is stopping
            if self._scheduler.running:
                self._scheduler.modify_job(self._job_id, next_run_time=datetime.now(UTC))

    def _run(self) -> None:
        with self._running:
            self._again.clear()
            self._function()
            while self._again.is_set():
                self._again.clear()
                self._function()

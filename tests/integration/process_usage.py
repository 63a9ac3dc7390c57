"""Peak resident memory and CPU time of a process and its descendants, read from Linux's /proc.

``VmHWM`` (PS: proc(5)) is a process's own high-water mark of resident memory.
A child's mark is gone once the child exits, so a :class:`PeakMemorySampler`
polls the process tree while it runs and keeps the last mark seen of each.

Example::

    with PeakMemorySampler(node.process.pid) as sampler:
        ...  # the load
    sampler.peak_bytes   # the node's VmHWM plus each descendant's
"""

import os
import threading
from pathlib import Path
from types import TracebackType

_KIB = 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far (proc(5): utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def high_water_mark_bytes(pid: int) -> int | None:
    """``VmHWM`` of ``pid``, or None when it is gone (or a zombie, which has no memory)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * _KIB
    return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of all its threads, recursively)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


class PeakMemorySampler:
    """Polls ``pid`` and its descendants every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self._interval = interval
        self._marks: dict[int, int] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="peak-memory", daemon=True)

    def __enter__(self) -> "PeakMemorySampler":
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join()
        self.sample()

    @property
    def peak_bytes(self) -> int:
        """The process's own high-water mark plus the last one seen of each descendant."""
        return sum(self._marks.values())

    @property
    def process_count(self) -> int:
        """How many processes (the one watched and its descendants) were seen."""
        return len(self._marks)

    def sample(self) -> None:
        for pid in (self.pid, *descendants(self.pid)):
            mark = high_water_mark_bytes(pid)
            if mark is not None:
                self._marks[pid] = max(mark, self._marks.get(pid, 0))

    def _poll(self) -> None:
        while not self._stopped.wait(self._interval):
            self.sample()

"""Ingest memory: the node's resident set while one association sends a long series.

Issue 7 asks that ingest memory stay flat as series grow: a 2,000-image series
must not raise it.  One ``storescu`` sends the series into a fresh
``cad-node serve``; the node's ``VmRSS`` (its own and its children's) is
sampled every :data:`SAMPLE_SECONDS`.  Growth is the resident set at the end
of the send minus the one after the first tenth of it (imports, caches and
pools are warm by then), also given per instance.
"""

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import _peers
from bench._series import SeriesFiles, describe, synthetic_chest_ct

SAMPLE_SECONDS = 0.1
WARM_FRACTION = 0.1
"""The resident set after this fraction of the send is the baseline growth is measured from."""
FLAT_LIMIT_MB = 5.0
"""Growth below this over the whole series counts as flat."""


@dataclass(frozen=True, slots=True)
class MemoryFigure:
    """RSS samples of one long send into one node."""

    series_text: str
    instances: int
    seconds: float
    before_mb: float
    warm_mb: float
    end_mb: float
    peak_mb: float

    @property
    def growth_mb(self) -> float:
        return self.end_mb - self.warm_mb

    @property
    def growth_kb_per_instance(self) -> float:
        counted = self.instances * (1 - WARM_FRACTION)
        return self.growth_mb * 1000 / counted

    @property
    def flat(self) -> bool:
        return self.growth_mb < FLAT_LIMIT_MB


def rss_bytes(pid: int) -> int:
    """Resident set (``VmRSS``) of ``pid`` plus that of its live children, from /proc."""
    return _peers.proc_status_kib(pid, "VmRSS") * 1024 + sum(
        rss_bytes(child) for child in _peers.children(pid)
    )


class _Sampler:
    """Samples a process's resident set in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.wait(SAMPLE_SECONDS):
            self.samples.append((time.perf_counter() - start, rss_bytes(self._pid)))


def prepare(scratch: Path, instances: int, rows: int) -> SeriesFiles:
    return synthetic_chest_ct(
        scratch / "memory-series", slices=instances, rows=rows, seed=11, images_in_acquisition=False
    )


def measure(series: SeriesFiles, work: Path, node_config: Path, port: int) -> MemoryFigure:
    """Send ``series`` over one association into a fresh node and sample its resident set."""
    with _peers.cad_node(node_config, port, work / "node.log") as peer:
        before = rss_bytes(peer.pid)
        with _Sampler(peer.pid) as sampler:
            seconds = _peers.send(peer.port, "CADNODE", [series.files], work / "senders")
        end = rss_bytes(peer.pid)
    return _figure(series, seconds, before, sampler.samples, end)


def _figure(
    series: SeriesFiles,
    seconds: float,
    before: int,
    samples: Sequence[tuple[float, int]],
    end: int,
) -> MemoryFigure:
    warm = [rss for at, rss in samples if at >= seconds * WARM_FRACTION]
    return MemoryFigure(
        series_text=describe(series)["text"],
        instances=len(series.files),
        seconds=seconds,
        before_mb=before / 1e6,
        warm_mb=(warm[0] if warm else before) / 1e6,
        end_mb=end / 1e6,
        peak_mb=max([end, *(rss for _, rss in samples)]) / 1e6,
    )


def section_lines(figure: MemoryFigure) -> list[str]:
    verdict = "met" if figure.flat else "**not met**"
    return [
        "### Memory while one association sends a long series",
        "",
        f"One `storescu` association sends {figure.series_text} into a fresh node in "
        f"{figure.seconds:.1f} s ({figure.instances / figure.seconds:.0f} instances/s); the "
        f"node's `VmRSS` is sampled every {SAMPLE_SECONDS:g} s.",
        "",
        "| Before the send | After the first tenth | End of the send | Peak | Growth, first "
        "tenth to end |",
        "|---|---|---|---|---|",
        f"| {figure.before_mb:.0f} MB | {figure.warm_mb:.0f} MB | {figure.end_mb:.0f} MB | "
        f"{figure.peak_mb:.0f} MB | {figure.growth_mb:+.1f} MB "
        f"({figure.growth_kb_per_instance:+.2f} kB per instance) |",
        "",
        f"- Ingest memory flat as the series grows (growth under {FLAT_LIMIT_MB:g} MB over "
        f"{figure.instances} instances): {verdict}.",
        "",
    ]

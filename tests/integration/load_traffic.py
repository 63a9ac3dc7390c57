"""Load-test traffic: many small CT series per sender, sent by concurrent DCMTK ``storescu``s.

Tens of thousands of files have to be written quickly, so each bulk instance is a
copy of one of a few template slices with its Study, Series and SOP Instance UIDs
replaced in the encoded bytes.  Every UID this module makes has the same length
as its template's, so element lengths and padding stay right (PS3.5 9.1, 7.1.2).

Example::

    plan = LoadPlan(senders=2, instances_per_sender=100, slices_per_series=20)
    traffic = write_traffic(tmp_path / "traffic", plan, ct_slices, routed=[exam_a, exam_b])
    with concurrent_storescus(node.port, traffic, tmp_path / "logs") as senders:
        outcomes = [sender.wait() for sender in senders]
"""

import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from tests.dcmtk import DCMTK_ENV, program

BULK_SERIES_DESCRIPTION = "Load test head CT 5mm"
"""Bulk series: stored and assembled; the lung rule does not take them (head, 5 mm)."""

SENDER_TIMEOUT_SECONDS = 600


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How much each sender sends: ``instances_per_sender`` in series of ``slices_per_series``."""

    senders: int
    instances_per_sender: int
    slices_per_series: int

    def __post_init__(self) -> None:
        if not 1 <= self.senders <= 99:
            raise ValueError(f"senders must be 1 to 99, got {self.senders}")
        if not 1 <= self.slices_per_series <= self.instances_per_sender:
            raise ValueError("slices_per_series must be 1 to instances_per_sender")
        if self.instances_per_sender // self.slices_per_series > 9998:
            raise ValueError("at most 9998 series per sender")


@dataclass(frozen=True, slots=True)
class UidScheme:
    """Fixed-length UIDs under one random 2.25 root per test run (PS3.5 B.2).

    A component never starts with 0: each starts with the digit 1.
    """

    root: str

    @classmethod
    def fresh(cls) -> "UidScheme":
        return cls(f"2.25.1{secrets.randbelow(10**20):020d}")

    def study(self, sender: int, series: int) -> str:
        return f"{self.root}.1.1{sender:02d}{series:04d}"

    def series(self, sender: int, series: int) -> str:
        return f"{self.root}.2.1{sender:02d}{series:04d}"

    def instance(self, sender: int, series: int, slice_index: int) -> str:
        return f"{self.root}.3.1{sender:02d}{series:04d}{slice_index:04d}"


@dataclass(frozen=True, slots=True)
class SenderTraffic:
    """What one sender sends, in order, under its own calling AE title."""

    calling_ae_title: str
    paths: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    """The SOP Instance UID of each of ``paths``."""
    series_instance_uids: frozenset[str]


@dataclass(frozen=True, slots=True)
class _SliceTemplate:
    """One encoded slice with placeholder UIDs, and the placeholders' bytes."""

    encoded: bytes
    study: bytes
    series: bytes
    instance: bytes

    def instantiate(self, uids: UidScheme, sender: int, series: int, slice_index: int) -> bytes:
        return (
            self.encoded.replace(self.instance, uids.instance(sender, series, slice_index).encode())
            .replace(self.series, uids.series(sender, series).encode())
            .replace(self.study, uids.study(sender, series).encode())
        )


def _bulk_template(
    source: Path, uids: UidScheme, slice_index: int, placeholder: int
) -> _SliceTemplate:
    """``source`` as a head CT slice, encoded with the UIDs of series ``placeholder`` of sender 0.

    No sender sends series ``placeholder`` (:class:`LoadPlan` allows 9998 series),
    so the placeholders are found in the bytes without ambiguity.
    """
    ds = dcmread(source)
    ds.StudyDescription = "Load test"
    ds.SeriesDescription = BULK_SERIES_DESCRIPTION
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = "5"
    ds.SpacingBetweenSlices = "5"
    study, series = uids.study(0, placeholder), uids.series(0, placeholder)
    instance = uids.instance(0, placeholder, slice_index)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, instance
    ds.file_meta.MediaStorageSOPInstanceUID = UID(instance)
    return _SliceTemplate(_encode(ds), study.encode(), series.encode(), instance.encode())


def _encode(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_traffic(
    folder: Path,
    plan: LoadPlan,
    template_slices: Sequence[Path],
    routed: Sequence[Sequence[Path]],
) -> list[SenderTraffic]:
    """Write each sender's bulk series under ``folder``; sender ``s`` also sends ``routed[s]``.

    Bulk series are copies of ``template_slices`` (one file per slice, cycled;
    the last series of a sender may be short); each sender's routed instances
    go in the middle of its stream, so that model runs overlap the ingest.  The
    routed instances count towards ``plan.instances_per_sender``.
    """
    if len(routed) != plan.senders:
        raise ValueError(f"one routed series per sender: got {len(routed)} for {plan.senders}")
    uids = UidScheme.fresh()
    templates = [
        _bulk_template(path, uids, k, placeholder=9999)
        for k, path in enumerate(template_slices[: plan.slices_per_series])
    ]
    return [
        _write_sender(
            folder / f"sender{sender:02d}",
            plan,
            templates,
            uids=uids,
            sender=sender,
            routed=routed[sender],
        )
        for sender in range(plan.senders)
    ]


def _write_sender(
    folder: Path,
    plan: LoadPlan,
    templates: Sequence[_SliceTemplate],
    *,
    uids: UidScheme,
    sender: int,
    routed: Sequence[Path],
) -> SenderTraffic:
    folder.mkdir(parents=True)
    bulk_instances = plan.instances_per_sender - len(routed)
    paths: list[Path] = []
    sop_instance_uids: list[str] = []
    series_instance_uids: set[str] = set()
    for index in range(bulk_instances):
        series, slice_index = divmod(index, plan.slices_per_series)
        template = templates[slice_index % len(templates)]
        path = folder / f"{series:04d}_{slice_index:04d}.dcm"
        path.write_bytes(template.instantiate(uids, sender, series, slice_index))
        paths.append(path)
        sop_instance_uids.append(uids.instance(sender, series, slice_index))
        series_instance_uids.add(uids.series(sender, series))
    middle = len(paths) // 2 // plan.slices_per_series * plan.slices_per_series
    headers = [dcmread(path, stop_before_pixels=True) for path in routed]
    paths[middle:middle] = routed
    sop_instance_uids[middle:middle] = [str(header.SOPInstanceUID) for header in headers]
    series_instance_uids |= {str(header.SeriesInstanceUID) for header in headers}
    return SenderTraffic(
        f"LOAD{sender:02d}",
        tuple(paths),
        tuple(sop_instance_uids),
        frozenset(series_instance_uids),
    )


# -- the senders: one storescu process each, all at once -------------------------------------


@dataclass(frozen=True, slots=True)
class SenderOutcome:
    """What one storescu reported: the SOP instances answered Success (0x0000)."""

    calling_ae_title: str
    returncode: int
    requests: int
    acknowledged: frozenset[str]
    refused: int
    """C-STORE responses other than Success."""


class StorescuSender:
    """One DCMTK storescu sending a :class:`SenderTraffic` over one association."""

    def __init__(self, port: int, traffic: SenderTraffic, log_path: Path) -> None:
        self.traffic = traffic
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            _storescu_command(port, traffic),
            env=DCMTK_ENV,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait(self) -> SenderOutcome:
        returncode = self.process.wait(timeout=SENDER_TIMEOUT_SECONDS)
        self._log.close()
        return read_outcome(self.traffic, returncode, self.log_path.read_text(errors="replace"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


def _storescu_command(port: int, traffic: SenderTraffic) -> list[str]:
    """``-v`` logs each file sent and its response; ``-R`` proposes only what the files need."""
    return [
        program("storescu"),
        "-v",
        "-R",
        "-aet",
        traffic.calling_ae_title,
        "-aec",
        "CADNODE",
        "127.0.0.1",
        str(port),
        *map(str, traffic.paths),
    ]


def read_outcome(traffic: SenderTraffic, returncode: int, log: str) -> SenderOutcome:
    """Pair each "Sending file: P" line of storescu's log with the response that follows it."""
    uid_of = dict(zip(traffic.paths, traffic.sop_instance_uids, strict=True))
    acknowledged: set[str] = set()
    requests = refused = 0
    current: Path | None = None
    for line in log.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: "))
        elif line.startswith("I: Received Store Response") and current is not None:
            requests += 1
            if line.endswith("(Success)"):
                acknowledged.add(uid_of[current])
            else:
                refused += 1
            current = None
    return SenderOutcome(
        traffic.calling_ae_title, returncode, requests, frozenset(acknowledged), refused
    )


@contextmanager
def concurrent_storescus(
    port: int, traffics: Sequence[SenderTraffic], log_dir: Path
) -> Iterator[list[StorescuSender]]:
    """Start one storescu per traffic at once; any still running at exit is killed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    senders: list[StorescuSender] = []
    try:
        for traffic in traffics:
            log_path = log_dir / f"{traffic.calling_ae_title}.log"
            senders.append(StorescuSender(port, traffic, log_path))
        yield senders
    finally:
        for sender in senders:
            sender.stop()

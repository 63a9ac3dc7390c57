"""The demo's peers: a node in this process, a local destination and a C-STORE sender.

The node runs with the embedded default configuration made local (free ports on
127.0.0.1, temporary storage, a 2 s quiet timer, admin off); the destination is
a Storage SCP (PS3.4 Annex B) that writes what it receives to a folder.
"""

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Never

import yaml
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import StoragePresentationContexts
from sqlalchemy import select
from tqdm import tqdm

from cad_node.app import Node
from cad_node.config import DEFAULT_CONFIG
from cad_node.domain.states import DeliveryState, JobState
from cad_node.errors import CadNodeError
from cad_node.store.schema import Delivery, Job

DEMO_AE_TITLE = "DEMODEST"
"""AE title of the local destination."""
SENDER_AE_TITLE = "DEMOSCU"
POLL_SECONDS = 0.5


class DemoError(CadNodeError):
    """The demo could not finish (no result in time, a failed job or delivery)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def destination_scp(port: int, folder: Path) -> Iterator[None]:
    """A Storage SCP (PS3.4 Annex B) on 127.0.0.1 writing each received instance to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: Event) -> int:
        dataset = event.dataset
        (folder / f"{dataset.SOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=DEMO_AE_TITLE)
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    if server is None:
        raise DemoError(f"cannot listen on port {port}")
    try:
        yield
    finally:
        server.shutdown()


def _sender(paths: Sequence[Path]) -> AE:
    """An SCU proposing each SOP Class with its file's and the uncompressed transfer syntaxes."""
    syntaxes: dict[str, list[str]] = {}
    for path in paths:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        offered = syntaxes.setdefault(str(meta.MediaStorageSOPClassUID), [])
        for uid in (str(meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if uid not in offered:
                offered.append(uid)
    ae = AE(ae_title=SENDER_AE_TITLE)
    for sop_class_uid, transfer_syntaxes in syntaxes.items():
        ae.add_requested_context(sop_class_uid, transfer_syntaxes)
    return ae


def send_instances(paths: Sequence[Path], port: int, ae_title: str) -> None:
    """C-STORE ``paths`` to the node in one association, one progress bar tick per image.

    Raises
    ------
    DemoError
        When the node refuses the association or an instance (status other than 0x0000).
    """
    assoc = _sender(paths).associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise DemoError(f"the node on port {port} refused the association")
    try:
        for path in tqdm(paths, desc="send images", unit="img"):
            status = assoc.send_c_store(dcmread(path))
            if getattr(status, "Status", None) != 0x0000:
                raise DemoError(f"C-STORE of {path.name} failed: {status}")
    finally:
        assoc.release()


def default_config_text() -> str:
    """The embedded default configuration (YAML)."""
    return resources.files("cad_node").joinpath(DEFAULT_CONFIG).read_text()


def node_config(work_dir: Path, node_port: int, destination_port: int) -> Path:
    """The embedded default config, made local: free ports, quiet 2 s, admin off, overlays on."""
    config = yaml.safe_load(default_config_text())
    config.update(
        {
            "port": node_port,
            "bind_address": "127.0.0.1",
            "storage_dir": str(work_dir / "node"),
            "quiet_seconds": 2,
            "admin": {"enabled": False},
            "destinations": {
                "pacs": {
                    "host": "127.0.0.1",
                    "port": destination_port,
                    "ae_title": DEMO_AE_TITLE,
                    "results": ["seg", "sr", "overlay", "explanation"],
                }
            },
        }
    )
    path = work_dir / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass(frozen=True, slots=True)
class JournalProgress:
    """How far the node is: jobs done, deliveries made and delivered."""

    jobs_done: int
    deliveries: int
    delivered: int

    def complete(self, expected_jobs: int) -> bool:
        """Whether every expected job ran and every result reached the destination."""
        return (
            self.jobs_done >= expected_jobs
            and self.deliveries > 0
            and self.delivered == self.deliveries
        )


def journal_progress(node: Node) -> JournalProgress:
    """The node's journal read once.

    Raises
    ------
    DemoError
        When a job or a delivery failed.
    """
    with node.sessions() as session:
        jobs = list(session.scalars(select(Job.state)))
        deliveries = list(session.scalars(select(Delivery.state)))
    if JobState.FAILED in jobs:
        raise DemoError("a job failed; see the log above")
    if DeliveryState.FAILED in deliveries:
        raise DemoError("a delivery failed; see the log above")
    return JournalProgress(
        jobs_done=jobs.count(JobState.DONE),
        deliveries=len(deliveries),
        delivered=deliveries.count(DeliveryState.DELIVERED),
    )


def _advance(bar: "tqdm[Never]", done: int, total: int) -> None:
    """Move a progress bar to ``done`` of ``total`` (the total may grow as deliveries appear)."""
    if bar.total != total:
        bar.total = total
    bar.update(done - bar.n)


def wait_for_results(node: Node, expected_jobs: int, timeout: float) -> None:
    """Wait, with a progress bar each, until ``expected_jobs`` jobs ran and all was delivered.

    Raises
    ------
    DemoError
        When that takes longer than ``timeout`` seconds, or a job or delivery failed.
    """
    deadline = time.monotonic() + timeout
    with (
        tqdm(total=expected_jobs, desc="model jobs", unit="job") as jobs,
        tqdm(total=0, desc="deliveries", unit="obj") as deliveries,
    ):
        while True:
            progress = journal_progress(node)
            _advance(jobs, min(progress.jobs_done, expected_jobs), expected_jobs)
            _advance(deliveries, progress.delivered, progress.deliveries)
            if progress.complete(expected_jobs):
                return
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for the results")
            time.sleep(POLL_SECONDS)

"""Decompression and header amplification against a running node (issue 19, hole 2).

One ``cad-node serve`` process for the module, with limits small enough to
keep the attacks quick: ``max_instance_bytes`` 48 MiB, ``max_header_bytes``
8 MiB.  Each test resets the node's resident-memory high-water mark
(``/proc/PID/clear_refs``), runs one attack from real pynetdicom SCUs on
127.0.0.1 while another sender goes on echoing and storing, and then checks:

(a) the node's peak resident memory grew by less than a stated bound;
(b) the other sender's C-ECHO and C-STORE round trips all succeeded, promptly;
(c) the attacker got 0xA700 with an Error Comment naming the bound, or, on
    pynetdicom's path (which holds a data set whole), an aborted association.
"""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom._globals import DEFAULT_MAX_LENGTH
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from tests.bombs import MIB, Instance, deflated, dicom_file, header_bomb, pixel_bomb, plain
from tests.conftest import pydicom_file
from tests.dcmtk import NODE_AE_TITLE
from tests.integration.peers import NodeProcess, running_node, wait_for, write_config
from tests.integration.process_usage import high_water_mark_bytes

MAX_INSTANCE_BYTES = 48 * MIB
MAX_HEADER_BYTES = 8 * MIB
OUT_OF_RESOURCES = 0xA700
SUCCESS = 0x0000
STREAMED_BOUND = 16 * MIB
"""Growth of the node's peak RSS allowed while a streamed attack runs: a few 1 MiB PDUs, the
inflater's chunks and kept prefix (measured: 2-5 MiB; the 32 MiB header bomb cost 64 MiB before)."""
ROUND_TRIP_BOUND_S = 5.0
"""Longest C-ECHO + C-STORE round trip of the other sender during an attack."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp("bounds")
    config = write_config(
        folder,
        workers=0,
        limits={"max_instance_bytes": MAX_INSTANCE_BYTES, "max_header_bytes": MAX_HEADER_BYTES},
    )
    with running_node(config, folder / "node.log") as started:
        yield started


@pytest.fixture(scope="module")
def ct_small() -> Dataset:
    return dcmread(pydicom_file("CT_small.dcm"))


# -- measuring ---------------------------------------------------------------------------------


@contextmanager
def peak_growth(pid: int) -> Iterator[list[int]]:
    """Bytes the peak resident memory of ``pid`` grew by inside the block (first item)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # proc(5): reset the high-water mark
    baseline = high_water_mark_bytes(pid)
    assert baseline is not None
    growth = [0]
    try:
        yield growth
    finally:
        peak = high_water_mark_bytes(pid)
        growth[0] = (peak or baseline) - baseline


@dataclass
class OtherSender:
    """A well-behaved sender: C-ECHO then C-STORE on a fresh association, over and over."""

    port: int
    dataset: Dataset
    round_trips: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            outcome = self._round()
            if outcome:
                self.failures.append(outcome)
            self.round_trips.append(time.monotonic() - started)

    def _round(self) -> str | None:
        ae = AE(ae_title="OTHER")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AE_TITLE)
        if not assoc.is_established:
            return "association refused"
        try:
            echo = assoc.send_c_echo()
            self.dataset.SOPInstanceUID = generate_uid()
            store = assoc.send_c_store(self.dataset)
        finally:
            assoc.release()
        statuses = (echo.get("Status"), store.get("Status"))
        return None if statuses == (SUCCESS, SUCCESS) else f"statuses {statuses}"


@contextmanager
def another_sender_served(port: int, dataset: Dataset) -> Iterator[OtherSender]:
    """Round trips of another sender before, during and after the block, all checked."""
    sender = OtherSender(port, dataset.copy())
    thread = threading.Thread(target=sender.run, name="other-sender", daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(sender.round_trips) >= 1, 30, "the other sender's first round trip")
        yield sender
        after = len(sender.round_trips) + 1
        wait_for(lambda: len(sender.round_trips) >= after, 30, "a round trip after the attack")
    finally:
        sender._stop.set()
        thread.join(timeout=30)
    assert sender.failures == []
    assert max(sender.round_trips) < ROUND_TRIP_BOUND_S, sender.round_trips


# -- attacking ---------------------------------------------------------------------------------


def _attacker(port: int, transfer_syntax_uid: str, maximum_pdu_size: int = 0) -> Association:
    """An association proposing CT Image Storage in one transfer syntax only.

    A ``maximum_pdu_size`` under 1024 bytes makes the node answer through pynetdicom,
    which then also gathers the data set (cad_node.ingest.streaming).
    """
    ae = AE(ae_title="ATTACKER")
    ae.add_requested_context(CTImageStorage, transfer_syntax_uid)
    max_pdu = maximum_pdu_size or DEFAULT_MAX_LENGTH
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE_TITLE, max_pdu=max_pdu)
    assert assoc.is_established
    return assoc


def _write(folder: Path, transfer_syntax_uid: str, data_set: bytes, instance: Instance) -> Path:
    path = folder / f"{instance.sop_instance_uid}.dcm"
    path.write_bytes(dicom_file(instance, transfer_syntax_uid, data_set))
    return path


def _store(port: int, path: Path, transfer_syntax_uid: str, maximum_pdu_size: int = 0) -> Dataset:
    """The C-STORE-RSP to sending ``path``'s bytes as they are (chunked, never decoded)."""
    assoc = _attacker(port, transfer_syntax_uid, maximum_pdu_size)
    try:
        return assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()


def _deflate_bomb(folder: Path) -> Path:
    """About 1 MB, inflating to 1 GiB of Pixel Data zeros."""
    instance = Instance.new()
    return _write(
        folder,
        DeflatedExplicitVRLittleEndian,
        deflated(pixel_bomb(instance, 1 << 30)),
        instance,
    )


def _assert_refused(response: Dataset, comment: str) -> None:
    assert (response.Status, response.ErrorComment) == (OUT_OF_RESOURCES, comment)


def _nothing_kept(node: NodeProcess, instance_uid: str) -> None:
    spool = Path(node.config["storage_dir"]) / "spool"
    wait_for(lambda: not any(spool.glob(".tmp/*")), 10, "the refused data set's temp file to go")
    assert not list(spool.rglob(f"{instance_uid}.dcm"))


# -- the attacks -------------------------------------------------------------------------------


def test_a_deflate_bomb_is_refused_in_bounded_memory(
    node: NodeProcess, ct_small: Dataset, tmp_path: Path
) -> None:
    bomb = _deflate_bomb(tmp_path)

    with another_sender_served(node.port, ct_small), peak_growth(node.process.pid) as growth:
        response = _store(node.port, bomb, DeflatedExplicitVRLittleEndian)

    _assert_refused(response, f"Inflated data set exceeds {MAX_INSTANCE_BYTES} bytes")
    assert growth[0] < STREAMED_BOUND, f"{growth[0] / MIB:.0f} MiB"
    _nothing_kept(node, bomb.stem)


def test_two_deflate_bombs_at_once_are_refused_in_bounded_memory(
    node: NodeProcess, ct_small: Dataset, tmp_path: Path
) -> None:
    bombs = [_deflate_bomb(tmp_path), _deflate_bomb(tmp_path)]

    with (
        another_sender_served(node.port, ct_small),
        peak_growth(node.process.pid) as growth,
        ThreadPoolExecutor(2) as pool,
    ):
        responses = list(
            pool.map(lambda bomb: _store(node.port, bomb, DeflatedExplicitVRLittleEndian), bombs)
        )

    for response in responses:
        _assert_refused(response, f"Inflated data set exceeds {MAX_INSTANCE_BYTES} bytes")
    assert growth[0] < 2 * STREAMED_BOUND, f"{growth[0] / MIB:.0f} MiB"


def test_a_deflate_bomb_on_pynetdicoms_path_is_refused_in_bounded_memory(
    node: NodeProcess, ct_small: Dataset, tmp_path: Path
) -> None:
    bomb = _deflate_bomb(tmp_path)

    with another_sender_served(node.port, ct_small), peak_growth(node.process.pid) as growth:
        response = _store(node.port, bomb, DeflatedExplicitVRLittleEndian, maximum_pdu_size=512)

    _assert_refused(response, f"Inflated data set exceeds {MAX_INSTANCE_BYTES} bytes")
    assert growth[0] < STREAMED_BOUND, f"{growth[0] / MIB:.0f} MiB"


@pytest.mark.parametrize(
    "transfer_syntax_uid", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
)
def test_a_huge_element_before_pixel_data_is_refused_in_bounded_memory(
    transfer_syntax_uid: str, node: NodeProcess, ct_small: Dataset, tmp_path: Path
) -> None:
    instance = Instance.new()
    parts = header_bomb(instance, 4 * MAX_HEADER_BYTES)  # 32 MiB, under max_instance_bytes
    encode = deflated if transfer_syntax_uid == DeflatedExplicitVRLittleEndian else plain
    path = _write(tmp_path, transfer_syntax_uid, encode(parts), instance)

    with another_sender_served(node.port, ct_small), peak_growth(node.process.pid) as growth:
        response = _store(node.port, path, transfer_syntax_uid)

    _assert_refused(response, f"Header before Pixel Data exceeds {MAX_HEADER_BYTES} bytes")
    assert growth[0] < STREAMED_BOUND, f"{growth[0] / MIB:.0f} MiB (was twice the element)"
    _nothing_kept(node, instance.sop_instance_uid)


def test_a_data_set_over_max_instance_bytes_is_refused_as_it_arrives(
    node: NodeProcess, ct_small: Dataset, tmp_path: Path
) -> None:
    instance = Instance.new()
    path = _write(tmp_path, ExplicitVRLittleEndian, plain(pixel_bomb(instance, 64 * MIB)), instance)
    good = ct_small.copy()
    good.SOPInstanceUID = generate_uid()

    with another_sender_served(node.port, ct_small), peak_growth(node.process.pid) as growth:
        assoc = _attacker(node.port, ExplicitVRLittleEndian)
        response = assoc.send_c_store(path)
        then = assoc.send_c_store(good)  # the association goes on
        assoc.release()

    _assert_refused(response, f"Data set exceeds {MAX_INSTANCE_BYTES} bytes")
    assert then.Status == SUCCESS
    assert growth[0] < STREAMED_BOUND, f"{growth[0] / MIB:.0f} MiB"
    _nothing_kept(node, instance.sop_instance_uid)


def test_a_data_set_over_max_instance_bytes_on_pynetdicoms_path_is_aborted(
    node: NodeProcess, ct_small: Dataset, tmp_path: Path
) -> None:
    instance = Instance.new()
    path = _write(tmp_path, ExplicitVRLittleEndian, plain(pixel_bomb(instance, 64 * MIB)), instance)

    with another_sender_served(node.port, ct_small), peak_growth(node.process.pid) as growth:
        assoc = _attacker(node.port, ExplicitVRLittleEndian, maximum_pdu_size=512)
        response = assoc.send_c_store(path)
        wait_for(lambda: assoc.is_aborted, 10, "the node to abort the association")

    assert "Status" not in response
    # pynetdicom holds the data set until it is whole: up to max_instance_bytes, then abort.
    assert growth[0] < MAX_INSTANCE_BYTES + STREAMED_BOUND, f"{growth[0] / MIB:.0f} MiB"
    _nothing_kept(node, instance.sop_instance_uid)


@pytest.mark.parametrize(
    "transfer_syntax_uid", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
)
def test_a_header_past_the_first_64_kib_but_within_the_bound_is_stored(
    transfer_syntax_uid: str, node: NodeProcess, tmp_path: Path
) -> None:
    instance = Instance.new()
    encode = deflated if transfer_syntax_uid == DeflatedExplicitVRLittleEndian else plain
    data_set = encode(header_bomb(instance, MAX_HEADER_BYTES // 2))
    path = _write(tmp_path, transfer_syntax_uid, data_set, instance)

    response = _store(node.port, path, transfer_syntax_uid)

    assert response.Status == SUCCESS
    (stored,) = (Path(node.config["storage_dir"]) / "spool").rglob(path.name)
    assert stored.read_bytes().endswith(data_set)

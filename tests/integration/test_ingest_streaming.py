"""C-STORE requests streamed into the spool (cad_node.ingest.streaming), with real pynetdicom peers.

Some tests write P-DATA-TF PDUs of their own onto an association a pynetdicom
SCU opened: PDU layouts a sender may use but pynetdicom's SCU does not, and
senders that break off mid-transfer.
"""

import logging
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from cad_node.ingest.scp import StorageSCP
from tests.conftest import Node, NodeFactory, dataset_bytes, pydicom_file, send
from tests.dcmtk import NODE_AE_TITLE

SUCCESS = 0x0000
CONTEXT_ID = 1
"""The first (only) presentation context the SCUs here propose."""
COMMAND, LAST = 0x01, 0x02
"""PS3.8 E.2 message control header bits."""


def _ct(rows: int = 256, extra_header_bytes: int = 0) -> Dataset:
    """A CT_small copy with new UIDs, ``rows`` x ``rows`` pixels and an optional private
    element of ``extra_header_bytes`` before the pixel data."""
    ds = dcmread(pydicom_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows = ds.Columns = rows
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256)
    if extra_header_bytes:
        ds.add_new(0x00090010, "LO", "CAD NODE TEST")
        ds.add_new(0x00091001, "OB", b"\x01" * extra_header_bytes)
    return ds


def _encoded(ds: Dataset) -> bytes:
    """The data set in Explicit VR Little Endian, as a sender puts it on the wire."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    encoded = buffer.getvalue()
    # Preamble, "DICM", then (0002,0000) UL: its value is the length of the rest of group 0002.
    (meta_length,) = struct.unpack_from("<I", encoded, 128 + 4 + 8)
    return encoded[128 + 4 + 12 + meta_length :]


def _command_set(ds: Dataset, message_id: int = 7) -> bytes:
    """The encoded command set of a C-STORE-RQ for ``ds`` (pynetdicom's own encoding)."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 0x0002
    primitive.DataSet = BytesIO(b"\x00")  # present: the command says a data set follows
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    (command,) = [
        data[1:]
        for pdata in message.encode_msg(CONTEXT_ID, 0)
        for _, data in pdata.presentation_data_value_list
        if data[0] & COMMAND
    ]
    return command


def _pdu(*items: tuple[int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (control header, fragment) items on CONTEXT_ID (PS3.8 9.3.5)."""
    body = b"".join(
        struct.pack(">IBB", 2 + len(fragment), CONTEXT_ID, control) + fragment
        for control, fragment in items
    )
    return struct.pack(">BBI", 0x04, 0x00, len(body)) + body


@pytest.fixture
def open_association(make_node: NodeFactory) -> Iterator[Callable[[], tuple[Node, Association]]]:
    """A node and a pynetdicom association to it proposing CT Image Storage (Explicit VR LE)."""
    opened: list[Association] = []

    def factory() -> tuple[Node, Association]:
        node = make_node()
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE_TITLE)
        assert assoc.is_established
        opened.append(assoc)
        return node, assoc

    yield factory
    for assoc in opened:
        if assoc.is_established:
            assoc.abort()


def _send_raw(assoc: Association, *pdus: bytes) -> None:
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]  # established: the socket is open
    assert raw is not None
    for pdu in pdus:
        raw.sendall(pdu)


@contextmanager
def _reactor_paused(assoc: Association) -> Iterator[None]:
    """Keep the SCU's reactor off its message queue, as pynetdicom's own ``send_c_store`` does,
    so the response waits there for :func:`_response_status`."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def _store_raw(assoc: Association, *pdus: bytes) -> int:
    """Send ``pdus`` and return the status of the C-STORE-RSP that answers them."""
    with _reactor_paused(assoc):
        _send_raw(assoc, *pdus)
        _, response = assoc.dimse.get_msg(block=True)
    assert isinstance(response, C_STORE), response
    return int(response.Status)  # type: ignore[arg-type]  # a response has a status


def _wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _temp_files(node: Node) -> list[Path]:
    temp_dir = node.storage_dir / "spool" / ".tmp"
    return sorted(temp_dir.iterdir()) if temp_dir.is_dir() else []


def test_a_streamed_c_store_never_reaches_pynetdicoms_handler(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refuse(_self: StorageSCP, _event: object) -> int:
        raise AssertionError("pynetdicom's C-STORE handler was called")

    monkeypatch.setattr(StorageSCP, "handle_store", refuse)
    node = make_node()
    ds = _ct()

    assert send(node.port, [ds]) == [SUCCESS]

    (stored,) = node.spool_files()
    sent = tmp_path / "sent.dcm"
    ds.save_as(sent, enforce_file_format=True)
    assert dataset_bytes(stored) == dataset_bytes(sent)


def test_with_pynetdicoms_log_at_info_every_c_store_goes_through_its_handler(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[object] = []
    handle_store = StorageSCP.handle_store

    def counting(self: StorageSCP, event: object) -> int | Dataset:
        calls.append(event)
        return handle_store(self, event)  # type: ignore[arg-type]  # pynetdicom's Event

    monkeypatch.setattr(StorageSCP, "handle_store", counting)
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", _config.LOG_HANDLER_LEVEL)
    caplog.set_level(logging.INFO, logger="pynetdicom")
    node = make_node()  # binds pynetdicom's describing handlers: no streaming

    assert send(node.port, [_ct(), _ct()]) == [SUCCESS, SUCCESS]
    assert len(calls) == 2
    assert node.instance_count() == 2


def test_echoes_and_stores_alternate_on_one_association(
    open_association: Callable[[], tuple[Node, Association]],
) -> None:
    node, assoc = open_association()
    statuses = []
    for _ in range(3):
        statuses.append(int(assoc.send_c_echo().Status))
        statuses.append(int(assoc.send_c_store(_ct()).Status))
    assoc.release()

    assert statuses == [SUCCESS] * 6
    assert node.instance_count() == 3


def test_a_peer_with_small_pdus_is_served_by_pynetdicom(make_node: NodeFactory) -> None:
    node = make_node()
    ae = AE(ae_title="SCANNER")
    ae.maximum_pdu_size = 512  # under the 1024 bytes streaming answers in one PDU
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE_TITLE)
    assert assoc.is_established
    status = assoc.send_c_store(_ct(rows=64))
    assoc.release()

    assert status.Status == SUCCESS
    assert node.instance_count() == 1


def test_command_and_data_set_in_one_pdu_are_stored(
    open_association: Callable[[], tuple[Node, Association]],
) -> None:
    node, assoc = open_association()
    ds = _ct(rows=64)
    data = _encoded(ds)

    status = _store_raw(
        assoc,
        _pdu(
            (COMMAND | LAST, _command_set(ds)),
            (0x00, data[:1000]),
            (0x00, data[1000:5000]),
            (LAST, data[5000:]),
        ),
    )

    assert status == SUCCESS
    (stored,) = node.spool_files()
    assert dataset_bytes(stored) == data
    assert node.instance_count() == 1


def test_a_header_longer_than_the_first_look_is_read_from_the_file(
    open_association: Callable[[], tuple[Node, Association]],
) -> None:
    node, assoc = open_association()
    ds = _ct(rows=64, extra_header_bytes=100_000)  # the header ends past the first 64 KiB

    assert int(assoc.send_c_store(ds).Status) == SUCCESS
    assoc.release()

    (series,) = node.series()
    assert series.series_instance_uid == ds.SeriesInstanceUID
    (stored,) = node.spool_files()
    assert dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID


def test_a_sender_that_aborts_mid_data_set_leaves_nothing(
    open_association: Callable[[], tuple[Node, Association]],
) -> None:
    node, assoc = open_association()
    ds = _ct()
    data = _encoded(ds)

    _send_raw(assoc, _pdu((COMMAND | LAST, _command_set(ds))), _pdu((0x00, data[:40_000])))
    assert _wait_until(lambda: len(_temp_files(node)) == 1)  # the first fragment is on disk
    assoc.abort()

    assert _wait_until(lambda: _temp_files(node) == [])
    assert node.instance_count() == 0
    assert node.spool_files() == []
    assert send(node.port, [_ct()]) == [SUCCESS]  # the node serves on


def test_a_command_inside_a_data_set_aborts_the_association(
    open_association: Callable[[], tuple[Node, Association]],
) -> None:
    node, assoc = open_association()
    ds = _ct()
    data = _encoded(ds)

    _send_raw(
        assoc,
        _pdu((COMMAND | LAST, _command_set(ds))),
        _pdu((0x00, data[:40_000])),
        _pdu((COMMAND | LAST, _command_set(ds, message_id=8))),  # not the next data fragment
    )

    assert _wait_until(lambda: assoc.is_aborted)
    assert _wait_until(lambda: _temp_files(node) == [])
    assert node.instance_count() == 0


def test_files_written_by_the_stream_and_by_pynetdicom_are_identical(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _ct(rows=128)
    streaming_node = make_node()
    assert send(streaming_node.port, [ds]) == [SUCCESS]
    (streamed,) = streaming_node.spool_files()
    streamed_bytes = streamed.read_bytes()
    streamed.unlink()

    handled_by: list[object] = []
    handle_store = StorageSCP.handle_store

    def counting(self: StorageSCP, event: object) -> int | Dataset:
        handled_by.append(event)
        return handle_store(self, event)  # type: ignore[arg-type]  # pynetdicom's Event

    monkeypatch.setattr(StorageSCP, "handle_store", counting)
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", _config.LOG_HANDLER_LEVEL)
    caplog.set_level(logging.INFO, logger="pynetdicom")
    handling_node = make_node()  # pynetdicom's describing handlers bound: no streaming
    assert send(handling_node.port, [ds]) == [SUCCESS]

    assert len(handled_by) == 1
    (handled,) = handling_node.spool_files()
    assert handled.read_bytes() == streamed_bytes


def _pdv_layouts() -> list[tuple[str, Callable[[bytes], list[list[tuple[int, bytes]]]]]]:
    """Ways to cut a data set into PDUs: each a list of PDUs, each a list of items."""

    def one_item_per_pdu(data: bytes) -> list[list[tuple[int, bytes]]]:
        cuts = list(range(0, len(data), 16_000))
        return [
            [(LAST if start == cuts[-1] else 0x00, data[start : start + 16_000])] for start in cuts
        ]

    def several_items_per_pdu(data: bytes) -> list[list[tuple[int, bytes]]]:
        pieces = [data[start : start + 7_000] for start in range(0, len(data), 7_000)]
        items = [(LAST if i == len(pieces) - 1 else 0x00, p) for i, p in enumerate(pieces)]
        return [items[i : i + 3] for i in range(0, len(items), 3)]

    def tiny_first_fragment(data: bytes) -> list[list[tuple[int, bytes]]]:
        return [[(0x00, data[:1])], [(0x00, data[1:9])], [(LAST, data[9:])]]

    return [
        ("one item per PDU", one_item_per_pdu),
        ("several items per PDU", several_items_per_pdu),
        ("a first fragment of one byte", tiny_first_fragment),
    ]


@pytest.mark.parametrize(("layout", "cut"), _pdv_layouts(), ids=[n for n, _ in _pdv_layouts()])
def test_every_pdv_layout_stores_the_same_bytes(
    open_association: Callable[[], tuple[Node, Association]],
    layout: str,
    cut: Callable[[bytes], list[list[tuple[int, bytes]]]],
) -> None:
    node, assoc = open_association()
    ds = _ct(rows=128)
    data = _encoded(ds)

    pdus = [_pdu((COMMAND | LAST, _command_set(ds))), *(_pdu(*items) for items in cut(data))]

    assert _store_raw(assoc, *pdus) == SUCCESS, layout
    (stored,) = node.spool_files()
    assert dataset_bytes(stored) == data

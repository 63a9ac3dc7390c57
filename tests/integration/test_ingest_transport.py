"""The SCP's receive path: announced maximum PDU, whole-PDU reads, the pynetdicom version guard."""

import re
import socket
import struct
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from cad_node.ingest.scp import MAXIMUM_PDU_LENGTH
from cad_node.ingest.transport import (
    IngestSocket,
    use_ingest_sockets,
)
from tests.conftest import NodeFactory, dataset_bytes, pydicom_file
from tests.dcmtk import NODE_AE_TITLE

STATEMENT = Path(__file__).parents[2] / "docs" / "conformance.md"


def _large_ct(rows: int) -> Dataset:
    """CT_small with ``rows`` x ``rows`` pixels: more than one 1 MiB PDU when ``rows`` is 1024."""
    ds = dcmread(pydicom_file("CT_small.dcm"))
    ds.Rows = ds.Columns = rows
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.3811.99.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_the_scp_announces_the_maximum_pdu_the_statement_lists(make_node: NodeFactory) -> None:
    node = make_node()
    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE_TITLE)
    assert assoc.is_established
    announced = assoc.acceptor.maximum_length
    assoc.release()

    listed = re.search(r"\| Maximum PDU length received \| (\d+) bytes", STATEMENT.read_text())
    assert listed is not None
    assert announced == MAXIMUM_PDU_LENGTH == int(listed.group(1))


def test_an_instance_over_several_large_pdus_is_stored_byte_identical(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    node = make_node()
    ds = _large_ct(rows=1024)  # 2 MiB of pixels: a pynetdicom sender uses 1 MiB PDUs
    ae = AE()
    ae.maximum_pdu_size = 0
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE_TITLE)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()

    assert status.Status == 0x0000
    (stored,) = node.spool_files()
    sent = tmp_path / "sent.dcm"
    ds.save_as(sent, enforce_file_format=True)
    assert dataset_bytes(stored) == dataset_bytes(sent)


def test_accepted_associations_read_through_the_ingest_socket(free_port: int) -> None:
    socket_types: list[type] = []

    def on_echo(event: Event) -> int:
        socket_types.append(type(event.assoc.dul.socket))
        return 0x0000

    scp = AE()
    scp.add_supported_context(Verification)
    server = scp.start_server(
        ("127.0.0.1", free_port), block=False, evt_handlers=[(evt.EVT_C_ECHO, on_echo)]
    )
    assert server is not None
    use_ingest_sockets(server)
    try:
        scu = AE()
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", free_port)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        server.shutdown()

    assert socket_types == [IngestSocket]


def test_a_peer_gone_mid_pdu_ends_only_its_association(make_node: NodeFactory) -> None:
    node = make_node()
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw:
        # An A-ASSOCIATE-RQ header announcing 1,000 bytes, then 10 of them, then close.
        raw.sendall(struct.pack(">BBL", 0x01, 0x00, 1000) + b"\x00" * 10)

    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE_TITLE)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()

"""Issue 19, hole 1: no peer that has not associated can exhaust the node's memory or stall it.

Each test runs the attack a security review found against a Storage SCP on
127.0.0.1, bounded in count and time, and shows three things: the node's
memory (this process's resident set: the SCP runs in it) stays within
:data:`MEMORY_BOUND_BYTES`; other senders keep being served, an association
with a C-ECHO and a C-STORE measured while the attack lasts; and the attacker
gets an answer or a connection the node closed.  The node runs with short
timeouts (:data:`LIMITS`) so that the whole file takes seconds.
"""

import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from cad_node.config import IngestLimitSettings, ServerTlsSettings
from cad_node.ingest.connections import ConnectionLimits
from cad_node.ingest.scp import MAXIMUM_PDU_LENGTH
from cad_node.security.tls import server_context
from tests.conftest import Node, NodeFactory, context_of, pydicom_file
from tests.dcmtk import DCMTK_ENV, NODE_AE_TITLE, program

LIMITS = ConnectionLimits(acse_timeout_seconds=2.0, network_timeout_seconds=2.0)
CLOSE_MARGIN_SECONDS = 3.0
"""How long past its bound a connection may take to be seen closed (two busy cores)."""
ROUND_TRIP_BOUND_SECONDS = 2.0
"""An association with a C-ECHO and a C-STORE, on loopback, during an attack."""
MEMORY_BOUND_BYTES = 64 << 20
"""Growth of the node's resident memory an attack may cause: far below the 1 GiB announced."""
ONE_GIB = 1 << 30
LARGEST_LENGTH = 0xFFFFFFFF
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_ABORT = 0x01, 0x02, 0x03, 0x04, 0x07
REJECTED_TOO_LONG = bytes([A_ASSOCIATE_RJ, 0, 1, 2, 1])
"""A-ASSOCIATE-RJ, rejected-permanent, UL service-provider (ACSE), no-reason-given
(docs/conformance.md, "Association rejections")."""
CT = pydicom_file("CT_small.dcm")


# -- what the tests measure --------------------------------------------------------------------


def resident_bytes() -> int:
    """``VmRSS`` of this process, where the SCP runs (proc(5))."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakResidentMemory:
    """The largest ``VmRSS`` growth over the baseline, sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.baseline = resident_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.growth

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, resident_bytes())


@contextmanager
def memory_bounded() -> Iterator[PeakResidentMemory]:
    """Assert that the node's resident memory grows less than MEMORY_BOUND_BYTES inside."""
    sampler = PeakResidentMemory()
    try:
        yield sampler
    finally:
        growth = sampler.stop()
    assert growth < MEMORY_BOUND_BYTES, f"resident memory grew {growth >> 20} MiB"


def round_trip(port: int, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> float:
    """Seconds for an association from ``source`` with a C-ECHO and a C-STORE (of CT_small
    under a new SOP Instance UID), both answered 0x0000."""
    ds = dcmread(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ae = AE(ae_title="SCANNER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(*context_of(ds))
    started = time.monotonic()
    tls_args = None if tls is None else (tls, "127.0.0.1")
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=NODE_AE_TITLE, bind_address=(source, 0), tls_args=tls_args
    )
    assert assoc.is_established, f"association from {source} not established"
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    return time.monotonic() - started


def served_during_attack(port: int, tls: ssl.SSLContext | None = None) -> None:
    """Senders from 127.0.0.1 (the attacker's address) and 127.0.0.2 are served promptly."""
    for source in ("127.0.0.2", "127.0.0.1"):
        seconds = round_trip(port, source, tls)
        assert seconds < ROUND_TRIP_BOUND_SECONDS, f"{source} served in {seconds:.1f} s"


def closed_by_node(sock: socket.socket, within: float) -> bytes:
    """What the node sent before it closed ``sock`` (recv returned b'' or the connection was
    reset), waited for at most ``within`` seconds."""
    received = bytearray()
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk
    raise AssertionError(f"the node did not close the connection within {within:g} s")


def unanswered(sock: socket.socket) -> bool:
    """Whether the node has neither sent anything on ``sock`` nor closed it yet."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)
    return False


def pdu_type_of(answer: bytes) -> int | None:
    return answer[0] if answer else None


# -- what the attacker sends -------------------------------------------------------------------


def pdu_header(pdu_type: int, length: int) -> bytes:
    """PS3.8 9.3.1: type, reserved, length."""
    return struct.pack(">BBI", pdu_type, 0, length)


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(calling_ae: str = "ATTACKER") -> bytes:
    """A minimal A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification."""
    context = _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2")
    user_information = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4")
    variable = (
        struct.pack(">HH", 1, 0)
        + NODE_AE_TITLE.encode().ljust(16)
        + calling_ae.encode().ljust(16)
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(0x20, bytes([1, 0, 0, 0]) + context)
        + _item(0x50, user_information)
    )
    return pdu_header(A_ASSOCIATE_RQ, len(variable)) + variable


def connect(port: int, tls: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls is None:
        return sock
    return tls.wrap_socket(sock, server_hostname="127.0.0.1")


def associated(port: int) -> socket.socket:
    """A raw connection on which the node has accepted an association."""
    sock = connect(port)
    sock.sendall(associate_rq())
    header = sock.recv(6, socket.MSG_WAITALL)
    assert pdu_type_of(header) == A_ASSOCIATE_AC
    (length,) = struct.unpack(">I", header[2:])
    sock.recv(length, socket.MSG_WAITALL)
    return sock


@pytest.fixture
def node(make_node: NodeFactory) -> Node:
    return make_node(connection_limits=LIMITS)


# -- the attacks -------------------------------------------------------------------------------


@pytest.mark.parametrize("announced", [ONE_GIB, LARGEST_LENGTH], ids=["1GiB", "0xFFFFFFFF"])
def test_a_huge_associate_rq_is_rejected_before_it_is_read(
    node: Node, announced: int, caplog: pytest.LogCaptureFixture
) -> None:
    with memory_bounded(), ExitStack() as stack:
        attackers = [stack.enter_context(connect(node.port)) for _ in range(4)]
        for attacker in attackers:
            attacker.sendall(pdu_header(A_ASSOCIATE_RQ, announced))
        served_during_attack(node.port)
        answers = [closed_by_node(attacker, CLOSE_MARGIN_SECONDS) for attacker in attackers]

    assert {answer[:2] + answer[-3:] for answer in answers} == {REJECTED_TOO_LONG}
    assert f"connection from 127.0.0.1 rejected: A-ASSOCIATE-RQ of {announced} bytes" in caplog.text


@pytest.mark.parametrize("announced", [ONE_GIB, LARGEST_LENGTH], ids=["1GiB", "0xFFFFFFFF"])
def test_a_huge_p_data_tf_on_an_association_is_aborted_before_it_is_read(
    node: Node, announced: int, caplog: pytest.LogCaptureFixture
) -> None:
    with memory_bounded(), associated(node.port) as attacker:
        attacker.sendall(pdu_header(P_DATA_TF, announced) + b"\x00" * 1024)
        served_during_attack(node.port)
        answer = closed_by_node(attacker, CLOSE_MARGIN_SECONDS)

    assert pdu_type_of(answer) in (A_ABORT, None)  # None: reset for the unread bytes
    assert f"P-DATA-TF of {announced} bytes announced, over the {MAXIMUM_PDU_LENGTH}" in (
        caplog.text
    )


def test_an_unknown_pdu_type_is_aborted(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    with connect(node.port) as attacker:
        attacker.sendall(pdu_header(0x42, ONE_GIB))
        assert pdu_type_of(closed_by_node(attacker, CLOSE_MARGIN_SECONDS)) == A_ABORT
    assert "unknown PDU type 0x42" in caplog.text


def test_silent_connections_hold_no_sender_off_and_close_at_artim(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    silent_count = 20  # more than the 16 associations the node serves
    with memory_bounded(), ExitStack() as stack:
        opened = time.monotonic()
        silent = [stack.enter_context(connect(node.port)) for _ in range(silent_count)]
        served_during_attack(node.port)
        assert all(unanswered(sock) for sock in silent), "the attack ended before the senders"
        bound = LIMITS.acse_timeout_seconds + CLOSE_MARGIN_SECONDS
        for sock in silent:
            closed_by_node(sock, bound - (time.monotonic() - opened))

    assert caplog.text.count("no A-ASSOCIATE-RQ within 2 s (ARTIM)") == silent_count


@pytest.mark.parametrize("phase", ["before association", "on an association"])
def test_a_peer_stalled_mid_pdu_is_closed_within_the_timeout(
    node: Node, phase: str, caplog: pytest.LogCaptureFixture
) -> None:
    with memory_bounded(), ExitStack() as stack:
        if phase == "before association":
            timeout = LIMITS.acse_timeout_seconds
            attacker = stack.enter_context(connect(node.port))
            attacker.sendall(pdu_header(A_ASSOCIATE_RQ, 1000) + b"\x00" * 10)
        else:
            timeout = LIMITS.network_timeout_seconds
            attacker = stack.enter_context(associated(node.port))
            attacker.sendall(pdu_header(P_DATA_TF, 1000) + b"\x00" * 10)
        stalled = time.monotonic()
        served_during_attack(node.port)
        assert unanswered(attacker), "the attack ended before the senders"
        answer = closed_by_node(attacker, timeout + CLOSE_MARGIN_SECONDS)
        closed_after = time.monotonic() - stalled

    assert pdu_type_of(answer) == A_ABORT
    assert closed_after >= timeout - 0.5
    assert "connection from 127.0.0.1 aborted: a 1000-byte PDU not received within 2 s" in (
        caplog.text
    )


def test_a_peer_that_drips_bytes_is_cut_off(node: Node) -> None:
    with associated(node.port) as attacker:
        attacker.sendall(pdu_header(P_DATA_TF, 1000))
        dripping = time.monotonic()
        bound = 2 * LIMITS.network_timeout_seconds + CLOSE_MARGIN_SECONDS
        while unanswered(attacker) and time.monotonic() - dripping < bound:
            with suppress(BrokenPipeError, ConnectionResetError):  # closed since the look
                attacker.send(b"\x00")
            time.sleep(0.5)  # the drip itself: each byte well within the timeout of a read
        assert pdu_type_of(closed_by_node(attacker, CLOSE_MARGIN_SECONDS)) in (A_ABORT, None)
        assert time.monotonic() - dripping < bound


def test_connections_past_the_per_address_limit_are_closed_at_once(
    make_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    limits = ConnectionLimits(
        max_connections_per_address=4, acse_timeout_seconds=5.0, network_timeout_seconds=5.0
    )
    node = make_node(connection_limits=limits)
    with memory_bounded(), ExitStack() as stack:
        held = [stack.enter_context(connect(node.port)) for _ in range(4)]
        refused = [stack.enter_context(connect(node.port)) for _ in range(3)]
        for sock in refused:
            assert closed_by_node(sock, 1.0) == b""
        assert round_trip(node.port, "127.0.0.2") < ROUND_TRIP_BOUND_SECONDS
        assert all(unanswered(sock) for sock in held)

    assert "connection from 127.0.0.1 refused: 4 connections from that address" in caplog.text


# -- the same through TLS with no client certificate required ----------------------------------


@pytest.fixture(scope="module")
def server_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.pem", folder / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_node(make_node: NodeFactory, server_certificate: tuple[Path, Path]) -> Node:
    cert, key = server_certificate
    context = server_context(ServerTlsSettings(certificate=cert, private_key=key))
    return make_node(connection_limits=LIMITS, ssl_context=context)


@pytest.fixture
def client_tls(server_certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server_certificate[0])


def test_a_huge_announcement_through_tls_is_refused(
    tls_node: Node, client_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    with memory_bounded(), connect(tls_node.port, client_tls) as attacker:
        attacker.sendall(pdu_header(A_ASSOCIATE_RQ, LARGEST_LENGTH))
        served_during_attack(tls_node.port, client_tls)
        answer = closed_by_node(attacker, CLOSE_MARGIN_SECONDS)

    assert pdu_type_of(answer) == A_ASSOCIATE_RJ
    assert f"A-ASSOCIATE-RQ of {LARGEST_LENGTH} bytes announced" in caplog.text


def test_a_tls_peer_stalled_after_the_handshake_is_closed_within_the_timeout(
    tls_node: Node, client_tls: ssl.SSLContext
) -> None:
    with ExitStack() as stack:
        silent = stack.enter_context(connect(tls_node.port, client_tls))
        stalled = stack.enter_context(connect(tls_node.port, client_tls))
        stalled.sendall(pdu_header(A_ASSOCIATE_RQ, 1000) + b"\x00" * 10)
        served_during_attack(tls_node.port, client_tls)
        bound = LIMITS.acse_timeout_seconds + CLOSE_MARGIN_SECONDS
        closed_by_node(silent, bound)
        assert pdu_type_of(closed_by_node(stalled, bound)) == A_ABORT


# -- the bounds themselves ---------------------------------------------------------------------


def associate_rq_bytes_of_storescu(*options: str) -> int:
    """Length of the A-ASSOCIATE-RQ DCMTK ``storescu`` sends with ``options``, header included."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        sender = subprocess.Popen(
            [program("storescu"), *options, "127.0.0.1", str(listener.getsockname()[1]), str(CT)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(30)
                header = connection.recv(6, socket.MSG_WAITALL)
        finally:
            sender.kill()
            sender.wait(timeout=30)
    assert pdu_type_of(header) == A_ASSOCIATE_RQ
    return 6 + int(struct.unpack(">I", header[2:])[0])


def test_the_associate_rq_bound_leaves_room_for_every_storage_class_dcmtk_proposes() -> None:
    # Without -R, storescu proposes every storage SOP class it knows (up to the 128
    # presentation contexts PS3.8 allows); -xs adds the lossless JPEG transfer syntaxes.
    largest = max(associate_rq_bytes_of_storescu(*options) for options in [(), ("-xs",)])
    assert 4 * largest < IngestLimitSettings().max_associate_rq_bytes  # measured: 11,279


def test_the_settings_and_the_scp_share_their_defaults() -> None:
    settings = IngestLimitSettings()
    assert ConnectionLimits.from_settings(settings) == ConnectionLimits()

"""DICOM TLS (PS3.15 Annex B.9) on the Storage SCP and the export SCU, with DCMTK peers.

Certificates are made per test session with the ``openssl`` command line: a test
CA, a server certificate for 127.0.0.1 and a client certificate it signed, and
a client certificate from a second, untrusted CA.
"""

import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from cad_node.config import (
    DestinationSettings,
    DestinationTlsSettings,
    ServerTlsSettings,
    TimeoutSettings,
)
from cad_node.errors import ConfigError
from cad_node.export.outcomes import OutcomeKind
from cad_node.export.scu import send_files
from cad_node.security.tls import client_context, server_context
from tests.conftest import Node, NodeFactory, pydicom_file, send
from tests.dcmtk import DCMTK_ENV, free_port, port_open, program, storescu
from tests.integration.peers import running_node, wait_for, write_config


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server and two clients (one from an untrusted CA)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], san: str | None) -> tuple[Path, Path]:
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    extension = ["-addext", f"subjectAltName={san}"] if san else []
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(csr), *extension,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-copy_extensions", "copy", "-out", str(cert),
    )  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    """A test CA, a server certificate for 127.0.0.1, a client of the CA and a stranger."""
    ca = _self_signed(folder, "test-ca")
    server = _signed(folder, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = _signed(folder, "client", ca, None)
    stranger = _self_signed(folder, "stranger")
    return Pki(ca[0], *server, *client, *stranger)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_node(make_node: NodeFactory, pki: Pki, *, mutual: bool) -> Node:
    tls = ServerTlsSettings(
        certificate=pki.server_cert,
        private_key=pki.server_key,
        ca_certificates=pki.ca if mutual else None,
    )
    return make_node(ssl_context=server_context(tls))


CT = pydicom_file("CT_small.dcm")


def test_storescu_over_tls_is_stored(make_node: NodeFactory, pki: Pki) -> None:
    node = _tls_node(make_node, pki, mutual=False)
    sent = storescu(node.port, [CT], "+tla", "+cf", str(pki.ca))
    assert sent.returncode == 0, sent.stderr
    assert [i.sop_instance_uid for i in node.instances()] == [dcmread(CT).SOPInstanceUID]


def test_plain_tcp_to_a_tls_port_is_refused_and_the_port_keeps_serving(
    make_node: NodeFactory, pki: Pki
) -> None:
    node = _tls_node(make_node, pki, mutual=False)
    port = node.port
    plain = storescu(port, [CT])
    assert plain.returncode != 0
    with pytest.raises(AssertionError, match="not established"):
        send(port, [CT])
    with socket.create_connection(("127.0.0.1", port)):  # silent peer: must not block others
        secure = storescu(port, [CT], "+tla", "+cf", str(pki.ca))
    assert secure.returncode == 0, secure.stderr
    assert node.instance_count() == 1


def test_mutual_tls_accepts_only_clients_the_ca_signed(make_node: NodeFactory, pki: Pki) -> None:
    node = _tls_node(make_node, pki, mutual=True)
    port = node.port
    anonymous = storescu(port, [CT], "+tla", "+cf", str(pki.ca))
    assert anonymous.returncode != 0
    stranger = storescu(
        port, [CT], "+tls", str(pki.stranger_key), str(pki.stranger_cert), "+cf", str(pki.ca)
    )
    assert stranger.returncode != 0
    trusted = storescu(
        port, [CT], "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)
    )
    assert trusted.returncode == 0, trusted.stderr
    assert node.instance_count() == 1


def test_mutual_tls_with_pynetdicom_client(make_node: NodeFactory, pki: Pki) -> None:
    """The node's own client context (as export builds it) against the node's server."""
    port = _tls_node(make_node, pki, mutual=True).port
    tls = DestinationTlsSettings(
        ca_certificates=pki.ca, certificate=pki.client_cert, private_key=pki.client_key
    )
    outcomes = send_files(
        DestinationSettings(host="127.0.0.1", port=port, ae_title="CADNODE", tls=tls),
        "SCANNER",
        [CT],
        TimeoutSettings(connect_seconds=5, acse_seconds=5),
    )
    assert [o.kind for o in outcomes] == [OutcomeKind.SUCCESS]


@contextmanager
def tls_storescp(port: int, out_dir: Path, pki: Pki, *, require_client: bool) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    verify = ["-rc"] if require_client else ["-ic"]
    process = subprocess.Popen(
        [
            program("storescp"), "--aetitle", "PACS", "--output-directory", str(out_dir),
            "--promiscuous", "+tls", str(pki.server_key), str(pki.server_cert),
            "+cf", str(pki.ca), *verify, str(port),
        ],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open(port), 30, "storescp --tls to listen")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _export(port: int, tls: DestinationTlsSettings | None) -> list[OutcomeKind]:
    destination = DestinationSettings(host="127.0.0.1", port=port, ae_title="PACS", tls=tls)
    timeouts = TimeoutSettings(connect_seconds=5, acse_seconds=5, dimse_seconds=10)
    return [o.kind for o in send_files(destination, "CADNODE", [CT], timeouts)]


def test_export_over_mutual_tls_to_storescp(tmp_path: Path, pki: Pki) -> None:
    port = free_port()
    pacs = tmp_path / "pacs"
    trusted = DestinationTlsSettings(
        ca_certificates=pki.ca, certificate=pki.client_cert, private_key=pki.client_key
    )
    with tls_storescp(port, pacs, pki, require_client=True):
        assert _export(port, trusted) == [OutcomeKind.SUCCESS]
        assert _export(port, None) == [OutcomeKind.RETRY]  # plain TCP to a TLS peer
        unknown_ca = DestinationTlsSettings(ca_certificates=pki.stranger_cert)
        assert _export(port, unknown_ca) == [OutcomeKind.RETRY]  # server not trusted
        no_client_cert = DestinationTlsSettings(ca_certificates=pki.ca)
        assert _export(port, no_client_cert) == [OutcomeKind.RETRY]
    (stored,) = [path for path in pacs.iterdir() if path.is_file()]
    assert dcmread(stored).SOPInstanceUID == dcmread(CT).SOPInstanceUID


def test_export_checks_the_host_name(tmp_path: Path, pki: Pki) -> None:
    port = free_port()
    wrong_name = DestinationTlsSettings(ca_certificates=pki.ca, server_hostname="pacs.example")
    with tls_storescp(port, tmp_path / "pacs", pki, require_client=False):
        assert _export(port, wrong_name) == [OutcomeKind.RETRY]
        assert _export(port, DestinationTlsSettings(ca_certificates=pki.ca)) == [
            OutcomeKind.SUCCESS
        ]


@pytest.mark.slow
def test_serve_with_a_tls_section(tmp_path: Path, pki: Pki) -> None:
    """The config's ``tls:`` reaches the node's port: DCMTK with a client cert is stored."""
    tls = {
        "certificate": str(pki.server_cert),
        "private_key": str(pki.server_key),
        "ca_certificates": str(pki.ca),
    }
    config_path = write_config(tmp_path, tls=tls)
    with running_node(config_path, tmp_path / "node.log") as node:
        plain = storescu(node.port, [CT])
        secure = storescu(
            node.port, [CT], "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)
        )
    assert plain.returncode != 0
    assert secure.returncode == 0, secure.stderr
    assert "(TLS)" in node.log()
    assert "TLS handshake with 127.0.0.1" in node.log()  # the plain attempt, in one line
    assert "Traceback" not in node.log()


def test_missing_or_mismatched_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load certificate"):
        server_context(ServerTlsSettings(certificate=pki.server_cert, private_key=pki.client_key))
    with pytest.raises(ConfigError, match="CA certificates"):
        client_context(DestinationTlsSettings(ca_certificates=tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="go together"):
        DestinationTlsSettings(certificate=pki.client_cert)
    tls = ServerTlsSettings(certificate=pki.server_cert, private_key=pki.server_key)
    assert server_context(tls).minimum_version >= ssl.TLSVersion.TLSv1_2

"""DICOM TLS (PS3.15 Annex B.9, BCP 195 profile): SSL contexts for the SCP and the SCU.

The node's Storage SCP presents a certificate and, when a CA is configured,
requires and verifies a client certificate (mutual TLS). The export SCU
verifies the destination's certificate and host name against the configured CA
(or the system's trust store) and may present a client certificate of its own.
"""

import logging
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, cast

from cad_node.config import DestinationTlsSettings, ServerTlsSettings
from cad_node.errors import ConfigError

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

logger = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
"""BCP 195 (PS3.15 B.9 "Non-downgrading BCP 195 TLS Profile"): TLS 1.2 or later."""

HANDSHAKE_SECONDS = 10.0
"""How long a peer has to finish the TLS handshake before its connection is closed."""


def server_context(tls: ServerTlsSettings) -> ssl.SSLContext:
    """The SCP's context: its certificate, and client verification when ``ca_certificates`` is set.

    Raises
    ------
    ConfigError
        A certificate, key or CA file is missing or unreadable, or the key does
        not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        _load_ca(context, tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: DestinationTlsSettings) -> ssl.SSLContext:
    """The SCU's context: the destination's certificate and host name verified.

    Raises
    ------
    ConfigError
        A configured file is missing or unreadable.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    if tls.ca_certificates is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, tls.ca_certificates)
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(context, tls.certificate, tls.private_key)
    return context


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    try:
        context.load_cert_chain(certfile=certificate, keyfile=private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls: cannot load certificate {certificate} with key {private_key}: {exc}"
        ) from exc


def _load_ca(context: ssl.SSLContext, ca_certificates: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load CA certificates {ca_certificates}: {exc}") from exc


def handshake_in_association_thread(server: "ThreadedAssociationServer") -> None:
    """Move the server's TLS handshake from its accept loop to each connection's thread.

    pynetdicom wraps an accepted socket and shakes hands in the loop that
    accepts connections, with no timeout: one silent or plain-TCP peer would
    hold every other sender off. Here the socket is wrapped without a
    handshake, and the handshake runs, bounded by :data:`HANDSHAKE_SECONDS`,
    in the thread that serves the connection; a failed one closes that
    connection alone and is logged as one line.
    """
    context = server.ssl_context
    if context is None:
        return
    serve = server.process_request_thread

    def get_request() -> tuple[socket.socket, tuple[str, int]]:
        client, address = cast(socket.socket, server.socket).accept()
        return context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def process_request_thread(request: ssl.SSLSocket, client_address: tuple[str, int]) -> None:
        try:
            request.settimeout(HANDSHAKE_SECONDS)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:
            logger.warning("TLS handshake with %s:%d failed: %s", *client_address[:2], _reason(exc))
            server.shutdown_request(request)
            return
        serve(request, client_address)

    server.get_request = get_request  # type: ignore[method-assign]  # per-instance override
    server.process_request_thread = process_request_thread  # type: ignore[method-assign,assignment]  # per-instance override


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return type(exc).__name__

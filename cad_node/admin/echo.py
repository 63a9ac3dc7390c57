"""C-ECHO to a configured destination (PS3.7 9.3.5), to test it from the admin page.

A DICOMweb destination has no C-ECHO: it is asked a QIDO-RS search instead
(:func:`~cad_node.export.stow.probe`).
"""

import time
from dataclasses import dataclass

from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated names

from cad_node.config import AnyDestinationSettings, DicomWebDestinationSettings, TimeoutSettings
from cad_node.errors import ConfigError
from cad_node.export.scu import associate, association_failure
from cad_node.export.stow import probe


@dataclass(frozen=True, slots=True)
class EchoOutcome:
    """Whether the peer answered the C-ECHO with Success (0x0000), and how."""

    ok: bool
    status: int | None
    """The C-ECHO response Status (0000,0900); ``None`` when none came."""
    detail: str
    seconds: float


def echo(
    destination: AnyDestinationSettings, calling_ae_title: str, timeouts: TimeoutSettings
) -> EchoOutcome:
    """One association with ``destination`` carrying one C-ECHO, released afterwards
    (for a DICOMweb destination: one HTTP request, :func:`~cad_node.export.stow.probe`)."""
    started = time.monotonic()
    if isinstance(destination, DicomWebDestinationSettings):
        ok, http_status, detail = probe(destination)
        return EchoOutcome(ok, http_status, detail, _since(started))
    contexts = [build_context(Verification)]
    try:
        assoc, connected = associate(destination, calling_ae_title, contexts, timeouts)
    except (OSError, ConfigError) as exc:  # an unresolvable host name, a missing TLS file
        return EchoOutcome(False, None, str(exc), _since(started))
    if not assoc.is_established:
        reason = association_failure(assoc, connected, tls=destination.tls is not None)
        return EchoOutcome(False, None, reason, _since(started))
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    status = int(response.Status) if "Status" in response else None
    ok = status == 0x0000
    detail = "success" if ok else ("no response" if status is None else f"status 0x{status:04X}")
    return EchoOutcome(ok, status, detail, _since(started))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)

"""C-ECHO to a configured destination (PS3.7 9.3.5), to test it from the admin page."""

import time
from dataclasses import dataclass

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated names

from cad_node.config import DestinationSettings, TimeoutSettings


@dataclass(frozen=True, slots=True)
class EchoOutcome:
    """Whether the peer answered the C-ECHO with Success (0x0000), and how."""

    ok: bool
    status: int | None
    """The C-ECHO response Status (0000,0900); ``None`` when none came."""
    detail: str
    seconds: float


def echo(
    destination: DestinationSettings, calling_ae_title: str, timeouts: TimeoutSettings
) -> EchoOutcome:
    """One association with ``destination`` carrying one C-ECHO, released afterwards."""
    started = time.monotonic()
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.connection_timeout = timeouts.connect_seconds
    ae.acse_timeout = timeouts.acse_seconds
    ae.dimse_timeout = timeouts.dimse_seconds
    ae.network_timeout = timeouts.network_seconds
    connected: list[bool] = []
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True))],
    )
    if not assoc.is_established:
        return EchoOutcome(False, None, _refusal(assoc, bool(connected)), _since(started))
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    status = int(response.Status) if "Status" in response else None
    ok = status == 0x0000
    detail = "success" if ok else ("no response" if status is None else f"status 0x{status:04X}")
    return EchoOutcome(ok, status, detail, _since(started))


def _refusal(assoc: object, connected: bool) -> str:
    if not connected:
        return "cannot connect (down or unreachable)"
    if getattr(assoc, "is_rejected", False):
        return "association rejected"
    if getattr(assoc, "is_aborted", False):
        return "association aborted"
    return "no answer within the ACSE timeout"


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)

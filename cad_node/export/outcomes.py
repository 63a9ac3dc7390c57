"""Outcomes of C-STORE attempts, classified from the response status (PS3.4 Annex B.2.3)."""

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class OutcomeKind(StrEnum):
    """What one C-STORE attempt means for its delivery."""

    SUCCESS = "success"
    """0x0000."""
    WARNING = "warning"
    """0xB0xx: stored, with coercion or discarded elements (PS3.4 B.2.3)."""
    RETRY = "retry"
    """No response, a timeout, an abort, a refused association, or 0xA7xx (out of resources)."""
    FAIL = "fail"
    """Any other status, or a file the destination cannot be sent: retrying will not help."""


@dataclass(frozen=True)
class StoreOutcome:
    """The result of sending one file."""

    path: Path
    sop_instance_uid: str | None
    kind: OutcomeKind
    status: int | None = None
    """The C-STORE response Status (0000,0900), ``None`` when there was no response."""
    error: str | None = None


def classify_status(status: int | None) -> OutcomeKind:
    """The kind of outcome a C-STORE response status means.

    PS3.4 Annex B.2.3: 0x0000 success; 0xB000-0xB0FF warnings (the object was
    stored); 0xA700-0xA7FF out of resources (transient); anything else failed.
    ``None`` (no response within the DIMSE timeout, or an abort) is transient.
    """
    if status is None:
        return OutcomeKind.RETRY
    if status == 0x0000:
        return OutcomeKind.SUCCESS
    if status & 0xFF00 == 0xB000:
        return OutcomeKind.WARNING
    if status & 0xFF00 == 0xA700:
        return OutcomeKind.RETRY
    return OutcomeKind.FAIL

"""Storage Commitment's objects and answers (PS3.4 Annex J, PS3.3 C.14.1.1), as plain data.

The DIMSE side is :mod:`cad_node.export.commitment`'s; the journal's is
:mod:`cad_node.store.commitments`'.
"""

from dataclasses import dataclass

FAILURE_REASONS: dict[int, str] = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}
"""Failure Reason (0008,1197) values of PS3.3 C.14.1.1 (Storage Commitment)."""


@dataclass(frozen=True, slots=True)
class SopReference:
    """One object of a commitment request: Referenced SOP Class and Instance UIDs."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class FailedSopReference:
    """An object the destination did not commit, and why (Failure Reason, PS3.3 C.14.1.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int | None

    @property
    def reason(self) -> str:
        """The Failure Reason in words, with its code."""
        if self.failure_reason is None:
            return "no failure reason given"
        meaning = FAILURE_REASONS.get(self.failure_reason, "failure reason")
        return f"{meaning} (0x{self.failure_reason:04X})"


@dataclass(frozen=True, slots=True)
class CommitmentReport:
    """An N-EVENT-REPORT's Event Information (PS3.4 J.3.3.1), as the node uses it."""

    transaction_uid: str
    committed: tuple[SopReference, ...] = ()
    failed: tuple[FailedSopReference, ...] = ()

    def __post_init__(self) -> None:
        if not self.transaction_uid:
            raise ValueError("a storage commitment report needs its Transaction UID")

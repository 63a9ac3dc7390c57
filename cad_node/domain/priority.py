"""Clinical priority of a job: its class, its rank in the queue, where the class comes from.

A rule sets a class (``priority_class``) or says where to read it
(``priority_from``): the series' DICOM (Requested Procedure Priority, else the
retired Study Priority ID) or the AE title that sent it (the ``queue`` settings
map AE titles to classes). The queue takes the lowest rank first, oldest first
within a rank; a job waiting past its class's age limit is promoted one class.

Example::

    >>> resolve_priority(None, PriorityFrom.DICOM, {"RequestedProcedurePriority": "STAT"})
    <PriorityClass.STAT: 'stat'>
    >>> PriorityClass.SCREENING.rank
    3
"""

from collections.abc import Mapping
from enum import StrEnum


class PriorityClass(StrEnum):
    """Clinical priority classes, most urgent first."""

    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"
    SCREENING = "screening"

    @property
    def rank(self) -> int:
        """The queue's order: 0 (stat) is taken first, 3 (screening) last."""
        return _ORDER.index(self)

    @classmethod
    def of_rank(cls, rank: int) -> "PriorityClass":
        """The class of ``rank``, bounded to 0..3."""
        return _ORDER[min(max(rank, 0), len(_ORDER) - 1)]


_ORDER = tuple(PriorityClass)

DEFAULT_CLASS = PriorityClass.ROUTINE
"""A job whose rule says nothing (the journal's null)."""


class PriorityFrom(StrEnum):
    """Where a rule takes the class from; the rule's own ``priority_class`` is the fallback."""

    DICOM = "dicom"
    """Requested Procedure Priority (0040,1003), else Study Priority ID (0032,000C)."""
    CALLING_AE = "calling_ae"
    """The sending AE title, through the ``queue.calling_ae_classes`` settings."""


DICOM_PRIORITY_KEYWORDS = ("RequestedProcedurePriority", "StudyPriorityID")
"""The elements a rule with ``priority_from: dicom`` reads, in order."""

_DICOM_VALUES: Mapping[str, PriorityClass] = {
    "STAT": PriorityClass.STAT,
    "HIGH": PriorityClass.URGENT,
    "URGENT": PriorityClass.URGENT,
    "ROUTINE": PriorityClass.ROUTINE,
    "MEDIUM": PriorityClass.ROUTINE,
    "MED": PriorityClass.ROUTINE,
    "LOW": PriorityClass.SCREENING,
}
"""Defined terms of Requested Procedure Priority (PS3.3 C.4.11: STAT, HIGH, ROUTINE,
MEDIUM, LOW) and of Study Priority ID (HIGH, MED, LOW)."""


def class_from_dicom(attributes: Mapping[str, object]) -> PriorityClass | None:
    """The class the series' priority elements say; None when absent or not a defined term."""
    for keyword in DICOM_PRIORITY_KEYWORDS:
        value = attributes.get(keyword)
        if isinstance(value, str) and value.strip().upper() in _DICOM_VALUES:
            return _DICOM_VALUES[value.strip().upper()]
    return None


def resolve_priority(
    rule_class: PriorityClass | None,
    source: PriorityFrom | None,
    attributes: Mapping[str, object],
    calling_ae_classes: Mapping[str, PriorityClass] | None = None,
    calling_ae_title: str = "",
) -> PriorityClass:
    """A job's class: from ``source`` where it says one, else the rule's, else routine."""
    found: PriorityClass | None = None
    if source is PriorityFrom.DICOM:
        found = class_from_dicom(attributes)
    elif source is PriorityFrom.CALLING_AE:
        found = (calling_ae_classes or {}).get(calling_ae_title.strip())
    return found or rule_class or DEFAULT_CLASS

"""Which instances of a series can belong to the image stack a model reads.

A scanner's series may hold, beside its slices, the scout it was planned on
(ImageType value 3 LOCALIZER, PS3.3 C.8.2.1.1.1), a screen capture of the dose
page (Secondary Capture, PS3.3 A.8) or a dose report (Structured Report,
PS3.3 A.35).  Such objects never speak for the series: its routing attributes
and its volume come from its images.
"""

from collections.abc import Sequence
from enum import IntEnum

OTHER_OBJECT_SOP_CLASS_ROOTS: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage, and its multi-frame kinds
    "1.2.840.10008.5.1.4.1.1.9",  # waveforms
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, fiducials, SEG, surface SEG
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports: dose reports, CAD SR, key objects
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated PDF, CDA, STL
    "1.2.840.10008.5.1.4.1.1.481",  # radiotherapy objects
)
"""SOP Class UID roots (PS3.4 Annex B.5) of objects that are no acquired image of a stack:
a SOP Class UID equal to a root, or below it, is one of them."""


class StackRank(IntEnum):
    """How well an instance speaks for its series; the higher, the better."""

    OTHER_OBJECT = 0
    """A SOP class of :data:`OTHER_OBJECT_SOP_CLASS_ROOTS`."""
    LOCALIZER = 1
    """An image typed LOCALIZER: the scout the series was planned on."""
    IMAGE = 2
    """Any other image: a slice of the series' stack."""


def is_other_object(sop_class_uid: str) -> bool:
    """Whether ``sop_class_uid`` names an object that is no acquired image of a stack."""
    return any(
        sop_class_uid == root or sop_class_uid.startswith(f"{root}.")
        for root in OTHER_OBJECT_SOP_CLASS_ROOTS
    )


def is_localizer(image_type: Sequence[str]) -> bool:
    """Whether an ImageType (0008,0008) value names a localizer (PS3.3 C.8.2.1.1.1)."""
    return any(value.strip().upper() == "LOCALIZER" for value in image_type)


def stack_rank(sop_class_uid: str, image_type: Sequence[str]) -> StackRank:
    """The :class:`StackRank` of an instance of ``sop_class_uid`` typed ``image_type``."""
    if is_other_object(sop_class_uid):
        return StackRank.OTHER_OBJECT
    if is_localizer(image_type):
        return StackRank.LOCALIZER
    return StackRank.IMAGE

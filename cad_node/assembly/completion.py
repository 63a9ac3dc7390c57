"""When is a series complete?  Pure rules; the clock is passed in.

A series has no end marker in DICOM: one study may even arrive over several
associations (pynetdicom #855), so the end of an association says nothing.  A
series is complete when no instance has arrived for ``quiet_seconds``, or
earlier when the number of instances it announced (ImagesInAcquisition
(0020,1002), or NumberOfFrames of a single multi-frame instance) is there.

Mammography and fundus exams are read per study, not per series
(:class:`StudyGrouping`): the four screening views or the two eyes may come in
one series or in several.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class SeriesProgress:
    """What assembly needs to know about a series that is still receiving."""

    series_instance_uid: str
    instance_count: int
    expected_count: int | None
    last_received_at: datetime

    def __post_init__(self) -> None:
        if self.instance_count < 0:
            raise ValueError("instance_count must not be negative")
        if self.expected_count is not None and self.expected_count < 1:
            raise ValueError("expected_count must be positive when known")


def expected_count_reached(progress: SeriesProgress) -> bool:
    expected = progress.expected_count
    return expected is not None and progress.instance_count >= expected


def quiet_period_elapsed(progress: SeriesProgress, now: datetime, quiet_seconds: float) -> bool:
    return now - progress.last_received_at >= timedelta(seconds=quiet_seconds)


def is_complete(progress: SeriesProgress, now: datetime, quiet_seconds: float) -> bool:
    """True once the expected count has arrived or the series has gone quiet."""
    return expected_count_reached(progress) or quiet_period_elapsed(progress, now, quiet_seconds)


def quiet_cutoff(now: datetime, quiet_seconds: float) -> datetime:
    """Series whose last instance arrived at or before this time have gone quiet."""
    return now - timedelta(seconds=quiet_seconds)


class StudyGrouping(StrEnum):
    """How the series of one modality in a study are read together (config ``study_groups``).

    Mammography and fundus models read a whole exam (four views, both eyes) that may
    arrive as several series: such series are completed and routed as one group.
    """

    FOUR_VIEWS = "four_views"
    """Complete when L-CC, L-MLO, R-CC and R-MLO are all there, or when the study goes quiet."""
    QUIET = "quiet"
    """Complete when the study's series of the modality have all gone quiet."""


STANDARD_MAMMOGRAPHY_VIEWS: frozenset[tuple[str, str]] = frozenset(
    {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")}
)
"""(ImageLaterality, ViewPosition) of the four views of a screening mammogram."""


def four_views_present(views: Iterable[tuple[str | None, str | None]]) -> bool:
    """True when the (laterality, view position) pairs hold the four standard views."""
    return {(lat, view) for lat, view in views if lat and view} >= STANDARD_MAMMOGRAPHY_VIEWS


def study_group_complete(
    grouping: StudyGrouping,
    views: Iterable[tuple[str | None, str | None]],
    last_received_at: datetime,
    now: datetime,
    quiet_seconds: float,
) -> bool:
    """Whether a study's group of series is ready to be read (``last_received_at``: newest)."""
    if now - last_received_at >= timedelta(seconds=quiet_seconds):
        return True
    return grouping is StudyGrouping.FOUR_VIEWS and four_views_present(views)

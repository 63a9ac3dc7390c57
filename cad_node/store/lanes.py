"""Which models a worker thread claims for: the lane it runs (``queue.lanes``).

A lane's thread claims only its models' jobs, so a chest CT and a mammogram run side
by side instead of one behind the other; a lane written ``models: ["*"]`` claims every
model no other lane names. The filter is a context variable, set for one claim
(:func:`claiming_for`) by the lane's worker, read by
:func:`cad_node.store.jobs.claim_next_job`; every other caller claims any job.

Example::

    with claiming_for(ClaimFilter(include=frozenset({"mammo_screening", "fundus_dr"}))):
        job = claim_next_job(session, worker_id, now, lease_seconds)
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

EVERY_OTHER_MODEL = "*"
"""In a lane's ``models``: every model no other lane names."""


@dataclass(frozen=True, slots=True)
class ClaimFilter:
    """The models a lane claims: ``include`` (None: any) but never those in ``exclude``."""

    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()


LANE_FILTER: ContextVar[ClaimFilter | None] = ContextVar("cad_node_lane_filter", default=None)
"""The filter of the lane claiming now; None: any model."""


@contextmanager
def claiming_for(lane: ClaimFilter | None) -> Iterator[None]:
    """Claims inside take only jobs ``lane`` lets through (None: any)."""
    token = LANE_FILTER.set(lane)
    try:
        yield
    finally:
        LANE_FILTER.reset(token)

"""What the dashboard watches: destination health, the delivery backlog, disk space.

``GET /api/health`` (read token): each destination in force with its last C-ECHO
(:mod:`cad_node.export.health`) and its pending and retrying deliveries; the pending
deliveries themselves (attempts, next attempt, last error), oldest due first; the free
space of the storage folder's file system. The metrics read the same figures
(:func:`backlog`, :func:`disk_space`).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from cad_node.admin.auth import Reader
from cad_node.admin.deps import Context, Journal
from cad_node.admin.flow import DeliveryOut, delivery_out
from cad_node.admin.models_and_destinations import destinations_in_force
from cad_node.domain.states import DeliveryState
from cad_node.store.disk import disk_space
from cad_node.store.schema import Delivery, Result

router = APIRouter(prefix="/api", tags=["node"])

PENDING_SHOWN = 50
"""The dashboard lists at most this many pending deliveries (the Deliveries page pages)."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """The pending deliveries of one destination."""

    pending: int
    """Pending: waiting for their first attempt or for a retry."""
    retrying: int
    """Pending after at least one failed attempt."""
    oldest_pending_since: datetime | None
    """When the oldest pending delivery's result was written (it has waited since)."""


def backlog(session: Session, destinations: Iterable[str] = ()) -> dict[str, Backlog]:
    """Pending deliveries per destination; every name in ``destinations`` is present."""
    query = (
        select(
            Delivery.destination,
            func.count(),
            func.sum(case((Delivery.attempts > 0, 1), else_=0)),
            func.min(Result.created_at),
        )
        .join(Result, Result.id == Delivery.result_id)
        .where(Delivery.state == DeliveryState.PENDING)
        .group_by(Delivery.destination)
    )
    figures = dict.fromkeys(destinations, Backlog(0, 0, None))
    for name, pending, retrying, oldest in session.execute(query).all():
        figures[name] = Backlog(int(pending), int(retrying or 0), oldest)
    return figures


class DestinationHealthOut(BaseModel):
    name: str
    ae_title: str
    host: str
    port: int
    up: bool | None
    """The last C-ECHO answered Success; ``null``: not checked yet."""
    detail: str | None
    echo_seconds: float | None
    checked_at: datetime | None
    pending: int
    retrying: int
    oldest_pending_since: datetime | None


class DiskOut(BaseModel):
    total_bytes: int
    free_bytes: int
    low: bool
    min_free_fraction: float


class HealthOut(BaseModel):
    """The dashboard's health panel."""

    echo_interval_seconds: float
    destinations: list[DestinationHealthOut]
    pending: list[DeliveryOut]
    """Pending deliveries (first attempt or retry), next attempt first, at most 50."""
    pending_total: int
    disk: DiskOut


@router.get("/health", response_model=HealthOut)
def health(node: Context, session: Journal, _caller: Reader) -> HealthOut:
    """Destinations (last C-ECHO, backlog), the pending deliveries, the storage folder's disk."""
    destinations = destinations_in_force(node)
    echoes = node.destination_health()
    figures = backlog(session, destinations)
    rows = []
    for name in sorted(figures):
        destination, echoed, waiting = destinations.get(name), echoes.get(name), figures[name]
        rows.append(
            DestinationHealthOut(
                name=name,
                ae_title=getattr(destination, "ae_title", ""),  # none for DICOMweb
                host=destination.host if destination else "",
                port=destination.port if destination else 0,
                up=echoed.ok if echoed else None,
                detail=echoed.detail if echoed else ("not configured" if not destination else None),
                echo_seconds=echoed.seconds if echoed else None,
                checked_at=echoed.checked_at if echoed else None,
                pending=waiting.pending,
                retrying=waiting.retrying,
                oldest_pending_since=waiting.oldest_pending_since,
            )
        )
    settings = node.settings.health
    disk = disk_space(node.settings.storage_dir, settings.min_free_disk_fraction)
    return HealthOut(
        echo_interval_seconds=settings.echo_interval_seconds,
        destinations=rows,
        pending=_pending(session),
        pending_total=sum(waiting.pending for waiting in figures.values()),
        disk=DiskOut(
            total_bytes=disk.total_bytes,
            free_bytes=disk.free_bytes,
            low=disk.low,
            min_free_fraction=settings.min_free_disk_fraction,
        ),
    )


def _pending(session: Session) -> list[DeliveryOut]:
    query = (
        select(Delivery, Result)
        .join(Result, Result.id == Delivery.result_id)
        .where(Delivery.state == DeliveryState.PENDING)
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(PENDING_SHOWN)
    )
    return [delivery_out(delivery, result) for delivery, result in session.execute(query).all()]

"""Per-model switch (active / shadow / off) and destinations add / edit / delete.

Both are journal rows read by the node at its next step, so a change takes
effect without restart. Every change is audited in its own transaction.
A destination is checked by the config's own ``DestinationSettings`` model
(a 422 names the field and the reason); one a rule sends to cannot be
deleted (409 naming the rules).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, status
from fastapi import Path as PathParam
from pydantic import BaseModel
from sqlalchemy.orm import Session

from cad_node.admin.auth import Writer
from cad_node.admin.context import AdminContext
from cad_node.admin.deps import Context
from cad_node.config import AnyDestinationSettings
from cad_node.errors import ConfigError
from cad_node.export.dispatch import check_destination
from cad_node.routing.rules import RuleMode
from cad_node.store.model_modes_and_destinations import (
    current_destinations,
    delete_destination,
    destination_data,
    parse_destination,
    save_destination,
    seed_destinations,
    set_model_mode,
)
from cad_node.store.rulesets import latest_version, record_audit, rules_of

router = APIRouter(tags=["node"])

DestinationName = Annotated[
    str,
    PathParam(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="destination name"
    ),
]
DestinationData = Annotated[
    dict[str, Any], Body(description="a destination, as written under destinations: in the config")
]


def seed(context: AdminContext) -> None:
    """Seed the journal's destinations from the config if it never held any (idempotent)."""
    with context.sessions.begin() as session:
        seed_destinations(session, context.settings.destinations, context.clock())


def destinations_in_force(node: AdminContext) -> dict[str, AnyDestinationSettings]:
    """The destinations in force, from the journal."""
    with node.sessions() as session:
        return current_destinations(session)


def _known_models(node: AdminContext) -> set[str]:
    return set(node.registry.entries()) | {rule.model for rule in node.rule_book.current()}


class ModeRequest(BaseModel):
    mode: RuleMode


class ModelModeOut(BaseModel):
    model_name: str
    mode: RuleMode
    previous: RuleMode


@router.put("/api/models/{name}/mode", response_model=ModelModeOut)
def switch_model(name: str, request: ModeRequest, node: Context, caller: Writer) -> ModelModeOut:
    """Switch a model: ``active`` (run, send), ``shadow`` (run, record, send nothing), ``off``
    (no job is queued for a rule naming it). Takes effect at the next series routed."""
    if name not in _known_models(node):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no model named {name!r}")
    with node.sessions.begin() as session:
        now = node.clock()
        before = set_model_mode(session, name, request.mode, caller.name, now)
        record_audit(
            session,
            actor=caller.name,
            action="model.mode",
            target=f"model {name}",
            now=now,
            detail={"from": before.value, "to": request.mode.value},
        )
    return ModelModeOut(model_name=name, mode=request.mode, previous=before)


def _check_destination(data: dict[str, Any]) -> AnyDestinationSettings:
    try:
        destination = parse_destination(data, "destination")
        check_destination(destination)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return destination


def _rules_sending_to(session: Session, name: str) -> list[str]:
    latest = latest_version(session)
    rules = () if latest is None else rules_of(latest)
    return [rule.name for rule in rules if name in rule.destinations]


def _save(
    node: AdminContext, caller: Writer, name: str, data: dict[str, Any], *, create: bool
) -> dict[str, Any]:
    destination = _check_destination(data)
    with node.sessions.begin() as session:
        exists = name in current_destinations(session)
        if create and exists:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"destination {name!r} exists")
        if not create and not exists:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such destination")
        now = node.clock()
        save_destination(session, name, destination, caller.name, now)
        stored = destination_data(destination)
        record_audit(
            session,
            actor=caller.name,
            action="destination.create" if create else "destination.update",
            target=f"destination {name}",
            now=now,
            detail=stored,
        )
    return {"name": name, **stored}


@router.get("/api/destinations/{name}")
def get_destination(name: DestinationName, node: Context, _caller: Writer) -> dict[str, Any]:
    """One destination's whole settings (TLS file paths included, hence an admin token)."""
    destination = destinations_in_force(node).get(name)
    if destination is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such destination")
    return {"name": name, **destination_data(destination)}


@router.post("/api/destinations/{name}", status_code=status.HTTP_201_CREATED)
def create_destination(
    name: DestinationName, data: DestinationData, node: Context, caller: Writer
) -> dict[str, Any]:
    """Add a destination; 409 if the name is taken, 422 naming a bad field."""
    return _save(node, caller, name, data, create=True)


@router.put("/api/destinations/{name}")
def update_destination(
    name: DestinationName, data: DestinationData, node: Context, caller: Writer
) -> dict[str, Any]:
    """Replace a destination's settings; deliveries still due go to the new address."""
    return _save(node, caller, name, data, create=False)


@router.delete("/api/destinations/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove_destination(name: DestinationName, node: Context, caller: Writer) -> None:
    """Delete a destination; 409 naming the rules while a rule sends to it."""
    with node.sessions.begin() as session:
        using = _rules_sending_to(session, name)
        if using:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"destination {name!r} is used by rule(s) {', '.join(using)}: "
                "remove it from them first",
            )
        now = node.clock()
        if not delete_destination(session, name, caller.name, now):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such destination")
        record_audit(
            session,
            actor=caller.name,
            action="destination.delete",
            target=f"destination {name}",
            now=now,
        )

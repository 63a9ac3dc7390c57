"""Health, models, destinations (with C-ECHO) and the audit log."""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from cad_node.admin.auth import Reader
from cad_node.admin.context import AdminContext
from cad_node.admin.deps import Context, Journal, Page
from cad_node.admin.echo import echo
from cad_node.admin.flow import Listing, _page
from cad_node.admin.models_and_destinations import destinations_in_force
from cad_node.config import AnyDestinationSettings, DicomWebDestinationSettings
from cad_node.domain.states import ResultKind
from cad_node.models.manifest import Manifest
from cad_node.routing.rules import RuleMode
from cad_node.store.model_modes_and_destinations import model_modes
from cad_node.store.schema import AuditEvent

router = APIRouter(tags=["node"])


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = {}


@router.get("/health/live", response_model=Health)
def live() -> Health:
    """Liveness: the process answers HTTP. No token needed."""
    return Health(status="ok")


@router.get("/health/ready", response_model=Health)
def ready(node: Context, response: Response) -> Health:
    """Readiness: the journal answers and the Storage SCP listens (503 otherwise). No token."""
    checks = {"journal": _journal_answers(node), "dicom": node.ready()}
    ok = all(checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "unavailable", checks=checks)


def _journal_answers(node: AdminContext) -> bool:
    try:
        with node.sessions() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


class OodOut(BaseModel):
    method: str
    threshold: float
    percentile: float | None = None
    false_abstention_rate: float | None = None
    """As measured where the score was fitted (held-out data, or the site's cases left out)."""


def ood_out(manifest: Manifest) -> OodOut | None:
    """The manifest's ``ood`` for the API; None where none is fitted."""
    entry = manifest.ood
    if not entry or "threshold" not in entry:
        return None
    return OodOut(
        method=str(entry.get("method", "")),
        threshold=float(entry["threshold"]),
        percentile=_number(entry.get("percentile")),
        false_abstention_rate=_number(entry.get("false_abstention_rate")),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class ModelOut(BaseModel):
    name: str
    version: str
    family: str
    modality: str
    format: str
    """native, torchscript, monai_bundle or nnunet_v2."""
    task: str | None = None
    """A site model's task: segmentation, detection or classification."""
    labels: list[str] = []
    """A site model's output labels, in value order (the names its LABELS.yaml gives)."""
    sha256: str
    device: str
    intended_use: str
    clinical_use: str
    model_card: str
    mode: RuleMode = RuleMode.ACTIVE
    """The admin's switch: active, shadow (run, record, send nothing) or off (no job)."""
    validated_domain: dict[str, Any] | None = None
    """What the model was validated on (the manifest's ``validated_domain``); None: not
    declared, every input accepted."""
    ood: OodOut | None = None
    """The fitted out-of-distribution score; None: none fitted, no input is scored."""


@router.get("/api/models", response_model=list[ModelOut])
def list_models(node: Context, session: Journal, _caller: Reader) -> list[ModelOut]:
    """The models found (shipped and site), with the sha256 of their weights and their switch."""
    registry = node.registry
    modes = model_modes(session)
    return [
        ModelOut(
            name=name,
            version=entry.manifest.version,
            family=entry.manifest.family,
            modality=entry.manifest.modality,
            format=entry.manifest.format,
            task=entry.manifest.task,
            labels=label_names(entry.manifest),
            sha256=entry.manifest.sha256,
            device=registry.device,
            intended_use=entry.manifest.intended_use,
            clinical_use=entry.manifest.clinical_use,
            model_card=entry.manifest.model_card,
            mode=modes.get(name, RuleMode.ACTIVE),
            validated_domain=entry.manifest.validated_domain or None,
            ood=ood_out(entry.manifest),
        )
        for name, entry in sorted(registry.entries().items())
    ]


def label_names(manifest: Manifest) -> list[str]:
    """The names of a site model's labels, by output value."""
    return [
        str(manifest.labels[value].get("label", value))
        for value in sorted(manifest.labels, key=lambda v: int(v) if v.isdigit() else -1)
    ]


class DestinationOut(BaseModel):
    name: str
    host: str
    port: int
    ae_title: str
    """Empty for a DICOMweb destination."""
    results: list[ResultKind]
    type: Literal["dimse", "dicomweb"] = "dimse"
    """``dimse``: C-STORE; ``dicomweb``: STOW-RS to ``url``."""
    url: str | None = None


class EchoOut(BaseModel):
    destination: str
    ok: bool
    status: int | None
    detail: str
    seconds: float


@router.get("/api/destinations", response_model=list[DestinationOut])
def list_destinations(node: Context, _caller: Reader) -> list[DestinationOut]:
    return [_destination_out(name, d) for name, d in sorted(destinations_in_force(node).items())]


def _destination_out(name: str, d: AnyDestinationSettings) -> DestinationOut:
    if isinstance(d, DicomWebDestinationSettings):
        return DestinationOut(
            name=name,
            host=d.host,
            port=d.port,
            ae_title="",
            results=list(d.results),
            type="dicomweb",
            url=d.url,
        )
    return DestinationOut(
        name=name, host=d.host, port=d.port, ae_title=d.ae_title, results=list(d.results)
    )


@router.post("/api/destinations/{name}/echo", response_model=EchoOut)
async def echo_destination(name: str, node: Context, _caller: Reader) -> EchoOut:
    """A real C-ECHO to the destination (PS3.7 9.3.5); changes nothing, so a read token may."""
    destination = destinations_in_force(node).get(name)
    if destination is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such destination")
    outcome = await run_in_threadpool(
        echo, destination, node.settings.ae_title, node.settings.export.timeouts
    )
    return EchoOut(
        destination=name,
        ok=outcome.ok,
        status=outcome.status,
        detail=outcome.detail,
        seconds=outcome.seconds,
    )


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


@router.get("/api/audit", response_model=Listing[AuditOut])
def list_audit(
    *,
    session: Journal,
    _caller: Reader,
    page: Page,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target: Annotated[str | None, Query(max_length=128)] = None,
) -> Listing[AuditOut]:
    """Admin changes and the data flow (series received, routed; deliveries sent, failed),
    newest first; ``target`` e.g. ``series <SeriesInstanceUID>``."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if target is not None:
        query = query.where(AuditEvent.target == target)
    rows, total = _page(session, query, page)
    items = [AuditOut.model_validate(row) for row in rows]
    return Listing[AuditOut](items=items, total=total, **page.model_dump())


class Me(BaseModel):
    name: str
    role: str


@router.get("/api/me", response_model=Me)
def whoami(caller: Reader) -> Me:
    """The token's holder and role (the web page checks a token with it)."""
    return Me(name=caller.name, role=caller.role)

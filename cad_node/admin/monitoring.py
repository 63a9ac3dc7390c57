"""Each model's local performance and drift: the monitoring page's API and figures (issue 22).

Everything here is computed from the journal's job outputs and feedback: UIDs, counts,
scores and figures, never a patient's name or ID. A period is ``[since, until)``, as
``cad-node report`` reads it: ``since`` (default: 90 days ago) included, ``until``
(default: now) excluded, each a day (``2026-09-01``: its start, UTC) or an ISO 8601 time
(UTC when it has no offset).

The figures (PNG) are drawn by :mod:`cad_node.monitoring.figures` and
:mod:`cad_node.monitoring.drift_figures`, which import matplotlib inside their functions:
``serve`` starts without it. One model's figures of one period are drawn once and kept
(a few sets, keyed by the journal's state as well) so that the page's image requests do
not draw them again.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cad_node.admin.auth import reader
from cad_node.admin.context import AdminContext
from cad_node.admin.deps import Context, Journal
from cad_node.config.monitoring import MonitoringSettings
from cad_node.monitoring.drift import model_drift
from cad_node.monitoring.drift_figures import drift_figures
from cad_node.monitoring.figures import performance_figures
from cad_node.monitoring.performance import compare_models, local_performance
from cad_node.store.schema import FeedbackRow, JobOutput

router = APIRouter(prefix="/api/monitoring", tags=["monitoring"], dependencies=[Depends(reader)])
"""Every endpoint answers a read or admin token (401 without one, 403 for a send token)."""

DEFAULT_PERIOD = timedelta(days=90)
"""The period shown when the page or a caller names no ``since`` (from the start of that
day, UTC: the same default twice is the same period, and its figures are drawn once)."""
FIGURE_SETS_KEPT = 8
"""Drawn figure sets kept in memory (each a few PNGs of tens of kB)."""

ModelName = Annotated[
    str,
    PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="a model"),
]
FigureName = Annotated[
    str,
    PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="a figure"),
]
Since = Annotated[
    str | None,
    Query(max_length=40, description="from this day (YYYY-MM-DD) or time; default 90 days ago"),
]
Until = Annotated[
    str | None,
    Query(max_length=40, description="up to this day (YYYY-MM-DD) or time, excluded; now"),
]


# -- the period ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    since: datetime
    until: datetime | None
    """None: up to now."""


def parse_time(name: str, text: str) -> datetime:
    """``text`` as a UTC time: a day (its start) or an ISO 8601 time; 422 with the reason
    otherwise."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"{name}: {text!r} is not a day (YYYY-MM-DD) or an ISO 8601 time",
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def period_of(since: str | None, until: str | None, now: datetime) -> Period:
    """The period the query names; 422 when ``until`` is not after ``since``."""
    start = _day_start(now - DEFAULT_PERIOD) if not since else parse_time("since", since)
    end = parse_time("until", until) if until else None
    if end is not None and end <= start:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"until ({end.isoformat()}) must be after since ({start.isoformat()})",
        )
    return Period(start, end)


def requested_period(node: Context, since: Since = None, until: Until = None) -> Period:
    """The period of a request's ``since`` and ``until``."""
    return period_of(since, until, node.clock())


Asked = Annotated[Period, Depends(requested_period)]


# -- models -------------------------------------------------------------------------------


class VersionOut(BaseModel):
    """One version of a model that read studies here."""

    model_version: str
    weights_sha256: str
    first_recorded_at: datetime
    last_recorded_at: datetime


class MonitoredModelOut(BaseModel):
    """A model with outputs in the journal, and what it did in the period."""

    name: str
    versions: list[VersionOut]
    mode: str
    """The mode of its newest job: ``active`` (results sent) or ``shadow``."""
    studies: int
    """Studies it read in the period (a re-read study counts once)."""
    abstentions: int
    """Of those, the studies its newest job did not assess."""
    feedback: int
    """Verdicts and outcomes on its jobs of the period."""
    drift_level: str
    """The worst level of its features now: ok, warn, alert, too few."""
    partners: list[str]
    """Models of the other mode that read some of the same studies in the period (the
    shadow-vs-active comparison)."""


class MonitoredModelsOut(BaseModel):
    since: datetime
    until: datetime | None
    models: list[MonitoredModelOut]


@router.get("/models", response_model=MonitoredModelsOut)
def monitored_models(session: Journal, node: Context, period: Asked) -> MonitoredModelsOut:
    """Every model with outputs: versions, mode, studies read, abstentions and feedback in
    the period, its model-drift level as last checked, and its shadow or active partners."""
    names = session.scalars(select(JobOutput.model_name).distinct().order_by(JobOutput.model_name))
    newest = _newest_jobs(session, period)
    level = _drift_levels(session, node)
    models = [
        _monitored(session, name, period, newest.get(name, {}), level(name)) for name in names
    ]
    for model in models:
        model.partners = _partners(model.name, newest)
    return MonitoredModelsOut(since=period.since, until=period.until, models=models)


def _drift_levels(session: Session, node: AdminContext) -> Callable[[str], str]:
    """Model -> its drift level as kept by the node's
    :class:`~cad_node.monitoring.drift.DriftWatch` (what /metrics and the banner show); a
    model it has not computed yet (outputs since its last check) is computed here."""
    kept = {drift.model_name: drift for drift in node.model_drift.current()}
    now, settings = node.clock(), node.settings.monitoring

    def level(name: str) -> str:
        drift = kept.get(name)
        if drift is None:
            drift = model_drift(session, name, now, settings)
        return drift.level.value

    return level


def _in_period(query: Any, period: Period) -> Any:
    query = query.where(JobOutput.recorded_at >= period.since)
    if period.until is not None:
        query = query.where(JobOutput.recorded_at < period.until)
    return query


@dataclass(frozen=True, slots=True)
class _Read:
    """What the newest job of a (model, study) was: its mode, and whether it abstained."""

    mode: str
    abstained: bool


def _newest_jobs(session: Session, period: Period) -> dict[str, dict[str, _Read]]:
    """Model -> study -> its newest job in the period (a re-run replaces the earlier)."""
    query = select(
        JobOutput.model_name, JobOutput.study_instance_uid, JobOutput.mode, JobOutput.abstained
    )
    newest: dict[str, dict[str, _Read]] = {}
    for model, study, mode, abstained in session.execute(
        _in_period(query, period).order_by(JobOutput.job_id)
    ):
        newest.setdefault(model, {})[study] = _Read(mode, abstained)
    return newest


def _partners(name: str, newest: dict[str, dict[str, _Read]]) -> list[str]:
    """The models that read some of ``name``'s studies in the other mode."""
    mine = newest.get(name, {})
    return [
        other
        for other, theirs in sorted(newest.items())
        if other != name
        and any(mine[uid].mode != theirs[uid].mode for uid in mine.keys() & theirs.keys())
    ]


def _monitored(
    session: Session, name: str, period: Period, studies: dict[str, _Read], drift: str
) -> MonitoredModelOut:
    versions = session.execute(
        select(
            JobOutput.model_version,
            JobOutput.weights_sha256,
            func.min(JobOutput.recorded_at),
            func.max(JobOutput.recorded_at),
        )
        .where(JobOutput.model_name == name)
        .group_by(JobOutput.model_version, JobOutput.weights_sha256)
        .order_by(func.min(JobOutput.recorded_at))
    ).all()
    newest_mode = session.scalars(
        select(JobOutput.mode)
        .where(JobOutput.model_name == name)
        .order_by(JobOutput.job_id.desc())
        .limit(1)
    ).one()
    feedback_query = (
        select(func.count(FeedbackRow.id))
        .join(JobOutput, JobOutput.job_id == FeedbackRow.job_id)
        .where(FeedbackRow.model_name == name)
    )
    return MonitoredModelOut(
        name=name,
        versions=[
            VersionOut(
                model_version=v, weights_sha256=h, first_recorded_at=first, last_recorded_at=last
            )
            for v, h, first, last in versions
        ],
        mode=newest_mode,
        studies=len(studies),
        abstentions=sum(1 for read in studies.values() if read.abstained),
        feedback=session.scalar(_in_period(feedback_query, period)) or 0,
        drift_level=drift,
        partners=[],
    )


def _known_model(session: Session, name: str) -> None:
    found = session.scalar(select(JobOutput.job_id).where(JobOutput.model_name == name).limit(1))
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"model {name!r} has no outputs in the journal"
        )


# -- performance --------------------------------------------------------------------------


@router.get("/{model}/performance")
def performance(model: ModelName, session: Journal, period: Asked) -> dict[str, Any]:
    """The model's local performance over the period: each figure with its 95 % CI and n."""
    _known_model(session, model)
    return local_performance(session, model, period.since, period.until).to_json()


@router.get("/{model}/compare")
def compare(
    model: ModelName,
    session: Journal,
    period: Asked,
    other: Annotated[str, Query(alias="with", min_length=1, max_length=64)],
) -> dict[str, Any]:
    """``model`` and ``with`` on the studies both read in the period (shadow vs active)."""
    _known_model(session, model)
    _known_model(session, other)
    mine, theirs = compare_models(session, model, other, period.since, period.until)
    return {"model": mine.to_json(), "with": theirs.to_json()}


# -- drift --------------------------------------------------------------------------------


@router.get("/{model}/drift")
def drift(model: ModelName, session: Journal, node: Context) -> dict[str, Any]:
    """The model's drift now: each feature's baseline and current windows, PSI and level."""
    _known_model(session, model)
    found = model_drift(session, model, node.clock(), node.settings.monitoring)
    return found.to_json()


# -- figures ------------------------------------------------------------------------------


class FigureNamesOut(BaseModel):
    """The figures the model has for the period (``/figures/{name}.png``)."""

    performance: list[str]
    drift: list[str]


_figures: "OrderedDict[tuple[object, ...], dict[str, bytes]]" = OrderedDict()
_drawing = threading.Lock()


def _kept(key: tuple[object, ...], draw: Callable[[], dict[str, bytes]]) -> dict[str, bytes]:
    """``draw()``, or what it drew for ``key`` before; one drawing at a time (matplotlib)."""
    with _drawing:
        found = _figures.get(key)
        if found is None:
            found = draw()
            _figures[key] = found
            while len(_figures) > FIGURE_SETS_KEPT:
                _figures.popitem(last=False)
        _figures.move_to_end(key)
        return found


def _journal_state(session: Session, model: str) -> tuple[object, ...]:
    """What changes when the model's outputs or feedback change."""
    outputs = session.execute(
        select(func.count(), func.max(JobOutput.job_id)).where(JobOutput.model_name == model)
    ).one()
    feedback = session.execute(select(func.count(), func.max(FeedbackRow.id))).one()
    return (*outputs, *feedback)


def _performance_figures(
    session: Session, model: str, period: Period, now: datetime
) -> dict[str, bytes]:
    today = None if period.until is not None else _day_start(now)  # "until now" moves on
    key = ("performance", model, period, today, _journal_state(session, model))
    return _kept(
        key,
        lambda: performance_figures(local_performance(session, model, period.since, period.until)),
    )


def _drift_figures(
    session: Session, model: str, now: datetime, settings: MonitoringSettings
) -> dict[str, bytes]:
    hour = now.replace(minute=0, second=0, microsecond=0)
    key = ("drift", model, hour, settings, _journal_state(session, model))
    return _kept(key, lambda: drift_figures(model_drift(session, model, now, settings)))


@router.get("/{model}/figures", response_model=FigureNamesOut)
def figure_names(
    model: ModelName, session: Journal, node: Context, period: Asked
) -> FigureNamesOut:
    """The names of the model's performance figures for the period and of its drift figures."""
    _known_model(session, model)
    now = node.clock()
    return FigureNamesOut(
        performance=list(_performance_figures(session, model, period, now)),
        drift=list(_drift_figures(session, model, now, node.settings.monitoring)),
    )


@router.get(
    "/{model}/figures/{name}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def figure(
    model: ModelName, name: FigureName, session: Journal, node: Context, period: Asked
) -> Response:
    """One figure as PNG: a performance figure over the period, or a drift figure (now)."""
    _known_model(session, model)
    now = node.clock()
    png = _performance_figures(session, model, period, now).get(name)
    if png is None:
        png = _drift_figures(session, model, now, node.settings.monitoring).get(name)
    if png is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"model {model!r} has no figure {name!r}"
        )
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


# -- alerts (model drift, H5) -------------------------------------------------------------


class DriftAlertOut(BaseModel):
    """A model's feature at warn or alert: a line of the admin page's banner."""

    model: str
    feature: str
    psi: float
    level: str
    message: str
    """``lung_nodule_ct: Manufacturer PSI 0.31 (alert)``."""


class DriftAlertsOut(BaseModel):
    computed_at: datetime | None
    """The node's time of the drift computation they come from (recomputed every
    ``monitoring.check_interval_seconds``)."""
    alerts: list[DriftAlertOut]
    """Alerts first, then by PSI, highest first; empty: no model drifted."""


@router.get("/alerts")
def drift_alerts(node: Context) -> DriftAlertsOut:
    """Every model's features whose PSI is at warn or alert (the banner; /metrics has them
    as ``cad_node_model_drift_psi`` and ``cad_node_model_drift_alert``)."""
    watch = node.model_drift
    alerts = [DriftAlertOut(**alert.to_json()) for alert in watch.alerts()]
    return DriftAlertsOut(computed_at=watch.computed_at, alerts=alerts)

"""The admin web page: server-rendered jinja2 templates, no build step.

The pages carry no data and need no token: their script asks the API for the
data with the bearer token the admin typed once (kept in ``sessionStorage``,
so it lasts as long as the browser tab and is never sent as a cookie).
"""

import logging
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cad_node import NOT_FOR_CLINICAL_USE, __version__
from cad_node.admin.context import AdminContext
from cad_node.configdiff.sync import diff_against_journal
from cad_node.errors import ConfigError

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
PAGES: dict[str, str] = {
    "dashboard": "Dashboard",
    "studies": "Studies",
    "rules": "Rules",
    "jobs": "Jobs",
    "deliveries": "Deliveries",
    "models": "Models",
    "destinations": "Destinations",
    "review": "Review",
    "monitoring": "Monitoring",
    "audit": "Audit",
}
"""Template name -> title, in the order of the navigation bar."""

templates = Jinja2Templates(directory=HERE / "templates")
static_files = StaticFiles(directory=HERE / "static")
router = APIRouter(include_in_schema=False)


def _render(request: Request, page: str) -> HTMLResponse:
    context = {
        "page": page,
        "title": PAGES[page],
        "pages": PAGES,
        "version": __version__,
        "ae_title": request.app.state.context.settings.ae_title,
        "warning": NOT_FOR_CLINICAL_USE,
        "drift": _drift(request.app.state.context) if page == "dashboard" else (),
    }
    return templates.TemplateResponse(request, f"{page}.html", context)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    return _render(request, "dashboard")


@router.get("/ui/{page}", response_class=HTMLResponse)
def page(request: Request, page: str) -> HTMLResponse:
    if page not in PAGES:
        return HTMLResponse("no such page", status_code=404)
    return _render(request, page)


def _drift(context: AdminContext) -> tuple[str, ...]:
    """What differs between the config the node started with and the journal: ``rules``
    and/or ``destinations`` (the names of the parts only: the page needs no token)."""
    try:
        with context.sessions() as session:
            return diff_against_journal(session, context.settings).sections
    except ConfigError:
        logger.warning("dashboard: the rules in the journal could not be read for the config check")
        return ()

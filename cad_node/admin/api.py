"""The admin FastAPI application: API routers, /metrics and the OpenAPI schema.

The schema is served at ``/openapi.json``; no browsable ``/docs`` or ``/redoc``, whose
pages would load a script bundle from a CDN into the admin origin. Every response
carries the security headers of :mod:`cad_node.admin.guard`, and a request body is
bounded by ``admin.max_body_bytes``.
"""

from fastapi import FastAPI, Response

from cad_node import __version__
from cad_node.admin import (
    browser,
    dicomweb,
    flow,
    models_and_destinations,
    monitoring,
    review,
    rule_editing,
    system,
    web,
)
from cad_node.admin import health as health_api
from cad_node.admin import storage as storage_api
from cad_node.admin import time_to_result as time_to_result_api
from cad_node.admin.auth import Reader
from cad_node.admin.context import AdminContext
from cad_node.admin.guard import BodyLimit, SecurityHeaders
from cad_node.admin.metrics import CONTENT_TYPE, metrics_registry, render


def create_app(context: AdminContext) -> FastAPI:
    """The admin application over a node's ``context``."""
    app = FastAPI(
        title="cad-node admin API",
        version=__version__,
        description=(
            "Routing rules, series, jobs, deliveries, models, destinations, metrics. "
            "Bearer token from admin.tokens; read or admin role. NOT FOR CLINICAL USE."
        ),
        docs_url=None,
        redoc_url=None,
    )
    stow_limit = (context.settings.dicomweb.max_request_bytes, "dicomweb.max_request_bytes")
    app.add_middleware(
        BodyLimit,
        max_bytes=context.settings.admin.max_body_bytes,
        path_limits={"/dicomweb/": stow_limit},
    )
    app.add_middleware(SecurityHeaders)  # added last: outermost, so the 413 carries them too
    app.state.context = context
    models_and_destinations.seed(context)
    app.include_router(system.router)
    app.include_router(health_api.router)
    app.include_router(storage_api.router)
    app.include_router(flow.router)
    app.include_router(rule_editing.router)
    app.include_router(models_and_destinations.router)
    app.include_router(browser.router)
    if context.settings.dicomweb.enabled:
        app.include_router(dicomweb.router)
    app.include_router(time_to_result_api.router)
    app.include_router(review.router)
    app.include_router(monitoring.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files, name="static")
    registry = metrics_registry(context.sessions, context)

    @app.get("/metrics", tags=["node"], response_class=Response)
    def metrics(_caller: Reader) -> Response:
        """Prometheus text exposition of the journal's figures (read token)."""
        return Response(render(registry), media_type=CONTENT_TYPE)

    return app

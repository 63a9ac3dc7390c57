"""HTTP hardening of the admin app: security headers on every response, a bounded request body.

Both are plain ASGI middleware, so they hold whatever FastAPI version serves the routes.

- The page loads its one script and one stylesheet from ``/static`` and nothing else, so
  the Content-Security-Policy allows only the node's own origin, no inline script or
  style, and no framing (with X-Frame-Options for older browsers). Images the API serves
  to a bearer token only (the monitoring figures) are fetched by script and shown from
  ``blob:`` URLs.
- A body is refused with 413 before it is read when its Content-Length is over the
  limit, and as soon as the bytes streamed in pass the limit otherwise (chunked).
"""

from fastapi import HTTPException, status
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(HTTPException):
    """A request body over the limit: answered 413 by FastAPI's own exception handling."""

    def __init__(self, max_bytes: int, setting: str = "admin.max_body_bytes") -> None:
        detail = f"request body over {max_bytes} bytes ({setting})"
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, detail=detail)


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with 413, reading no more than the limit.

    ``path_limits`` maps a path prefix to its own limit and the setting that names it
    (STOW-RS bodies under ``/dicomweb/`` carry whole studies).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        path_limits: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next(
            (v for prefix, v in self.path_limits.items() if scope["path"].startswith(prefix)),
            (self.max_bytes, "admin.max_body_bytes"),
        )
        too_large = BodyTooLarge(*limit)
        if self._declared_too_large(scope, limit[0]):
            await self._refuse(too_large, scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit[0]:
                raise too_large
            return message

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(too_large, scope, receive, send)

    def _declared_too_large(self, scope: Scope, max_bytes: int) -> bool:
        declared = Headers(scope=scope).get("content-length", "")
        return declared.isdigit() and int(declared) > max_bytes

    async def _refuse(
        self, too_large: BodyTooLarge, scope: Scope, receive: Receive, send: Send
    ) -> None:
        response = JSONResponse({"detail": too_large.detail}, status.HTTP_413_CONTENT_TOO_LARGE)
        await response(scope, receive, send)

"""The FastAPI application: routers, error handlers, the audit middleware, offline docs.

Every router module under ``gateway/api`` exposes ``router``; :data:`ROUTERS` lists them. The
OpenAPI document is at ``/api/v1/openapi.json`` and the interactive docs at ``/api/v1/docs``,
with Swagger UI's assets served by the gateway from the ``swagger-ui-bundle`` package (no CDN).
The console's static files are served at ``/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.api import (
    accounts,
    alarms,
    audit_routes,
    auth_routes,
    commands,
    devices,
    health,
    live,
    metrics_route,
    sessions,
    stats,
    tokens,
    tree,
    units,
    uppers,
    users,
    whep,
)
from gateway.api.audit import AuditWrites
from gateway.api.auth import AuthGate
from gateway.api.context import ApiContext
from gateway.api.errors import error_body, install_error_handlers

PREFIX = "/api/v1"
STATIC = Path(__file__).parent / "static"

# (module's router, its prefix). Helpers add theirs here.
ROUTERS: list[tuple[Any, str]] = [
    (health.router, ""),
    (auth_routes.router, PREFIX),
    (users.router, PREFIX),
    (tokens.router, PREFIX),
    (audit_routes.router, PREFIX),
    (units.router, PREFIX),
    (accounts.router, PREFIX),
    (uppers.router, PREFIX),
    (metrics_route.router, ""),
    (live.router, PREFIX),
    (devices.router, PREFIX),
    (tree.router, PREFIX),
    (alarms.router, PREFIX),
    (sessions.router, PREFIX),
    (commands.router, PREFIX),
    (stats.router, PREFIX),
    (whep.router, ""),  # WHEP: /whep/channels/{id}, /whep/sessions/{id}
    (whep.api, PREFIX),
]


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413, by its Content-Length or, when
    chunked, as soon as more arrives: nothing bigger is ever buffered."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send)
                    return
        seen = 0
        over = False
        limit = self.limit

        async def counted() -> Message:
            # Past the limit the app is told the client went away, and whatever it answers
            # is replaced by the 413 below.
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            error_body(f"request body over {self.limit} bytes"), status_code=413
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})


CONSOLE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """A pure ASGI middleware: ``nosniff``, ``DENY`` framing and no referrer on every answer,
    and on the console's pages (not ``/api/``, not ``/metrics``) a Content-Security-Policy
    allowing only the gateway's own scripts. Swagger UI (``/api/v1/docs``) has an inline
    script, so it gets none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        console = not (path.startswith("/api/") or path == "/metrics")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers += _ALWAYS
                if console:
                    headers.append((b"content-security-policy", CONSOLE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def build_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="GB/T 28181 gateway",
        version=__version__,
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    install_error_handlers(app, ctx.metrics)
    for router, prefix in ROUTERS:
        app.include_router(router, prefix=prefix)
    _docs(app)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="console")
    # Added last runs first: headers on every answer, then the body limit, the token gate
    # (before any body is read), the audit of writes.
    app.add_middleware(AuditWrites)
    app.add_middleware(AuthGate)
    app.add_middleware(BodyLimit, limit=ctx.config.http.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    return app


def _docs(app: FastAPI) -> None:
    from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

    app.mount(
        f"{PREFIX}/docs-assets",
        StaticFiles(directory=str(swagger_ui_path)),
        name="docs-assets",
    )

    @app.get(f"{PREFIX}/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{PREFIX}/openapi.json",
            title="GB/T 28181 gateway API",
            swagger_js_url=f"{PREFIX}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/docs-assets/favicon-32x32.png",
        )

"""One error shape for every failure: ``{"error": "<message naming the field>", "field": ...}``.

A 4xx says what was wrong with the request; a 500 says only that the gateway failed (the details
go to the log with a counter, ``api.error``), and the server keeps serving everyone else.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.metrics import Metrics
from gateway.store import StoreUnavailable

log = structlog.get_logger("gateway.api")


class ApiError(Exception):
    """Raise from a route to answer ``status`` with ``message`` (and the field it is about)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers


def error_body(message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": message, "field": field}


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("body", "name")`` -> ``name``; ``("query", "limit")`` -> ``limit``; ``("body",)``
    (no body, or not an object) -> ``body``."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts and loc and loc[0] == "body":
        return "body"
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.inc(f"api.status.{exc.status}")
        return JSONResponse(
            error_body(exc.message, exc.field), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _field_of(first.get("loc", ()))
        message = str(first.get("msg", "invalid request"))
        metrics.inc("api.status.422")
        log.info("api.invalid", path=request.url.path, field=field, error=message)
        return JSONResponse(
            error_body(f"{field}: {message}" if field else message, field), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.inc(f"api.status.{exc.status_code}")
        return JSONResponse(
            error_body(str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        # Redis gone long enough that writes are refused: the client may try again later.
        metrics.inc("api.status.503")
        return JSONResponse(
            error_body(f"store unavailable: {exc}"), status_code=503, headers={"Retry-After": "5"}
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        metrics.inc("api.error")
        log.error("api.error", path=request.url.path, method=request.method, exc_info=exc)
        return JSONResponse(error_body("internal error (logged as api.error)"), status_code=500)

"""The HTTP API (FastAPI) under ``/api/v1``: the app factory.

One process owns the model(s) and the DuckDB file: request threads score single texts under a
model lock, and a single worker thread drains the job queue. Errors are JSON
``{"error": {"code", "message"}}``, never stack traces. Bound beyond loopback the server needs
``TOKENPRISM_API_TOKEN`` and every route but ``/health`` then requires
``Authorization: Bearer <token>`` (also enforced on loopback when a token is set).

The routes live in :mod:`tokenprism.backend.api.routes`, one module per resource; what they
share (the service, auth, the error type) is in :mod:`tokenprism.backend.api.service`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenprism.backend import __version__
from tokenprism.backend.api.routes import (
    diffs,
    experiments,
    groups,
    jobs,
    lens,
    meta,
    probes,
    runs,
    sql,
    stream,
    uploads,
)
from tokenprism.backend.api.security import install as install_security
from tokenprism.backend.api.service import API, ApiError, Service, error_response, require_token
from tokenprism.backend.audit.ingest import TranscriptError
from tokenprism.backend.errors import (
    DatabaseLocked,
    InputTooLong,
    ModelNotFound,
    ReadOnlyViolation,
    UnsafeWeights,
    UserError,
)
from tokenprism.backend.jobs.worker import JobNotFound, JobStateError
from tokenprism.backend.settings import Settings, get_settings

__all__ = ["API", "create_app"]

log = logging.getLogger(__name__)

# the token-protected routers, in the order their paths appear in the OpenAPI document
_ROUTERS = (meta, runs, uploads, probes, groups, experiments, diffs, jobs, sql, lens)

_USER_ERROR_STATUS: list[tuple[type[UserError], int, str]] = [
    (JobNotFound, 404, "not_found"),
    (JobStateError, 409, "conflict"),
    (TranscriptError, 422, "invalid_transcript"),
    (InputTooLong, 422, "input_too_long"),
    (ModelNotFound, 404, "model_not_found"),
    (UnsafeWeights, 422, "unsafe_weights"),
    (ReadOnlyViolation, 403, "read_only"),
    (DatabaseLocked, 503, "database_locked"),
]


def create_app(settings: Settings | None = None, *, preload: bool = False) -> FastAPI:
    """Build the app; ``preload`` loads the default model at start-up."""
    settings = settings or get_settings()
    app = FastAPIOffline(  # Swagger UI / ReDoc from packaged assets: no CDN
        title="TokenPrism API",
        version=__version__,
        lifespan=_lifespan(settings, preload),
        description="Token-level analysis of language-model outputs.",
    )
    app.middleware("http")(_guard(settings))
    install_security(app, settings)  # Host / Origin / streamed body limits, 403/409/429 codes
    _add_error_handlers(app)
    app.include_router(meta.public)
    for module in _ROUTERS:
        app.include_router(module.router)
    app.include_router(stream.router)
    return app


def _lifespan(
    settings: Settings, preload: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Open the service (store, job worker, optionally the model) for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(settings)
        app.state.service = service
        if preload:
            from tokenprism.analysis.logits import LogitMetricParams
            from tokenprism.backend.scoring.compiled import start_warm_up

            lm = await asyncio.to_thread(service.model, settings.default_model)
            # a long-lived server: compile the metric sweep in the background (never waited on)
            start_warm_up(lm, LogitMetricParams().chunk_positions)
        service.jobs.start()
        try:
            yield
        finally:
            service.jobs.stop()
            service.store.close()

    return lifespan


def _guard(settings: Settings) -> Callable[[Request, Any], Awaitable[Any]]:
    """Middleware: the token on the docs pages (body sizes: api.security, counted as read)."""

    async def guard(request: Request, call_next: Any) -> Any:
        if settings.api_token and request.url.path in ("/docs", "/redoc", "/openapi.json"):
            try:
                require_token(request)
            except ApiError as err:
                return error_response(err.status, err.code, err.message)
        return await call_next(request)

    return guard


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure becomes the JSON error body; unexpected ones are logged, not shown."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.message, **err.extra)

    @app.exception_handler(UserError)
    async def _user_error(_: Request, err: UserError) -> JSONResponse:
        for cls, status, code in _USER_ERROR_STATUS:
            if isinstance(err, cls):
                extra = {}
                if isinstance(err, TranscriptError):
                    extra.update(err.details)
                return error_response(status, code, str(err), **extra)
        return error_response(400, "bad_request", str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in err.errors()
        ]
        first = problems[0] if problems else {"location": "", "message": "invalid request"}
        return error_response(
            422, "invalid_request", f"{first['location']}: {first['message']}", problems=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return error_response(err.status_code, code, str(err.detail))

    @app.exception_handler(Exception)
    async def _crash(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=err)
        return error_response(500, "internal", "internal error; see the server log")

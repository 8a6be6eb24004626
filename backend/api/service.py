"""What every router shares: the :class:`Service`, its dependency, auth and the error type.

Routers import this module and :mod:`.schemas`, never :mod:`.app`, so the app factory can
import every router without a cycle.
"""

from __future__ import annotations

import math
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from tokenprism.backend.api.security import gate_model_name, token_ok
from tokenprism.backend.errors import UserError
from tokenprism.backend.jobs.worker import JobManager
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.models.variants import get_model
from tokenprism.backend.scoring.extras import parse_metrics
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store
from tokenprism.backend.store.store import SqlLimits

API = "/api/v1"


class ApiError(Exception):
    """An error with an HTTP status and a machine-readable code."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, "not_found", message)


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The one error body: ``{"error": {"code", "message", ...extra}}``."""
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message, **extra}}
    )


class Service:
    """What the routes share: settings, store, loaded models, the job manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.db_path, SqlLimits.from_settings(settings))
        self.model_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.jobs = JobManager(self.store, self.model, settings, self.model_lock)

    def model_name(self, requested: str | None) -> str:
        """Resolve and authorise a requested model name (the one gate, see api.security)."""
        return gate_model_name(requested or self.settings.default_model, self.settings)

    def model(self, name: str) -> LoadedModel:
        if self.settings.no_model:
            raise ApiError(
                409,
                "no_model",
                "this server runs with --no-model: only files with "
                "logprobs can be audited (source=logprobs)",
            )
        with self._load_lock:
            return get_model(name, self.settings)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(_service)]


def require_token(request: Request) -> None:
    """Refuse the request unless it carries the bearer token (when one is configured)."""
    token = request.app.state.service.settings.api_token
    if not token_ok(request.headers.get("authorization", ""), token):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")


def protected_router() -> APIRouter:
    """A router under ``/api/v1`` whose every route needs the bearer token."""
    return APIRouter(prefix=API, dependencies=[Depends(require_token)])


def metric_families(spec: str | list[str] | None) -> tuple[str, ...]:
    """:func:`parse_metrics`, with an unknown family answered as an invalid request (422)."""
    try:
        return parse_metrics(spec)
    except UserError as err:
        raise ApiError(422, "invalid_request", str(err)) from None


def jsonable(value: Any) -> Any:
    """A SQL result value as JSON: NaN/inf become null, other non-JSON types their text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)

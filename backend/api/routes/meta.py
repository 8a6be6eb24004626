"""Health (no token needed) and the metric catalogue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tokenprism.analysis.registry import list_metrics
from tokenprism.backend import __version__
from tokenprism.backend.api.security import public_health
from tokenprism.backend.api.service import API, ServiceDep, protected_router
from tokenprism.backend.models.loader import loaded_model_names

public = APIRouter(prefix=API)  # the one route a load balancer may probe without the token
router = protected_router()


@public.get("/health", summary="Service health (no token needed)")
def health(svc: ServiceDep, request: Request) -> dict[str, Any]:
    import torch

    full = {
        "status": "ok",
        "version": __version__,
        "default_model": svc.settings.default_model,
        "models_loaded": loaded_model_names(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "db": str(svc.store.path),
        "queue_length": svc.jobs.queue_length,
        "auth": bool(svc.settings.api_token),
    }
    return public_health(full, svc.settings, request.headers.get("authorization", ""))


@router.get("/metrics", summary="Every metric with level, unit and direction")
def metrics() -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "level": s.level,
            "unit": s.unit,
            "higher_means": s.higher_means,
            "description": s.description,
        }
        for s in list_metrics()
    ]

"""``/api/v1/runs/{id}/lens`` and ``/runs/{id}/attributions``: where a run's tokens came from.

Short runs and cheap attributions are answered in the request (under the model lock); longer
ones become jobs of kind ``lens`` (202 with a ``job_id``). Every request is bounded: run length
(``MAX_LENS_TOKENS``), positions per read, steps, span and input length
(:mod:`backend.lens.service`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tokenprism.backend.api.service import NotFound, Service, ServiceDep, protected_router
from tokenprism.backend.errors import UserError
from tokenprism.backend.lens import service as lens_service

router = protected_router()


class AttributionBody(BaseModel):
    """An attribution request for one target position (or span) of a run."""

    model_config = ConfigDict(extra="forbid")

    position: int = Field(..., ge=1, le=lens_service.MAX_ATTR_TOKENS)
    end: int | None = Field(None, ge=1, le=lens_service.MAX_ATTR_TOKENS)
    method: Literal["ig", "grad_x_input", "contrastive"] = "ig"
    foil: str | None = Field(None, max_length=200, description="foil token text (contrastive)")
    foil_token_id: int | None = Field(None, ge=0, le=2**31 - 1)
    steps: int = Field(32, ge=2, le=lens_service.MAX_STEPS)
    baseline: Literal["pad", "zero"] = "pad"
    rule: Literal["adaptive", "even"] = Field(
        "adaptive", description="IG points: where the integrand needs them, or equally spaced"
    )
    blocks: bool = Field(True, description="also direct logit attribution per block")


def _run(svc: Service, run_id: str) -> lens_service.RunTokens:
    try:
        return lens_service.run_tokens(svc.store, run_id)
    except UserError as err:
        raise NotFound(str(err)) from None


@router.get("/runs/{run_id}/lens", summary="The stored logit lens of a run (404 until computed)")
def get_lens(
    run_id: str,
    svc: ServiceDep,
    start: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=lens_service.MAX_READ_POSITIONS)] = 256,
) -> dict[str, Any]:
    _run(svc, run_id)
    data = lens_service.read_lens(svc.store, run_id, start=start, limit=limit)
    if data is None:
        raise NotFound(f"no lens for run {run_id!r} yet; POST to compute it")
    return data


@router.post(
    "/runs/{run_id}/lens",
    summary="Compute the logit lens of a run (in the request when short, else a job)",
    responses={202: {"description": "a job was queued"}},
)
def post_lens(run_id: str, svc: ServiceDep) -> Any:
    run = _run(svc, run_id)
    lens_service.check_lens(run)
    model = svc.model_name(run.model)
    if len(run.ids) > lens_service.SYNC_LENS_TOKENS:
        job_id = svc.jobs.submit("lens", {"action": "lens", "run_id": run_id, "model": model}, 1)
        return JSONResponse(status_code=202, content={"job_id": job_id})
    lm = svc.model(model)
    with svc.model_lock:
        return lens_service.compute_lens(lm, svc.store, run)


@router.post(
    "/runs/{run_id}/attributions",
    summary="Attribute a token or span to earlier tokens (in the request when cheap, else a job)",
    responses={202: {"description": "a job was queued"}},
)
def post_attribution(run_id: str, body: AttributionBody, svc: ServiceDep) -> Any:
    run = _run(svc, run_id)
    req = lens_service.AttributionRequest(**body.model_dump())
    lens_service.check_attribution(run, req)  # a bad request fails now, not in the job
    model = svc.model_name(run.model)
    work = (req.steps if req.method != "grad_x_input" else 1) * (req.end or req.position)
    if work > lens_service.SYNC_ATTR_WORK:
        params = {"action": "attribute", "run_id": run_id, "model": model, **body.model_dump()}
        job_id = svc.jobs.submit("lens", params, 1)
        return JSONResponse(status_code=202, content={"job_id": job_id})
    lm = svc.model(model)
    with svc.model_lock:
        return lens_service.compute_attribution(lm, svc.store, run, req)


@router.get("/runs/{run_id}/attributions", summary="Stored attributions of a run")
def get_attributions(
    run_id: str,
    svc: ServiceDep,
    position: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> dict[str, Any]:
    _run(svc, run_id)
    return {"attributions": lens_service.read_attributions(svc.store, run_id, position)}

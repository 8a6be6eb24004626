"""Runs: score one text, list, read, delete, and sample-then-score (``/generate``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import Response

from tokenprism.backend.api.schemas import GenerateRequest, RunRequest
from tokenprism.backend.api.security import gate_judge
from tokenprism.backend.api.service import (
    ApiError,
    NotFound,
    Service,
    ServiceDep,
    metric_families,
    protected_router,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.limits import cancel_scope
from tokenprism.backend.sampling.generation import sample_responses
from tokenprism.backend.scoring.encoding import encode_pair, encode_text
from tokenprism.backend.scoring.extras import extra_request, plan_extras
from tokenprism.backend.scoring.runner import score_one

router = protected_router()


@router.post("/runs", status_code=201, summary="Score one text and store it")
def create_run(body: RunRequest, svc: ServiceDep) -> dict[str, Any]:
    lm = svc.model(svc.model_name(body.model))
    if body.text is not None:
        enc = encode_text(lm.tokenizer, body.text, context_length=lm.context_length)
    else:
        assert body.prompt is not None and body.response is not None
        enc = encode_pair(
            lm.tokenizer,
            body.prompt,
            body.response,
            context_length=lm.context_length,
            template=body.template,
            system_prompt=body.system,
        )
    plan = None
    extras = metric_families(body.metrics)
    if extras:
        request = extra_request(
            extras,
            judge=gate_judge(body.judge, svc.settings),
            probe=body.probe,
            samples=body.samples,
            ccp_preset=body.ccp_preset,
        )
        plan = plan_extras(lm, request, svc.settings)
    elif body.judge or body.probe or body.ccp_preset:
        raise ApiError(422, "invalid_request", "'judge' / 'ccp_preset' / 'probe' need 'metrics'")
    with svc.model_lock:
        scored = score_one(lm, enc, extras=plan)
    run_id = svc.store.save_runs(lm, [scored])[0]
    return svc.store.get_run(run_id)


@router.get("/runs", summary="List runs (filters, pagination)")
def runs(
    svc: ServiceDep,
    model: str | None = None,
    upload_id: str | None = None,
    kind: str | None = None,
    q: Annotated[str | None, Query(description="text search", max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> dict[str, Any]:
    filters = {"model": model, "upload_id": upload_id, "kind": kind, "search": q}
    return {
        "runs": svc.store.list_runs(limit=limit, offset=offset, **filters),
        "total": svc.store.count_runs(**filters),
        "limit": limit,
        "offset": offset,
    }


def _run_or_404(svc: Service, run_id: str, metrics: list[str] | None = None) -> dict[str, Any]:
    try:
        return svc.store.get_run(run_id, metrics=metrics)
    except UserError:
        raise NotFound(f"no run with id {run_id!r}") from None


@router.get("/runs/{run_id}", summary="One run: tokens, sequence and layer metrics")
def run(run_id: str, svc: ServiceDep) -> dict[str, Any]:
    return _run_or_404(svc, run_id)


@router.get("/runs/{run_id}/tokens", summary="A run's tokens, optionally some metrics only")
def run_tokens(
    run_id: str,
    svc: ServiceDep,
    metrics: Annotated[str | None, Query(description="comma-separated metric names")] = None,
) -> Response:
    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    if not svc.store.run_exists(run_id):
        raise NotFound(f"no run with id {run_id!r}")
    # the store assembles the JSON itself: a 10k-token run would take seconds in Python
    body = svc.store.tokens_json(run_id, metrics=names)
    return Response(
        f'{{"run_id": {json.dumps(run_id)}, "tokens": {body}}}', media_type="application/json"
    )


@router.delete("/runs/{run_id}", status_code=204, summary="Delete a run and its rows")
def delete_run(run_id: str, svc: ServiceDep) -> Response:
    if not svc.store.delete_run(run_id):
        raise NotFound(f"no run with id {run_id!r}")
    return Response(status_code=204)


@router.post("/generate", summary="Sample responses, re-score each teacher-forced, store")
def generate(body: GenerateRequest, svc: ServiceDep) -> dict[str, Any]:
    lm = svc.model(svc.model_name(body.model))
    extras = metric_families(body.metrics)
    request = extra_request(extras, ccp_preset=body.ccp_preset)
    plan = plan_extras(lm, request, svc.settings) if extras else None
    with svc.model_lock, cancel_scope(svc.jobs.stopping):
        encoded = sample_responses(
            lm,
            body.prompt,
            system=body.system,
            n=body.n,
            max_new_tokens=body.max_new_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
        )
        from tokenprism.backend.scoring.runner import score_batch

        scored = score_batch(lm, encoded, extras=plan)
    run_ids = svc.store.save_runs(lm, scored)
    return {"runs": [svc.store.get_run(r) for r in run_ids]}

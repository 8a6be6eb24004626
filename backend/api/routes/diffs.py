"""Model diffs: ``POST /api/v1/diffs`` (a job, 202) and ``GET /api/v1/diffs/{id}``.

Both model names (A and B, variants included) go through the service's one model gate.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from tokenprism.backend.api.schemas import DiffBody
from tokenprism.backend.api.service import NotFound, ServiceDep, protected_router
from tokenprism.backend.diff.service import (
    check_source,
    diff_result,
    source_model,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.groups.core import json_safe
from tokenprism.backend.store.diffs import (
    DiffNotFound,
    create_diff,
    delete_diff,
    set_diff_job,
    upload_run_ids,
)
from tokenprism.backend.store.records import get_job

router = protected_router()


def _source(body: DiffBody) -> dict[str, Any]:
    """The body's one input as a checked source (``{"kind": text|run|upload, ...}``)."""
    if body.text is not None:
        return check_source({"kind": "text", "text": body.text})
    if body.run_id is not None:
        return check_source({"kind": "run", "run_id": body.run_id})
    return check_source({"kind": "upload", "upload_id": body.upload_id})


@router.post("/diffs", status_code=202, summary="Diff model B against A (a job)")
def create_diff_job(body: DiffBody, svc: ServiceDep) -> dict[str, Any]:
    source = _source(body)
    try:
        owner = source_model(svc.store, source)
    except UserError as err:
        raise NotFound(str(err)) from None
    if owner is not None and body.model is not None and svc.model_name(body.model) != owner:
        raise UserError(f"run {body.run_id} was scored by {owner!r}; 'model' must be that model")
    model_a = owner or svc.model_name(body.model)
    model_b = svc.model_name(body.against)
    total = 1
    if source["kind"] == "upload":
        total = len(upload_run_ids(svc.store, source["upload_id"], model_a))
        if not total:
            raise UserError(
                f"upload {source['upload_id']!r} has no runs scored by {model_a!r}; audit it first"
            )
    pending = {"revision": "pending (the job records it)"}
    diff_id = create_diff(
        svc.store,
        job_id=None,
        model_a={"model": model_a, **pending},
        model_b={"model": model_b, **pending},
        source=source,
        params={},
    )
    params = {"diff_id": diff_id, "model_a": model_a, "model_b": model_b, "source": source}
    try:
        job_id = svc.jobs.submit("diff", params, total)
    except Exception:  # a full queue (429): nothing stays stored
        delete_diff(svc.store, diff_id)
        raise
    set_diff_job(svc.store, diff_id, job_id)
    return {"diff_id": diff_id, "job_id": job_id, "status": "queued"}


@router.get("/diffs/{diff_id}", summary="A diff: models, summary, runs with per-token values")
def diff(
    diff_id: str,
    svc: ServiceDep,
    max_runs: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    tokens: bool = True,
) -> dict[str, Any]:
    try:
        result = diff_result(svc.store, diff_id, max_runs=max_runs, offset=offset, tokens=tokens)
    except DiffNotFound as err:
        raise NotFound(str(err)) from None
    job = get_job(svc.store, result["job_id"]) if result["job_id"] else None
    result["status"] = job["status"] if job else "done"
    result["error"] = job["error"] if job else None
    result["progress"] = {"done": job["done"], "total": job["total"]} if job else None
    return json_safe(result)

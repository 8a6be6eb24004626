"""``POST /api/v1/diffs`` (a job, 202) and ``GET /api/v1/diffs/{id}``: model diffs over HTTP.

Included by ``create_app`` with the token dependency; the service (store, jobs, model-name
authorisation) is read from ``request.app.state`` so this module does not import the app.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from tokenprism.backend.diff.service import (
    MAX_TEXT_CHARS,
    check_source,
    diff_result,
    json_safe,
    source_model,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.store.diffs import (
    DiffNotFound,
    create_diff,
    set_diff_job,
    upload_run_ids,
)
from tokenprism.backend.store.records import get_job

router = APIRouter(tags=["diffs"])


class DiffBody(BaseModel):
    """Diff model B against model A on one input: ``text``, ``run_id`` or ``upload_id``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, max_length=1000, description="model A (a run's own model for run_id; default)"
    )
    against: str = Field(
        ..., min_length=1, max_length=1000, description="model B, e.g. default@int8"
    )
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    run_id: str | None = Field(None, min_length=1, max_length=64)
    upload_id: str | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_input(self) -> DiffBody:
        if sum(x is not None for x in (self.text, self.run_id, self.upload_id)) != 1:
            raise ValueError("give exactly one of 'text', 'run_id', 'upload_id'")
        return self

    def source(self) -> dict[str, Any]:
        if self.text is not None:
            return check_source({"kind": "text", "text": self.text})
        if self.run_id is not None:
            return check_source({"kind": "run", "run_id": self.run_id})
        return check_source({"kind": "upload", "upload_id": self.upload_id})


@router.post("/diffs", status_code=202, summary="Diff model B against A (a job)")
def create(body: DiffBody, request: Request) -> dict[str, Any]:
    svc = request.app.state.service
    source = body.source()
    try:
        owner = source_model(svc.store, source)
    except UserError as err:
        raise HTTPException(404, str(err)) from None
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
    job_id = svc.jobs.submit("diff", params, total)
    set_diff_job(svc.store, diff_id, job_id)
    return {"diff_id": diff_id, "job_id": job_id, "status": "queued"}


@router.get("/diffs/{diff_id}", summary="A diff: models, summary, runs with per-token values")
def get(
    diff_id: str,
    request: Request,
    max_runs: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    tokens: bool = True,
) -> dict[str, Any]:
    svc = request.app.state.service
    try:
        result = diff_result(svc.store, diff_id, max_runs=max_runs, offset=offset, tokens=tokens)
    except DiffNotFound as err:
        raise HTTPException(404, str(err)) from None
    job = get_job(svc.store, result["job_id"]) if result["job_id"] else None
    result["status"] = job["status"] if job else "done"
    result["error"] = job["error"] if job else None
    result["progress"] = {"done": job["done"], "total": job["total"]} if job else None
    return json_safe(result)

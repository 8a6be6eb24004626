"""Groups of sampled responses: create (a job), list, read, rollouts and contrastive jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import JSONResponse

from tokenprism.backend.api.schemas import ContrastiveBody, GroupBody, RolloutBody
from tokenprism.backend.api.service import (
    NotFound,
    Service,
    ServiceDep,
    jsonable,
    protected_router,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.limits import check_prompts_fit

router = protected_router()


@router.get("/groups/prompts", summary="The shipped verifiable prompts")
def group_prompts() -> list[dict[str, str]]:
    from tokenprism.backend.groups.core import shipped_prompts

    return shipped_prompts()


@router.post("/groups", status_code=202, summary="Sample, verify and score a group (a job)")
def create_group(body: GroupBody, svc: ServiceDep) -> JSONResponse:
    from tokenprism.backend.groups.core import GroupRequest, check_request

    params = body.model_dump()
    model_name = svc.model_name(params.pop("model"))
    check_request(GroupRequest(**params))  # a bad verifier fails now, not in the job
    check_prompts_fit(svc.model(model_name), [body.prompt], body.max_new_tokens, system=body.system)
    job_id = svc.jobs.submit("group", {**params, "model": model_name}, 1000)
    return JSONResponse(status_code=202, content={"job_id": job_id})


@router.get("/groups", summary="Recent groups")
def groups(svc: ServiceDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    from tokenprism.backend.groups.core import list_groups

    return {"groups": list_groups(svc.store, limit)}


@router.get("/groups/{group_id}", summary="A group: responses, rewards, tokens, prefix tree")
def group(group_id: str, svc: ServiceDep) -> dict[str, Any]:
    from tokenprism.backend.groups.core import get_group

    try:
        return dict(jsonable(get_group(svc.store, group_id)))
    except UserError as err:
        raise NotFound(str(err)) from None


def _group_model(svc: Service, group_id: str) -> str:
    from tokenprism.backend.groups.core import get_group

    try:
        group = get_group(svc.store, group_id, tokens=False)
    except UserError as err:
        raise NotFound(str(err)) from None
    return svc.model_name(group["model"]["id"])


@router.post(
    "/groups/{group_id}/rollouts",
    status_code=202,
    summary="Critical token of an incorrect response by verified rollouts (a job)",
)
def group_rollouts(group_id: str, body: RolloutBody, svc: ServiceDep) -> JSONResponse:
    model_name = _group_model(svc, group_id)
    params = {**body.model_dump(), "group_id": group_id, "model": model_name}
    job_id = svc.jobs.submit("rollouts", params, 1000)
    return JSONResponse(status_code=202, content={"job_id": job_id})


@router.post(
    "/groups/{group_id}/contrastive",
    status_code=202,
    summary="Train cDPO positive / negative adapters and score p_CE (a job)",
)
def group_contrastive(group_id: str, body: ContrastiveBody, svc: ServiceDep) -> JSONResponse:
    model_name = _group_model(svc, group_id)
    params = {**body.model_dump(), "group_id": group_id, "model": model_name}
    job_id = svc.jobs.submit("contrastive", params, 1000)
    return JSONResponse(status_code=202, content={"job_id": job_id})

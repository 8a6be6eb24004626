"""The steering / decoding lab: experiments (jobs) and saved steering vectors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import JSONResponse

from tokenprism.backend.api.schemas import ExperimentBody, VectorBody
from tokenprism.backend.api.security import gate_experiment_models
from tokenprism.backend.api.service import (
    ApiError,
    NotFound,
    ServiceDep,
    jsonable,
    protected_router,
)
from tokenprism.backend.errors import UserError

router = protected_router()


@router.get("/experiments/prompts", summary="The shipped refusal prompt set")
def experiment_prompts() -> list[dict[str, Any]]:
    from tokenprism.backend.lab.experiments import shipped_refusal_prompts

    return shipped_refusal_prompts()


@router.post("/experiments", status_code=202, summary="Start a steering / decoding experiment")
def create_experiment(body: ExperimentBody, svc: ServiceDep) -> JSONResponse:
    from tokenprism.backend.lab.jobs import check_experiment, check_experiment_fits

    spec = check_experiment(body.kind, body.params)  # bad parameters fail now, not in the job
    model_name = svc.model_name(body.model)
    check_experiment_fits(svc.model(model_name), body.kind, spec)
    gated = gate_experiment_models(body.kind, body.params, svc.settings)
    params = {"kind": body.kind, "params": gated, "model": model_name}
    job_id = svc.jobs.submit("experiment", params, 1000)
    return JSONResponse(status_code=202, content={"job_id": job_id})


@router.get("/experiments", summary="Recent experiments")
def experiments(svc: ServiceDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    from tokenprism.backend.lab.experiments import list_experiments

    return {"experiments": list_experiments(svc.store, limit)}


@router.get("/experiments/{experiment_id}", summary="An experiment: parameters, curves, runs")
def experiment(experiment_id: str, svc: ServiceDep) -> dict[str, Any]:
    from tokenprism.backend.lab.experiments import get_experiment

    try:
        return dict(jsonable(get_experiment(svc.store, experiment_id)))
    except UserError as err:
        raise NotFound(str(err)) from None


@router.get("/vectors", summary="Saved steering vectors")
def vectors(svc: ServiceDep) -> list[dict[str, Any]]:
    from tokenprism.backend.lab.steering import list_vectors

    return [v.summary() for v in list_vectors(svc.settings)]


@router.post("/vectors", status_code=201, summary="Compute and save a steering vector")
def create_vector(body: VectorBody, svc: ServiceDep) -> dict[str, Any]:
    from tokenprism.analysis.steering import SteeringVectorParams
    from tokenprism.backend.lab.steering import caa_vector, east_vector, save_vector

    lm = svc.model(svc.model_name(body.model))
    n_layers = int(lm.model.config.num_hidden_layers)
    layer = n_layers // 2 if body.layer is None else body.layer
    if layer >= n_layers:
        raise ApiError(422, "invalid_request", f"layer must be in 0..{n_layers - 1}")
    if body.normalize not in ("none", "unit", "mean_norm"):
        raise ApiError(422, "invalid_request", "normalize must be none, unit or mean_norm")
    with svc.model_lock:
        if body.kind == "east":
            params = SteeringVectorParams(center=body.center, normalize=body.normalize)  # type: ignore[arg-type]
            vec = east_vector(lm, body.prompts, layer, params, name=body.name)
        elif body.kind == "caa":
            vec = caa_vector(
                lm,
                body.prompts,
                body.negative_prompts,
                layer,
                normalize=body.normalize,
                name=body.name,
            )
        else:
            raise ApiError(422, "invalid_request", "kind must be east or caa")
    save_vector(vec, svc.settings)
    return vec.summary()

"""Hallucination probes: list, read, train (a job) and apply to a stored run."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any

from fastapi import File, Form, UploadFile
from fastapi.responses import JSONResponse

from tokenprism.backend.api.schemas import ApplyProbeRequest
from tokenprism.backend.api.security import check_probe_training, gate_judge
from tokenprism.backend.api.service import ApiError, ServiceDep, protected_router
from tokenprism.backend.audit.ingest import decode_text
from tokenprism.backend.errors import UserError
from tokenprism.backend.probes.apply import apply_probe_to_run
from tokenprism.backend.probes.storage import check_probe_name, list_probes, load_probe
from tokenprism.backend.store.records import create_upload, set_upload_job

router = protected_router()


@router.get("/probes", summary="Hallucination probes (shipped and trained)")
def probes(svc: ServiceDep) -> list[dict[str, Any]]:
    return [p.summary() for p in list_probes(svc.settings)]


@router.get("/probes/{name}", summary="A probe's configuration and evaluation report")
def probe(name: str, svc: ServiceDep) -> dict[str, Any]:
    try:
        stored = load_probe(name, svc.settings)
    except UserError as err:
        raise ApiError(404, "not_found", str(err)) from None
    return {**stored.summary(), "config": stored.config, "report": stored.report}


@router.post("/probes", status_code=202, summary="Train a probe on span-labelled JSONL (a job)")
def train_probe(
    svc: ServiceDep,
    file: Annotated[UploadFile, File(description="span-labelled JSONL")],
    name: Annotated[str, Form(description="probe name")],
    model: Annotated[str | None, Form()] = None,
    layer: Annotated[str | None, Form(description="block index or 'auto'")] = None,
    epochs: Annotated[int, Form(ge=1, le=500)] = 20,
    lr: Annotated[float, Form(gt=0, le=1)] = 1e-3,
    test_fraction: Annotated[float, Form(gt=0, lt=1)] = 0.3,
    ccp: Annotated[bool, Form(description="evaluate CCP as a baseline")] = True,
    judge: Annotated[str | None, Form(description="CCP judge")] = None,
) -> JSONResponse:
    from tokenprism.backend.probes.training import encode_labelled, parse_labelled

    check_probe_name(name)
    limit = svc.settings.upload_max_bytes
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"the file is over the upload limit of {limit} bytes")
    filename = Path(file.filename or "labelled.jsonl").name
    text = decode_text(data, filename)
    items = parse_labelled(text, filename)  # validated whole before anything is stored
    check_probe_training(name, len(items), svc.settings)
    judge = gate_judge(judge, svc.settings)
    chosen: int | str | None = None
    if layer not in (None, ""):
        if layer == "auto":
            chosen = "auto"
        elif layer.lstrip("-").isdigit():
            chosen = int(layer)
        else:
            raise ApiError(422, "invalid_request", "layer must be a block index or 'auto'")
    model_name = svc.model_name(model)
    lm = svc.model(model_name)
    encode_labelled(lm, items, filename)
    n_layers = int(lm.model.config.num_hidden_layers)
    if isinstance(chosen, int) and not 0 <= chosen < n_layers:
        raise ApiError(422, "invalid_request", f"layer must be in 0..{n_layers - 1}")
    upload_id = create_upload(
        svc.store,
        filename=filename,
        sha256=hashlib.sha256(data).hexdigest(),
        format="labelled-jsonl",
        size_bytes=len(data),
        n_items=len(items),
        content=text,
        model=model_name,
    )
    params = {
        "upload_id": upload_id,
        "model": model_name,
        "name": name,
        "layer": chosen,
        "epochs": epochs,
        "lr": lr,
        "test_fraction": test_fraction,
        "ccp": ccp,
        "judge": judge,
    }
    job_id = svc.jobs.submit("probe_train", params, 1000)
    set_upload_job(svc.store, upload_id, job_id)
    return JSONResponse(
        status_code=202,
        content={"job_id": job_id, "upload_id": upload_id, "n_items": len(items)},
    )


@router.post("/runs/{run_id}/probe", summary="Apply a stored probe to a stored run")
def apply_probe(run_id: str, body: ApplyProbeRequest, svc: ServiceDep) -> dict[str, Any]:
    if not svc.store.run_exists(run_id):
        raise ApiError(404, "not_found", f"no run with id {run_id!r}")
    with svc.model_lock:
        summary = apply_probe_to_run(svc.store, run_id, body.probe, svc.settings)
    return {**summary, "run": svc.store.get_run(run_id)}

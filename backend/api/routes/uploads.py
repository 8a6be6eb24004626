"""Uploads: a transcript to audit (a job), the list, one upload's summary and its exports."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from tokenprism.backend.api.schemas import CCP_PRESET_HELP, AddMetricsRequest, CcpPreset
from tokenprism.backend.api.security import check_engine_allowed, gate_judge
from tokenprism.backend.api.service import (
    ApiError,
    NotFound,
    ServiceDep,
    metric_families,
    protected_router,
)
from tokenprism.backend.audit.duplicates import DuplicateUpload, refuse_duplicate
from tokenprism.backend.audit.ingest import decode_text, detect_format, parse_with_report
from tokenprism.backend.audit.logprob_jobs import choose_source
from tokenprism.backend.audit.logprob_upload import submit_logprob_upload
from tokenprism.backend.audit.upload import (
    DEFAULT_TOKEN_METRIC,
    DEFAULT_TURN_METRIC,
    audit_summary,
    encode_items,
    export_upload,
)
from tokenprism.backend.enrich.add import FamilyUnavailable
from tokenprism.backend.enrich.jobs import JOB_KIND, UploadNotReady, prepare, unfinished_job
from tokenprism.backend.scoring.extras import extra_request, plan_extras
from tokenprism.backend.store.records import (
    create_upload,
    get_upload,
    list_uploads,
    set_upload_job,
)

router = protected_router()


def _read_upload(file: UploadFile, limit: int) -> tuple[bytes, str, str]:
    """The file's bytes (at most ``limit``: 413 beyond), its bare name and its text."""
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"the file is over the upload limit of {limit} bytes")
    name = Path(file.filename or "upload").name
    if not data.strip():
        raise ApiError(422, "empty_file", f"{name} is empty")
    return data, name, decode_text(data, name)


@contextmanager
def _duplicate_as_409() -> Iterator[None]:
    """A file uploaded before: 409 with the earlier upload's id, links and the add-metrics hint."""
    try:
        yield
    except DuplicateUpload as dup:
        raise ApiError(409, "duplicate_upload", str(dup), **dup.details) from None


def _extras(
    svc: Any, lm: Any, metrics: str | None, ccp_preset: str | None, judge: str | None
) -> dict[str, Any] | None:
    """The extra metric families of a local audit, checked now: a missing probe or judge fails
    before anything is stored."""
    extras = metric_families(metrics)
    if judge and "ccp" not in extras:
        raise ApiError(422, "invalid_request", "'judge' needs metrics=ccp")
    if not extras:
        return None
    request = extra_request(extras, ccp_preset=ccp_preset, judge=judge)
    plan_extras(lm, request, svc.settings)
    return request.as_dict()


@router.post("/uploads", status_code=202, summary="Upload a transcript to audit (a job)")
def upload(
    svc: ServiceDep,
    file: Annotated[UploadFile, File(description="JSON array, JSONL, CSV or plain text")],
    model: Annotated[str | None, Form()] = None,
    format: Annotated[str | None, Form(description="json, jsonl, csv or text")] = None,
    metrics: Annotated[
        str | None, Form(description="extra metric families, e.g. ccp,probe")
    ] = None,
    ccp_preset: Annotated[CcpPreset | None, Form(description=CCP_PRESET_HELP)] = None,
    judge: Annotated[str | None, Form(description="CCP judge: fallback or an NLI model")] = None,
    engine: Annotated[
        Literal["local", "ray"],
        Form(description="local (the server's model) or ray (TOKENPRISM_RAY_ADDRESS)"),
    ] = "local",
    shard_items: Annotated[
        int, Form(ge=1, le=100_000, description="items per Ray shard (engine=ray)")
    ] = 64,
    skip_invalid: Annotated[
        bool, Form(description="audit the valid conversations; list the invalid ones")
    ] = False,
    source: Annotated[
        Literal["logprobs", "model", "both"] | None,
        Form(description="for files with API logprobs: logprobs (default), model or both"),
    ] = None,
    batch_input: Annotated[
        UploadFile | None, File(description="Batch API input file joined by custom_id")
    ] = None,
    vocab_size: Annotated[
        int | None, Form(ge=1, le=10_000_000, description="V for entropy_upper (logprobs)")
    ] = None,
) -> JSONResponse:
    check_engine_allowed(engine, svc.settings)
    if engine == "ray":
        from tokenprism.backend.audit.ray_engine import check_engine

        check_engine(engine)  # Ray missing: refused now, not when the job runs
    limit = svc.settings.upload_max_bytes
    data, name, text = _read_upload(file, limit)
    logprob_source = choose_source(text, source)  # API logprobs: backend.audit.logprob_upload
    judge = gate_judge(judge, svc.settings)
    metric_families(metrics)  # an unknown family is a 422 on every path
    if logprob_source is not None or batch_input is not None:
        batch = (
            decode_text(batch_input.file.read(limit + 1)[:limit], "batch_input")
            if batch_input
            else None
        )
        with _duplicate_as_409():
            status, body = submit_logprob_upload(
                svc,
                name=name,
                data=data,
                text=text,
                source=logprob_source or "logprobs",
                batch_input=batch,
                vocab_size=vocab_size,
                model=model,
                extras=(metrics, judge, ccp_preset),
            )
        return JSONResponse(status_code=status, content=body)
    fmt = format or detect_format(name, text)
    items, report = parse_with_report(
        text, fmt, name, max_items=svc.settings.upload_max_items, skip_invalid=skip_invalid
    )
    model_name = svc.model_name(model)
    lm = svc.model(model_name)
    encode_items(lm, items, name)  # too-long or empty turns fail now, before any write
    job_params: dict[str, Any] = {"model": model_name, "engine": engine}
    if engine == "ray":
        job_params["ray"] = {"shard_items": shard_items}
    extras = _extras(svc, lm, metrics, ccp_preset, judge)
    if extras:
        job_params["extras"] = extras
    digest = hashlib.sha256(data).hexdigest()
    with _duplicate_as_409():
        refuse_duplicate(svc.store, digest, model_name)
    upload_id = create_upload(
        svc.store,
        filename=name,
        sha256=digest,
        format=fmt,
        size_bytes=len(data),
        n_items=len(items),
        content=text,
        model=model_name,
    )
    job_id = svc.jobs.submit("audit", {"upload_id": upload_id, **job_params}, len(items))
    set_upload_job(svc.store, upload_id, job_id)
    return JSONResponse(
        status_code=202,
        content={
            "upload_id": upload_id,
            "job_id": job_id,
            "duplicate": False,
            "n_items": len(items),
            "format": fmt,
            "ingest": report.as_dict(),
        },
    )


@router.get("/uploads", summary="List uploads")
def uploads(
    svc: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> dict[str, Any]:
    return {"uploads": list_uploads(svc.store, limit=limit, offset=offset)}


@router.get("/uploads/{upload_id}", summary="Upload, its job and the audit summary")
def upload_summary(
    upload_id: str,
    svc: ServiceDep,
    metric: str = DEFAULT_TURN_METRIC,
    token_metric: str = DEFAULT_TOKEN_METRIC,
    top: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    upload = get_upload(svc.store, upload_id)
    if upload is None:
        raise NotFound(f"no upload with id {upload_id!r}")
    summary = audit_summary(svc.store, upload_id, metric=metric, token_metric=token_metric, top=top)
    summary["job"] = svc.jobs.status(upload["job_id"]) if upload["job_id"] else None
    return summary


@router.get("/uploads/{upload_id}/export", summary="CSV, Parquet or HTML report")
def upload_export(
    upload_id: str,
    svc: ServiceDep,
    format: Annotated[str, Query(pattern="^(csv|parquet|html)$")] = "html",
    metric: str = DEFAULT_TURN_METRIC,
    token_metric: str = DEFAULT_TOKEN_METRIC,
) -> Response:
    if get_upload(svc.store, upload_id) is None:
        raise NotFound(f"no upload with id {upload_id!r}")
    content, media, filename = export_upload(
        svc.store,
        upload_id,
        format,
        metric=metric,
        token_metric=token_metric,
        max_turns=svc.settings.export_max_runs,
    )
    return Response(
        content,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post(
    "/uploads/{upload_id}/metrics",
    status_code=202,
    summary="Add CCP / probe / SAR / SelfCheck to an upload's stored turns (a job)",
)
def add_upload_metrics(upload_id: str, body: AddMetricsRequest, svc: ServiceDep) -> JSONResponse:
    """The base metrics are not re-scored: only the families' rows are added (backend.enrich).

    202 with the job; 200 with ``job_id`` null when every turn has the families already, or
    with the job already adding them.
    """
    upload = get_upload(svc.store, upload_id)
    if upload is None:
        raise NotFound(f"no upload with id {upload_id!r}")
    families = metric_families(body.metrics)
    try:
        prepared = prepare(
            svc.store,
            svc.settings,
            upload,
            families,
            svc.model,
            ccp_preset=body.ccp_preset,
            probe=body.probe,
            run_ids=body.run_ids,
        )
    except FamilyUnavailable as err:
        raise ApiError(422, "family_unavailable", str(err)) from None
    except UploadNotReady as err:
        raise ApiError(409, "upload_not_ready", str(err)) from None
    reply: dict[str, Any] = {
        "upload_id": upload_id,
        "metrics": list(families),
        "turns": len(prepared.run_ids),
        "to_add": len(prepared.todo),
        "already_present": prepared.already(),
    }
    if not prepared.todo:
        names = ", ".join(families)
        message = f"every chosen turn of upload {upload_id} has {names} already; nothing added"
        return JSONResponse(status_code=200, content={**reply, "job_id": None, "message": message})
    running = unfinished_job(svc.store, prepared)
    if running is not None:
        message = f"job {running} is adding these metrics already; nothing new was queued"
        return JSONResponse(
            status_code=200, content={**reply, "job_id": running, "message": message}
        )
    job_id = svc.jobs.submit(JOB_KIND, prepared.params, len(prepared.run_ids))
    return JSONResponse(status_code=202, content={**reply, "job_id": job_id})

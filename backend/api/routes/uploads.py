"""Uploads: a transcript to audit (a job), the list, one upload's summary and its exports."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from tokenprism.backend.api.schemas import CCP_PRESET_HELP, CcpPreset
from tokenprism.backend.api.security import check_engine_allowed
from tokenprism.backend.api.service import (
    ApiError,
    NotFound,
    ServiceDep,
    metric_families,
    protected_router,
)
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
from tokenprism.backend.scoring.extras import extra_request, plan_extras
from tokenprism.backend.store.records import (
    create_upload,
    find_upload,
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


def _duplicate(existing: dict[str, Any]) -> JSONResponse:
    """200 with the earlier upload: the same file for the same model is never re-scored."""
    return JSONResponse(
        status_code=200,
        content={
            "upload_id": existing["upload_id"],
            "job_id": existing["job_id"],
            "duplicate": True,
            "n_items": existing["n_items"],
            "format": existing["format"],
            "message": f"this file was already uploaded on {existing['created_at']} "
            f"as {existing['upload_id']} ({existing['filename']}); nothing was re-scored",
        },
    )


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
    if logprob_source is not None or batch_input is not None:
        batch = (
            decode_text(batch_input.file.read(limit + 1)[:limit], "batch_input")
            if batch_input
            else None
        )
        status, body = submit_logprob_upload(
            svc,
            name=name,
            data=data,
            text=text,
            source=logprob_source or "logprobs",
            batch_input=batch,
            vocab_size=vocab_size,
            model=model,
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
    extras = metric_families(metrics)
    if extras:
        request = extra_request(extras, ccp_preset=ccp_preset)
        plan_extras(lm, request, svc.settings)  # a missing probe or judge fails now
        job_params["extras"] = request.as_dict()
    digest = hashlib.sha256(data).hexdigest()
    existing = find_upload(svc.store, digest, model_name)
    if existing is not None:
        return _duplicate(existing)
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

"""``tokenprism audit``: score every assistant turn of a transcript file, resumably."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import typer

from tokenprism.backend.cli.audit_logprobs import audit_logprobs
from tokenprism.backend.cli.common import (
    CcpPresetOpt,
    JudgeOpt,
    MetricsOpt,
    ModelOpt,
    ProbeOpt,
    SamplesOpt,
    err,
    extras_plan,
    load_model,
    load_settings,
    open_store,
    out,
)
from tokenprism.backend.cli.layers import LayersOpt, scoring_params
from tokenprism.backend.errors import UserError


class AuditJob(NamedTuple):
    """An audit ready to score: model, parsed turns, their upload and job, the extras plan."""

    lm: Any
    items: list[Any]
    upload_id: str
    job_id: str
    plan: Any


def audit(
    file: Path,
    model: str | None = ModelOpt,
    export: Path | None = typer.Option(
        None, "--export", help="also write report.html, tokens.csv or tokens.parquet"
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="json, jsonl, csv or text (default: guess)"
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="audit the valid conversations, list the invalid ones"
    ),
    metric: str = typer.Option("mean_entropy", help="sequence metric that ranks turns in exports"),
    rank_by: str = typer.Option("entropy", help="token metric that ranks the uncertain tokens"),
    top: int = typer.Option(5, help="uncertain tokens to list per turn"),
    metrics: str | None = MetricsOpt,
    judge: str | None = JudgeOpt,
    ccp_preset: str | None = CcpPresetOpt,
    probe: str | None = ProbeOpt,
    samples: int = SamplesOpt,
    engine: str = typer.Option(
        "local", "--engine", help="local (this process) or ray (a Ray cluster; needs [distributed])"
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="Ray cluster to use (default: TOKENPRISM_RAY_ADDRESS or a local one)",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Ray actors, one model copy each (default: one per slot)"
    ),
    shard_items: int = typer.Option(
        64, "--shard-items", min=1, help="items per Ray shard (the unit of storage and resume)"
    ),
    gpus_per_worker: float = typer.Option(
        0.0, "--gpus-per-worker", min=0.0, help="GPUs each Ray actor reserves (1 on GPU nodes)"
    ),
    resume: str | None = typer.Option(
        None, "--resume", help="job id of an interrupted audit of FILE: score only what is left"
    ),
    summary: bool = typer.Option(
        True, "--summary/--no-summary", help="print each turn's summary when done"
    ),
    layers: str = LayersOpt,
    source: str | None = typer.Option(
        None, "--source", help="files with API logprobs: logprobs (default; no model), model, both"
    ),
    batch_input: Path | None = typer.Option(
        None, "--batch-input", help="Batch API input file, joined with FILE by custom_id"
    ),
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", min=1, help="V for entropy_upper (default: from the model name)"
    ),
) -> None:
    """Score every assistant turn of a transcript, summarise each turn, optionally export."""
    ray_options = _check_options(export, engine, address, workers, shard_items, gpus_per_worker)
    data = file.read_bytes() if file.is_file() else None
    if data is None:
        raise UserError(f"no such file: {file}")
    store = open_store()
    with store:
        extra = (batch_input, vocab_size, export)
        if not resume and audit_logprobs(store, file, data, source, model, extra):
            return
        if resume:
            job = _resume_audit(store, resume, data, model)
        else:
            job = _new_audit(
                store, file, data, fmt, model, metrics, judge, probe, samples, engine, ray_options,
                skip_invalid, ccp_preset,
            )  # fmt: skip
        result = _score(store, job, str(file), engine, ray_options, layers)
        if summary:
            _print_turns(store, job, rank_by=rank_by, top=top)
        if export is not None:
            _export(store, job.upload_id, export, metric=metric, token_metric=rank_by)
        _print_ingest(store, job.upload_id)
    if engine == "ray":
        err.print(
            f"ray: {len(result['scored'])} shards scored, {len(result['from_disk'])} read back "
            f"from disk, {len(result['skipped'])} already stored; Parquet shards in "
            f"{result['shard_dir']}"
        )
    err.print(f"upload {job.upload_id}, job {job.job_id}: {len(job.items)} turns stored")


def _check_options(
    export: Path | None,
    engine: str,
    address: str | None,
    workers: int | None,
    shard_items: int,
    gpus_per_worker: float,
) -> dict[str, Any]:
    """Refuse inconsistent options before anything is read or loaded; the Ray options."""
    if export is not None and export.suffix.lstrip(".") not in ("html", "csv", "parquet"):
        raise UserError("--export needs a .html, .csv or .parquet file name")
    if engine not in ("local", "ray"):
        raise UserError(f"unknown engine {engine!r}; choose local or ray")
    if engine == "ray":
        from tokenprism.backend.audit.ray_engine import check_engine

        check_engine(engine)
    elif address or workers or gpus_per_worker:
        raise UserError("--address, --workers and --gpus-per-worker need --engine ray")
    ray_options: dict[str, Any] = {"shard_items": shard_items, "gpus_per_worker": gpus_per_worker}
    if address:
        ray_options["address"] = address
    if workers:
        ray_options["workers"] = workers
    return ray_options


def _score(
    store: Any,
    job: AuditJob,
    source: str,
    engine: str,
    ray_options: dict[str, Any],
    layers: str = "final",
) -> dict[str, Any]:
    """Score the job's items with a progress bar; a failure marks the job resumable."""
    from tqdm import tqdm

    from tokenprism.backend.audit.upload import score_upload
    from tokenprism.backend.store.records import update_job

    update_job(store, job.job_id, status="running", error=None)
    with tqdm(total=len(job.items), desc="scoring turns", unit="turn", file=sys.stderr) as bar:

        def progress(done: int) -> None:
            bar.update(done - bar.n)

        try:
            result: dict[str, Any] = score_upload(
                job.lm,
                store,
                job.items,
                settings=load_settings(),
                source=source,
                upload_id=job.upload_id,
                job_id=job.job_id,
                engine=engine,
                ray_options=ray_options,
                extras=job.plan,
                on_progress=progress,
                params=scoring_params(layers),
            )
        except BaseException as e:
            update_job(store, job.job_id, status="failed", error=str(e) or type(e).__name__)
            err.print(f"job {job.job_id} stopped; continue it with --resume {job.job_id}")
            raise
    update_job(store, job.job_id, status="done", done=len(job.items), result=result)
    return result


def _print_turns(store: Any, job: AuditJob, *, rank_by: str, top: int) -> None:
    """Each turn's summary, in the transcript's order."""
    from tokenprism.backend.audit.upload import summarise_turn

    by_item = {
        r["item_index"]: r["run_id"]
        for r in store.list_runs(upload_id=job.upload_id, limit=len(job.items) + 1)
    }
    for item in job.items:
        run = store.get_run(by_item[item.index])
        summarise_turn(out, item, run, rank_by=rank_by, top=top)


def _export(store: Any, upload_id: str, export: Path, *, metric: str, token_metric: str) -> None:
    """Write the upload as the report or table ``export``'s suffix names."""
    from tokenprism.backend.audit.upload import export_upload

    content, _, _ = export_upload(
        store, upload_id, export.suffix.lstrip("."), metric=metric, token_metric=token_metric
    )
    export.write_bytes(content)
    err.print(f"wrote {export} ({len(content):,} bytes)")


def _print_ingest(store: Any, upload_id: str) -> None:
    """What the upload held: conversations, turns scored / skipped / truncated, renderings."""
    from tokenprism.backend.audit.upload import ingest_lines, upload_ingest_summary

    for line in ingest_lines(upload_ingest_summary(store, upload_id)):
        err.print(line, markup=False, highlight=False)


def _new_audit(
    store: Any,
    file: Path,
    data: bytes,
    fmt: str | None,
    model: str | None,
    metrics: str | None,
    judge: str | None,
    probe: str | None,
    samples: int,
    engine: str,
    ray_options: dict[str, Any],
    skip_invalid: bool = False,
    ccp_preset: str | None = None,
) -> AuditJob:
    """Parse and validate ``file``, record its upload and a new audit job."""
    import hashlib

    from tokenprism.backend.audit.ingest import decode_text, detect_format, parse_transcript
    from tokenprism.backend.store.records import create_job, create_upload, set_upload_job

    text = decode_text(data, str(file))
    fmt = fmt or detect_format(file.name, text)
    items = parse_transcript(text, fmt, str(file), skip_invalid=skip_invalid)
    lm = load_model(model)
    plan = extras_plan(lm, metrics, judge, probe, samples, ccp_preset)
    upload_id = create_upload(
        store,
        filename=file.name,
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        size_bytes=len(data),
        n_items=len(items),
        content=text,
        model=lm.name,
    )
    params: dict[str, Any] = {"upload_id": upload_id, "model": lm.name, "engine": engine}
    if engine == "ray":
        params["ray"] = ray_options
    if plan is not None:
        params["extras"] = plan.request.as_dict()
    job_id = create_job(store, "audit", params, len(items))
    set_upload_job(store, upload_id, job_id)
    return AuditJob(lm, items, upload_id, job_id, plan)


def _resume_audit(store: Any, job_id: str, data: bytes, model: str | None) -> AuditJob:
    """The upload, items, model and extras of an unfinished audit job of the same file."""
    import hashlib

    from tokenprism.backend.audit.upload import upload_items
    from tokenprism.backend.jobs.worker import RESUMABLE
    from tokenprism.backend.store.records import get_job

    job = get_job(store, job_id)
    if job is None or job["kind"] != "audit":
        raise UserError(f"no audit job with id {job_id!r}")
    if job["status"] not in (*RESUMABLE, "running"):
        raise UserError(f"job {job_id} is {job['status']}; only unfinished jobs resume")
    params = job["params"]
    if model and model != params["model"]:
        raise UserError(f"job {job_id} scores with {params['model']!r}, not {model!r}")
    upload, items = upload_items(store, params["upload_id"])
    if upload["sha256"] != hashlib.sha256(data).hexdigest():
        raise UserError(f"job {job_id} audits {upload['filename']}, not this file's content")
    lm = load_model(params["model"])
    plan = None
    if params.get("extras"):
        from tokenprism.backend.scoring.extras import plan_extras, request_from_dict

        plan = plan_extras(lm, request_from_dict(params["extras"]), load_settings())
    return AuditJob(lm, items, upload["upload_id"], job_id, plan)

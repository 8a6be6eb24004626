"""The ``tokenprism`` command line.

Every user-facing failure is a :class:`~backend.errors.UserError`: one line on stderr, exit
status 2, no traceback (``TOKENPRISM_DEBUG=1`` shows tracebacks of unexpected errors).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tokenprism.backend.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="TokenPrism: token-level analysis of language-model outputs.",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = typer.Option(
    None, "--model", "-m", help="'default', a Hugging Face id, a local directory or a .gguf file"
)


def _settings() -> Any:
    from tokenprism.backend.settings import get_settings

    return get_settings()


def _open_store() -> Any:
    from tokenprism.backend.store import Store

    return Store(_settings().db_path)


MetricsOpt = typer.Option(
    None,
    "--metrics",
    help="extra metric families, comma-separated: ccp, probe, sar, selfcheck (or all)",
)
JudgeOpt = typer.Option(
    None, "--judge", help="CCP judge: 'fallback' or an NLI model id / path (default: setting)"
)
ProbeOpt = typer.Option(None, "--probe", help="probe name (default: newest for the model)")
SamplesOpt = typer.Option(5, "--samples", help="responses sampled for selfcheck / sentence SAR")


def _extras(
    lm: Any, metrics: str | None, judge: str | None, probe: str | None, samples: int
) -> Any:
    """Resolve --metrics and friends into an ExtraPlan (None when no extras were asked for)."""
    from tokenprism.backend.scoring.extras import ExtraRequest, parse_metrics, plan_extras

    names = parse_metrics(metrics)
    if not names:
        if judge or probe:
            raise UserError("--judge / --probe need --metrics ccp / probe")
        return None
    request = ExtraRequest(metrics=names, judge=judge, probe=probe, samples=samples)
    return plan_extras(lm, request, _settings())


def _load(model: str | None) -> Any:
    from tokenprism.backend.models.variants import get_model

    settings = _settings()
    return get_model(model or settings.default_model, settings)


@app.command()
def prepare(model: str | None = ModelOpt) -> None:
    """Convert / load a model once so later commands start fast (the default GGUF is cached)."""
    began = time.perf_counter()
    lm = _load(model)
    err.print(
        f"ready: {lm.label} on {lm.device} ({lm.provenance()['dtype']}, "
        f"autocast {lm.provenance()['autocast']}), "
        f"context {lm.context_length} tokens, revision {lm.revision[:23]} "
        f"[{time.perf_counter() - began:.1f}s]"
    )


@app.command()
def score(
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="user prompt"),
    response: str | None = typer.Option(None, "--response", "-r", help="response to score"),
    text: str | None = typer.Option(None, "--text", "-t", help="raw text, scored exactly as given"),
    file: Path | None = typer.Option(None, "--file", "-f", help="UTF-8 file of raw text to score"),
    model: str | None = ModelOpt,
    no_template: bool = typer.Option(
        False, "--no-template", help="do not apply the chat template to --prompt/--response"
    ),
    system: str | None = typer.Option(None, "--system", help="system prompt (chat template)"),
    as_json: bool = typer.Option(False, "--json", help="print the run as JSON"),
    metrics: str | None = MetricsOpt,
    judge: str | None = JudgeOpt,
    probe: str | None = ProbeOpt,
    samples: int = SamplesOpt,
) -> None:
    """Score one text in a single forward pass, store it and show the per-token metrics.

    ``--metrics ccp,probe,sar,selfcheck`` adds the uncertainty / hallucination family.
    """
    from tokenprism.backend.audit.ingest import read_text_file
    from tokenprism.backend.scoring.encoding import encode_pair, encode_text
    from tokenprism.backend.scoring.runner import score_one

    given = [x is not None for x in (text, file)] + [prompt is not None or response is not None]
    if sum(given) != 1:
        raise UserError("give exactly one of --prompt/--response, --text or --file")
    if (prompt is None) != (response is None):
        raise UserError("--prompt and --response go together")
    store = _open_store()  # before loading the model: a locked database fails fast
    lm = _load(model)
    if text is not None or file is not None:
        raw = text if text is not None else read_text_file(file)  # type: ignore[arg-type]
        enc = encode_text(lm.tokenizer, raw, context_length=lm.context_length)
    else:
        assert prompt is not None and response is not None
        enc = encode_pair(
            lm.tokenizer,
            prompt,
            response,
            context_length=lm.context_length,
            template=not no_template,
            system_prompt=system,
        )
    plan = _extras(lm, metrics, judge, probe, samples)
    scored = score_one(lm, enc, extras=plan)
    with store:
        run_id = store.save_runs(lm, [scored])[0]
        run = store.get_run(run_id)
    _emit_run(run, as_json)


def _emit_run(run: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(run, ensure_ascii=False) + "\n")
    else:
        from tokenprism.backend.cli.render import print_run

        print_run(out, run)


@app.command()
def runs(
    limit: int = typer.Option(20, help="how many runs to list"),
    model: str | None = typer.Option(None, help="only runs of this model name"),
    search: str | None = typer.Option(None, help="only runs whose text contains this"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List stored runs, newest first."""
    with _open_store() as store:
        rows = store.list_runs(limit=limit, model=model, search=search)
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, default=str) + "\n")
        return
    if not rows:
        out.print('no runs stored yet: try `tokenprism score --text "..."`')
        return
    table = Table(title=f"runs ({len(rows)} shown)")
    for col in ("run_id", "created", "model", "kind", "tokens", "GM conf.", "mean H", "response"):
        table.add_column(col)
    for r in rows:
        seq = r["sequence"]
        gm, mh = seq.get("geometric_mean_confidence"), seq.get("mean_entropy")
        table.add_row(
            r["run_id"],
            r["created_at"][:19],
            r["model"],
            r["kind"],
            str(r["n_response_tokens"]),
            f"{gm:.3f}" if gm is not None else "—",
            f"{mh:.3f}" if mh is not None else "—",
            (r["response"] or "")[:40].replace("\n", "↵"),
        )
    out.print(table)


@app.command()
def show(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one stored run."""
    with _open_store() as store:
        run = store.get_run(run_id)
    _emit_run(run, as_json)


@app.command()
def sql(
    query: str,
    max_rows: int = typer.Option(1000, help="print at most this many rows"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run one read-only SQL query (SELECT / EXPLAIN) over the token store."""
    from tokenprism.backend.store.store import run_read_only_sql

    columns, rows, truncated = run_read_only_sql(_settings().db_path, query, max_rows=max_rows)
    if as_json:
        payload = {"columns": columns, "rows": [list(r) for r in rows], "truncated": truncated}
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, default=str) + "\n")
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    out.print(table)
    if truncated:
        err.print(f"(showing the first {max_rows} rows)")


@app.command()
def audit(
    file: Path,
    model: str | None = ModelOpt,
    export: Path | None = typer.Option(
        None, "--export", help="also write report.html, tokens.csv or tokens.parquet"
    ),
    fmt: str | None = typer.Option(None, "--format", help="jsonl, csv or text (default: guess)"),
    metric: str = typer.Option("mean_entropy", help="sequence metric that ranks turns in exports"),
    rank_by: str = typer.Option("entropy", help="token metric that ranks the uncertain tokens"),
    top: int = typer.Option(5, help="uncertain tokens to list per turn"),
    metrics: str | None = MetricsOpt,
    judge: str | None = JudgeOpt,
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
) -> None:
    """Score every assistant turn of a transcript, summarise each turn, optionally export."""
    from tqdm import tqdm

    from tokenprism.backend.audit.upload import export_upload, score_upload, summarise_turn
    from tokenprism.backend.store.records import update_job

    if export is not None and export.suffix.lstrip(".") not in ("html", "csv", "parquet"):
        raise UserError("--export needs a .html, .csv or .parquet file name")
    if engine not in ("local", "ray"):
        raise UserError(f"unknown engine {engine!r}; choose local or ray")
    if engine == "ray":
        from tokenprism.backend.audit.ray_engine import check_engine

        check_engine(engine)
    elif address or workers or gpus_per_worker:
        raise UserError("--address, --workers and --gpus-per-worker need --engine ray")
    data = file.read_bytes() if file.is_file() else None
    if data is None:
        raise UserError(f"no such file: {file}")
    ray_options: dict[str, Any] = {"shard_items": shard_items, "gpus_per_worker": gpus_per_worker}
    if address:
        ray_options["address"] = address
    if workers:
        ray_options["workers"] = workers
    store = _open_store()
    with store:
        if resume:
            lm, items, upload_id, job_id, plan = _resume_audit(store, resume, data, model)
        else:
            lm, items, upload_id, job_id, plan = _new_audit(
                store, file, data, fmt, model, metrics, judge, probe, samples, engine, ray_options
            )
        update_job(store, job_id, status="running", error=None)
        with tqdm(total=len(items), desc="scoring turns", unit="turn", file=sys.stderr) as bar:

            def progress(done: int) -> None:
                bar.update(done - bar.n)

            try:
                result = score_upload(
                    lm,
                    store,
                    items,
                    settings=_settings(),
                    source=str(file),
                    upload_id=upload_id,
                    job_id=job_id,
                    engine=engine,
                    ray_options=ray_options,
                    extras=plan,
                    on_progress=progress,
                )
            except BaseException as e:
                update_job(store, job_id, status="failed", error=str(e) or type(e).__name__)
                err.print(f"job {job_id} stopped; continue it with --resume {job_id}")
                raise
        update_job(store, job_id, status="done", done=len(items), result=result)
        if summary:
            by_item = {
                r["item_index"]: r["run_id"]
                for r in store.list_runs(upload_id=upload_id, limit=len(items) + 1)
            }
            for item in items:
                run = store.get_run(by_item[item.index])
                summarise_turn(out, item, run, rank_by=rank_by, top=top)
        if export is not None:
            content, _, _ = export_upload(
                store, upload_id, export.suffix.lstrip("."), metric=metric, token_metric=rank_by
            )
            export.write_bytes(content)
            err.print(f"wrote {export} ({len(content):,} bytes)")
    if engine == "ray":
        err.print(
            f"ray: {len(result['scored'])} shards scored, {len(result['from_disk'])} read back "
            f"from disk, {len(result['skipped'])} already stored; Parquet shards in "
            f"{result['shard_dir']}"
        )
    err.print(f"upload {upload_id}, job {job_id}: {len(items)} turns stored")


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
) -> tuple[Any, list[Any], str, str, Any]:
    """Parse and validate ``file``, record its upload and a new audit job."""
    import hashlib

    from tokenprism.backend.audit.ingest import decode_text, detect_format, parse_transcript
    from tokenprism.backend.store.records import create_job, create_upload, set_upload_job

    text = decode_text(data, str(file))
    fmt = fmt or detect_format(file.name, text)
    items = parse_transcript(text, fmt, str(file))
    lm = _load(model)
    plan = _extras(lm, metrics, judge, probe, samples)
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
    return lm, items, upload_id, job_id, plan


def _resume_audit(
    store: Any, job_id: str, data: bytes, model: str | None
) -> tuple[Any, list[Any], str, str, Any]:
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
    lm = _load(params["model"])
    plan = None
    if params.get("extras"):
        from tokenprism.backend.scoring.extras import plan_extras, request_from_dict

        plan = plan_extras(lm, request_from_dict(params["extras"]), _settings())
    return lm, items, upload["upload_id"], job_id, plan


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default)"),
    port: int = typer.Option(8000, help="TCP port"),
    model: str | None = typer.Option(None, "--model", "-m", help="model to load at start-up"),
) -> None:
    """Run the HTTP API (one process: the only owner of the model and the database)."""
    import uvicorn

    from tokenprism.backend.api.app import create_app
    from tokenprism.backend.settings import get_settings

    settings = get_settings()
    if model:
        settings.default_model = model
    if not _is_loopback(host) and not settings.api_token:
        raise UserError(
            f"refusing to listen on {host} without TOKENPRISM_API_TOKEN: anyone who can reach "
            "the port could use the model and read the database"
        )
    _open_store().close()  # a locked or unreadable database fails here, with one line
    err.print(
        f"TokenPrism API on http://{host}:{port}/api/v1 (docs at /docs), "
        f"model {settings.default_model}, database {settings.db_path}"
    )
    uvicorn.run(
        create_app(settings, preload=True), host=host, port=port, workers=1, log_level="warning"
    )


def _streamlit_command(port: int) -> list[str]:
    import tokenprism.app

    script = Path(tokenprism.app.__file__).parent / "streamlit_app.py"
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.maxUploadSize",
        "50",
    ]


@app.command()
def ui(
    port: int = typer.Option(8501, "--port", help="UI port (loopback)"),
    api_url: str = typer.Option("http://127.0.0.1:8000", help="backend URL"),
) -> None:
    """Run the Streamlit UI against a running backend."""
    import subprocess

    env = {**os.environ, "TOKENPRISM_API_URL": api_url}
    err.print(f"TokenPrism UI on http://127.0.0.1:{port} (backend {api_url})")
    raise SystemExit(subprocess.call(_streamlit_command(port), env=env))


@app.command()
def up(
    api_port: int = typer.Option(8000, help="API port (loopback)"),
    ui_port: int = typer.Option(8501, help="UI port (loopback)"),
    model: str | None = typer.Option(None, "--model", "-m", help="model to serve"),
    demo: bool = typer.Option(True, help="load the sample transcripts on first start"),
) -> None:
    """Start the backend and the UI on loopback (what `make run` does); Ctrl-C stops both."""
    import subprocess
    import time as _time

    import httpx

    from tokenprism.backend.resources import shipped

    exe = [sys.executable, "-m", "tokenprism.backend.cli.main"]
    api = f"http://127.0.0.1:{api_port}"
    serve_cmd = [*exe, "serve", "--port", str(api_port), *(["--model", model] if model else [])]
    procs = [subprocess.Popen(serve_cmd)]
    try:
        err.print("starting the backend (the first start converts the embedded model)…")
        deadline = _time.monotonic() + 600
        while True:
            if procs[0].poll() is not None:
                raise UserError("the backend stopped during start-up (see the lines above)")
            try:
                health = httpx.get(f"{api}/api/v1/health", timeout=2).json()
                break
            except httpx.HTTPError:
                if _time.monotonic() > deadline:
                    raise UserError("the backend did not answer within 10 minutes") from None
                _time.sleep(0.5)
        headers = (
            {"Authorization": f"Bearer {_settings().api_token}"} if _settings().api_token else {}
        )
        sample = shipped("samples", "chats.jsonl")
        if demo and sample.is_file():
            uploads = httpx.get(f"{api}/api/v1/uploads", headers=headers, timeout=30).json()
            if not uploads.get("uploads"):
                httpx.post(
                    f"{api}/api/v1/uploads",
                    headers=headers,
                    timeout=120,
                    files={"file": (sample.name, sample.read_bytes())},
                )
                err.print("loaded the demo transcripts (data/samples/chats.jsonl)")
        env = {**os.environ, "TOKENPRISM_API_URL": api}
        procs.append(
            subprocess.Popen(_streamlit_command(ui_port), env=env, stdout=subprocess.DEVNULL)
        )
        out.print(
            f"[bold green]TokenPrism is up:[/] http://127.0.0.1:{ui_port}  "
            f"(API {api}/api/v1, model {health['default_model']}). Ctrl-C stops both."
        )
        while all(p.poll() is None for p in procs):
            _time.sleep(0.5)
        raise UserError("a TokenPrism process stopped; shutting down")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def metrics() -> None:
    """List every metric TokenPrism computes, with unit and direction."""
    from tokenprism.analysis.registry import list_metrics

    table = Table("name", "level", "unit", "higher means", "description")
    for spec in list_metrics():
        table.add_row(spec.name, spec.level, spec.unit, spec.higher_means, spec.description)
    out.print(table)


def _register_subcommands() -> None:
    from tokenprism.backend.cli.diff import register as register_diff
    from tokenprism.backend.cli.experiments import experiment_app
    from tokenprism.backend.cli.groups import register
    from tokenprism.backend.cli.probes import probe_app

    app.add_typer(probe_app, name="probe")
    app.add_typer(experiment_app, name="experiment")
    register(app)
    register_diff(app)


_register_subcommands()


def main() -> None:
    """Console-script entry point with user-friendly errors."""
    logging.basicConfig(level=os.environ.get("TOKENPRISM_LOG", "WARNING"))
    code = 0
    try:
        app()  # standalone: typer prints usage errors and exits through SystemExit
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except UserError as e:
        err.print(f"error: {e}", markup=False)
        code = 2
    except Exception as e:  # the last line of defence against tracebacks
        if os.environ.get("TOKENPRISM_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        err.print(
            f"error: unexpected {type(e).__name__}: {first} (set TOKENPRISM_DEBUG=1 for details)",
            markup=False,
        )
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # duckdb 2.0's nanobind bindings print a screen of "leaked instance" warnings during
    # interpreter finalisation whenever torch is loaded too (cosmetic: the process is ending and
    # every store was closed above). Skipping finalisation keeps the terminal readable.
    os._exit(code)


if __name__ == "__main__":
    main()

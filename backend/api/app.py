"""The HTTP API (FastAPI) under ``/api/v1``.

One process owns the model(s) and the DuckDB file: request threads score single texts under a
model lock, and a single worker thread drains the job queue. Errors are JSON
``{"error": {"code", "message"}}``, never stack traces. Bound beyond loopback the server needs
``TOKENPRISM_API_TOKEN`` and every route but ``/health`` then requires
``Authorization: Bearer <token>`` (also enforced on loopback when a token is set).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenprism.analysis.registry import list_metrics
from tokenprism.backend import __version__
from tokenprism.backend.api.diffs import router as diff_router
from tokenprism.backend.api.schemas import (
    ApplyProbeRequest,
    ContrastiveBody,
    ExperimentBody,
    GenerateRequest,
    GroupBody,
    RolloutBody,
    RunRequest,
    SqlRequest,
    VectorBody,
)
from tokenprism.backend.audit.ingest import (
    TranscriptError,
    decode_text,
    detect_format,
    parse_transcript,
)
from tokenprism.backend.audit.upload import (
    DEFAULT_TOKEN_METRIC,
    DEFAULT_TURN_METRIC,
    audit_summary,
    encode_items,
    export_upload,
)
from tokenprism.backend.errors import (
    DatabaseLocked,
    InputTooLong,
    ModelNotFound,
    ReadOnlyViolation,
    UnsafeWeights,
    UserError,
)
from tokenprism.backend.jobs.worker import JobManager, JobNotFound, JobStateError
from tokenprism.backend.models.loader import (
    DEFAULT_MODEL,
    LoadedModel,
    loaded_model_names,
)
from tokenprism.backend.models.variants import get_model, join_spec, split_spec, variant_paths
from tokenprism.backend.probes.apply import apply_probe_to_run
from tokenprism.backend.probes.storage import check_probe_name, list_probes, load_probe
from tokenprism.backend.sampling.generation import sample_responses
from tokenprism.backend.scoring.encoding import encode_pair, encode_text
from tokenprism.backend.scoring.extras import ExtraRequest, parse_metrics, plan_extras
from tokenprism.backend.scoring.runner import score_one
from tokenprism.backend.settings import Settings, get_settings
from tokenprism.backend.store import Store
from tokenprism.backend.store.records import (
    TERMINAL,
    create_upload,
    find_upload,
    get_upload,
    list_jobs,
    list_uploads,
    set_upload_job,
)

log = logging.getLogger(__name__)
API = "/api/v1"


class ApiError(Exception):
    """An error with an HTTP status and a machine-readable code."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _metric_families(spec: str | list[str] | None) -> tuple[str, ...]:
    """:func:`parse_metrics`, with an unknown family answered as an invalid request (422)."""
    try:
        return parse_metrics(spec)
    except UserError as err:
        raise ApiError(422, "invalid_request", str(err)) from None


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, "not_found", message)


_USER_ERROR_STATUS: list[tuple[type[UserError], int, str]] = [
    (JobNotFound, 404, "not_found"),
    (JobStateError, 409, "conflict"),
    (TranscriptError, 422, "invalid_transcript"),
    (InputTooLong, 422, "input_too_long"),
    (ModelNotFound, 404, "model_not_found"),
    (UnsafeWeights, 422, "unsafe_weights"),
    (ReadOnlyViolation, 403, "read_only"),
    (DatabaseLocked, 503, "database_locked"),
]


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message, **extra}}
    )


class Service:
    """What the routes share: settings, store, loaded models, the job manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.db_path)
        self.model_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.jobs = JobManager(self.store, self.model, settings, self.model_lock)

    def model_name(self, requested: str | None) -> str:
        """Resolve and authorise a requested model name (variants: base and paths checked)."""
        base, variants = split_spec(requested or self.settings.default_model)
        for path in variant_paths(variants):  # adapters: same rule as model directories
            self._check_path(path, extra=[self.settings.home / "adapters"])
        return join_spec(self._base_name(base), variants)

    def _check_path(self, resolved: Path, extra: list[Path] | None = None) -> None:
        allowed = [Path(d).expanduser().resolve() for d in self.settings.allowed_model_dirs]
        allowed += [d.resolve() for d in extra or []]
        if not any(resolved.is_relative_to(d) for d in allowed):
            raise ApiError(
                403,
                "model_path_not_allowed",
                "local model paths must be inside TOKENPRISM_ALLOWED_MODEL_DIRS",
            )

    def _base_name(self, name: str) -> str:
        if name in (DEFAULT_MODEL, self.settings.default_model):
            return name
        path = Path(name).expanduser()
        if path.exists() or name.startswith((".", "/", "~")):
            resolved = path.resolve()
            self._check_path(resolved)
            return str(resolved)
        if not self.settings.allow_hub_models:
            raise ApiError(
                403,
                "hub_models_disabled",
                f"model {name!r} is not available on this server "
                "(hub ids need TOKENPRISM_ALLOW_HUB_MODELS=1)",
            )
        return name

    def model(self, name: str) -> LoadedModel:
        with self._load_lock:
            return get_model(name, self.settings)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(_service)]


def _require_token(request: Request) -> None:
    token = request.app.state.service.settings.api_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")


def create_app(settings: Settings | None = None, *, preload: bool = False) -> FastAPI:
    """Build the app; ``preload`` loads the default model at start-up."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(settings)
        app.state.service = service
        if preload:
            await asyncio.to_thread(service.model, settings.default_model)
        service.jobs.start()
        try:
            yield
        finally:
            service.jobs.stop()
            service.store.close()

    app = FastAPI(
        title="TokenPrism API",
        version=__version__,
        lifespan=lifespan,
        description="Token-level analysis of language-model outputs.",
    )

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if settings.api_token and request.url.path in ("/docs", "/redoc", "/openapi.json"):
            try:
                _require_token(request)
            except ApiError as err:
                return _error(err.status, err.code, err.message)
        length = request.headers.get("content-length")
        is_upload = request.url.path == f"{API}/uploads"
        limit = settings.upload_max_bytes + 1024 * 1024 if is_upload else settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return _error(413, "too_large", f"request body over the limit of {limit} bytes")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.code, err.message, **err.extra)

    @app.exception_handler(UserError)
    async def _user_error(_: Request, err: UserError) -> JSONResponse:
        for cls, status, code in _USER_ERROR_STATUS:
            if isinstance(err, cls):
                extra = {}
                if isinstance(err, TranscriptError):
                    extra["problems"] = [{"line": ln, "message": m} for ln, m in err.problems]
                return _error(status, code, str(err), **extra)
        return _error(400, "bad_request", str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in err.errors()
        ]
        first = problems[0] if problems else {"location": "", "message": "invalid request"}
        return _error(
            422, "invalid_request", f"{first['location']}: {first['message']}", problems=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return _error(err.status_code, code, str(err.detail))

    @app.exception_handler(Exception)
    async def _crash(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=err)
        return _error(500, "internal", "internal error; see the server log")

    public = APIRouter(prefix=API)
    router = APIRouter(prefix=API, dependencies=[Depends(_require_token)])
    _routes(public, router)
    app.include_router(public)
    app.include_router(router)
    app.include_router(diff_router, prefix=API, dependencies=[Depends(_require_token)])
    return app


def _routes(public: APIRouter, router: APIRouter) -> None:  # noqa: C901 - a flat list of routes
    @public.get("/health", summary="Service health (no token needed)")
    def health(svc: ServiceDep) -> dict[str, Any]:
        import torch

        return {
            "status": "ok",
            "version": __version__,
            "default_model": svc.settings.default_model,
            "models_loaded": loaded_model_names(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "db": str(svc.store.path),
            "queue_length": svc.jobs.queue_length,
            "auth": bool(svc.settings.api_token),
        }

    @router.get("/metrics", summary="Every metric with level, unit and direction")
    def metrics() -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "level": s.level,
                "unit": s.unit,
                "higher_means": s.higher_means,
                "description": s.description,
            }
            for s in list_metrics()
        ]

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
        extras = _metric_families(body.metrics)
        if extras:
            request = ExtraRequest(
                metrics=extras, judge=body.judge, probe=body.probe, samples=body.samples
            )
            plan = plan_extras(lm, request, svc.settings)
        elif body.judge or body.probe:
            raise ApiError(422, "invalid_request", "'judge' / 'probe' need 'metrics'")
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
        extras = _metric_families(body.metrics)
        plan = plan_extras(lm, ExtraRequest(metrics=extras), svc.settings) if extras else None
        with svc.model_lock:
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

    @router.post("/uploads", status_code=202, summary="Upload a transcript to audit (a job)")
    def upload(
        svc: ServiceDep,
        file: Annotated[UploadFile, File(description="JSONL, CSV or plain text")],
        model: Annotated[str | None, Form()] = None,
        format: Annotated[str | None, Form(description="jsonl, csv or text")] = None,
        metrics: Annotated[
            str | None, Form(description="extra metric families, e.g. ccp,probe")
        ] = None,
        engine: Annotated[
            Literal["local", "ray"],
            Form(description="local (the server's model) or ray (TOKENPRISM_RAY_ADDRESS)"),
        ] = "local",
        shard_items: Annotated[
            int, Form(ge=1, le=100_000, description="items per Ray shard (engine=ray)")
        ] = 64,
    ) -> JSONResponse:
        if engine == "ray":
            from tokenprism.backend.audit.ray_engine import check_engine

            check_engine(engine)  # Ray missing: refused now, not when the job runs
        limit = svc.settings.upload_max_bytes
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "too_large", f"the file is over the upload limit of {limit} bytes")
        name = Path(file.filename or "upload").name
        if not data.strip():
            raise ApiError(422, "empty_file", f"{name} is empty")
        text = decode_text(data, name)
        fmt = format or detect_format(name, text)
        items = parse_transcript(text, fmt, name, max_items=svc.settings.upload_max_items)
        model_name = svc.model_name(model)
        lm = svc.model(model_name)
        encode_items(lm, items, name)  # too-long or empty turns fail now, before any write
        job_params: dict[str, Any] = {"model": model_name, "engine": engine}
        if engine == "ray":
            job_params["ray"] = {"shard_items": shard_items}
        extras = _metric_families(metrics)
        if extras:
            request = ExtraRequest(metrics=extras)
            plan_extras(lm, request, svc.settings)  # a missing probe or judge fails now
            job_params["extras"] = request.as_dict()
        digest = hashlib.sha256(data).hexdigest()
        existing = find_upload(svc.store, digest, model_name)
        if existing is not None:
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
            },
        )

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
            return dict(_jsonable(get_group(svc.store, group_id)))
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

    @router.get("/experiments/prompts", summary="The shipped refusal prompt set")
    def experiment_prompts() -> list[dict[str, Any]]:
        from tokenprism.backend.lab.experiments import shipped_refusal_prompts

        return shipped_refusal_prompts()

    @router.post("/experiments", status_code=202, summary="Start a steering / decoding experiment")
    def create_experiment(body: ExperimentBody, svc: ServiceDep) -> JSONResponse:
        from tokenprism.backend.lab.jobs import check_experiment

        check_experiment(body.kind, body.params)  # bad parameters fail now, not in the job
        model_name = svc.model_name(body.model)
        params = {"kind": body.kind, "params": body.params, "model": model_name}
        job_id = svc.jobs.submit("experiment", params, 1000)
        return JSONResponse(status_code=202, content={"job_id": job_id})

    @router.get("/experiments", summary="Recent experiments")
    def experiments(
        svc: ServiceDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> dict[str, Any]:
        from tokenprism.backend.lab.experiments import list_experiments

        return {"experiments": list_experiments(svc.store, limit)}

    @router.get("/experiments/{experiment_id}", summary="An experiment: parameters, curves, runs")
    def experiment(experiment_id: str, svc: ServiceDep) -> dict[str, Any]:
        from tokenprism.backend.lab.experiments import get_experiment

        try:
            return dict(_jsonable(get_experiment(svc.store, experiment_id)))
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
        summary = audit_summary(
            svc.store, upload_id, metric=metric, token_metric=token_metric, top=top
        )
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
            svc.store, upload_id, format, metric=metric, token_metric=token_metric
        )
        return Response(
            content,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @router.get("/jobs", summary="Recent jobs")
    def jobs(
        svc: ServiceDep,
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        return {"jobs": list_jobs(svc.store, limit=limit, status=status)}

    @router.get("/jobs/{job_id}", summary="Job status, progress, ETA and error")
    def job(job_id: str, svc: ServiceDep) -> dict[str, Any]:
        return svc.jobs.status(job_id)

    @router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
    def cancel(job_id: str, svc: ServiceDep) -> dict[str, Any]:
        return svc.jobs.cancel(job_id)

    @router.post("/jobs/{job_id}/resume", summary="Resume an interrupted, failed or cancelled job")
    def resume(job_id: str, svc: ServiceDep) -> dict[str, Any]:
        return svc.jobs.resume(job_id)

    @router.get("/jobs/{job_id}/events", summary="Progress as server-sent events")
    async def job_events(job_id: str, request: Request, svc: ServiceDep) -> StreamingResponse:
        svc.jobs.status(job_id)  # 404 before the stream starts

        async def stream() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                state = await asyncio.to_thread(svc.jobs.status, job_id)
                payload = json.dumps(state, default=str)
                if payload != last:
                    yield f"event: progress\ndata: {payload}\n\n"
                    last = payload
                if state["status"] in (*TERMINAL, "interrupted"):
                    yield f"event: end\ndata: {payload}\n\n"
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @router.post("/sql", summary="One read-only SQL statement over the token store")
    def sql(body: SqlRequest, svc: ServiceDep) -> dict[str, Any]:
        columns, rows, truncated = svc.store.query_read_only(body.query, max_rows=body.max_rows)
        return {
            "columns": columns,
            "rows": [[_jsonable(v) for v in r] for r in rows],
            "truncated": truncated,
        }


def _jsonable(value: Any) -> Any:
    """A SQL result value as JSON: NaN/inf become null, other non-JSON types their text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)

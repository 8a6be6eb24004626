"""Request bodies of the HTTP API (responses are plain JSON documented in the routes).

Every body refuses (422) non-finite floats (``NaN``/``Infinity``, which Python's JSON parser
accepts) and strings that are not UTF-8 encodable (a lone surrogate such as ``"\\ud800"``,
which a JSON escape can carry and which would make every later read of the row fail).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CcpPreset = Literal["lm-polygraph", "tokenprism"]  # analysis.ccp.CCP_PRESETS
CCP_PRESET_HELP = (
    "CCP conventions: lm-polygraph (default; no shortcuts, NaN propagates, empty claim 1) or "
    "tokenprism (stopword / same-word / empty-word shortcuts, NaN skipped)"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _utf8(cls, data: Any) -> Any:
        from tokenprism.backend.api.security import unencodable

        where = unencodable(data)
        if where is not None:
            raise ValueError(
                f"{where} holds a lone surrogate (a \\uD800-\\uDFFF escape without its pair); "
                "text must be valid Unicode"
            )
        return data


class RunRequest(_Body):
    """Score one text: a prompt + response (chat template unless ``template`` is false) or raw
    ``text``."""

    model: str | None = Field(None, description="model name; the server's default if omitted")
    prompt: str | None = None
    response: str | None = None
    text: str | None = None
    system: str | None = Field(None, description="system prompt for the chat template")
    template: bool = True
    metrics: list[str] | None = Field(
        None, description="extra metric families: ccp, probe, sar, selfcheck (or all)"
    )
    judge: str | None = Field(None, description="CCP judge: 'fallback' or an NLI model id/path")
    ccp_preset: CcpPreset | None = Field(None, description=CCP_PRESET_HELP)
    probe: str | None = Field(None, description="probe name (default: newest for the model)")
    samples: int = Field(5, ge=2, le=20, description="samples for selfcheck / sentence SAR")

    @model_validator(mode="after")
    def _one_input(self) -> RunRequest:
        if (self.text is None) == (self.response is None):
            raise ValueError("give either 'text' or 'response' (with 'prompt')")
        if self.response is not None and self.prompt is None:
            raise ValueError("'response' needs a 'prompt' (it may be empty)")
        if self.text is not None and self.prompt is not None:
            raise ValueError("'prompt' goes with 'response', not with 'text'")
        return self


class GenerateRequest(_Body):
    """Sample responses to a prompt; each is re-scored teacher-forced and stored."""

    prompt: str = Field(..., min_length=1)
    model: str | None = None
    system: str | None = None
    n: int = Field(1, ge=1, le=16)
    max_new_tokens: int = Field(64, ge=1, le=1024)
    temperature: float = Field(
        1.0, ge=0.0, le=5.0, description="0 = greedy; otherwise at least 0.01"
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    metrics: list[str] | None = Field(
        None, description="extra metric families for the samples: ccp, probe, sar, selfcheck"
    )
    ccp_preset: CcpPreset | None = Field(None, description=CCP_PRESET_HELP)

    @model_validator(mode="after")
    def _usable_temperature(self) -> GenerateRequest:
        # a temperature of 1e-300 divides the logits into infinities: the sampler gets NaN
        if 0.0 < self.temperature < 0.01:
            raise ValueError("temperature must be 0 (greedy) or at least 0.01")
        return self


class ApplyProbeRequest(_Body):
    """Apply a stored probe to a stored run."""

    probe: str | None = Field(None, description="probe name (default: newest for the model)")


class GroupBody(_Body):
    """Sample a group of responses to one prompt and score them with a verifier (a job)."""

    prompt: str = Field(..., min_length=1, max_length=20_000)
    verifier: str = Field(
        ...,
        min_length=3,
        max_length=600,
        description="number:42, number:42@0.5, exact:Paris, regex:PATTERN or choice:B",
    )
    model: str | None = None
    system: str | None = None
    n: int = Field(8, ge=2, le=64, description="responses (at least 2: THR needs a group)")
    temperature: float = Field(1.0, ge=0.01, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(96, ge=1, le=1024)
    seed: int | None = Field(0, ge=0, le=2**32 - 1)
    thr_p: float = Field(0.1, ge=-1.0, le=1.0, description="THR reweighting knob p")
    thr_beta: float = Field(
        1.0, ge=0.0, le=100.0, description="beta of the dominant-token threshold (0 to 100)"
    )
    thr_vocab: Literal["full", "group"] = Field(
        "full",
        description="THR vocabulary: full (exact, default) or group (NTHR's V* shortcut, "
        "reported with its agreement with the full value)",
    )
    latr_tau_abs: float = Field(0.25, ge=0.0, le=1.0)
    latr_tau_rel: float = Field(0.15, ge=0.0, le=1.0)
    cure_k: int = Field(20, ge=1, le=200)
    sampler: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf (transformers generate) or vllm (optional package, GPU); "
        "the samples are scored by the same HF forward pass either way",
    )


class RolloutBody(_Body):
    """Find an incorrect response's critical token by verified rollouts (a job)."""

    run_id: str | None = Field(None, description="default: the first incorrect response")
    k: int = Field(8, ge=1, le=64, description="continuations per prefix")
    budget: int = Field(12, ge=1, le=512, description="prefixes evaluated first")
    refine: int = Field(8, ge=0, le=256, description="extra prefixes to pin the token down")
    max_new_tokens: int = Field(64, ge=1, le=1024)
    temperature: float = Field(1.0, ge=0.01, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    counterfactuals: int = Field(4, ge=0, le=32)
    seed: int | None = Field(0, ge=0, le=2**32 - 1)


class ContrastiveBody(_Body):
    """Train positive / negative LoRA adapters on a group and score p_CE per token (a job)."""

    steps: int = Field(30, ge=1, le=2000)
    lr: float = Field(3e-4, gt=0.0, le=1.0)
    rank: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1, le=1024)
    beta: float = Field(1.0, ge=0.0, le=10.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class ExperimentBody(_Body):
    """A steering / decoding experiment (a job): ``refusal-sweep``, ``east-sweep`` or
    ``decode``; ``params`` are those of the kind (see the README and ``tokenprism experiment``)."""

    kind: str = Field(..., description="refusal-sweep, east-sweep or decode")
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class VectorBody(_Body):
    """Compute and save a steering vector: EAST from ``prompts`` or CAA from two sets."""

    name: str = Field(..., min_length=1, max_length=64)
    kind: str = Field("east", description="east or caa")
    model: str | None = None
    layer: int | None = Field(None, ge=0)
    prompts: list[str] = Field(default_factory=list, max_length=2000)
    negative_prompts: list[str] = Field(default_factory=list, max_length=2000)
    center: bool = True
    normalize: str = Field("unit", description="none, unit or mean_norm")


class SqlRequest(_Body):
    """One read-only SQL statement."""

    query: str = Field(..., min_length=1, max_length=20_000)
    max_rows: int = Field(1000, ge=1, le=100_000)


class AddMetricsRequest(_Body):
    """Metric families to add to an upload's stored turns (``POST /uploads/{id}/metrics``)."""

    metrics: list[str] = Field(
        min_length=1, max_length=5, description="families to add: ccp, probe, sar, selfcheck"
    )
    ccp_preset: CcpPreset | None = Field(None, description=CCP_PRESET_HELP)
    probe: str | None = Field(
        None, max_length=200, description="probe name (default: newest for the model)"
    )
    run_ids: list[str] | None = Field(
        None,
        max_length=100_000,
        description="only these turns of the upload (default: every turn)",
    )


class DiffBody(_Body):
    """Diff model B against model A on one input: ``text``, ``run_id`` or ``upload_id``."""

    model: str | None = Field(
        None, max_length=1000, description="model A (a run's own model for run_id; default)"
    )
    against: str = Field(
        ..., min_length=1, max_length=1000, description="model B, e.g. default@int8"
    )
    text: str | None = Field(None, min_length=1, max_length=200_000)  # diff.service.MAX_TEXT_CHARS
    run_id: str | None = Field(None, min_length=1, max_length=64)
    upload_id: str | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_input(self) -> DiffBody:
        if sum(x is not None for x in (self.text, self.run_id, self.upload_id)) != 1:
            raise ValueError("give exactly one of 'text', 'run_id', 'upload_id'")
        return self

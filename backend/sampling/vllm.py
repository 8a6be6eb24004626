"""Optional vLLM sampler for large groups (``GroupRequest.sampler == "vllm"``).

vLLM only draws the samples: the texts it returns are re-tokenised and scored by the
Hugging Face forward pass like every other text, so verifiers, THR, TEMPO and the hidden-state
metrics are computed exactly as for the ``hf`` sampler, from the same model in the same
precision. Only vLLM's public offline API is used: ``vllm.LLM(...)``, ``LLM.generate`` with a
token-ids prompt (``{"prompt_token_ids": ...}``), ``vllm.SamplingParams`` and
``RequestOutput.outputs[i].token_ids``.

vLLM is not a dependency: ``pip install vllm`` (or ``pip install 'tokenprism[gpu]'``) on a
machine with a CUDA GPU. One ``vllm.LLM`` engine is kept per model and precision; it holds
its own copy of the weights next to the HF model, so it is told to use at most
:data:`GPU_MEMORY_UTILIZATION` of the GPU's memory.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.sampling.types import Samples, cut_at_eos, eos_ids

GPU_MEMORY_UTILIZATION = 0.5
"""Share of GPU memory the vLLM engine may take (weights + KV cache); the HF model that scores
the samples needs the rest. vLLM's own default (0.9) would leave the scorer nothing."""

_ENGINES: dict[tuple[str, str, str], Any] = {}


def import_vllm() -> ModuleType:
    """The ``vllm`` package, or a :class:`UserError` saying how to install it."""
    try:
        return importlib.import_module("vllm")
    except ImportError:
        raise UserError(
            "sampler 'vllm' needs the vllm package, which is not installed: pip install vllm "
            "(or pip install 'tokenprism[gpu]'; a CUDA GPU is required), or use sampler 'hf'"
        ) from None


def engine_dtype(lm: LoadedModel) -> str:
    """vLLM's ``dtype``: the precision the HF model computes in (autocast dtype, else weights)."""
    return str(lm.compute_dtype).removeprefix("torch.")


def model_source(lm: LoadedModel) -> str:
    """What vLLM loads: the model's directory (local, converted GGUF, default) or its hub id."""
    return str(lm.path) if lm.path is not None else lm.name


def engine_arguments(lm: LoadedModel) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``lm``."""
    from tokenprism.backend.settings import get_settings

    kwargs: dict[str, Any] = {
        "model": model_source(lm),
        "dtype": engine_dtype(lm),
        "seed": 0,
        "trust_remote_code": get_settings().trust_remote_code,
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
    }
    if lm.path is None and lm.revision != "unknown":
        kwargs["revision"] = lm.revision  # the same hub commit the scorer loaded
    return kwargs


def get_engine(lm: LoadedModel) -> Any:
    """The cached ``vllm.LLM`` for this model and precision (built on first use)."""
    vllm = import_vllm()
    key = (model_source(lm), lm.revision, engine_dtype(lm))
    if key not in _ENGINES:
        try:
            _ENGINES[key] = vllm.LLM(**engine_arguments(lm))
        except (OSError, ValueError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"vLLM cannot load {key[0]}: {first}") from None
    return _ENGINES[key]


def sample_vllm(
    lm: LoadedModel,
    ids: list[int],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
) -> Samples:
    """Sample ``n`` continuations of the prompt ``ids`` with vLLM.

    The prompt goes in as token ids (the same ids the HF sampler would use, so the chat
    template and special tokens are rendered once, by our tokenizer). The generated ids are
    decoded with the model's own tokenizer (special tokens skipped), exactly as the HF sampler
    decodes, so the texts of both samplers go through one path. ``temperature == 0`` is greedy.
    """
    vllm = import_vllm()
    engine = get_engine(lm)
    params = vllm.SamplingParams(
        n=n,
        temperature=temperature,
        top_p=top_p if temperature > 0 else 1.0,
        max_tokens=max_new_tokens,
        seed=seed,
    )
    outputs = engine.generate([{"prompt_token_ids": list(ids)}], params, use_tqdm=False)
    completions = outputs[0].outputs
    eos = eos_ids(lm)
    token_ids = [cut_at_eos([int(t) for t in c.token_ids], eos) for c in completions]
    texts = lm.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    return Samples(texts=list(texts), token_ids=token_ids, sampler="vllm")

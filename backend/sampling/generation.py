"""Sampling responses; every sample is then re-scored teacher-forced like any other text.

Two samplers produce the same :class:`Samples`: ``hf`` (``transformers`` ``generate`` on the
loaded model, the default) and ``vllm`` (:mod:`backend.vllm_sampler`, optional, for large
groups on a GPU). Whichever sampled, the texts are re-tokenised and scored by the HF forward
pass, so every metric (hidden-state ones included) comes from the same model and precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from tokenprism.backend.errors import UserError
from tokenprism.backend.limits import check_context
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.sampling.hf import sample_hf
from tokenprism.backend.sampling.types import Samples, eos_ids, prompt_ids
from tokenprism.backend.sampling.vllm import import_vllm, sample_vllm
from tokenprism.backend.scoring.encoding import EncodedText, encode_pair

Sampler = Literal["hf", "vllm"]
# The samplers by name; each returns :class:`Samples` for ids rendered by ``prompt_ids``.
SAMPLER_FUNCTIONS: dict[str, Callable[..., Samples]] = {"hf": sample_hf, "vllm": sample_vllm}
SAMPLERS: tuple[str, ...] = tuple(SAMPLER_FUNCTIONS)


def check_sampler(sampler: str) -> None:
    """Fail early on an unknown sampler, or on ``vllm`` when the package is missing."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "vllm":
        import_vllm()


def sample_responses(
    lm: LoadedModel,
    prompt: str,
    *,
    system: str | None = None,
    n: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    skip_empty: bool = False,
    sampler: str = "hf",
) -> list[EncodedText]:
    """Sample ``n`` responses and return them encoded for scoring (prompt marked as context).

    Uses the chat template when the model has one (the prompt is the user turn), else the raw
    prompt. ``temperature == 0`` means greedy decoding. ``skip_empty`` drops samples with no
    text (they cannot be scored) instead of failing. The decoded text is re-tokenised for
    scoring, so generated and uploaded text go through the same path. ``sampler`` is ``hf``
    or ``vllm`` (see :mod:`backend.vllm_sampler`); scoring is the same for both.
    """
    if 0.0 < temperature < 0.01:
        raise UserError("temperature must be 0 (greedy) or at least 0.01")
    check_sampler(sampler)
    ids, template = prompt_ids(lm, prompt, system)
    check_context(lm, len(ids), max_new_tokens)  # before any sampler touches the model
    samples = SAMPLER_FUNCTIONS[sampler](
        lm,
        ids,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    eos = eos_ids(lm)
    # Only an end-of-turn token the model sampled is scored: a generation cut at
    # max_new_tokens is encoded without one and flagged truncated.
    pairs = [
        (text, bool(row) and row[-1] in eos)
        for text, row in zip(samples.texts, samples.token_ids, strict=True)
    ]
    if skip_empty:
        # a model that stops at once leaves nothing to score; groups record how many
        pairs = [(t, ended) for t, ended in pairs if t.strip()]
    return [
        encode_pair(
            lm.tokenizer,
            prompt,
            text,
            context_length=lm.context_length,
            template=template,
            system_prompt=system,
            end_of_turn=ended,
        )
        for text, ended in pairs
    ]

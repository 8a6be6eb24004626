"""Sampling responses; every sample is then re-scored teacher-forced like any other text.

Two samplers produce the same :class:`Samples`: ``hf`` (``transformers`` ``generate`` on the
loaded model, the default) and ``vllm`` (:mod:`backend.vllm_sampler`, optional, for large
groups on a GPU). Whichever sampled, the texts are re-tokenised and scored by the HF forward
pass, so every metric (hidden-state ones included) comes from the same model and precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from backend.encoding import EncodedText, encode_pair
from backend.errors import UserError
from backend.limits import check_context, stopping_criteria
from backend.models import LoadedModel

Sampler = Literal["hf", "vllm"]
SAMPLERS: tuple[str, ...] = ("hf", "vllm")


@dataclass
class Samples:
    """What a sampler returns for one prompt.

    Attributes:
        texts: the decoded responses, special tokens skipped, one per sample.
        token_ids: the generated ids of each sample (prompt excluded, cut after the first
            end-of-sequence token).
        sampler: ``hf`` or ``vllm``.
    """

    texts: list[str]
    token_ids: list[list[int]]
    sampler: str


def check_sampler(sampler: str) -> None:
    """Fail early on an unknown sampler, or on ``vllm`` when the package is missing."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "vllm":
        from backend.vllm_sampler import import_vllm

        import_vllm()


def prompt_ids(lm: LoadedModel, prompt: str, system: str | None = None) -> tuple[list[int], bool]:
    """The token ids a response is sampled after, and whether the chat template was used.

    With a chat template the prompt is the user turn (plus ``system``) and the assistant turn
    is opened; without one the raw prompt is tokenised with the tokenizer's special tokens.
    """
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tok(rendered, add_special_tokens=False)["input_ids"]), True
    return list(tok(prompt)["input_ids"]), False


def eos_ids(lm: LoadedModel) -> set[int]:
    """The ids that end a generation (the generation config's, else the tokenizer's)."""
    eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """``ids`` up to and including the first end-of-sequence token (the rest is padding)."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids


def sample_hf(
    lm: LoadedModel,
    ids: list[int],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
) -> Samples:
    """Sample with ``transformers`` ``generate`` under the model's autocast setting."""
    tok = lm.tokenizer
    prompt = torch.tensor([ids], dtype=torch.long, device=lm.device)
    if seed is not None:
        torch.manual_seed(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    sampling = temperature > 0
    check_context(lm, len(ids), max_new_tokens)
    with torch.inference_mode(), lm.autocast_context():
        out = lm.model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            num_return_sequences=n,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            stopping_criteria=stopping_criteria(),
        )
    generated = out[:, prompt.shape[1] :]
    texts = tok.batch_decode(generated, skip_special_tokens=True)
    eos = eos_ids(lm)
    rows = [cut_at_eos(row, eos) for row in generated.cpu().tolist()]  # one copy for the batch
    return Samples(texts=texts, token_ids=rows, sampler="hf")


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
    if sampler == "vllm":
        from backend.vllm_sampler import sample_vllm

        draw = sample_vllm
    else:
        draw = sample_hf
    samples = draw(
        lm,
        ids,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    texts = samples.texts
    if skip_empty:
        # a model that stops at once leaves nothing to score; groups record how many
        texts = [t for t in texts if t.strip()]
    return [
        encode_pair(
            lm.tokenizer,
            prompt,
            text,
            context_length=lm.context_length,
            template=template,
            system_prompt=system,
        )
        for text in texts
    ]

"""Types and helpers every sampler shares: what a sampler returns, the prompt ids, the end ids.

They sit below the samplers (``hf``, ``vllm``) and the lab's decoding rules so that each of those
imports this module and none imports another.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenprism.backend.models.loader import LoadedModel


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
    """The ids that end a generation: the tokenizer's EOS plus the generation config's EOS id(s).

    Chat models often name a different id in each (SmolLM2: ``<|im_end|>`` ends a turn,
    ``<|endoftext|>`` a document); generation stops at either, so both count.
    """
    ids: set[int] = set()
    tok_eos = getattr(lm.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen = getattr(lm.model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list | tuple):
        ids.update(int(i) for i in gen_eos)
    return ids


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """``ids`` up to and including the first end-of-sequence token (the rest is padding)."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids

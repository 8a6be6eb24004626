"""Sampling responses; every sample is then re-scored teacher-forced like any other text."""

from __future__ import annotations

import torch

from backend.encoding import EncodedText, encode_pair
from backend.errors import UserError
from backend.models import LoadedModel


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
) -> list[EncodedText]:
    """Sample ``n`` responses and return them encoded for scoring (prompt marked as context).

    Uses the chat template when the model has one (the prompt is the user turn), else the raw
    prompt. ``temperature == 0`` means greedy decoding. ``skip_empty`` drops samples with no
    text (they cannot be scored) instead of failing. The decoded text is re-tokenised for
    scoring, so generated and uploaded text go through the same path.
    """
    if 0.0 < temperature < 0.01:
        raise UserError("temperature must be 0 (greedy) or at least 0.01")
    tok = lm.tokenizer
    template = bool(getattr(tok, "chat_template", None))
    if template:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(lm.device)
    if seed is not None:
        torch.manual_seed(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    sampling = temperature > 0
    with torch.inference_mode():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            num_return_sequences=n,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
        )
    texts = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    if skip_empty:
        # a model that stops at once leaves nothing to score; groups record how many
        texts = [t for t in texts if t.strip()]
    return [
        encode_pair(
            tok,
            prompt,
            text,
            context_length=lm.context_length,
            template=template,
            system_prompt=system,
        )
        for text in texts
    ]

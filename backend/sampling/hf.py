"""The ``hf`` sampler: ``transformers`` ``generate`` on the loaded model."""

from __future__ import annotations

import torch

from tokenprism.backend.limits import check_context, stopping_criteria
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.sampling.types import Samples, cut_at_eos, eos_ids


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

"""Per-response aggregates of token metrics.

Every aggregate takes a ``[batch, n]`` token tensor and a ``[batch, n]`` mask of the tokens
that count (response tokens with a prediction) and returns ``[batch]``. An empty mask gives
NaN, never a division error.
"""

from __future__ import annotations

import torch

from tokenprism.analysis.types import PerSequence, PerToken, PerTokenInt, TokenMask


def masked_mean(values: PerToken, mask: TokenMask) -> PerSequence:
    """Mean of ``values`` over masked positions per row; NaN for an empty row."""
    v = torch.where(mask, values.float(), torch.zeros_like(values, dtype=torch.float32))
    count = mask.sum(-1)
    return torch.where(count > 0, v.sum(-1) / count.clamp(min=1), torch.nan)


def geometric_mean_confidence(logprob: PerToken, mask: TokenMask) -> PerSequence:
    """``exp(mean logprob)``: the geometric mean of token probabilities (= 1 / perplexity)."""
    return masked_mean(logprob, mask).exp()


def perplexity(logprob: PerToken, mask: TokenMask) -> PerSequence:
    """``exp(-mean logprob)`` over masked tokens."""
    return (-masked_mean(logprob, mask)).exp()


def gltr_fractions(bucket: PerTokenInt, mask: TokenMask, n_buckets: int = 4) -> torch.Tensor:
    """Fraction of masked tokens in each GLTR bucket: ``[batch, n]`` -> ``[batch, n_buckets]``."""
    onehot = torch.nn.functional.one_hot(bucket.clamp(0, n_buckets - 1), n_buckets).float()
    onehot = onehot * mask.unsqueeze(-1)
    count = mask.sum(-1, keepdim=True)
    return torch.where(count > 0, onehot.sum(1) / count.clamp(min=1), torch.nan)

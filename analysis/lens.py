"""Logit lens: each layer's residual stream read out through the model's final norm and head.

Layers follow ``output_hidden_states`` indexing: layer 0 is the embedding output, layer ``i``
the residual stream after decoder block ``i - 1``, all taken *before* the final norm (so the
last layer read through norm + head reproduces the model's own logits). The readout is the
expensive part (one head matmul per layer and position), so it runs over chunks of positions
and of the vocabulary with online (rescaled) accumulators: memory stays at about
``layers x position_chunk x vocab_chunk`` floats whatever the run length or vocabulary size,
and every statistic comes out of a single pass over the vocabulary.

Conventions (shared with :mod:`analysis.logits`): ``rank`` is 1 + the number of vocabulary
entries with a strictly larger logit (ties count in the token's favour, so rank 1 = top-1);
``lens_kl_final`` is KL(final || layer) in nats, the direction the tuned-lens paper uses (how
much the final distribution is surprised by the layer's reading).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_ELEMENTS = 1 << 24  # logits held at once (~64 MB in float32), per temporary


@dataclass
class LensResult:
    """Per-layer readings of a run's positions (``L`` layers, ``T`` positions, ``k`` top).

    Attributes:
        rank: ``[L, T]`` int64 1-based rank of the target token in each layer's reading.
        prob: ``[L, T]`` float32 probability of the target token.
        top_ids: ``[L, T, k]`` int64 most probable token ids, most probable first.
        top_probs: ``[L, T, k]`` float32 their probabilities.
        kl_final: ``[L, T]`` float32 KL(final || layer) in nats (0 on the last layer).
    """

    rank: Tensor
    prob: Tensor
    top_ids: Tensor
    top_probs: Tensor
    kl_final: Tensor

    @property
    def decided_layer(self) -> Tensor:
        """``[T]`` see :func:`decided_layer`."""
        return decided_layer(self.rank)

    @property
    def layer_kl(self) -> Tensor:
        """``[L]`` mean KL(final || layer) over positions (the per-layer ``lens_kl_final``)."""
        return self.kl_final.mean(dim=1)


def decided_layer(rank: Tensor) -> Tensor:
    """First layer from which the target stays top-1 through the last layer.

    Args:
        rank: ``[L, T]`` 1-based ranks.

    Returns:
        ``[T]`` int64 layer index, or -1 where the last layer does not rank the target first
        (a sampled token that was never the argmax has no deciding layer).
    """
    top = rank == 1  # [L, T]
    # stays_top[l] = top at l and at every later layer: a reversed cumulative product
    stays = torch.flip(torch.cumprod(torch.flip(top, [0]).to(torch.int64), dim=0), [0])
    first = torch.argmax(stays, dim=0)  # first 1 (0 when the column is all zero)
    return torch.where(stays[-1].bool(), first, torch.full_like(first, -1))


def lens(
    resid: Tensor,
    targets: Tensor,
    norm: Callable[[Tensor], Tensor],
    head_weight: Tensor,
    head_bias: Tensor | None = None,
    *,
    top_k: int = 5,
    position_chunk: int | None = None,
    vocab_chunk: int = 8192,
    max_elements: int = DEFAULT_ELEMENTS,
) -> LensResult:
    """Read every layer's residual stream through ``norm`` and the LM head.

    Args:
        resid: ``[L, T, d]`` residual streams (before the final norm) at the positions whose
            next token is ``targets`` (position ``t`` predicts ``targets[t]``).
        targets: ``[T]`` int64 token ids actually produced.
        norm: the model's final norm, applied to ``[..., d]``.
        head_weight: ``[V, d]`` unembedding matrix.
        head_bias: ``[V]`` head bias, if the model has one.
        top_k: alternatives kept per layer and position.
        position_chunk: positions per chunk (default: the most that keep
            ``L * position_chunk * vocab_chunk <= max_elements``).
        vocab_chunk: vocabulary entries per chunk.
        max_elements: logits held at once when ``position_chunk`` is not given.

    Returns:
        A :class:`LensResult`; statistics are computed in float32 whatever the model dtype.
    """
    n_layers, n_pos, _ = resid.shape
    vocab = head_weight.shape[0]
    vocab_chunk = max(1, min(vocab_chunk, vocab))
    top_k = max(1, min(top_k, vocab))
    if position_chunk is None:
        position_chunk = max(1, max_elements // max(1, n_layers * vocab_chunk))
    parts = [
        _lens_positions(
            resid[:, start : start + position_chunk],
            targets[start : start + position_chunk],
            norm,
            head_weight,
            head_bias,
            top_k,
            vocab_chunk,
        )
        for start in range(0, n_pos, position_chunk)
    ]
    if not parts:
        empty = resid.new_zeros((n_layers, 0), dtype=torch.float32)
        ids = torch.zeros((n_layers, 0, top_k), dtype=torch.int64, device=resid.device)
        return LensResult(
            empty.long(), empty, ids, empty.new_zeros((n_layers, 0, top_k)), empty.clone()
        )
    return LensResult(*(torch.cat([p[i] for p in parts], dim=1) for i in range(5)))


@torch.no_grad()
def _lens_positions(
    resid: Tensor,
    targets: Tensor,
    norm: Callable[[Tensor], Tensor],
    weight: Tensor,
    bias: Tensor | None,
    top_k: int,
    vocab_chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One chunk of positions: ``resid [L, Tc, d]`` -> the five :class:`LensResult` fields."""
    h = norm(resid).to(weight.dtype)  # [L, Tc, d]
    n_layers, n_pos, _ = h.shape
    dev = h.device
    target_logit = torch.einsum("ltd,td->lt", h, weight[targets]).float()  # [L, Tc]
    if bias is not None:
        target_logit = target_logit + bias[targets].float()
    # per layer: the log-sum-exp, merged over vocabulary chunks with logaddexp; for
    # KL(final || layer) = sum_v p_f (l_f - l_layer) - lse_f + lse_layer, the final layer's
    # exp(l_f - m_f) (its running max m_f) weighted sum b of every layer's logits, rescaled
    # when m_f moves: one contraction, not an [L, Tc, Vc] temporary. The final layer's own row
    # b[-1] is its sum of p_f l_f, so its KL is exactly 0.
    lse = torch.full((n_layers, n_pos), -torch.inf, device=dev)
    m_f = torch.full((n_pos,), -torch.inf, device=dev)
    s_f = torch.zeros(n_pos, device=dev)
    b = torch.zeros((n_layers, n_pos), device=dev)
    above = torch.zeros((n_layers, n_pos), dtype=torch.int32, device=dev)
    top_vals = torch.full((n_layers, n_pos, top_k), -torch.inf, device=dev)
    top_ids = torch.zeros((n_layers, n_pos, top_k), dtype=torch.int64, device=dev)
    rows = torch.arange(n_pos, device=dev)
    for v0 in range(0, weight.shape[0], vocab_chunk):
        w = weight[v0 : v0 + vocab_chunk]
        logits = (h @ w.T).float()  # [L, Tc, Vc]
        if bias is not None:
            logits = logits + bias[v0 : v0 + vocab_chunk].float()
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
        final = logits[-1]
        new_m = torch.maximum(m_f, final.amax(dim=-1))
        scale = torch.exp(m_f - new_m)  # exp(-inf) = 0 on the first chunk
        p_f = torch.exp(final - new_m[:, None])  # [Tc, Vc]
        s_f = s_f * scale + p_f.sum(dim=-1)
        b = b * scale + torch.einsum("tv,ltv->lt", p_f, logits)
        m_f = new_m
        # an int32 count is about twice as fast as a bool sum into int64 on CPU
        above += (logits > target_logit[..., None]).sum(dim=-1, dtype=torch.int32)
        # the target's own column must not count: its chunk logit and the gathered one may
        # differ in the last bit, which would otherwise rank a token below itself
        inside = (targets >= v0) & (targets < v0 + w.shape[0])
        if bool(inside.any()):
            col = (targets - v0).clamp(0, w.shape[0] - 1)
            own = logits[:, rows, col]  # [L, Tc]
            above -= ((own > target_logit) & inside[None, :]).to(torch.int32)
        k = min(top_k, logits.shape[-1])
        vals, idx = logits.topk(k, dim=-1)
        merged_vals = torch.cat([top_vals, vals], dim=-1)
        merged_ids = torch.cat([top_ids, idx + v0], dim=-1)
        top_vals, order = merged_vals.topk(top_k, dim=-1)
        top_ids = merged_ids.gather(-1, order)
    kl = (b[-1:] - b) / s_f[None, :] - lse[-1] + lse
    return (
        above.to(torch.int64) + 1,
        torch.exp(target_logit - lse),
        top_ids,
        torch.exp(top_vals - lse[..., None]),
        kl.clamp_min(0.0),
    )

"""Everything TokenPrism computes from one teacher-forced forward pass.

:func:`score_forward` takes the logits and hidden states of a batch (right-padded) and returns,
per row, token-level arrays over all positions (position 0 has no prediction and holds NaN /
-1), sequence aggregates over the response tokens, and per-layer effective ranks. The caller
(``backend.runner``) owns the model call; this module only does math on its outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from tokenprism.analysis.geometry import (
    SpectrumMethod,
    erv_era,
    layer_effective_ranks,
    prefix_effective_ranks,
)
from tokenprism.analysis.logits import LogitMetricParams, align_next_token, logit_metrics
from tokenprism.analysis.sequence import gltr_fractions, masked_mean
from tokenprism.analysis.types import Logits, TokenIds, TokenMask
from tokenprism.analysis.windows import WindowMode, window_entropy

HiddenAlignment = Literal["token", "predicting"]


@dataclass(frozen=True)
class ScoringParams:
    """All metric parameters of a scoring pass; stored with every run.

    Attributes:
        logits: parameters of the logit metrics (top-k, kurtosis convention, GLTR edges).
        window: ARES window length w.
        window_mode: ``inclusive`` (paper) or ``following`` (released code), see
            :mod:`analysis.windows`.
        erank_center: mean-centre hidden states before the SVD (VERL: yes).
        erank_method: ``gram`` (fast, VERL's optimised path) or ``svd`` (exact), see
            :func:`analysis.geometry.singular_values`.
        hidden_alignment: which hidden state represents response token k: ``token`` (the state
            at the token's own index, our default: the representation after reading the token)
            or ``predicting`` (the state at index k-1 that predicted it, like VERL's decode-time
            capture).
        erv_stride: prefix stride for ERV / ERA (VERL train.sh: 40).
        erv_max_len: ERV / ERA keep only the last this-many response tokens (VERL: 512).
        layer_metrics: compute per-layer effective rank and ERV / ERA (needs hidden states).
    """

    logits: LogitMetricParams = field(default_factory=LogitMetricParams)
    window: int = 4
    window_mode: WindowMode = "inclusive"
    erank_center: bool = True
    erank_method: SpectrumMethod = "gram"
    hidden_alignment: HiddenAlignment = "token"
    erv_stride: int = 40
    erv_max_len: int = 512
    layer_metrics: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoredSequence:
    """Scores of one row, on CPU.

    Token arrays have one entry per input position ``[T]`` (``top_ids``/``top_probs``:
    ``[T, k]``); position 0 and padding carry NaN (floats) or -1 (ints).

    Attributes:
        response_mask: ``[T]`` bool, tokens that count for sequence aggregates (response
            tokens that have a prediction).
        token: float/int token metrics by name (``logprob``, ``entropy``, ``rank``, ...).
        sequence: sequence aggregates by name.
        layers: per-layer metrics by name, each ``[n_layers]`` (index 0 = embeddings).
    """

    length: int
    response_mask: Tensor
    token: dict[str, Tensor]
    top_ids: Tensor
    top_probs: Tensor
    sequence: dict[str, float]
    layers: dict[str, Tensor]


def _pad_front(x: Tensor, fill: float | int) -> Tensor:
    """Prepend one position (the unpredicted first token) along dim 1."""
    pad = torch.full((x.shape[0], 1, *x.shape[2:]), fill, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x], dim=1)


def score_forward(
    logits: Logits,
    hidden_states: tuple[Tensor, ...] | None,
    input_ids: TokenIds,
    attention_mask: TokenMask,
    response_mask: TokenMask,
    params: ScoringParams,
    step_positions: list[list[int]] | None = None,
) -> list[ScoredSequence]:
    """Compute every one-pass metric for a right-padded batch.

    Args:
        logits: ``[batch, T, vocab]`` raw logits of the forward pass.
        hidden_states: ``L+1`` tensors ``[batch, T, d_model]`` (HF ``output_hidden_states``);
            ``None`` skips layer metrics.
        input_ids: ``[batch, T]`` input token ids.
        attention_mask: ``[batch, T]`` True on real tokens (right padding).
        response_mask: ``[batch, T]`` True on response tokens (the part being analysed).
        params: metric parameters.
        step_positions: per row, token positions of reasoning-step onsets (ASAP). ``None`` or
            an empty list skips step metrics for that row.

    Returns:
        One :class:`ScoredSequence` per row, on CPU.

    Precision and transfers: logits and hidden states may be bfloat16 / float16 (autocast or
    half-precision weights); every metric upcasts them to float32 on their device first (the
    logits chunk by chunk, see :func:`analysis.logits.logit_metrics`, so a bf16 batch never
    needs a full float32 copy of ``[batch, T, vocab]``). Results reach the host in one copy per
    tensor for the whole batch, never per row, token or position.
    """
    attention_mask = attention_mask.bool()
    response_mask = response_mask.bool() & attention_mask
    aligned_logits, targets = align_next_token(logits, input_ids)
    n_real = [int(n) for n in attention_mask.sum(-1).tolist()]
    lengths = [max(0, n - 1) for n in n_real]
    lm = logit_metrics(aligned_logits, targets, params.logits, lengths)
    counted = response_mask[:, 1:]  # tokens with a prediction that belong to the response

    win = window_entropy(lm.entropy, counted, window=params.window, mode=params.window_mode)
    bucket = lm.gltr_bucket(params.logits.gltr_edges)
    fractions = gltr_fractions(bucket, counted, len(params.logits.gltr_edges) + 1)
    lp_mean = masked_mean(lm.logprob, counted)
    seq_values = {
        "geometric_mean_confidence": lp_mean.exp(),
        "mean_prob": masked_mean(lm.prob, counted),
        "perplexity": (-lp_mean).exp(),
        "mean_entropy": masked_mean(lm.entropy, counted),
        "mean_kurtosis": masked_mean(lm.kurtosis, counted),
        "gltr_top10": fractions[:, 0],
        "gltr_top100": fractions[:, 1],
        "gltr_top1000": fractions[:, 2],
        "gltr_rest": fractions[:, 3:].sum(-1),
        "n_tokens": counted.sum(-1).float(),
    }

    valid = _pad_front(counted, False)
    floats = {
        "logprob": lm.logprob,
        "prob": lm.prob,
        "surprisal_bits": lm.surprisal_bits,
        "entropy": lm.entropy,
        "margin": lm.margin,
        "kurtosis": lm.kurtosis,
        "window_entropy": win,
    }
    ints = {"rank": lm.rank, "gltr_bucket": bucket}
    real = _pad_front(attention_mask[:, 1:], False)
    token_full: dict[str, Tensor] = {}
    for name, value in floats.items():
        token_full[name] = torch.where(real, _pad_front(value.float(), float("nan")), torch.nan)
    for name, value in ints.items():
        token_full[name] = torch.where(real, _pad_front(value, -1), -1)
    top_ids = _pad_front(lm.top_ids, -1).cpu()
    top_probs = _pad_front(lm.top_probs, float("nan")).cpu()
    token_host = {k: v.cpu() for k, v in token_full.items()}
    valid_host = valid.cpu()
    seq_names = list(seq_values)
    seq_rows = torch.stack([seq_values[k] for k in seq_names], dim=1).cpu().tolist()
    layer_rows = _batch_layer_metrics(hidden_states, response_mask, params)

    out: list[ScoredSequence] = []
    for b, length in enumerate(n_real):
        token = {k: v[b, :length] for k, v in token_host.items()}
        sequence = dict(zip(seq_names, seq_rows[b], strict=True))
        steps = sorted({p for p in (step_positions[b] if step_positions else []) if 0 < p < length})
        surprisal = torch.full((length,), float("nan"))
        sequence["mean_step_first_surprisal"] = float("nan")
        if steps:
            idx = torch.tensor(steps)
            surprisal[idx] = -token["logprob"][idx]
            sequence["mean_step_first_surprisal"] = float(surprisal[idx].mean())
        sequence["n_steps"] = float(len(steps))
        token["step_first_surprisal"] = surprisal
        layers: dict[str, Tensor] = {}
        if layer_rows is not None:
            ranks, prefixes = layer_rows[b]
            layers = {"effective_rank": ranks}
            sequence["erv"], sequence["era"] = erv_era(prefixes)
        out.append(
            ScoredSequence(
                length=length,
                response_mask=valid_host[b, :length],
                token=token,
                top_ids=top_ids[b, :length],
                top_probs=top_probs[b, :length],
                sequence=sequence,
                layers=layers,
            )
        )
    return out


def _batch_layer_metrics(
    hidden_states: tuple[Tensor, ...] | None, response_mask: Tensor, params: ScoringParams
) -> list[tuple[Tensor, Tensor]] | None:
    """Per row, ``(effective rank per layer [L+1], prefix effective ranks [K])`` on CPU.

    The spectra are computed on the hidden states' device (in float32, see
    :mod:`analysis.geometry`); the response positions are read from a host copy of the mask
    and all results come back in one transfer for the batch.
    """
    if hidden_states is None or not params.layer_metrics:
        return None
    mask_host = response_mask.cpu()
    ranks, prefixes = [], []
    for row in range(mask_host.shape[0]):
        positions = mask_host[row].nonzero().squeeze(-1)
        if params.hidden_alignment == "predicting":
            positions = positions[positions > 0] - 1
        index = positions.to(hidden_states[0].device)
        stacked = torch.stack([h[row, index] for h in hidden_states])  # [layer, n, d_model]
        ranks.append(
            layer_effective_ranks(stacked, center=params.erank_center, method=params.erank_method)
        )
        prefixes.append(
            prefix_effective_ranks(
                stacked[-1],
                stride=params.erv_stride,
                max_len=params.erv_max_len,
                center=params.erank_center,
                method=params.erank_method,
            )
        )
    sizes = [r.numel() for r in ranks] + [p.numel() for p in prefixes]
    flat = [t.clone() for t in torch.cat([*ranks, *prefixes]).cpu().split(sizes)]
    n = len(ranks)
    return list(zip(flat[:n], flat[n:], strict=True))

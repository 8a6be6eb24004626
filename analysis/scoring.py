"""Everything TokenPrism computes from one teacher-forced forward pass.

:func:`score_forward` takes the logits and hidden states of a batch (right-padded) and returns,
per row, token-level arrays over all positions (position 0 has no prediction and holds NaN /
-1), sequence aggregates over the response tokens, and per-layer effective ranks. The caller
(``backend.runner``) owns the model call; this module only does math on its outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from tokenprism.analysis.geometry import (
    SpectrumMethod,
    effective_rank,
    erv_era,
    layer_effective_ranks,
    prefix_effective_ranks,
)
from tokenprism.analysis.logits import (
    LogitMetricParams,
    LogitMetrics,
    align_next_token,
    head_logit_metrics,
    logit_metrics,
)
from tokenprism.analysis.sequence import gltr_fractions, masked_mean
from tokenprism.analysis.types import Logits, TokenIds, TokenMask
from tokenprism.analysis.windows import WindowMode, window_entropy

HiddenAlignment = Literal["token", "predicting"]
LayerScope = Literal["final", "all"]
HeadFn = Callable[[Tensor], Tensor]


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
        layer_metrics: compute hidden-state geometry (effective rank, ERV / ERA).
        layers: ``final`` (default): the paper's quantities, effective rank / ERV / ERA of the
            final layer only (stored as the last layer's ``effective_rank``); ``all``: the
            effective rank of every layer too (embeddings + each block; CLI ``--layers all``).
            Every-layer ranks cost ~30 float64 eigen-decompositions per text, several times
            the 10 % overhead budget of the default scoring, so they are one flag away.
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
    layers: LayerScope = "final"

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


@dataclass(frozen=True)
class View:
    """One scored unit inside a batch row: the row's first ``length`` tokens.

    A plain text is one view over its whole row; a conversation scored in one pass has one
    view per assistant turn (the turn's rendering is a token prefix of the row), so each
    turn gets exactly the metrics a pass over that prefix alone would give (causal model).

    Attributes:
        row: batch row.
        length: real tokens of the view (a prefix of the row).
        response: ``[length]`` bool, the view's analysed (response) tokens.
        steps: token positions of reasoning-step onsets (ASAP), may be empty.
    """

    row: int
    length: int
    response: Tensor
    steps: Sequence[int] = ()


def _pad_front(x: Tensor, fill: float | int) -> Tensor:
    """Prepend one position (the unpredicted first token) along dim 1."""
    pad = torch.full((x.shape[0], 1, *x.shape[2:]), fill, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x], dim=1)


def row_views(
    attention_mask: TokenMask,
    response_mask: TokenMask,
    step_positions: list[list[int]] | None = None,
) -> list[View]:
    """One view per row covering its real tokens (the plain, one-text-per-row case)."""
    n_real = [int(n) for n in attention_mask.bool().sum(-1).tolist()]
    resp = (response_mask.bool() & attention_mask.bool()).cpu()
    return [
        View(b, n, resp[b, :n], step_positions[b] if step_positions else ())
        for b, n in enumerate(n_real)
    ]


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
    aligned_logits, targets = align_next_token(logits, input_ids)
    n_real = [int(n) for n in attention_mask.sum(-1).tolist()]
    lm = logit_metrics(aligned_logits, targets, params.logits, [max(0, n - 1) for n in n_real])
    views = row_views(attention_mask, response_mask, step_positions)
    layers = LayerSource(all_layers=hidden_states, n_layers=len(hidden_states or ()))
    return score_views(lm, views, params, layers if hidden_states is not None else None)


def score_hidden(
    final_hidden: Tensor,
    head: HeadFn,
    input_ids: TokenIds,
    views: list[View],
    params: ScoringParams,
    layers: LayerSource | None,
) -> list[ScoredSequence]:
    """:func:`score_forward` from the final hidden states, never materialising all logits.

    ``head`` (the model's LM head) is applied chunk by chunk over positions
    (:func:`analysis.logits.head_logit_metrics`); each chunk's metrics are computed and the
    chunk dropped. ``views`` may hold several prefixes of one row (a conversation's turns).

    Args:
        final_hidden: ``[batch, T, d_model]`` post-norm final hidden states.
        head: ``[m, d_model]`` -> ``[m, vocab]`` logits.
        input_ids: ``[batch, T]`` input token ids.
        views: what to score (see :class:`View`).
        params: metric parameters.
        layers: hidden-state geometry inputs; ``None`` skips layer metrics.
    """
    lengths = [0] * input_ids.shape[0]
    for v in views:
        lengths[v.row] = max(lengths[v.row], v.length)
    lm = head_logit_metrics(
        final_hidden[:, :-1],
        head,
        input_ids[:, 1:],
        params.logits,
        [max(0, n - 1) for n in lengths],
    )
    return score_views(lm, views, params, layers)


@dataclass
class LayerSource:
    """Hidden-state inputs of the layer metrics.

    Attributes:
        final: ``[batch, T, d_model]`` final-layer (post-norm) states, or None to take
            ``all_layers[-1]``.
        all_layers: every layer (HF ``hidden_states``), when kept.
        ranks: per view, effective rank per layer computed while the forward pass ran
            (forward hooks), for ``layers="all"`` without keeping every layer.
        n_layers: number of hidden-state layers (embeddings + blocks) of the model.
    """

    final: Tensor | None = None
    all_layers: tuple[Tensor, ...] | None = None
    ranks: list[Tensor] | None = None
    n_layers: int = 0

    def final_states(self) -> Tensor:
        if self.final is not None:
            return self.final
        assert self.all_layers is not None
        return self.all_layers[-1]


def _gather_views(lm: LogitMetrics, views: list[View]) -> tuple[LogitMetrics, Tensor, Tensor]:
    """Per-view copies of the row metrics (positions past a view's end hidden), with masks.

    Returns ``(metrics [n_views, n], real [n_views, n] (has a prediction inside the view),
    counted [n_views, n] (also a response token))``.
    """
    dev = lm.logprob.device
    n = lm.logprob.shape[1]
    rows = torch.tensor([v.row for v in views], dtype=torch.long, device=dev)
    picked = LogitMetrics(**{f: getattr(lm, f).index_select(0, rows) for f in _LM_FIELDS})
    real = torch.zeros((len(views), n), dtype=torch.bool)
    counted = torch.zeros((len(views), n), dtype=torch.bool)
    for i, v in enumerate(views):
        real[i, : max(0, v.length - 1)] = True
        counted[i, : max(0, v.length - 1)] = v.response[1 : v.length]
    return picked, real.to(dev), counted.to(dev)


_LM_FIELDS = ("logprob", "entropy", "rank", "margin", "kurtosis", "top_ids", "top_probs")


def score_views(
    row_metrics: LogitMetrics,
    views: list[View],
    params: ScoringParams,
    layers: LayerSource | None,
) -> list[ScoredSequence]:
    """Token, sequence and layer results of each view from its row's logit metrics."""
    if not views:
        return []
    lm, real_pred, counted = _gather_views(row_metrics, views)
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
    real = _pad_front(real_pred, False)
    token_host: dict[str, Tensor] = {}
    for name, value in floats.items():
        full = torch.where(real, _pad_front(value.float(), float("nan")), torch.nan)
        token_host[name] = full.cpu()
    for name, value in ints.items():
        token_host[name] = torch.where(real, _pad_front(value, -1), -1).cpu()
    top_ids = torch.where(real.unsqueeze(-1), _pad_front(lm.top_ids, -1), -1).cpu()
    top_probs = torch.where(
        real.unsqueeze(-1), _pad_front(lm.top_probs, float("nan")), torch.nan
    ).cpu()
    valid_host = _pad_front(counted, False).cpu()
    seq_names = list(seq_values)
    seq_rows = torch.stack([seq_values[k] for k in seq_names], dim=1).cpu().tolist()
    layer_rows = _layer_metrics(layers, views, params)

    out: list[ScoredSequence] = []
    for i, view in enumerate(views):
        length = view.length
        token = {k: v[i, :length] for k, v in token_host.items()}
        sequence = dict(zip(seq_names, seq_rows[i], strict=True))
        _step_metrics(token, sequence, view.steps, length)
        layer_values: dict[str, Tensor] = {}
        if layer_rows is not None:
            ranks, prefixes = layer_rows[i]
            layer_values = {"effective_rank": ranks}
            sequence["erv"], sequence["era"] = erv_era(prefixes)
        out.append(
            ScoredSequence(
                length=length,
                response_mask=valid_host[i, :length],
                token=token,
                top_ids=top_ids[i, :length],
                top_probs=top_probs[i, :length],
                sequence=sequence,
                layers=layer_values,
            )
        )
    return out


def _step_metrics(
    token: dict[str, Tensor], sequence: dict[str, float], steps: Sequence[int], length: int
) -> None:
    """ASAP first-token surprisal at the step onsets, in place."""
    onsets = sorted({p for p in steps if 0 < p < length})
    surprisal = torch.full((length,), float("nan"))
    sequence["mean_step_first_surprisal"] = float("nan")
    if onsets:
        idx = torch.tensor(onsets)
        surprisal[idx] = -token["logprob"][idx]
        sequence["mean_step_first_surprisal"] = float(surprisal[idx].mean())
    sequence["n_steps"] = float(len(onsets))
    token["step_first_surprisal"] = surprisal


def hidden_positions(response: Tensor, alignment: HiddenAlignment) -> Tensor:
    """Row positions whose hidden states represent a view's response tokens (host ``[n]``)."""
    positions = response.nonzero().squeeze(-1)
    if alignment == "predicting":
        positions = positions[positions > 0] - 1
    return positions


def _layer_metrics(
    layers: LayerSource | None, views: list[View], params: ScoringParams
) -> list[tuple[Tensor, Tensor]] | None:
    """Per view, ``(effective rank per layer [L+1], prefix effective ranks [K])`` on CPU.

    With ``layers="final"`` only the last entry of the per-layer vector is computed (the
    others are NaN and not stored). The spectra are computed on the hidden states' device in
    float64 (see :mod:`analysis.geometry`); results come back in one transfer for the batch.
    """
    if layers is None or not params.layer_metrics:
        return None
    final_all = layers.final_states()
    ranks, prefixes = [], []
    for i, view in enumerate(views):
        index = hidden_positions(view.response, params.hidden_alignment).to(final_all.device)
        final = final_all[view.row, index]
        if params.layers == "all" and layers.ranks is not None:
            ranks.append(layers.ranks[i].to(final_all.device).float())
        elif params.layers == "all" and layers.all_layers is not None:
            stacked = torch.stack([h[view.row, index] for h in layers.all_layers])
            ranks.append(
                layer_effective_ranks(
                    stacked, center=params.erank_center, method=params.erank_method
                )
            )
        else:
            row = torch.full((max(1, layers.n_layers),), float("nan"), device=final_all.device)
            row[-1] = effective_rank(final, center=params.erank_center, method=params.erank_method)
            ranks.append(row)
        prefixes.append(
            prefix_effective_ranks(
                final,
                stride=params.erv_stride,
                max_len=params.erv_max_len,
                center=params.erank_center,
                method=params.erank_method,
            )
        )
    sizes = [r.numel() for r in ranks] + [p.numel() for p in prefixes]
    flat = [t.clone() for t in torch.cat([*ranks, *prefixes]).cpu().split(sizes)]
    return list(zip(flat[: len(views)], flat[len(views) :], strict=True))

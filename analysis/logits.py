"""Token-level metrics computed from next-token logits.

Alignment convention (shared by every function here): ``logits[:, t]`` is the distribution
that predicted ``targets[:, t]``. Callers shift once with :func:`align_next_token`, so for a
text of T tokens the metrics cover tokens 1..T-1 and token 0 (no prediction) is left out.

All math runs in float32 whatever the model dtype (see :func:`prob_kurtosis` for why float32
is enough for the fourth moments).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from tokenprism.analysis.types import (
    Logits,
    LogProbs,
    PerToken,
    PerTokenInt,
    TokenIds,
    TopKIds,
    TopKProbs,
)

GLTR_EDGES: tuple[int, ...] = (10, 100, 1000)


def align_next_token(logits: Logits, input_ids: TokenIds) -> tuple[Logits, TokenIds]:
    """Pair each position's logits with the token they predicted.

    Args:
        logits: ``[batch, seq, vocab]`` raw model logits for ``input_ids``.
        input_ids: ``[batch, seq]`` token ids that were fed to the model.

    Returns:
        ``(logits[:, :-1], input_ids[:, 1:])``: ``[batch, seq-1, vocab]`` and ``[batch, seq-1]``.
    """
    return logits[:, :-1], input_ids[:, 1:]


def log_probs(logits: Logits) -> LogProbs:
    """Float32 log-softmax over the vocabulary. ``[batch, seq, vocab]`` -> same shape."""
    return torch.log_softmax(logits.float(), dim=-1)


def target_logprob(logp: LogProbs, targets: TokenIds) -> PerToken:
    """Log-probability of each target token. ``[b, s, v]``, ``[b, s]`` -> ``[b, s]``."""
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logp: LogProbs) -> PerToken:
    """Shannon entropy in nats of each predictive distribution.

    Entries with probability 0 (log-prob ``-inf``, e.g. masked vocabulary) contribute 0, as in
    LM-Polygraph. ``[batch, seq, vocab]`` -> ``[batch, seq]``.
    """
    return _entropy_from(logp.exp(), logp)


def _entropy_from(p: Tensor, logp: Tensor) -> Tensor:
    # 0 * -inf is NaN; those entries are exactly the zero-probability ones and contribute 0.
    return -(p * logp).nan_to_num_(nan=0.0).sum(-1)


def target_rank(logits: Logits, targets: TokenIds) -> PerTokenInt:
    """1-based rank of each target: 1 + number of entries with a strictly larger logit.

    Ties with the target count in its favour, so an argmax tie still gives rank 1.
    ``[b, s, v]``, ``[b, s]`` -> int64 ``[b, s]``.
    """
    chosen = logits.gather(-1, targets.unsqueeze(-1))
    return (logits > chosen).sum(-1) + 1


def top_k(logp: LogProbs, k: int) -> tuple[TopKIds, TopKProbs]:
    """The ``k`` most probable next tokens with their probabilities, most probable first.

    Returns ``([b, s, k]`` ids, ``[b, s, k]`` probabilities``)``.
    """
    values, ids = torch.topk(logp, k=min(k, logp.shape[-1]), dim=-1)
    return ids, values.exp()


def top_margin(top_probs: TopKProbs) -> PerToken:
    """p1 - p2 from sorted top-k probabilities ``[b, s, k>=2]`` -> ``[b, s]``."""
    if top_probs.shape[-1] < 2:
        raise ValueError("margin needs at least the two most probable tokens (k >= 2)")
    return top_probs[..., 0] - top_probs[..., 1]


def prob_kurtosis(logp: LogProbs, *, excess: bool = False) -> PerToken:
    """Kurtosis of each predictive probability vector, treating its |V| entries as samples.

    Park et al. (2025) name "the kurtosis of token distributions" without a formula; we take the
    natural reading: ``mu = 1/|V|``, ``m_k = mean_v (p(v) - mu)^k``, Pearson ``K = m4 / m2^2``
    (``excess=True`` subtracts 3, scipy's default). Larger = more peaked = more confident.
    Values grow with |V|, so they compare only between models sharing a tokenizer.

    Precision: the moments are taken on the centred values directly (no power-sum expansion,
    so no cancellation) in float32, which agrees with a float64 reference to ~1e-5 relative;
    the float64 advice in the literature guards against fp16, where the fourth powers underflow.

    Args:
        logp: ``[batch, seq, vocab]`` log-probabilities.
        excess: subtract 3 (Fisher) instead of returning Pearson kurtosis.

    Returns:
        ``[batch, seq]`` float32; NaN for an exactly uniform distribution (m2 = 0).
    """
    return _kurtosis_from(logp.float().exp(), excess=excess)


def _kurtosis_from(p: Tensor, *, excess: bool) -> Tensor:
    d2 = (p - 1.0 / p.shape[-1]).square_()
    m2 = d2.mean(-1)
    m4 = d2.square_().mean(-1)
    k = m4 / (m2 * m2)
    # A uniform row has equal entries that can still differ from the float32 1/|V| by an ulp,
    # which would give K = 1 from rounding noise instead of the undefined 0/0: make it NaN.
    k = k.masked_fill((p == p[..., :1]).all(-1), float("nan"))
    return k - 3.0 if excess else k


def gltr_bucket(rank: PerTokenInt, edges: tuple[int, ...] = GLTR_EDGES) -> PerTokenInt:
    """GLTR bucket index of each rank: 0 for rank <= edges[0], ..., len(edges) for the rest."""
    bounds = torch.tensor(edges, dtype=rank.dtype, device=rank.device)
    return torch.bucketize(rank, bounds, right=False)


@dataclass(frozen=True)
class LogitMetricParams:
    """Parameters of the logit metrics, stored with every run as provenance.

    Attributes:
        top_k: how many alternatives to keep per position (>= 2, the margin needs two).
        kurtosis_excess: report excess (Fisher) kurtosis instead of Pearson.
        gltr_edges: rank bucket upper bounds (GLTR uses 10 / 100 / 1000).
        chunk_positions: positions whose vocabulary-wide metrics are computed at once. Small
            chunks keep the ``[chunk, vocab]`` temporaries in cache (16 x 49k x 4 B = 3 MB
            fits the shared L3 of a small CPU) and bound peak memory on long texts.
        head_positions: positions the LM head is applied to at once when logits are produced
            chunk by chunk from the final hidden states (:func:`head_logit_metrics`); each
            block re-reads the head's weights, so blocks are larger than ``chunk_positions``.
    """

    top_k: int = 10
    kurtosis_excess: bool = False
    gltr_edges: tuple[int, ...] = GLTR_EDGES
    chunk_positions: int = 16
    head_positions: int = 256


@dataclass
class LogitMetrics:
    """Per-token outputs of :func:`logit_metrics`, each ``[batch, n]`` unless noted.

    ``top_ids``/``top_probs`` are ``[batch, n, k]``.
    """

    logprob: Tensor
    entropy: Tensor
    rank: Tensor
    margin: Tensor
    kurtosis: Tensor
    top_ids: Tensor
    top_probs: Tensor

    @property
    def prob(self) -> Tensor:
        return self.logprob.exp()

    @property
    def surprisal_bits(self) -> Tensor:
        return -self.logprob / math.log(2.0)

    def gltr_bucket(self, edges: tuple[int, ...] = GLTR_EDGES) -> Tensor:
        return gltr_bucket(self.rank, edges)

    @staticmethod
    def empty(batch: int, n: int, k: int, device: torch.device) -> LogitMetrics:
        """NaN / -1 filled outputs ``[batch, n]`` (``[batch, n, k]`` for top-k)."""
        return LogitMetrics(
            logprob=torch.full((batch, n), float("nan"), device=device),
            entropy=torch.full((batch, n), float("nan"), device=device),
            rank=torch.full((batch, n), -1, dtype=torch.long, device=device),
            margin=torch.full((batch, n), float("nan"), device=device),
            kurtosis=torch.full((batch, n), float("nan"), device=device),
            top_ids=torch.full((batch, n, k), -1, dtype=torch.long, device=device),
            top_probs=torch.full((batch, n, k), float("nan"), device=device),
        )

    def write(self, row: int, start: int, part: LogitMetrics) -> None:
        """Copy ``part`` (``[1, c]`` fields) into row ``row`` at positions ``start..start+c``."""
        stop = start + part.logprob.shape[-1]
        for f in fields(LogitMetrics):
            getattr(self, f.name)[row, start:stop] = getattr(part, f.name)[0]


def _chunk_metrics(chunk: Tensor, tgt: Tensor, params: LogitMetricParams) -> LogitMetrics:
    """The reference per-chunk computation (log-softmax, then every metric from it).

    Used by :func:`_fused_chunk` for rows with non-finite logits (masked vocabulary entries
    at ``-inf``, or overflow), where the fused formulas would produce ``0 * -inf``.
    """
    chunk = chunk.float()
    logp = torch.log_softmax(chunk, dim=-1)
    p = logp.exp()
    ids, probs = top_k(logp, params.top_k)
    return LogitMetrics(
        logprob=target_logprob(logp, tgt),
        entropy=_entropy_from(p, logp),
        rank=target_rank(chunk, tgt),
        margin=top_margin(probs),
        kurtosis=_kurtosis_from(p, excess=params.kurtosis_excess),
        top_ids=ids,
        top_probs=probs,
    )


def _fused_chunk(z: Tensor, tgt: Tensor, params: LogitMetricParams) -> tuple[LogitMetrics, Tensor]:
    """Every logit metric of ``[c, vocab]`` logits in few sweeps; ``z`` is overwritten.

    Hand-fused formulas, with ``m = max z`` (the top-1 value), ``e = exp(z - m)``,
    ``S = sum e``: log-sum-exp ``m + log S`` once; ``logprob = z_y - m - log S``;
    ``entropy = log S - sum(e (z - m)) / S``; top-k from one ``topk`` on the raw logits;
    the target rank is read off the top-k values when the target is at least the k-th value
    (every larger logit is then in the top-k), and counted over the vocabulary only for the
    other rows; kurtosis from ``d = e / S - 1/|V|`` (centred, no power-sum expansion).
    Every reduction is a ``sum`` (pairwise, accurate in float32), reusing two ``[c, vocab]``
    buffers. Equal to :func:`_chunk_metrics` within float32 rounding (~1e-6 relative);
    rows with a non-finite logit go through :func:`_chunk_metrics` itself.

    Args:
        z: ``[c, vocab]`` float32 logits (owned: the buffer is reused).
        tgt: ``[c]`` target ids.
        params: metric parameters.

    Returns:
        (:class:`LogitMetrics` with ``[1, c]`` fields, ``[c]`` bool: rows to recompute).
    """
    vocab = z.shape[-1]
    k = min(params.top_k, vocab)
    top_v, top_i = torch.topk(z, k, dim=-1)
    chosen = z.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    rank = (top_v > chosen.unsqueeze(-1)).sum(-1) + 1
    far = (chosen < top_v[:, -1]).nonzero().squeeze(-1)
    if far.numel():
        rank[far] = (z[far] > chosen[far].unsqueeze(-1)).sum(-1) + 1
    m = top_v[:, 0]
    bad = ~torch.isfinite(m)
    # A uniform row has an undefined kurtosis (m2 = 0): NaN, as in _kurtosis_from. Only rows
    # whose top-k values are all tied can be uniform, so the full check runs on those alone.
    tied = (top_v[:, 0] == top_v[:, -1]).nonzero().squeeze(-1)
    uniform = tied[z[tied].amin(-1) == m[tied]] if tied.numel() else tied
    z.sub_(m.unsqueeze(-1))
    e = torch.exp(z)
    s = e.sum(-1)
    ez = z.mul_(e).sum(-1)
    bad |= ~torch.isfinite(ez)
    log_s = s.log()
    lse = m + log_s
    top_probs = torch.exp(top_v - lse.unsqueeze(-1))
    neg_mu = torch.full((), -1.0 / vocab, device=z.device)
    d = torch.addcmul(neg_mu, e, s.reciprocal().unsqueeze(-1), out=z)
    d2 = torch.mul(d, d, out=e)
    m2 = d2.sum(-1) / vocab
    m4 = d2.square_().sum(-1) / vocab
    kurt = m4 / (m2 * m2)
    kurt[uniform] = torch.nan
    if params.kurtosis_excess:
        kurt = kurt - 3.0
    out = LogitMetrics(
        logprob=(chosen - lse).unsqueeze(0),
        entropy=(log_s - ez / s).unsqueeze(0),
        rank=rank.unsqueeze(0),
        margin=(top_probs[:, 0] - top_probs[:, 1]).unsqueeze(0),
        kurtosis=kurt.unsqueeze(0),
        top_ids=top_i.unsqueeze(0),
        top_probs=top_probs.unsqueeze(0),
    )
    return out, bad


def _metrics_of(z: Tensor, tgt: Tensor, params: LogitMetricParams) -> LogitMetrics:
    """Fused metrics of ``[c, vocab]`` logits (any dtype; not modified)."""
    work = z.float() if z.dtype != torch.float32 else z.clone()
    out, bad = _fused_chunk(work, tgt, params)
    rows = bad.nonzero().squeeze(-1)
    if rows.numel():
        ref = _chunk_metrics(z[rows].unsqueeze(0), tgt[rows].unsqueeze(0), params)
        for f in fields(LogitMetrics):
            getattr(out, f.name)[0, rows] = getattr(ref, f.name)[0]
    return out


def logit_metrics(
    logits: Logits,
    targets: TokenIds,
    params: LogitMetricParams,
    lengths: list[int] | None = None,
) -> LogitMetrics:
    """Every logit-only token metric for aligned ``logits``/``targets`` in one sweep.

    Works through each row in chunks of ``params.chunk_positions`` positions, so the
    vocabulary-wide temporaries stay small and in cache; each chunk computes the
    log-sum-exp once and derives all metrics from the same sweep (:func:`_fused_chunk`).
    With ``lengths`` only the first ``lengths[b]`` positions of row ``b`` are computed (right
    padding is skipped, which matters for batches of short texts); the rest hold NaN
    (floats) or -1 (ints).

    Args:
        logits: ``[batch, n, vocab]`` logits, already aligned (see :func:`align_next_token`).
        targets: ``[batch, n]`` the tokens those logits predicted.
        params: metric parameters.
        lengths: valid positions per row; ``None`` means all ``n``.

    Returns:
        :class:`LogitMetrics` with float32 / int64 tensors ``[batch, n]`` (``[batch, n, k]``
        for the top-k fields) on the logits' device.
    """
    if params.top_k < 2:
        raise ValueError("top_k must be at least 2")
    batch, n, vocab = logits.shape
    out = LogitMetrics.empty(batch, n, min(params.top_k, vocab), logits.device)
    step = max(1, params.chunk_positions)
    for row in range(batch):
        valid = n if lengths is None else min(n, max(0, lengths[row]))
        for start in range(0, valid, step):
            stop = min(valid, start + step)
            part = _metrics_of(logits[row, start:stop], targets[row, start:stop], params)
            out.write(row, start, part)
    return out


def head_logit_metrics(
    hidden: Tensor,
    head: Callable[[Tensor], Tensor],
    targets: TokenIds,
    params: LogitMetricParams,
    lengths: list[int],
) -> LogitMetrics:
    """:func:`logit_metrics` without ever materialising the whole ``[batch, n, vocab]`` logits.

    The LM head is applied to blocks of ``params.head_positions`` final hidden states; each
    block's logits are swept in chunks of ``params.chunk_positions`` and dropped, so peak
    memory is one ``[head_positions, vocab]`` block whatever the text length (8,192 tokens x
    49k vocabulary would be 1.6 GB of float32 logits).

    Args:
        hidden: ``[batch, n, d_model]`` final hidden states at the predicting positions
            (already aligned: ``hidden[:, t]`` predicts ``targets[:, t]``).
        head: maps ``[m, d_model]`` to ``[m, vocab]`` logits (the model's LM head).
        targets: ``[batch, n]`` the tokens those states predicted.
        params: metric parameters.
        lengths: valid positions per row.

    Returns:
        :class:`LogitMetrics` as :func:`logit_metrics` gives for ``head(hidden)``.
    """
    if params.top_k < 2:
        raise ValueError("top_k must be at least 2")
    batch, n = targets.shape
    out: LogitMetrics | None = None
    block, step = max(1, params.head_positions), max(1, params.chunk_positions)
    for row in range(batch):
        valid = min(n, max(0, lengths[row]))
        for b0 in range(0, valid, block):
            b1 = min(valid, b0 + block)
            logits = head(hidden[row, b0:b1]).float()  # metrics in float32 whatever the pass
            if out is None:
                k = min(params.top_k, logits.shape[-1])
                out = LogitMetrics.empty(batch, n, k, logits.device)
            for start in range(b0, b1, step):
                stop = min(b1, start + step)
                part = _metrics_of(logits[start - b0 : stop - b0], targets[row, start:stop], params)
                out.write(row, start, part)
            del logits
    if out is None:  # nothing valid: the vocabulary size is only needed for the top-k width
        out = LogitMetrics.empty(batch, n, params.top_k, hidden.device)
    return out

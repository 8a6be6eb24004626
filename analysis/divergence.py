"""Divergence between two models' next-token distributions on the same tokens (model diff).

Alignment convention as in :mod:`analysis.logits`: ``logits_a[:, t]`` and ``logits_b[:, t]``
are the two distributions that predicted ``targets[:, t]``. Every function is pure and runs in
float32 whatever the model dtype.

Definitions (natural logs, so every divergence is in nats):

- ``kl``: KL(P_A || P_B) = sum_v p_A(v) (log p_A(v) - log p_B(v)) over the full vocabulary.
  Terms with p_A(v) = 0 contribute 0; p_B(v) = 0 where p_A(v) > 0 gives +inf.
- ``kl_rev``: KL(P_B || P_A).
- ``js``: Jensen-Shannon divergence 0.5 KL(P_A || M) + 0.5 KL(P_B || M), M = (P_A + P_B) / 2;
  in [0, ln 2].
- ``delta_logprob``: log p_B(token) - log p_A(token) of the token actually there.
- ``top1_agree``: 1.0 when both argmaxes are the same vocabulary entry, else 0.0.
- ``rank_b``: 1 + number of entries with a strictly larger B logit than the token (B's rank).

The vocabulary-wide terms need ``[positions, vocab]`` temporaries; they are computed a chunk
of positions at a time (``chunk_positions``), so peak memory is bounded by the chunk, not by
the text length. A model compared with itself gives exactly 0 for ``kl``, ``kl_rev`` and
``js`` (the log-ratio is exactly 0 entry by entry, see :func:`_chunk`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from tokenprism.analysis.types import Logits, TokenIds

_LN2 = math.log(2.0)
DIVERGENCE_METRICS: tuple[str, ...] = (
    "kl",
    "kl_rev",
    "js",
    "delta_logprob",
    "top1_agree",
    "rank_b",
    "logprob_b",
)


@dataclass
class Divergence:
    """Per-token divergences, each ``[batch, seq]`` float32 (``rank_b`` int64).

    ``logprob_a`` / ``logprob_b`` are the two log-probabilities of the token
    (``delta_logprob = logprob_b - logprob_a``).
    """

    kl: Tensor
    kl_rev: Tensor
    js: Tensor
    delta_logprob: Tensor
    top1_agree: Tensor
    rank_b: Tensor
    logprob_a: Tensor
    logprob_b: Tensor


def _weighted(p: Tensor, diff: Tensor) -> Tensor:
    # p * diff with the 0 * (+-inf or NaN) terms of zero-probability entries set to 0; a
    # positive p times +inf stays +inf (KL really is infinite there).
    return torch.where(p > 0, p * diff, torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)


def _dot(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise dot products of ``[n, v]`` tensors, ``[n]``: one fused pass, no temporary
    (``vecdot`` measured ~2x faster than ``bmm`` and ``(x * y).sum(-1)`` on CPU)."""
    return torch.linalg.vecdot(x, y)


# ln 2 as softplus computes it at 0, so the JS term below is exactly 0 where d == 0
_SOFTPLUS_0 = float(torch.nn.functional.softplus(torch.zeros(1))[0])


def _divergences_exact(la: Tensor, lb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """KL, reverse KL and JS entry by entry (handles -inf log-probabilities)."""
    pa, pb = la.exp(), lb.exp()
    d = la - lb
    lm = torch.where(d == 0, la, torch.logaddexp(la, lb) - _LN2)
    js = 0.5 * _weighted(pa, la - lm) + 0.5 * _weighted(pb, lb - lm)
    return _weighted(pa, d), _weighted(pb, -d), js


def _divergences(la: Tensor, lb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """KL, reverse KL and JS of ``[n, vocab]`` log-probabilities in few vocabulary passes.

    With d = log p_A - log p_B: KL = <p_A, d>, KL_rev = -<p_B, d>, and since
    log p_A - log M = ln 2 - softplus(-d) =: g and log p_B - log M = g - d,
    JS = (<p_A + p_B, g> + KL_rev) / 2. Each term is exactly 0 where d == 0, so a model
    compared with itself gives exactly 0. Rows with a -inf log-probability (masked entries:
    0 * inf) come out NaN here and are recomputed entry by entry.
    """
    d = la - lb
    pa, pb = la.exp(), lb.exp()
    kl, kl_rev = _dot(pa, d), -_dot(pb, d)
    g = torch.nn.functional.softplus(d.neg_()).neg_().add_(_SOFTPLUS_0)  # d is -d from here
    js = 0.5 * (_dot(pa.add_(pb), g) + kl_rev)
    bad = ~(torch.isfinite(kl) & torch.isfinite(kl_rev) & torch.isfinite(js))
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(-1)
        ekl, erev, ejs = _divergences_exact(la[rows], lb[rows])
        kl, kl_rev, js = (
            kl.index_put((rows,), ekl),
            kl_rev.index_put((rows,), erev),
            js.index_put((rows,), ejs),
        )
    return kl, kl_rev, js


def _chunk(a: Tensor, b: Tensor, tgt: Tensor) -> tuple[Tensor, ...]:
    """All divergences of ``[n, vocab]`` logits ``a``, ``b`` and ``[n]`` targets."""
    la = torch.log_softmax(a.float(), dim=-1)
    lb = torch.log_softmax(b.float(), dim=-1)
    kl, kl_rev, js = _divergences(la, lb)
    ta = la.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    tb = lb.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    agree = (a.argmax(-1) == b.argmax(-1)).float()
    chosen = b.gather(-1, tgt.unsqueeze(-1))
    rank_b = (b > chosen).sum(-1) + 1
    return kl, kl_rev, js, tb - ta, agree, rank_b, ta, tb


def pair_divergence(
    logits_a: Logits, logits_b: Logits, targets: TokenIds, *, chunk_positions: int = 64
) -> Divergence:
    """Per-token divergences between two models' distributions over the same vocabulary.

    Args:
        logits_a: ``[batch, seq, vocab]`` logits of model A (aligned: position t predicted
            ``targets[:, t]``).
        logits_b: ``[batch, seq, vocab]`` logits of model B on the same tokens.
        targets: ``[batch, seq]`` the tokens that were there.
        chunk_positions: rows (batch x seq flattened) processed at once; bounds the
            ``[chunk, vocab]`` temporaries.

    Returns:
        A :class:`Divergence` of ``[batch, seq]`` tensors.

    Raises:
        ValueError: shapes differ (different vocabularies need :func:`shared_vocab_logits`).
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(
            f"logits shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}"
        )
    if chunk_positions < 1:
        raise ValueError("chunk_positions must be >= 1")
    batch, seq, vocab = logits_a.shape
    a = logits_a.reshape(-1, vocab)
    b = logits_b.reshape(-1, vocab).to(a.device)
    tgt = targets.reshape(-1).to(a.device)
    parts = [
        _chunk(a[i : i + chunk_positions], b[i : i + chunk_positions], tgt[i : i + chunk_positions])
        for i in range(0, a.shape[0], chunk_positions)
    ]
    if not parts:  # no positions: empty tensors of the right shape
        empty = torch.zeros((batch, seq), dtype=torch.float32, device=a.device)
        return Divergence(*(empty.clone() for _ in fields(Divergence)))
    columns = [torch.cat(col).reshape(batch, seq) for col in zip(*parts, strict=True)]
    return Divergence(*columns)


def shared_vocab_logits(logits: Tensor, index: Tensor) -> Tensor:
    """Logits restricted to the entries ``index`` (``[..., vocab]`` -> ``[..., len(index)]``).

    Two tokenizers' vocabularies are compared on the token strings they share: restricting
    both sides' logits to those entries (same order) and applying :func:`pair_divergence`
    renormalises each distribution over the shared strings (log-softmax of the subset).
    """
    return logits.index_select(-1, index.to(logits.device))


def shared_vocab_index(vocab_a: list[str], vocab_b: list[str]) -> tuple[Tensor, Tensor]:
    """Ids of the surface strings both vocabularies hold, in matching order.

    A string held by several ids of one vocabulary is matched through its first id. Returns
    ``([n] ids in A, [n] ids in B)`` int64.
    """
    first_b: dict[str, int] = {}
    for i, s in enumerate(vocab_b):
        first_b.setdefault(s, i)
    seen: set[str] = set()
    ia, ib = [], []
    for i, s in enumerate(vocab_a):
        if s in first_b and s not in seen:
            seen.add(s)
            ia.append(i)
            ib.append(first_b[s])
    return torch.tensor(ia, dtype=torch.long), torch.tensor(ib, dtype=torch.long)


@dataclass(frozen=True)
class SpanMatch:
    """How one token of A lines up with B's tokens (character offsets).

    Attributes:
        b_tokens: indices of B's tokens whose spans cover the segment ending at this token.
        exact: A's token and a single B token have the same start and end (KL comparable).
        reason: why the token could not be compared (None when it could).
        segment_start: index of the first A token of the segment compared here (this token's
            own index unless one B token spans several A tokens).
    """

    b_tokens: tuple[int, ...]
    exact: bool
    reason: str | None
    segment_start: int | None = None


def align_spans(spans_a: list[tuple[int, int]], spans_b: list[tuple[int, int]]) -> list[SpanMatch]:
    """Align two segmentations of the same characters by their offsets.

    A *segment* is a shortest run of characters at whose both ends A and B have a token
    boundary. A segment holding one A token is compared on that token: its B log-probability
    is the sum over the B tokens covering it. A segment holding several A tokens (one B token
    spans them) is reported on its last A token; the others get a reason. Tokens with empty
    spans (special markers) or characters B does not cover cannot be compared.

    Args:
        spans_a: ``[(start, end)]`` character spans of A's tokens, in order.
        spans_b: the same for B's tokens.

    Returns:
        One :class:`SpanMatch` per A token.
    """
    starts_b = {s: j for j, (s, e) in enumerate(spans_b) if e > s}
    ends_b = {e: j for j, (s, e) in enumerate(spans_b) if e > s}
    out: list[SpanMatch] = []
    seg_start: int | None = None  # index of the first A token of the open segment
    for i, (s, e) in enumerate(spans_a):
        if e <= s:
            out.append(SpanMatch((), False, "empty span (special token)"))
            seg_start = None
            continue
        if seg_start is None:
            if s not in starts_b:
                out.append(SpanMatch((), False, "starts inside a token of B"))
                continue
            seg_start = i
        if e not in ends_b:
            out.append(SpanMatch((), False, "ends inside a token of B (reported on a later token)"))
            continue
        first, last = starts_b[spans_a[seg_start][0]], ends_b[e]
        covered = tuple(range(first, last + 1))
        exact = seg_start == i and first == last and spans_b[first] == (s, e)
        # earlier A tokens of a longer segment already say why; this one carries the sum
        out.append(SpanMatch(covered, exact, None, seg_start))
        seg_start = None
    return out


def summarize(
    kl: np.ndarray, js: np.ndarray, delta: np.ndarray, agree: np.ndarray
) -> dict[str, float | int | None]:
    """Summary of per-token divergences (NaN entries, i.e. not compared, are left out).

    Percentiles use numpy's default linear interpolation.
    """
    kl = np.asarray(kl, dtype=np.float64)
    ok = np.isfinite(kl)
    k = kl[ok]
    out: dict[str, float | int | None] = {"n_tokens": int(kl.size), "n_compared": int(ok.sum())}
    if k.size:
        out.update(
            kl_mean=float(k.mean()),
            kl_p50=float(np.percentile(k, 50)),
            kl_p90=float(np.percentile(k, 90)),
            kl_p99=float(np.percentile(k, 99)),
            kl_max=float(k.max()),
        )
    else:
        out.update(kl_mean=None, kl_p50=None, kl_p90=None, kl_p99=None, kl_max=None)
    for name, values in (("js_mean", js), ("delta_logprob_mean", delta), ("top1_agree", agree)):
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        out[name] = float(v.mean()) if v.size else None
    return out


def most_moved(kl: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest finite KL values, largest first (ties: earlier first)."""
    kl = np.asarray(kl, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(kl))
    order = np.argsort(-kl[idx], kind="stable")
    return idx[order[:n]]

"""Token Hidden Reward (THR; Deng et al., arXiv 2510.03669), metric-definitions §11.

For a GRPO group of G responses to one prompt with binary rewards ``r_i``, THR scores each
response token by its first-order influence, through a hypothetical GRPO step, on the
likelihood of the group's correct responses ``P = {i : r_i = 1}``:

* prediction error ``g_{i,k} = e_{y_{i,k}} - pi(. | x, y_{i,<k})``;
* ``THR_{j,k'} = (2 r_j - 1) sum_{i in P} (1/|y_i|) sum_k <g_{i,k}, g_{j,k'}> <h_{i,k}, h_{j,k'}>``
  with ``h`` the final-layer (post final norm) hidden state at the predicting position.

``(2 r_j - 1)`` is the sign of GRPO's push (+1 correct, -1 incorrect), not the advantage; j runs
over every response, self-pairs included. Positive THR = exploitation (raises the correct
answers), negative = exploration, ``|THR|`` = strength.

Two vocabularies, chosen by name (:data:`THR_VOCABULARIES`):

* ``"full"`` (the default): the exact first-order influence over the whole vocabulary,
  :func:`thr_full_vocab`. It uses the token x token matrix form of metric-definitions §11,
  ``G_j G_+^T = E_j E_+^T - E_j P_+^T - P_j E_+^T + P_j P_+^T`` (``E`` one-hot rows, ``P``
  next-token distributions), so only ``P_j P_+^T`` touches the vocabulary; it is accumulated
  over vocabulary chunks, with ``P`` recomputed from the final hidden states through the LM
  head, so memory stays bounded whatever the vocabulary or group size. It equals the inner
  product of the per-token gradients of ``log pi`` with respect to the LM head weight (checked
  against ``torch.autograd`` on the tiny model in tests/integration/test_groups_tiny.py).
* ``"group"``: NTHR's cost shortcut (App. 7.4), :func:`thr_scores`: distributions restricted to
  ``V*_x``, the token ids occurring in the group, *without* renormalising, via the exact
  rewrite ``<g, g'><h, h'> = g'^T (g h^T) h'`` with ``M+ = sum_{i in P} (1/|y_i|) sum_k g_{i,k}
  h_{i,k}^T`` (``[V*, d]``). This is *not* the full-vocabulary value: on sampled groups it flips
  the sign of 10-17 % of tokens (issue 22); :func:`thr_agreement` measures how far it is.

The paper's dominant-token threshold is only described as "following Deng et al. (2025)";
:func:`thr_threshold` ports NTHR's rule with two departures (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NO_ANCHOR_REASON = "no correct response in the group: THR needs at least one correct anchor"
EMPTY_ANCHOR_REASON = (
    "every correct response is empty: THR needs at least one non-empty correct anchor"
)


@dataclass
class ResponseFeatures:
    """What THR needs from one teacher-forced forward pass over prompt + response.

    Attributes:
        token_ids: ``[T]`` long, the response tokens ``y_1..y_T``.
        probs: ``[T, V']`` float, ``pi(. | x, y_<k)`` at the predicting position of each token,
            restricted (not renormalised) to the group vocabulary ``vocab`` passed alongside.
        hidden: ``[T, d]`` float, the final-layer hidden state at the predicting position.
        reward: binary verifiable reward, 0 or 1.
    """

    token_ids: Tensor
    probs: Tensor
    hidden: Tensor
    reward: float


def group_vocabulary(responses: Sequence[Tensor]) -> Tensor:
    """``V*_x``: the sorted unique token ids occurring in a group of responses.

    Args:
        responses: token ids of each response, each ``[T_i]`` (may be empty).

    Returns:
        ``[V']`` long, sorted ascending (empty if there are no tokens at all).
    """
    if not responses:
        return torch.empty(0, dtype=torch.long)
    return torch.unique(torch.cat([r.reshape(-1).long() for r in responses]), sorted=True)


def _vocab_positions(token_ids: Tensor, vocab: Tensor) -> Tensor:
    ids = token_ids.long()
    pos = torch.searchsorted(vocab, ids)
    if ids.numel() == 0:
        return pos
    found = vocab.numel() > 0 and bool((vocab[pos.clamp(max=vocab.numel() - 1)] == ids).all())
    if not found:
        missing = sorted(set(ids.tolist()) - set(vocab.tolist()))
        raise ValueError(f"token ids {missing[:10]} are not in the group vocabulary")
    return pos


def prediction_errors(token_ids: Tensor, probs: Tensor, vocab: Tensor) -> Tensor:
    """Prediction-error vectors ``g_k = e_{y_k} - pi(. | x, y_<k)`` over the restricted vocab.

    Args:
        token_ids: ``[T]`` long response tokens; each must occur in ``vocab``.
        probs: ``[T, V']`` next-token probabilities sliced to ``vocab`` (column v is token
            ``vocab[v]``).
        vocab: ``[V']`` sorted unique token ids (see :func:`group_vocabulary`).

    Returns:
        ``[T, V']`` float32.

    Raises:
        ValueError: a token id is missing from ``vocab``, or the shapes disagree.
    """
    t = token_ids.shape[0]
    if token_ids.dim() != 1 or probs.dim() != 2 or probs.shape != (t, vocab.numel()):
        raise ValueError(
            f"expected token_ids [T] and probs [T, {vocab.numel()}], got "
            f"{tuple(token_ids.shape)} and {tuple(probs.shape)}"
        )
    vocab = vocab.to(token_ids.device)
    pos = _vocab_positions(token_ids, vocab)
    g = -probs.float()
    g[torch.arange(t, device=g.device), pos.to(g.device)] += 1.0
    return g


def _check_group(group: Sequence[ResponseFeatures]) -> None:
    dims = {r.hidden.shape[-1] for r in group if r.token_ids.numel() > 0}
    if len(dims) > 1:
        raise ValueError(f"hidden sizes differ within the group: {sorted(dims)}")
    for i, r in enumerate(group):
        if r.reward not in (0, 1):
            raise ValueError(f"response {i}: reward must be 0 or 1, got {r.reward!r}")
        t = r.token_ids.numel()
        if t > 0 and (r.hidden.dim() != 2 or r.hidden.shape[0] != t):
            raise ValueError(f"response {i}: expected hidden [{t}, d], got {tuple(r.hidden.shape)}")


def _no_anchor_reason(group: Sequence[ResponseFeatures]) -> str | None:
    correct = [r for r in group if r.reward == 1]
    if not correct:
        return NO_ANCHOR_REASON
    if all(r.token_ids.numel() == 0 for r in correct):
        return EMPTY_ANCHOR_REASON
    return None


def _nan_scores(group: Sequence[ResponseFeatures]) -> list[Tensor]:
    return [torch.full((r.token_ids.numel(),), math.nan, device=r.hidden.device) for r in group]


def thr_scores(group: Sequence[ResponseFeatures], vocab: Tensor) -> tuple[list[Tensor], str | None]:
    """Group-level Token Hidden Reward of every token of every response (exact, via ``M+``).

    ``THR_{j,k'} = (2 r_j - 1) * g_{j,k'}^T M+ h_{j,k'}`` with
    ``M+ = sum_{i in P} (1/|y_i|) sum_k g_{i,k} h_{i,k}^T`` over the non-empty correct responses
    (an empty response has no tokens to anchor and its ``1/|y_i|`` is undefined, so it is
    skipped). Accumulation is float32; ``M+`` is ``[V', d]``.

    Args:
        group: the G responses of one prompt, each with ``probs`` sliced to ``vocab``.
        vocab: ``[V']`` sorted group vocabulary (:func:`group_vocabulary` of the responses).

    Returns:
        ``(scores, reason)``: ``scores[j]`` is ``[T_j]`` float32 (empty for empty responses).
        Without a correct anchor every score is NaN and ``reason`` says why
        (:data:`NO_ANCHOR_REASON`, or :data:`EMPTY_ANCHOR_REASON` when all correct responses
        are empty); otherwise ``reason`` is None.
    """
    _check_group(group)
    reason = _no_anchor_reason(group)
    if reason is not None:
        return _nan_scores(group), reason
    errors = [
        prediction_errors(r.token_ids, r.probs, vocab) if r.token_ids.numel() > 0 else None
        for r in group
    ]
    anchors = [
        (g, r) for g, r in zip(errors, group, strict=True) if g is not None and r.reward == 1
    ]
    dev = anchors[0][0].device
    m_plus = torch.zeros(vocab.numel(), anchors[0][1].hidden.shape[-1], device=dev)
    for g_anchor, r in anchors:
        # one [V', T] x [T, d] matmul per anchor; the length normalisation folds into g
        m_plus.addmm_(g_anchor.T.to(dev) / g_anchor.shape[0], r.hidden.float().to(dev))
    scores = []
    for g, r in zip(errors, group, strict=True):
        if g is None:
            scores.append(torch.empty(0, device=r.hidden.device))
            continue
        h = r.hidden.float().to(dev)
        sign = 2.0 * float(r.reward) - 1.0
        # row-wise g^T M+ h without forming any [T, T'] token-pair matrix
        scores.append(sign * ((g.to(dev) @ m_plus) * h).sum(-1))
    return scores, None


THR_VOCABULARIES: dict[str, str] = {
    "full": "exact first-order influence over the whole vocabulary (matrix form)",
    "group": "NTHR App. 7.4 shortcut: distributions restricted to the group's tokens V*, "
    "not renormalised",
}

# Elements of one [rows, cols] float intermediate (128 MiB in float32): bounds the memory of
# thr_full_vocab whatever the vocabulary or group size.
MAX_BLOCK = 1 << 25


def _log_normaliser(hidden: Tensor, weight: Tensor, bias: Tensor | None, vchunk: int) -> Tensor:
    """``[N]`` logsumexp of ``hidden @ weight.T + bias``, over vocabulary chunks."""
    parts = []
    for v0 in range(0, weight.shape[0], vchunk):
        logits = hidden @ weight[v0 : v0 + vchunk].T
        if bias is not None:
            logits = logits + bias[v0 : v0 + vchunk]
        parts.append(torch.logsumexp(logits, dim=-1))
    return torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)


def _probs_at(
    hidden: Tensor, lse: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor
) -> Tensor:
    """``[N, M]`` probabilities ``P[n, ids[m]]`` without forming the full ``[N, V]`` rows."""
    logits = hidden @ weight[ids].T
    if bias is not None:
        logits = logits + bias[ids]
    return torch.exp(logits - lse[:, None])


def _pp_gram(
    h_rows: Tensor,
    lse_rows: Tensor,
    h_anchor: Tensor,
    lse_anchor: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    vchunk: int,
) -> Tensor:
    """``P_rows P_anchor^T`` over the full vocabulary, ``[R, N+]``, one vocab chunk at a time."""
    gram = torch.zeros(h_rows.shape[0], h_anchor.shape[0], dtype=h_rows.dtype, device=h_rows.device)
    for v0 in range(0, weight.shape[0], vchunk):
        w = weight[v0 : v0 + vchunk]
        b = bias[v0 : v0 + vchunk] if bias is not None else 0.0
        p_rows = torch.exp(h_rows @ w.T + b - lse_rows[:, None])
        p_anchor = torch.exp(h_anchor @ w.T + b - lse_anchor[:, None])
        gram.addmm_(p_rows, p_anchor.T)
    return gram


def thr_full_vocab(
    token_ids: Sequence[Tensor],
    hidden: Sequence[Tensor],
    rewards: Sequence[float],
    head_weight: Tensor,
    head_bias: Tensor | None = None,
    *,
    log_normaliser: Sequence[Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    max_block: int = MAX_BLOCK,
) -> tuple[list[Tensor], str | None]:
    """Group THR over the full vocabulary, by the token x token matrix form.

    ``pi(. | x, y_<k) = softmax(head_weight @ h + head_bias)``; with ``E`` the one-hot rows of
    the tokens, ``P`` their distributions and ``+`` the tokens of the correct responses,

        ``G_j G_+^T = E_j E_+^T - E_j P_+^T - P_j E_+^T + P_j P_+^T``         (``[N_j, N+]``)
        ``THR_j = (2 r_j - 1) * ((G_j G_+^T) o (H_j H_+^T)) @ w_+``

    with ``w_+`` = ``1/|y_i|`` for each anchor token of response i. The two mixed terms only
    read ``P`` at token ids (:func:`_probs_at`), ``E_j E_+^T`` is id equality, and
    ``P_j P_+^T`` is summed over vocabulary chunks (:func:`_pp_gram`). Rows are processed in
    blocks so that no intermediate exceeds ``max_block`` elements; the full ``[N, V]``
    distributions are never held. Empty correct responses are skipped as in
    :func:`thr_scores`.

    Args:
        token_ids: per response ``[T_i]`` long, the response tokens.
        hidden: per response ``[T_i, d]``, the final (post final norm) hidden state at each
            token's predicting position.
        rewards: binary rewards.
        head_weight: ``[V, d]`` LM head (unembedding) weight.
        head_bias: ``[V]`` LM head bias, or None.
        log_normaliser: per response ``[T_i]`` logsumexp of the head's logits, when the caller
            already has it (it saves one pass over the vocabulary); None computes it.
        dtype: accumulation dtype (float32; float64 for references).
        max_block: element budget of one intermediate.

    Returns:
        ``(scores, reason)`` as :func:`thr_scores`: ``scores[j]`` is ``[T_j]`` in ``dtype`` on
        ``head_weight``'s device; all NaN with a reason without a non-empty correct anchor.

    Raises:
        ValueError: lengths or shapes disagree, a reward is not 0/1, an id is out of range.
    """
    if not len(token_ids) == len(hidden) == len(rewards):
        raise ValueError(
            f"{len(token_ids)} responses, {len(hidden)} hidden, {len(rewards)} rewards"
        )
    vocab_size, d = head_weight.shape
    group = [
        ResponseFeatures(t.reshape(-1).long(), torch.empty(0), h, float(r))
        for t, h, r in zip(token_ids, hidden, rewards, strict=True)
    ]
    _check_group(group)
    dev = head_weight.device
    reason = _no_anchor_reason(group)
    if reason is not None:
        return [
            torch.full((r.token_ids.numel(),), math.nan, dtype=dtype, device=dev) for r in group
        ], reason
    lengths = [r.token_ids.numel() for r in group]
    ids = torch.cat([r.token_ids for r in group]).to(dev)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    h = torch.cat([r.hidden.reshape(-1, d) for r in group]).to(dev, dtype)
    weight = head_weight.to(dtype)
    bias = head_bias.to(dev, dtype) if head_bias is not None else None
    owner = torch.repeat_interleave(torch.arange(len(group)), torch.tensor(lengths)).to(dev)
    sign = torch.tensor([2.0 * r.reward - 1.0 for r in group], dtype=dtype, device=dev)[owner]
    is_anchor = torch.tensor([r.reward == 1 for r in group], device=dev)[owner]
    length = torch.tensor(lengths, dtype=dtype, device=dev)[owner]
    n_plus = int(is_anchor.sum())
    vchunk = max(1, min(vocab_size, max_block // max(n_plus, 1)))
    row_block = max(1, max_block // max(n_plus, vchunk))
    if log_normaliser is not None:
        lse = torch.cat([t.reshape(-1) for t in log_normaliser]).to(dev, dtype)
        if lse.shape[0] != h.shape[0]:
            raise ValueError(f"log_normaliser has {lse.shape[0]} values for {h.shape[0]} tokens")
    else:
        lse = torch.cat(
            [
                _log_normaliser(h[r0 : r0 + row_block], weight, bias, vchunk)
                for r0 in range(0, h.shape[0], row_block)
            ]
        )
    h_p, y_p, lse_p = h[is_anchor], ids[is_anchor], lse[is_anchor]
    w_p = 1.0 / length[is_anchor]
    out = torch.empty(h.shape[0], dtype=dtype, device=dev)
    for r0 in range(0, h.shape[0], row_block):
        h_j, y_j, lse_j = h[r0 : r0 + row_block], ids[r0 : r0 + row_block], lse[r0 : r0 + row_block]
        sim = (y_j[:, None] == y_p[None, :]).to(dtype)  # E_j E_+^T
        sim -= _probs_at(h_p, lse_p, weight, bias, y_j).T  # E_j P_+^T: P_+[k, y_j[k']]
        sim -= _probs_at(h_j, lse_j, weight, bias, y_p)  # P_j E_+^T: P_j[k', y_+[k]]
        sim += _pp_gram(h_j, lse_j, h_p, lse_p, weight, bias, vchunk)
        out[r0 : r0 + row_block] = sign[r0 : r0 + row_block] * ((sim * (h_j @ h_p.T)) @ w_p)
    return list(out.split(lengths)), None


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (1-based, ties share their mean rank), float64."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1.0) / 2.0
    ranks[order] = mean_rank[inverse]
    return ranks


def thr_agreement(reference: Sequence[Tensor], approx: Sequence[Tensor]) -> dict[str, float | int]:
    """How well one THR (e.g. the ``group`` shortcut) agrees with a reference (``full``).

    Over the tokens where both are finite: Spearman rank correlation (Pearson correlation of
    average ranks) and the fraction of tokens with the same sign (``sign`` of 0 is 0).

    Args:
        reference: per response ``[T_i]`` scores.
        approx: per response ``[T_i]`` scores, same shapes.

    Returns:
        ``{"spearman", "sign_agreement", "n_tokens"}``; the first two are NaN with fewer than
        two tokens (Spearman also when either side is constant).
    """
    if len(reference) != len(approx):
        raise ValueError(f"{len(reference)} reference tensors but {len(approx)} approximations")
    if not reference:
        return {"spearman": math.nan, "sign_agreement": math.nan, "n_tokens": 0}
    ref = torch.cat([t.detach().double().cpu().reshape(-1) for t in reference])
    app = torch.cat([t.detach().double().cpu().reshape(-1) for t in approx])
    if ref.shape != app.shape:
        raise ValueError("reference and approximation have different lengths")
    keep = torch.isfinite(ref) & torch.isfinite(app)
    ref, app = ref[keep], app[keep]
    n = int(ref.numel())
    if n < 2:
        return {"spearman": math.nan, "sign_agreement": math.nan, "n_tokens": n}
    sign_agreement = float((torch.sign(ref) == torch.sign(app)).double().mean())
    ra, rb = _ranks(ref), _ranks(app)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    spearman = float((ra * rb).sum()) / denom if denom > 0 else math.nan
    return {"spearman": spearman, "sign_agreement": sign_agreement, "n_tokens": n}


def thr_naive(group: Sequence[ResponseFeatures], vocab: Tensor) -> list[Tensor]:
    """Reference THR by the literal double sum, in float64 with Python loops (tests only).

    ``THR_{j,k'} = (2 r_j - 1) sum_{i in P} (1/|y_i|) sum_k a_{(i,k),(j,k')} <h_{i,k}, h_{j,k'}>``
    with ``a = <g_{i,k}, g_{j,k'}>``. Far too slow for real groups; public so that other test
    suites can use it as ground truth.

    Args:
        group: as for :func:`thr_scores`.
        vocab: ``[V']`` sorted group vocabulary.

    Returns:
        per response a ``[T_j]`` float64 CPU tensor; all NaN without a correct anchor.
    """
    if _no_anchor_reason(group) is not None:
        return [t.double().cpu() for t in _nan_scores(group)]
    vocab_list = vocab.tolist()
    feats = []
    for r in group:
        ids = [vocab_list.index(int(t)) for t in r.token_ids.tolist()]
        probs = r.probs.double().cpu()
        g = [
            [(1.0 if v == ids[k] else 0.0) - float(probs[k, v]) for v in range(len(vocab_list))]
            for k in range(len(ids))
        ]
        h = r.hidden.double().cpu().tolist() if ids else []
        feats.append((g, h, float(r.reward)))
    out = []
    for g_j, h_j, r_j in feats:
        vals = []
        for kp in range(len(g_j)):
            total = 0.0
            for g_i, h_i, r_i in feats:
                if r_i != 1.0 or not g_i:
                    continue
                acc = 0.0
                for k in range(len(g_i)):
                    alpha = sum(a * b for a, b in zip(g_i[k], g_j[kp], strict=True))
                    sim = sum(a * b for a, b in zip(h_i[k], h_j[kp], strict=True))
                    acc += alpha * sim
                total += acc / len(g_i)
            vals.append((2.0 * r_j - 1.0) * total)
        out.append(torch.tensor(vals, dtype=torch.float64))
    return out


TAU_DEFINITION = (
    "tau = beta * min over correct responses of the mean THR of their tokens (port of NTHR's "
    "rule on THR: length-normalised, signed; NTHR uses its unnormalised score s+)"
)
NEGATIVE_TAU_NOTE = (
    "tau < 0: a correct response's tokens have a negative mean THR, so |THR| > tau keeps every "
    "token and the reweighting only applies the sign factor (1 + sign(THR) p)"
)


def thr_threshold(thr: Sequence[Tensor], rewards: Sequence[float], beta: float = 1.0) -> float:
    """Dominant-token threshold ``tau = beta * min_{i in P} mean_k THR_{i,k}``.

    This is an inferred port of NTHR's rule (Deng et al. 2025, §5 / App. 7.3), which the THR
    paper says it follows without spelling it out (metric-definitions §11). It departs from
    NTHR in two ways, both forced by porting it to THR (stated in every group summary as
    :data:`TAU_DEFINITION`):

    * NTHR's ``s+`` of a correct token sums ``alpha <h, h'>`` over the correct group without
      normalisation; here the score is THR itself, which weights each anchor response by
      ``1/|y_i|`` (and carries the sign ``2 r - 1``, which is +1 on correct tokens, so the
      means are of the same signed quantity NTHR averages).
    * NTHR compares the signed score of incorrect tokens, ``s- > tau``; THR's rule
      (:func:`reweighted_advantages`) compares ``|THR| > tau`` on every token.

    A negative tau is possible with ``beta > 0`` (a correct response whose tokens on average
    lower the correct answers' likelihood); it is kept, not clipped: ``|THR| > tau`` then holds
    for every token, the THR-only mask keeps everything and only the sign factor remains
    (:data:`NEGATIVE_TAU_NOTE`, reported in the group summary). ``beta < 0`` has no meaning in
    NTHR (its ablation ``-inf`` is "keep everything", reachable as ``beta = 0`` up to zero
    scores) and is refused.

    Args:
        thr: per response ``[T_i]`` THR scores (:func:`thr_scores` / :func:`thr_full_vocab`).
        rewards: the responses' binary rewards.
        beta: scale of the minimum, ``>= 0`` (NTHR's main setting 1; ablations 0, 0.1).

    Returns:
        tau; NaN when no non-empty correct response exists or its scores are NaN.

    Raises:
        ValueError: ``beta`` is negative or not finite, or the lengths disagree.
    """
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if len(thr) != len(rewards):
        raise ValueError(f"{len(thr)} score tensors but {len(rewards)} rewards")
    means = [float(t.float().mean()) for t, r in zip(thr, rewards, strict=True) if r == 1]
    means = [m for m in means if not math.isnan(m)]  # empty responses have no mean
    if not means:
        return math.nan
    return beta * min(means)


def reweighted_advantages(
    thr: Sequence[Tensor], advantages: Sequence[float], tau: float, p: float
) -> list[Tensor]:
    """THR-guided advantages ``A_{i,k} = 1[|THR_{i,k}| > tau] (1 + sign(THR_{i,k}) p) A_i``.

    ``p > 0`` favours exploitation, ``p < 0`` exploration (paper defaults +-0.1); ``p = 0`` is the
    THR-only (dominant-token) rule. An undefined score or threshold (NaN) gives NaN rather than
    a silently masked 0.

    Args:
        thr: per response ``[T_i]`` THR scores.
        advantages: the responses' sequence-level GRPO advantages ``A_i``.
        tau: dominant-token threshold (:func:`thr_threshold`).
        p: steering strength.

    Returns:
        per response a ``[T_i]`` float32 tensor.
    """
    if len(thr) != len(advantages):
        raise ValueError(f"{len(thr)} score tensors but {len(advantages)} advantages")
    out = []
    for s, adv in zip(thr, advantages, strict=True):
        s = s.float()
        kept = (s.abs() > tau).float()
        val = kept * (1.0 + torch.sign(s) * p) * adv
        undefined = torch.isnan(s) | math.isnan(tau)
        out.append(val.masked_fill(undefined, math.nan))
    return out


def top_thr_tokens(
    thr: Sequence[Tensor], k: int
) -> tuple[list[tuple[int, int, float]], list[tuple[int, int, float]]]:
    """The ``k`` most positive and ``k`` most negative THR tokens of a group.

    Zero and NaN scores belong to neither list, so a list can be shorter than ``k``.
    Ties keep (response, position) order.

    Args:
        thr: per response ``[T_i]`` THR scores.
        k: how many of each sign.

    Returns:
        ``(positive, negative)`` lists of ``(response, position, value)``: positive by value
        descending, negative by value ascending (most negative first).
    """
    if not thr or k <= 0:
        return [], []
    values = torch.cat([t.detach().float().cpu().reshape(-1) for t in thr])
    lengths = torch.tensor([t.numel() for t in thr])
    response = torch.repeat_interleave(torch.arange(len(thr)), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(values.numel()) - starts[response]

    def pick(mask: Tensor, descending: bool) -> list[tuple[int, int, float]]:
        idx = torch.nonzero(mask).squeeze(-1)
        # stable sort keeps ties in (response, position) order
        order = torch.sort(values[idx], descending=descending, stable=True).indices[:k]
        sel = idx[order]
        return list(
            zip(response[sel].tolist(), position[sel].tolist(), values[sel].tolist(), strict=True)
        )

    return pick(values > 0, True), pick(values < 0, False)

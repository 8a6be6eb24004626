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

The computation uses the algebraically exact rewrite ``<g, g'><h, h'> = g'^T (g h^T) h'``:
``M+ = sum_{i in P} (1/|y_i|) sum_k g_{i,k} h_{i,k}^T`` (``[V', d]``) is built once, then each
token costs one ``[V'] x [V', d] x [d]`` product. Like NTHR (App. 7.4), distributions are
restricted to ``V*_x``, the token ids occurring in the group, *without* renormalising; this
keeps ``M+`` small (the full-vocabulary ``M+`` of a 150k-vocabulary model is ~0.5 GB).

The paper's dominant-token threshold is only described as "following Deng et al. (2025)";
:func:`thr_threshold` ports NTHR's rule (an inference, see its docstring).
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


def thr_threshold(thr: Sequence[Tensor], rewards: Sequence[float], beta: float = 1.0) -> float:
    """Dominant-token threshold ``tau = beta * min_{i in P} mean_k THR_{i,k}``.

    This is an inferred port of NTHR's rule (Deng et al. 2025, §5 / App. 7.3: ``tau = beta *
    min`` over correct responses of their tokens' average influence on the correct group),
    which the THR paper says it follows without spelling out; see metric-definitions §11.
    NTHR's main setting is ``beta = 1`` (ablations -inf, 0, 0.1).

    Args:
        thr: per response ``[T_i]`` THR scores (:func:`thr_scores`).
        rewards: the responses' binary rewards.
        beta: scale of the minimum.

    Returns:
        tau; NaN when no non-empty correct response exists or its scores are NaN.
    """
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

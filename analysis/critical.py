"""Critical-token rules: cDPO rollouts and contrastive estimation, LATR branching, CURE.

* :func:`critical_position` and :func:`pass_at_k`: rollout-based critical tokens of
  "Critical Tokens Matter" (Lin et al., arXiv 2411.19943), metric-definitions §12.3.
* :func:`ce_scores`: cDPO's contrastive-estimation score ``softmax((1+b) z_p - b z_n)[y_t]``
  (§12.1); a low score marks a token the negative model likes much more than the positive one.
* :func:`latr_branching`: LATR's branch-point rule on the raw top-2 probabilities (§14).
* :func:`cure_critical_positions`: CURE's filtered top-K entropy positions (§15).
* :func:`budget_positions`: which prefixes to roll out when not every one can be afforded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def critical_position(
    correct_rate: Sequence[float], zero: float = 0.0, recovery: float = 3 / 64
) -> int | None:
    """The rollout-defined critical token of an incorrect trajectory (cDPO, §12.3).

    ``correct_rate[t]`` is the fraction ``c(t)`` of sampled continuations that reach a correct
    answer from the t-th prefix, prefixes ordered from shortest to longest (with the usual
    layout, ``c(t)`` continues ``x, y_<=t``, so the index is the position of the token whose
    inclusion produced that rate). The scan, as in the reference code
    (``rollout_sampling_for_critical_tokens.py``, ``analyse_all_token``):

    1. walk t upwards, skipping NaN entries (prefixes that were not evaluated);
    2. with no open candidate, the first t with ``c(t) <= zero`` becomes the candidate;
    3. with an open candidate, a later ``c(t) > recovery`` (strictly; 3/64 means "more than 3
       of 64 correct") abandons it: it is remembered as the fallback and the search restarts;
    4. at the end the open candidate wins; failing that, the last abandoned one; else None.

    Rates between ``zero`` and ``recovery`` neither open nor close a candidate.

    Args:
        correct_rate: ``c(t)`` per prefix, shortest first; NaN = not evaluated.
        zero: a rate at or below this counts as "no correct continuation" (0/64).
        recovery: a rate above this after a candidate restarts the search.

    Returns:
        index into ``correct_rate`` of the critical token, or None if ``c`` never reaches zero.
    """
    candidate: int | None = None
    fallback: int | None = None
    for t, c in enumerate(correct_rate):  # a scan with state: inherently sequential
        if math.isnan(c):
            continue
        if candidate is None and c <= zero:
            candidate = t
        elif candidate is not None and c > recovery:
            fallback, candidate = candidate, None
    return candidate if candidate is not None else fallback


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k ``1 - C(n-c, k) / C(n, k)`` from ``c`` correct out of ``n`` samples.

    Evaluated as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (Chen et al. 2021), which avoids the huge
    binomials; every factor lies in ``[0, 1)`` so the product cannot overflow.

    Args:
        n: number of samples (>= 1).
        c: number of correct samples, ``0 <= c <= n``.
        k: ``1 <= k <= n`` (the cDPO reference clamps larger k to n; do that before calling).

    Returns:
        the probability that at least one of k samples drawn without replacement is correct.
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ce_scores(
    logits_pos: Tensor,
    logits_neg: Tensor,
    targets: Tensor,
    beta: float = 1.0,
    chunk_rows: int = 64,
) -> Tensor:
    """cDPO contrastive-estimation score ``p_CE(y_t) = softmax((1+b) z_p - b z_n)[y_t]``.

    ``beta = 1`` gives the reference code's ``softmax(2 z_p - z_n)``. No temperature is applied.
    Rows are processed ``chunk_rows`` at a time so the vocabulary-wide temporaries stay small
    (vocabularies reach 150k entries).

    Args:
        logits_pos: ``[T, V]`` raw logits of the positive model at the predicting positions.
        logits_neg: ``[T, V]`` raw logits of the negative model at the same positions.
        targets: ``[T]`` long, the tokens those positions predicted.
        beta: contrast strength ``beta_ce``.
        chunk_rows: positions per chunk.

    Returns:
        ``[T]`` float32 probabilities in ``[0, 1]``.
    """
    if logits_pos.shape != logits_neg.shape or logits_pos.dim() != 2:
        raise ValueError(
            f"expected two [T, V] logit tensors of one shape, got {tuple(logits_pos.shape)} "
            f"and {tuple(logits_neg.shape)}"
        )
    if targets.shape != logits_pos.shape[:1]:
        raise ValueError(f"expected targets [{logits_pos.shape[0]}], got {tuple(targets.shape)}")
    out = torch.empty(targets.shape[0], device=logits_pos.device)
    step = max(1, chunk_rows)
    for start in range(0, targets.shape[0], step):
        rows = slice(start, start + step)
        z = (1.0 + beta) * logits_pos[rows].float() - beta * logits_neg[rows].float()
        logp = torch.log_softmax(z, dim=-1)
        tgt = targets[rows].long().to(z.device).unsqueeze(-1)
        out[rows] = logp.gather(-1, tgt).squeeze(-1).exp()
    return out


def latr_branching(top_probs: Tensor, tau_abs: float = 0.25, tau_rel: float = 0.15) -> Tensor:
    """LATR branch points ``F_t = 1[p2 > tau_abs and p1 - p2 < tau_rel]`` (§14, Eq. 5).

    The probabilities must come from the raw (temperature 1) distribution. Defaults are the
    Countdown / library values; LATR's math configuration uses ``tau_abs = 0.15``,
    ``tau_rel = 0.25``.

    Args:
        top_probs: ``[T, k>=2]`` top-k probabilities sorted descending (any leading dims work).
        tau_abs: the runner-up must exceed this probability.
        tau_rel: and trail the top token by less than this.

    Returns:
        ``[T]`` bool.
    """
    if top_probs.shape[-1] < 2:
        raise ValueError("branching needs the two most probable tokens (k >= 2)")
    p1 = top_probs[..., 0].float()
    p2 = top_probs[..., 1].float()
    return (p2 > tau_abs) & (p1 - p2 < tau_rel)


def cure_critical_positions(
    entropy: Tensor,
    token_texts: Sequence[str],
    eligible: Tensor,
    k: int = 20,
    special: Sequence[bool] | None = None,
) -> list[int]:
    """CURE's critical-token candidates: the top-k entropy positions after its filters (§15).

    Following ``get_critic_key_token_mask``, a position is skipped if it is the first response
    token (here: the first position where ``eligible`` is True), a special token, or a token
    whose text stripped of whitespace has at most one character (digits, punctuation, single
    letters, pure whitespace). NaN entropies are skipped too. CURE then picks one candidate at
    random for re-generation; for analysis the whole set is returned.

    Args:
        entropy: ``[T]`` token entropies (nats; CURE uses temperature-1 logits).
        token_texts: ``T`` decoded token strings.
        eligible: ``[T]`` bool, True at response positions (prompt and padding False).
        k: how many candidates (CURE: 20); fewer are returned if fewer survive.
        special: ``T`` flags for special tokens; None means none are special.

    Returns:
        positions sorted by entropy descending, ties by position ascending.
    """
    n = entropy.shape[0]
    if entropy.dim() != 1 or eligible.shape != (n,) or len(token_texts) != n:
        raise ValueError(
            f"expected entropy [T], eligible [T] and T texts; got {tuple(entropy.shape)}, "
            f"{tuple(eligible.shape)} and {len(token_texts)} texts"
        )
    if special is not None and len(special) != n:
        raise ValueError(f"expected {n} special flags, got {len(special)}")
    if k <= 0 or n == 0:
        return []
    # the text and special-token filters depend on strings, so they are built on the host
    text_ok = [len(s.strip()) > 1 for s in token_texts]
    not_special = [True] * n if special is None else [not s for s in special]
    h = entropy.detach().float().cpu()
    keep = (
        eligible.detach().cpu().bool()
        & torch.tensor(text_ok, dtype=torch.bool)
        & torch.tensor(not_special, dtype=torch.bool)
        & ~torch.isnan(h)
    )
    first = torch.nonzero(eligible.detach().cpu()).flatten()
    if first.numel() > 0:
        keep[first[0]] = False
    idx = torch.nonzero(keep).flatten()
    # stable descending sort keeps equal entropies in position order
    order = torch.sort(h[idx], descending=True, stable=True).indices[:k]
    return [int(i) for i in idx[order].tolist()]


def budget_positions(n: int, budget: int) -> list[int]:
    """``budget`` evenly spaced positions among ``0..n-1`` for budgeted rollouts.

    Position ``i`` of the selection is ``round(i (n-1) / (budget-1))`` (halves round up, in
    integer arithmetic), so 0 and n-1 are always included when ``budget >= 2``; since the
    spacing is at least 1 the positions are distinct and strictly increasing. ``budget >= n``
    returns every position, ``budget == 1`` returns ``[0]``, ``budget <= 0`` or ``n <= 0``
    returns ``[]``.

    Args:
        n: number of positions.
        budget: how many to evaluate.

    Returns:
        sorted distinct positions.
    """
    if n <= 0 or budget <= 0:
        return []
    if budget >= n:
        return list(range(n))
    if budget == 1:
        return [0]
    i = torch.arange(budget, dtype=torch.long)
    span = budget - 1
    return ((i * (n - 1) + span // 2) // span).tolist()

"""Math of entropy-driven decoding interventions, as token-level signals.

* EAD, Exploratory Annealed Decoding "Let it Calm" (§20): a per-token temperature schedule.
* CNTP, Cautious Next Token Prediction (§19): the entropy-dependent number of trials and the
  perplexity used to pick among them.
* Entropy Adaptive Decoding (§21): bits entropy before temperature, its rolling mean over the
  last w steps and the small/large-model switch indicator.
* Refusal tokens (§17): logit bias, its exact effect on a token set's probability, the
  released code's refuse/respond rule and the probability mass of refusal-marker tokens.

Everything is pure float32 tensor math; the decoding loops that use it live in ``backend``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def ead_temperature(
    t: int | Tensor,
    *,
    tau_max: float = 1.2,
    tau_min: float = 0.1,
    d: float = 200.0,
    warmup: int = 10,
) -> Tensor:
    """EAD per-token temperature, paper form (§20).

    ``τ_t = 1`` for ``t < warmup``, else ``max(1 + τ_max − exp(t / d), τ_min)``, with ``t`` the
    1-based index of the token being generated. Defaults are the paper's 1.5B setting with
    ``d = d_0``; use :func:`ead_decay` for the RL-step-aware ``d_s`` (7B: τ_min 0.6, d_0 250).

    The released ``annealed_sampling.py`` differs: it uses ``exp(len / (20·d'))`` with ``len``
    the number of tokens already generated (``t − 1``), and keeps τ = 1 while ``len < warmup``
    (``t <= warmup``). To reproduce it, pass ``d = 20·d'`` and ``t − 1`` for ``t``. Note that the
    paper form jumps from 1 to about ``τ_max`` at ``t = warmup``.

    Args:
        t: a 1-based generated-token index, or an integer tensor of them (any shape).

    Returns:
        float32 temperatures with ``t``'s shape (a 0-dim tensor for an int).
    """
    if d <= 0 or tau_min <= 0:
        raise ValueError("d and tau_min must be > 0")
    tt = torch.as_tensor(t)
    if bool((tt < 1).any()):
        raise ValueError("t is a 1-based token index and must be >= 1")
    tf = tt.float()
    # exp overflows to inf for very long rollouts; max(−inf, τ_min) is still the floor.
    annealed = torch.clamp(1.0 + tau_max - torch.exp(tf / d), min=tau_min)
    return torch.where(tt < warmup, torch.ones_like(tf), annealed)


def ead_decay(step: int, d0: float = 200.0, alpha: float = 5.0, d_max: float = 4e4) -> float:
    """Global-step-aware EAD decay rate ``d_s = min(d_0 + α·s, d_max)`` (§20).

    Args:
        step: RL global step ``s >= 0`` (use 0, i.e. ``d_0``, at plain inference).
    """
    if step < 0:
        raise ValueError("step must be >= 0")
    return float(min(d0 + alpha * step, d_max))


def cntp_trials(
    entropy: Tensor, *, max_trials: int = 10, h_low: float = 0.01, h_high: float = 1.5
) -> Tensor:
    """CNTP number of trials per step (§19).

    ``N = int(1 + (N_max − 1) · clip((H − H_low) / (H_high − H_low), 0, 1))``, truncated toward
    zero as the released code's ``int()`` does, so ``N_max`` is reached only at ``H >= H_high``.
    Defaults are the paper scripts' (the code's default ``N_max`` is 40). CNTP takes ``H`` in
    nats of the *processed and warped* distribution (after temperature / top-p / top-k), not of
    the raw logits.

    Args:
        entropy: ``[...]`` entropies (nats); NaN is rejected.

    Returns:
        ``[...]`` int64 trial counts in ``[1, max_trials]``.
    """
    if max_trials < 1:
        raise ValueError("max_trials must be >= 1")
    if not h_high > h_low:
        raise ValueError("h_high must be > h_low")
    h = entropy.float()
    if bool(torch.isnan(h).any()):
        raise ValueError("entropy contains NaN")
    frac = ((h - h_low) / (h_high - h_low)).clamp(0.0, 1.0)
    return torch.trunc(1.0 + (max_trials - 1) * frac).long()


def perplexity(logprobs: Tensor) -> Tensor:
    """``exp(−mean log p)`` over the last dim: the PPL by which CNTP ranks its trials.

    Args:
        logprobs: ``[..., n]`` log-probabilities of a trial's own tokens (CNTP: under the warped
            distribution). An empty last dim gives NaN.

    Returns:
        ``[...]`` float32.
    """
    return torch.exp(-logprobs.float().mean(-1))


def entropy_bits(logits: Tensor) -> Tensor:
    """Shannon entropy in bits of ``softmax(logits)``, before any temperature (§21).

    Computed from ``log_softmax`` in float32, so large logits do not overflow; entries at
    ``-inf`` (masked vocabulary) contribute 0.

    Args:
        logits: ``[..., V]`` raw logits.

    Returns:
        ``[...]`` float32 entropies in bits (``H_nats / ln 2``).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return -plogp.sum(-1) / math.log(2.0)


def rolling_mean(values: Tensor, window: int = 5) -> Tensor:
    """Trailing mean ``(1/w) Σ_{i=t−w+1..t} v_i`` along the last dim (§21 smoothing).

    The first ``w − 1`` steps have fewer than ``w`` values before them; they average the partial
    window (divide by ``t + 1``, 0-based), so the signal starts at the first value instead of
    being dragged towards zero. Each window is summed directly rather than by prefix-sum
    differences, which drift in float32 over long sequences.

    Args:
        values: ``[..., T]`` per-step values.
        window: w >= 1.

    Returns:
        ``[..., T]`` float32.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    v = values.float()
    n = v.shape[-1]
    if n == 0:
        return v.clone()
    sums = F.pad(v, (window - 1, 0)).unfold(-1, window, 1).sum(-1)
    counts = torch.arange(1, n + 1, device=v.device).clamp(max=window).float()
    return sums / counts


def switch_indicator(entropy_bits: Tensor, threshold: float, window: int = 5) -> Tensor:
    """Entropy Adaptive Decoding switch: ``rolling_mean(H_bits, w) > τ`` (§21).

    True at step t means the smoothed entropy through step t exceeds τ, so the *next* token is
    generated by the large model. Values are aligned with the input steps; the paper's
    "stability condition" (minimum dwell before switching back) is unspecified and not
    modelled, and the first ``w − 1`` steps use the partial window of :func:`rolling_mean`.

    Args:
        entropy_bits: ``[..., T]`` entropies in bits (see :func:`entropy_bits`); thresholds in
            nats are not interchangeable.
        threshold: τ in bits.
        window: w (paper: 5).

    Returns:
        ``[..., T]`` bool.
    """
    return rolling_mean(entropy_bits, window) > threshold


def apply_logit_bias(logits: Tensor, bias: dict[int, float] | tuple[Tensor, Tensor]) -> Tensor:
    """Add a bias to selected token ids along the last dim; every other logit stays bitwise.

    Args:
        logits: ``[..., V]`` logits; the result keeps their dtype (and is a new tensor).
        bias: ``{token_id: b}``, or ``(ids [M] int, biases [M] float)``. In the tensor form a
            repeated id accumulates its biases. ``±inf`` is allowed (``-inf`` bans a token).

    Returns:
        ``[..., V]`` biased logits.
    """
    if isinstance(bias, dict):
        ids = torch.tensor(list(bias.keys()), dtype=torch.long)
        values = torch.tensor(list(bias.values()), dtype=torch.float32)
    else:
        ids, values = bias
        ids = ids.long().reshape(-1)
        values = torch.broadcast_to(values.float(), ids.shape)
    ids = ids.to(logits.device)
    vocab = logits.shape[-1]
    if ids.numel() and (bool((ids < 0).any()) or bool((ids >= vocab).any())):
        raise ValueError(f"token ids must lie in [0, {vocab})")
    out = logits.clone()
    src = values.to(device=logits.device, dtype=logits.dtype).expand(*logits.shape[:-1], -1)
    return out.index_add_(-1, ids, src)


def biased_probability(p: Tensor, bias: float | Tensor) -> Tensor:
    """Probability of a token set of total mass P after adding ``b`` to each member's logit.

    Exact algebra (§17): ``P' = P e^b / (1 − P + P e^b)``, i.e. ``sigmoid(logit(P) + b)``,
    which is how it is evaluated so that large ``|b|`` neither overflows nor cancels. It does
    not depend on how the mass P is split among the set's members.

    Args:
        p: ``[...]`` set probabilities in [0, 1].
        bias: b, a float or a tensor broadcastable with ``p``.

    Returns:
        float32 ``P'`` with the broadcast shape (0 stays 0, 1 stays 1 for finite b).
    """
    pf = p.float()
    b = torch.as_tensor(bias, dtype=torch.float32, device=pf.device)
    return torch.sigmoid(torch.log(pf) - torch.log1p(-pf) + b)


def refusal_decision(p_refuse: Tensor, p_respond: Tensor, threshold: float = -1.0) -> Tensor:
    """The refusal-token paper's released rule for emitting ``[refuse]`` (§17).

    ``threshold < 0`` (code default −1): refuse iff ``P[refuse] >= P[respond]``, a two-way
    argmax that ignores every other token (ties refuse). Otherwise refuse iff
    ``P[refuse] >= threshold`` (``threshold = 0`` always refuses).

    Args:
        p_refuse: ``[...]`` probability of the refuse token at the first response position.
        p_respond: ``[...]`` probability of the respond token (unused with a threshold).

    Returns:
        ``[...]`` bool, True = refuse.
    """
    if threshold < 0:
        return p_refuse.float() >= p_respond.float()
    return p_refuse.float() >= threshold


def marker_mass(probs: Tensor, marker_ids: Tensor) -> Tensor:
    """Total probability of a set of marker tokens (e.g. refusal prefixes' first tokens).

    A proxy for refusal tokens on models that were not trained with them (weak, §17).

    Args:
        probs: ``[..., V]`` next-token probabilities.
        marker_ids: ``[M]`` token ids; duplicates are counted once (it is a set).

    Returns:
        ``[...]`` float32 mass (0 for an empty set).
    """
    ids = torch.unique(marker_ids.long().reshape(-1).to(probs.device))
    vocab = probs.shape[-1]
    if ids.numel() and (int(ids[0]) < 0 or int(ids[-1]) >= vocab):
        raise ValueError(f"marker ids must lie in [0, {vocab})")
    return probs.float().index_select(-1, ids).sum(-1)

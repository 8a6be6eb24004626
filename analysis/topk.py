"""Token metrics from API top-k log-probabilities, with honest bounds on what they cannot give.

Hosted chat APIs and OpenAI-compatible servers return, per generated token, the sampled token's
log-probability and the k most probable alternatives. From these:

* ``logprob``, ``prob``, ``surprisal_bits`` of the sampled token are exact;
* ``rank`` is exact when the token is among the top-k; otherwise it is only known to exceed k
  (``rank`` NaN, ``rank_gt`` = k) -- valid with temperature sampling, not an error;
* ``margin`` = p1 - p2 is exact when k >= 2 (NaN for k = 1);
* ``topk_mass`` = sum of the top-k probabilities;
* the full-vocabulary entropy is *not* known, only bounded. Let the known probabilities be the
  top-k plus the sampled token when it lies outside them, r = 1 - (their sum) the residual mass,
  spread over the m = V - (number known) unseen tokens, each at most c = p_k (an unseen token
  cannot beat the k-th listed one). With f(x) = -x ln x concave:

  - ``entropy_upper`` = H_known + r ln(m / r). Proof: by Jensen, a concave sum with fixed total r
    over m terms is largest when the terms are equal (dropping the cap c only enlarges the max).
  - ``entropy_lower`` = H_known + n c ln(1/c) + s ln(1/s), n = floor(r / c), s = r - n c.
    Proof: a concave function on the polytope {0 <= q_j <= c, sum q = r} attains its minimum at
    a vertex, and every vertex is a permutation of (c, ..., c, s, 0, ..., 0). It does not use V,
    so it holds for any vocabulary size.

* ``entropy`` is the entropy of the top-k *renormalised* to sum 1: a convenience, neither bound
  (the registry says so).

Inputs are padded numpy arrays (API tokens come as strings, so these functions are numpy, not
torch). Natural logs throughout; entropies in nats.
"""

from __future__ import annotations

import math

import numpy as np

# Probability mass the top-k may exceed 1 by before it counts as invalid input (APIs round
# logprobs to a few decimals; 1e-3 is far above that rounding and far below a real error).
MASS_TOLERANCE = 1e-3

# Tokenizer vocabulary sizes by model-name prefix (lower-case), for the entropy upper bound.
_VOCABS: tuple[tuple[str, int], ...] = (
    ("gpt-4o", 200_019),
    ("gpt-4.1", 200_019),
    ("gpt-4.5", 200_019),
    ("gpt-5", 200_019),
    ("o1", 200_019),
    ("o3", 200_019),
    ("o4", 200_019),
    ("chatgpt-4o", 200_019),
    ("gpt-4", 100_277),
    ("gpt-3.5", 100_277),
    ("meta-llama/llama-3", 128_256),
    ("llama-3", 128_256),
    ("llama3", 128_256),
    ("qwen/qwen2", 151_936),
    ("qwen2", 151_936),
    ("qwen3", 151_936),
    ("mistralai/mistral-7b", 32_768),
    ("huggingfacetb/smollm2", 49_152),
)
# Assumed when the model is unknown and no size is given: larger than every vocabulary above,
# so the upper bound stays an upper bound for all of them (it grows with V).
DEFAULT_VOCAB = 262_144


def vocab_size_for(model: str | None, override: int | None = None) -> tuple[int, str]:
    """``(V, how it was chosen)``: the override, else the known size for ``model``, else default."""
    if override is not None:
        if override < 1:
            raise ValueError("vocab_size must be >= 1")
        return override, "given"
    name = (model or "").lower()
    for prefix, size in _VOCABS:
        if name.startswith(prefix) or name.split("/")[-1].startswith(prefix):
            return size, f"known for {prefix}"
    return DEFAULT_VOCAB, "default (model unknown)"


def _xlogx_neg(p: np.ndarray) -> np.ndarray:
    """-p ln p elementwise with 0 ln 0 = 0 (NaN entries count as 0)."""
    p = np.nan_to_num(p, nan=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def residual_entropy_lower(r: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Least entropy mass ``r`` can carry in pieces of at most ``cap``: n c ln(1/c) + s ln(1/s).

    Shapes: ``r`` and ``cap`` ``[n]`` -> ``[n]``. Vertex argument in the module docstring.
    """
    r = np.clip(r, 0.0, None)
    c = np.where(cap > 0, np.minimum(cap, np.where(r > 0, r, 1.0)), 1.0)
    full = np.floor(r / c)
    s = np.clip(r - full * c, 0.0, None)
    return full * _xlogx_neg(c) + _xlogx_neg(s)


def residual_entropy_upper(r: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Most entropy mass ``r`` can carry over ``m`` tokens: r ln(m / r) (Jensen), 0 when r = 0."""
    r = np.clip(r, 0.0, None)
    m = np.maximum(m, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, r * (np.log(m) - np.log(np.where(r > 0, r, 1.0))), 0.0)


def topk_token_metrics(
    logprob: np.ndarray, top_logprobs: np.ndarray, in_topk: np.ndarray, vocab_size: int
) -> dict[str, np.ndarray]:
    """Every per-token metric the top-k determines or bounds.

    Args:
        logprob: ``[n]`` natural-log probability of each sampled token (<= 0, finite).
        top_logprobs: ``[n, k]`` the top-k log-probabilities of each position, most probable
            first, NaN-padded where a position lists fewer (k may be 0).
        in_topk: ``[n]`` bool, True where the sampled token is one of its listed top-k (the
            caller matches token strings/bytes; log-probabilities can tie).
        vocab_size: V, the vocabulary size assumed by ``entropy_upper``.

    Returns:
        ``[n]`` float64 arrays: ``logprob``, ``prob``, ``surprisal_bits``; ``rank`` = 1 + the
        number of listed entries strictly more probable (the store's convention, exact when the
        token is listed, NaN otherwise) and ``rank_gt`` (the number listed where ``rank`` is
        NaN: the rank is larger); ``margin`` (p1 - p2, NaN below 2 listed); ``topk_mass``;
        ``entropy`` (top-k renormalised), ``entropy_lower``, ``entropy_upper``.
    """
    lp = np.asarray(logprob, dtype=np.float64)
    n = len(lp)
    top = np.asarray(top_logprobs, dtype=np.float64).reshape(n, -1)
    inside = np.asarray(in_topk, dtype=bool)
    probs = np.exp(top)  # NaN padding stays NaN
    listed = (~np.isnan(top)).sum(axis=1).astype(np.float64)
    p = np.exp(lp)
    higher = (top > lp[:, None]).sum(axis=1)  # NaN compares False
    second = probs[:, 1] if top.shape[1] > 1 else np.full(n, np.nan)
    out: dict[str, np.ndarray] = {
        "logprob": lp,
        "prob": p,
        "surprisal_bits": -lp / math.log(2.0),
        "rank": np.where(inside, 1.0 + higher, np.nan),
        "rank_gt": np.where(inside, np.nan, listed),
        "margin": np.where(listed >= 2, probs[:, 0] - second, np.nan),
        "topk_mass": np.nansum(probs, axis=1),
    }
    out.update(entropy_bounds(probs, np.where(inside, 0.0, p), vocab_size))
    return out


def entropy_bounds(
    top_probs: np.ndarray, outside_prob: np.ndarray, vocab_size: int
) -> dict[str, np.ndarray]:
    """``entropy`` (renormalised top-k), ``entropy_lower`` and ``entropy_upper``.

    Args:
        top_probs: ``[n, k]`` top-k probabilities, most probable first, NaN-padded.
        outside_prob: ``[n]`` probability of the sampled token when it lies outside its top-k,
            0 when it is inside (its mass is then already counted).
        vocab_size: V for the upper bound.

    Returns:
        ``[n]`` float64 arrays. Bounds as proved in the module docstring; the residual is
        clipped at 0 (a top-k summing a rounding error above 1 leaves nothing unseen).
    """
    probs = np.asarray(top_probs, dtype=np.float64)
    n = probs.shape[0]
    listed = (~np.isnan(probs)).sum(axis=1)
    outside = np.asarray(outside_prob, dtype=np.float64)
    mass = np.nansum(probs, axis=1)
    h_known = _xlogx_neg(probs).sum(axis=1) + _xlogx_neg(outside)
    r = np.clip(1.0 - mass - outside, 0.0, None)
    # an unseen token is at most as probable as the smallest listed one; nothing listed: <= r
    if probs.shape[1]:
        last = probs[np.arange(n), np.maximum(listed - 1, 0)]
    else:
        last = np.full(n, np.nan)
    cap = np.where(listed > 0, last, r)
    m = np.maximum(float(vocab_size) - listed - (outside > 0), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        renorm = probs / mass[:, None]
    entropy = np.where(listed > 0, _xlogx_neg(renorm).sum(axis=1), np.nan)
    return {
        "entropy": entropy,
        "entropy_lower": h_known + residual_entropy_lower(r, cap),
        "entropy_upper": h_known + residual_entropy_upper(r, m),
    }


def window_mean(values: np.ndarray, window: int) -> np.ndarray:
    """ARES inclusive window mean ``mean(v_t .. v_{t+w-1})``; NaN where the window is incomplete.

    Shapes: ``[n]`` -> ``[n]``. A mean of lower (upper) bounds bounds the mean from below
    (above), so windows of ``entropy_lower`` / ``entropy_upper`` bound the true window entropy.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    v = np.asarray(values, dtype=np.float64)
    out = np.full(len(v), np.nan)
    if len(v) >= window:
        sums = np.convolve(v, np.ones(window), mode="valid")
        out[: len(sums)] = sums / window
    return out


def sequence_metrics(tok: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-response aggregates; the likelihood ones are exact (they need only the logprobs).

    ``geometric_mean_confidence`` = exp(mean logprob), ``perplexity`` = its inverse,
    ``mean_prob``; ``mean_entropy`` (renormalised) and the means of both bounds, which bound
    the true mean entropy; ``mean_topk_mass``; ``n_tokens``. NaN for an empty response.
    """
    lp = tok["logprob"]
    n = len(lp)
    if n == 0:
        nan = float("nan")
        return {"n_tokens": 0.0, "geometric_mean_confidence": nan, "perplexity": nan}
    mean_lp = float(np.mean(lp))
    return {
        "n_tokens": float(n),
        "geometric_mean_confidence": math.exp(mean_lp),
        "perplexity": math.exp(-mean_lp),
        "mean_prob": float(np.mean(tok["prob"])),
        "mean_entropy": float(np.nanmean(tok["entropy"]))
        if np.isfinite(tok["entropy"]).any()
        else float("nan"),
        "mean_entropy_lower": float(np.mean(tok["entropy_lower"])),
        "mean_entropy_upper": float(np.mean(tok["entropy_upper"])),
        "mean_topk_mass": float(np.mean(tok["topk_mass"])),
    }

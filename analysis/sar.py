"""Shifting Attention to Relevance: TokenSAR, SentenceSAR and SAR (Duan et al., arXiv 2307.01379).

Definitions (metric-definitions §8). ``g(a, b)`` in ``[0, 1]`` is a semantic similarity the
caller supplies; for a generation ``s = (z_1 .. z_n)`` answering question ``x``:

* token relevance ``R_T(z_i) = 1 - g(x+s, x+s without z_i)``, normalised
  ``R~_T(z_i) = R_T(z_i) / sum_j R_T(z_j)``;
* TokenSAR ``E_T(s, x) = sum_i R~_T(z_i) * NLL_i`` with ``NLL_i = -log p(z_i | z_<i, x)``;
  the value TokenPrism stores per token is its contribution ``R~_T(z_i) * NLL_i``, so the stored
  token values sum to ``E_T``;
* SentenceSAR over K sampled answers with ``l_j = log p(s_j | x)``:
  ``R_S(s_j) = sum_{k != j} g(s_j, s_k) p(s_k | x)`` and
  ``E_S(s_j) = -log(p(s_j | x) + R_S(s_j) / t)`` (t = 0.001); the uncertainty is
  ``mean_j E_S(s_j)``;
* SAR: SentenceSAR with ``p(s_j | x)`` replaced by the token-shifted likelihood
  ``exp(-E_T(s_j, x))``.

Higher is more uncertain throughout. The paper scores ``g`` with a cross-encoder; TokenPrism
defaults to the cosine similarity of an offline sentence embedding (all-MiniLM-L6-v2) clamped
to ``[0, 1]`` (:func:`clamp_similarity`). When every token relevance is 0 (removing any token
leaves the meaning unchanged, or the similarity saturates) the normalisation is undefined and
the weights fall back to uniform ``1 / n``, which makes TokenSAR the mean token NLL.

Sequence likelihoods of real answers underflow ``exp`` (``l_j`` of -2000 is ordinary), so
SentenceSAR is evaluated in log space and float64:
``E_S(s_j) = -logsumexp([l_j] + [log g_jk + l_k - log t for k != j])``, with terms where
``g_jk = 0`` dropped (``log 0 = -inf`` contributes nothing to the logsumexp).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def clamp_similarity(sim: Tensor) -> Tensor:
    """Clamp similarities (e.g. cosines in ``[-1, 1]``) into ``[0, 1]``; NaN stays NaN.

    Args:
        sim: any shape.

    Returns:
        same shape and dtype, values in ``[0, 1]``.
    """
    return sim.clamp(0.0, 1.0)


def token_relevance(similarity_without: Tensor, eps: float = 1e-8) -> Tensor:
    """Normalised token relevance ``R~_T(z_i)``.

    Args:
        similarity_without: ``[n]`` ``g(x+s, x+s without z_i)`` per token; clamped to ``[0, 1]``.
        eps: a relevance total at or below this counts as "no token is relevant" and gives
            uniform weights ``1 / n``.

    Returns:
        ``[n]`` float32 weights summing to 1 (empty for ``n = 0``).
    """
    rel = 1.0 - clamp_similarity(similarity_without.float())
    total = rel.sum()
    uniform = torch.full_like(rel, 1.0 / max(rel.numel(), 1))
    # where() keeps this free of a host sync; the clamp only avoids a 0/0 in the unused branch
    return torch.where(total > eps, rel / total.clamp(min=eps), uniform)


def token_sar_contributions(nll: Tensor, similarity_without: Tensor) -> Tensor:
    """Per-token TokenSAR contributions ``R~_T(z_i) * NLL_i`` (the stored token value).

    Args:
        nll: ``[n]`` negative log-likelihoods ``-log p(z_i | z_<i, x)`` of the answer tokens.
        similarity_without: ``[n]`` ``g(x+s, x+s without z_i)``.

    Returns:
        ``[n]`` float32; sums to TokenSAR ``E_T(s, x)``.
    """
    if nll.shape != similarity_without.shape:
        raise ValueError(
            f"shape mismatch: nll {tuple(nll.shape)} vs similarity "
            f"{tuple(similarity_without.shape)}"
        )
    return token_relevance(similarity_without) * nll.float()


def token_sar(nll: Tensor, similarity_without: Tensor) -> float:
    """TokenSAR ``E_T(s, x) = sum_i R~_T(z_i) * NLL_i``; see :func:`token_sar_contributions`."""
    return float(token_sar_contributions(nll, similarity_without).sum().item())


def sentence_sar(
    log_likelihoods: Tensor,
    similarity: Tensor,
    temperature: float = 1e-3,
) -> tuple[Tensor, float]:
    """SentenceSAR over K sampled answers of one question.

    Args:
        log_likelihoods: ``[K]`` ``l_j = log p(s_j | x)`` (sum of token log-probabilities).
        similarity: ``[K, K]`` ``similarity[j, k] = g(s_j, s_k)``; clamped to ``[0, 1]``; the
            diagonal is ignored.
        temperature: t > 0; smaller t weighs the support of similar answers more.

    Returns:
        ``[K]`` float64 per-answer ``E_S(s_j)`` and their mean (NaN for K = 0).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    ll = log_likelihoods.double()
    k = ll.shape[0]
    if similarity.shape != (k, k):
        raise ValueError(f"similarity must be [{k}, {k}], got {tuple(similarity.shape)}")
    if k == 0:
        return ll.clone(), math.nan
    # log 0 = -inf drops zero-similarity terms from the logsumexp, as does the -inf diagonal.
    log_g = torch.log(clamp_similarity(similarity.double()))
    log_g.fill_diagonal_(-math.inf)
    support = log_g + ll.unsqueeze(0) - math.log(temperature)  # [j, k]
    terms = torch.cat([ll.unsqueeze(1), support], dim=1)  # [K, 1 + K]
    per_sample = -torch.logsumexp(terms, dim=1)
    return per_sample, float(per_sample.mean().item())


def sar(
    token_sars: Tensor,
    similarity: Tensor,
    temperature: float = 1e-3,
) -> tuple[Tensor, float]:
    """SAR: SentenceSAR on the token-shifted likelihoods ``exp(-E_T(s_j, x))``.

    Args:
        token_sars: ``[K]`` TokenSAR ``E_T(s_j, x)`` of each sampled answer.
        similarity: ``[K, K]`` ``g(s_j, s_k)``; diagonal ignored.
        temperature: t > 0.

    Returns:
        ``[K]`` float64 per-answer scores and their mean (NaN for K = 0).
    """
    return sentence_sar(-token_sars.double(), similarity, temperature)

"""Activation-steering vectors: EAST (entropy-weighted) and CAA-style (contrastive).

EAST ("Controlling LLM Agents with Entropic Activation Steering", Rahn et al. 2024) has no
public code and its body was not read (metric-definitions §16), so :func:`entropy_weighted_vector`
implements the documented reconstruction

    u = Σ_i H_i (h_i − h̄) / Σ_i H_i,    h̄ = mean_i h_i (unweighted),

where ``h_i`` is a prompt's residual-stream representation (last prompt token, block L) and
``H_i`` the entropy (nats) of the agent's action distribution for that prompt, estimated with
:func:`empirical_entropy` over parsed samples. The centring and the scale of ``u`` are flagged
choices in the reconstruction and are parameters here (:class:`SteeringVectorParams`).

:func:`steering_delta` is the arithmetic a forward hook applies (``h ← h + β·u``); registering
the hook and choosing the layer and positions is the backend's job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

Normalize = Literal["none", "unit", "mean_norm"]
_NORMALIZE = ("none", "unit", "mean_norm")
# A direction shorter than this fraction of the mean representation norm is float32 noise.
_ZERO_RTOL = 1e-5


@dataclass(frozen=True)
class SteeringVectorParams:
    """Choices left open by the EAST reconstruction (§16, step 4).

    Attributes:
        center: subtract the unweighted mean representation ``h̄`` before weighting. Without
            it ``u`` is the entropy-weighted mean of the raw representations, which is dominated
            by the direction every representation shares; with it, uniform entropies give
            ``u = 0`` (no preferred direction).
        normalize: scale of the returned vector: ``none`` (as computed), ``unit`` (L2 norm 1,
            so β alone sets the strength) or ``mean_norm`` (L2 norm equal to the mean L2 norm of
            the *uncentred* representations, so β is relative to the residual-stream scale).
    """

    center: bool = True
    normalize: Normalize = "unit"

    def __post_init__(self) -> None:
        if self.normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, not {self.normalize!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the parameters, for run provenance."""
        return asdict(self)


def _check_reps(reps: Tensor, name: str) -> Tensor:
    if reps.ndim != 2:
        raise ValueError(f"{name} must be [N, d], got shape {tuple(reps.shape)}")
    if reps.shape[0] == 0:
        raise ValueError(f"{name} is empty (N == 0)")
    return reps.float()


def _rescale(u: Tensor, reps: Tensor, normalize: str) -> Tensor:
    """Apply ``normalize`` to ``u`` ``[d]``; the uncentred ``reps`` ``[N, d]`` set the scale."""
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, not {normalize!r}")
    if normalize == "none":
        return u
    norm = torch.linalg.vector_norm(u)
    scale = torch.linalg.vector_norm(reps, dim=-1).mean()
    # Scaling a (numerically) zero direction up would turn float32 rounding noise into a
    # full-strength random vector, e.g. for uniform entropies with centring.
    if not bool(norm > _ZERO_RTOL * scale):
        raise ValueError("the steering direction is zero and cannot be normalised")
    target = scale if normalize == "mean_norm" else 1.0
    return u * (target / norm)


def entropy_weighted_vector(
    reps: Tensor, entropies: Tensor, params: SteeringVectorParams | None = None
) -> Tensor:
    """EAST steering vector ``u = Σ_i H_i (h_i − h̄) / Σ_i H_i`` (reconstruction, §16).

    Args:
        reps: ``[N, d]`` one representation per logged prompt (any float dtype; math in
            float32).
        entropies: ``[N]`` action-distribution entropies ``H_i >= 0`` (nats; the unit cancels
            in the ratio).
        params: centring and scale; defaults to :class:`SteeringVectorParams()`.

    Returns:
        ``[d]`` float32 steering vector.

    Raises:
        ValueError: ``N == 0``, shape mismatch, negative or non-finite entropies, all-zero
            entropies, or a zero direction that ``normalize`` cannot scale (norm below 1e-5 of
            the mean representation norm, e.g. uniform entropies with centring).
    """
    params = params or SteeringVectorParams()
    h = _check_reps(reps, "reps")
    w = entropies.float().to(h.device)
    if w.shape != (h.shape[0],):
        raise ValueError(f"entropies must be [{h.shape[0]}], got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("entropies must be finite and >= 0")
    total = w.sum()
    if not bool(total > 0):
        raise ValueError("all entropies are zero: the weighted mean is undefined")
    x = h - h.mean(0) if params.center else h
    u = (w @ x) / total
    return _rescale(u, h, params.normalize)


def contrastive_vector(positive: Tensor, negative: Tensor, normalize: str = "unit") -> Tensor:
    """CAA-style difference of means ``mean(positive) − mean(negative)``.

    Args:
        positive: ``[N+, d]`` representations of the behaviour to steer towards.
        negative: ``[N−, d]`` representations of the behaviour to steer away from.
        normalize: ``none``, ``unit`` or ``mean_norm``; ``mean_norm`` uses the mean L2 norm of
            all ``N+ + N−`` representations pooled (each set counted per row, not per set).

    Returns:
        ``[d]`` float32 vector.

    Raises:
        ValueError: an empty set, mismatched widths, or a zero difference with normalisation.
    """
    pos = _check_reps(positive, "positive")
    neg = _check_reps(negative, "negative").to(pos.device)
    if pos.shape[1] != neg.shape[1]:
        raise ValueError(f"width mismatch: positive d={pos.shape[1]}, negative d={neg.shape[1]}")
    u = pos.mean(0) - neg.mean(0)
    return _rescale(u, torch.cat([pos, neg]), normalize)


def steering_delta(
    hidden: Tensor, vector: Tensor, beta: float, positions: Tensor | None = None
) -> Tensor:
    """The steered hidden states a hook returns: ``hidden + β·vector`` at selected positions.

    The sum is formed in float32 and cast once to ``hidden``'s dtype, so a bf16 residual stream
    gets a single rounding rather than a bf16 ``β·vector`` plus a bf16 add. Unselected positions
    are returned bitwise unchanged.

    Args:
        hidden: ``[B, T, d]`` (or any ``[..., d]``) block output.
        vector: ``[d]`` steering vector.
        beta: strength; β > 0 steers towards ``vector`` (EAST: more exploration).
        positions: bool mask of shape ``hidden.shape[:-1]`` (``[B, T]``), True where to steer;
            None steers every position.

    Returns:
        A new tensor with ``hidden``'s shape and dtype.
    """
    if vector.shape != hidden.shape[-1:]:
        raise ValueError(f"vector must be [{hidden.shape[-1]}], got shape {tuple(vector.shape)}")
    v = vector.to(device=hidden.device, dtype=torch.float32)
    steered = (hidden.float() + beta * v).to(hidden.dtype)
    if positions is None:
        return steered
    if positions.shape != hidden.shape[:-1]:
        raise ValueError(
            f"positions must have shape {tuple(hidden.shape[:-1])}, got {tuple(positions.shape)}"
        )
    mask = positions.to(device=hidden.device, dtype=torch.bool).unsqueeze(-1)
    return torch.where(mask, steered, hidden)


def distribution_entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats of probability vectors, with ``0 log 0 = 0``.

    Args:
        probs: ``[..., K]`` probabilities (each row sums to 1; not renormalised here).

    Returns:
        ``[...]`` float32 entropies.
    """
    p = probs.float()
    return -torch.special.xlogy(p, p).sum(-1)


def empirical_entropy(labels: Sequence[str]) -> float:
    """Entropy (nats) of the empirical distribution of parsed actions or answers.

    This is the plug-in estimate ``H_i`` of EAST step 2: sample N completions per prompt,
    parse each one's action, count. The plug-in estimator is biased low for small N; no
    correction is applied, so use the same N for every prompt.

    Args:
        labels: one parsed label per sample (unparseable samples should be dropped or mapped
            to a label of their own by the caller).

    Raises:
        ValueError: ``labels`` is empty.
    """
    if len(labels) == 0:
        raise ValueError("empirical entropy of no samples is undefined")
    counts = torch.tensor(list(Counter(labels).values()), dtype=torch.float32)
    return float(distribution_entropy(counts / counts.sum()))

"""ARES window entropy over the response tokens of each row.

ARES (Chen et al. 2025) defines two windows that disagree between paper and code:

* ``inclusive`` (paper §2.1, our default): ``mean(H_t .. H_{t+w-1})``, starting at token t;
* ``following`` (released code): ``mean(H_{t+1} .. H_{t+w})``, excluding token t.

A window must lie entirely inside the mask (the response); positions without a full window get
NaN rather than the code's running-mean fill, so that no value is invented.
"""

from __future__ import annotations

from typing import Literal

import torch

from tokenprism.analysis.types import PerToken, TokenMask

WindowMode = Literal["inclusive", "following"]


def window_entropy(
    entropy: PerToken, mask: TokenMask, *, window: int = 4, mode: WindowMode = "inclusive"
) -> PerToken:
    """Mean entropy over a window of ``window`` masked positions, per position.

    Args:
        entropy: ``[batch, n]`` token entropies (nats).
        mask: ``[batch, n]`` True where a position belongs to the response.
        window: window length w (ARES default 4).
        mode: ``inclusive`` (window starts at t) or ``following`` (window starts at t+1).

    Returns:
        ``[batch, n]`` float32; NaN where the window is incomplete or the position is unmasked.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    h = torch.where(mask, entropy.float(), torch.zeros_like(entropy, dtype=torch.float32))
    out = torch.full_like(h, float("nan"))
    offset = 0 if mode == "inclusive" else 1
    count = h.shape[1] - offset - window + 1  # positions whose window ends inside the row
    if count <= 0:
        return out
    # Sum each window directly (w terms): prefix-sum differences lose ~1e-4 relative on long
    # texts in float32, and float64 is not available on every device.
    win_sum = h[:, offset:].unfold(1, window, 1).sum(-1)
    win_full = mask[:, offset:].unfold(1, window, 1).all(-1)
    full = win_full & mask[:, :count]
    out[:, :count] = torch.where(full, win_sum / window, out[:, :count])
    return out

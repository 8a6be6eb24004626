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

from analysis.types import PerToken, TokenMask

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
    m = mask.float()
    h = torch.where(mask, entropy.float(), torch.zeros_like(entropy, dtype=torch.float32))
    zero = torch.zeros_like(h[:, :1])
    csum_h = torch.cat([zero, h.cumsum(1)], dim=1)  # csum[i] = sum of the first i entries
    csum_m = torch.cat([zero, m.cumsum(1)], dim=1)
    n = h.shape[1]
    offset = 0 if mode == "inclusive" else 1
    start = torch.arange(n, device=h.device) + offset
    stop = start + window
    ok = stop <= n
    start_c, stop_c = start.clamp(max=n), stop.clamp(max=n)
    win_sum = csum_h[:, stop_c] - csum_h[:, start_c]
    win_cnt = csum_m[:, stop_c] - csum_m[:, start_c]
    full = ok.unsqueeze(0) & (win_cnt == window) & mask
    return torch.where(full, win_sum / window, torch.full_like(win_sum, float("nan")))

"""ARES window entropy against a naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.windows import window_entropy


def _naive(entropy: np.ndarray, mask: np.ndarray, window: int, mode: str) -> np.ndarray:
    b, n = entropy.shape
    out = np.full((b, n), np.nan)
    offset = 0 if mode == "inclusive" else 1
    for i in range(b):
        for t in range(n):
            if not mask[i, t]:
                continue
            idx = range(t + offset, t + offset + window)
            if idx[-1] >= n or not all(mask[i, j] for j in idx):
                continue
            out[i, t] = sum(float(entropy[i, j]) for j in idx) / window
    return out


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of different lengths: a 3-token prompt + 9 response tokens, and a 2-token
    prompt + 5 response tokens followed by right padding; padding entropies are garbage."""
    rng = np.random.default_rng(0)
    entropy = torch.tensor(rng.uniform(0.0, 5.0, size=(2, 12)), dtype=torch.float32)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 3:12] = True
    mask[1, 2:7] = True
    entropy[1, 7:] = float("nan")  # padding may hold anything
    return entropy, mask


@pytest.mark.parametrize("mode", ["inclusive", "following"])
@pytest.mark.parametrize("window", [1, 2, 3, 4, 5])
def test_window_entropy_matches_naive_loop(window: int, mode: str) -> None:
    entropy, mask = _batch()
    got = window_entropy(entropy, mask, window=window, mode=mode)  # type: ignore[arg-type]
    ref = _naive(entropy.double().numpy(), mask.numpy(), window, mode)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(np.isnan(got.numpy()), np.isnan(ref))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, equal_nan=True)
    # the number of complete windows per row is known in closed form
    lengths = mask.sum(-1).tolist()
    offset = 0 if mode == "inclusive" else 1
    expected_count = [max(0, n - window - offset + 1) for n in lengths]
    assert (~torch.isnan(got)).sum(-1).tolist() == expected_count


def test_window_entropy_hand_values() -> None:
    entropy = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 9.0]])
    mask = torch.tensor([[False, True, True, True, True, False]])
    inc = window_entropy(entropy, mask, window=2, mode="inclusive")
    fol = window_entropy(entropy, mask, window=2, mode="following")
    nan = math.nan
    np.testing.assert_allclose(inc.numpy(), [[nan, 1.5, 2.5, 3.5, nan, nan]], equal_nan=True)
    np.testing.assert_allclose(fol.numpy(), [[nan, 2.5, 3.5, nan, nan, nan]], equal_nan=True)


def test_window_entropy_mask_with_a_hole() -> None:
    entropy = torch.arange(8, dtype=torch.float32).unsqueeze(0)
    mask = torch.tensor([[True, True, True, False, True, True, True, True]])
    for mode in ("inclusive", "following"):
        got = window_entropy(entropy, mask, window=3, mode=mode)  # type: ignore[arg-type]
        ref = _naive(entropy.double().numpy(), mask.numpy(), 3, mode)
        np.testing.assert_allclose(got.numpy(), ref, equal_nan=True)


def test_window_longer_than_row_is_all_nan() -> None:
    entropy = torch.ones(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert torch.isnan(window_entropy(entropy, mask, window=4)).all()
    assert torch.isnan(window_entropy(entropy, mask, window=3, mode="following")).all()
    assert window_entropy(torch.ones(1, 0), torch.ones(1, 0, dtype=torch.bool)).shape == (1, 0)


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        window_entropy(torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), window=0)


def test_window_entropy_stays_accurate_on_long_rows() -> None:
    """Each window mean must be float32-accurate however far into a long text it lies."""
    rng = np.random.default_rng(1)
    n = 20_000
    entropy = torch.tensor(rng.uniform(5.0, 10.0, size=(1, n)), dtype=torch.float32)
    mask = torch.ones(1, n, dtype=torch.bool)
    got = window_entropy(entropy, mask, window=4).double().numpy()[0]
    h = entropy.double().numpy()[0]
    ref = np.convolve(h, np.ones(4) / 4, mode="valid")
    np.testing.assert_allclose(got[: n - 3], ref, rtol=1e-6)
    assert np.isnan(got[n - 3 :]).all()

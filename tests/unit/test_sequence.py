"""Per-response aggregates against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenprism.analysis.sequence import (
    geometric_mean_confidence,
    gltr_fractions,
    masked_mean,
    perplexity,
)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    values = torch.tensor(-rng.exponential(1.5, size=(3, 8)), dtype=torch.float32)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, 2:8] = True
    mask[1, 1:4] = True
    mask[2, [0, 3, 5]] = True
    values[1, 4:] = float("nan")  # padding may hold NaN; it must not leak
    return values, mask


def test_masked_mean_matches_numpy() -> None:
    values, mask = _batch()
    got = masked_mean(values, mask)
    v, m = values.double().numpy(), mask.numpy()
    ref = [v[i][m[i]].mean() for i in range(3)]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)
    assert got.dtype == torch.float32


def test_geometric_mean_confidence_and_perplexity() -> None:
    values, mask = _batch()
    v, m = values.double().numpy(), mask.numpy()
    mean_lp = np.array([v[i][m[i]].mean() for i in range(3)])
    gm = geometric_mean_confidence(values, mask)
    ppl = perplexity(values, mask)
    np.testing.assert_allclose(gm.numpy(), np.exp(mean_lp), rtol=1e-6)
    # geometric mean of the probabilities themselves
    probs = [np.exp(v[i][m[i]]) for i in range(3)]
    np.testing.assert_allclose(gm.numpy(), [np.prod(p) ** (1 / len(p)) for p in probs], rtol=1e-5)
    np.testing.assert_allclose(ppl.numpy(), np.exp(-mean_lp), rtol=1e-6)
    np.testing.assert_allclose((gm * ppl).numpy(), np.ones(3), rtol=1e-6)


def test_gltr_fractions_match_numpy_counts() -> None:
    rng = np.random.default_rng(1)
    bucket = torch.tensor(rng.integers(0, 4, size=(3, 8)))
    _, mask = _batch()
    got = gltr_fractions(bucket, mask)
    b, m = bucket.numpy(), mask.numpy()
    ref = [[np.mean(b[i][m[i]] == k) for k in range(4)] for i in range(3)]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(got.sum(-1).numpy(), np.ones(3), rtol=1e-6)


def test_gltr_fractions_hand_values_and_out_of_range_buckets() -> None:
    bucket = torch.tensor([[0, 0, 1, 3, 2, -1, 9]])
    mask = torch.tensor([[True, True, True, True, False, False, True]])
    # -1 (padding fill) is masked out; 9 is clamped into the last bucket
    got = gltr_fractions(bucket, mask)
    np.testing.assert_allclose(got.numpy(), [[0.4, 0.2, 0.0, 0.4]], rtol=1e-6)


def test_empty_mask_gives_nan_without_error() -> None:
    values, mask = _batch()
    mask[1] = False
    for fn in (masked_mean, geometric_mean_confidence, perplexity):
        out = fn(values, mask)
        assert torch.isnan(out[1])
        assert not torch.isnan(out[[0, 2]]).any()
    frac = gltr_fractions(torch.zeros(3, 8, dtype=torch.long), mask)
    assert torch.isnan(frac[1]).all()
    assert frac[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    # no positions at all
    empty = masked_mean(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool))
    assert empty.shape == (2,) and torch.isnan(empty).all()


@pytest.mark.parametrize("n_buckets", [2, 5])
def test_gltr_fractions_bucket_count(n_buckets: int) -> None:
    bucket = torch.tensor([[0, 1, 1, 4]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    got = gltr_fractions(bucket, mask, n_buckets)
    assert got.shape == (1, n_buckets)
    expected = [0.25, 0.75] if n_buckets == 2 else [0.25, 0.5, 0.0, 0.0, 0.25]
    np.testing.assert_allclose(got.numpy()[0], expected, rtol=1e-6)

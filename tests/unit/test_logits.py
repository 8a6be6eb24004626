"""Logit metrics against numpy / scipy / naive-loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from tokenprism.analysis.logits import (
    GLTR_EDGES,
    LogitMetricParams,
    align_next_token,
    gltr_bucket,
    log_probs,
    logit_metrics,
    prob_kurtosis,
    target_logprob,
    target_rank,
    token_entropy,
    top_k,
    top_margin,
)


def _np_logsoftmax(logits: np.ndarray) -> np.ndarray:
    return scipy.special.log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def _naive_rank(row: list[float], target: int) -> int:
    return 1 + sum(1 for x in row if x > row[target])


def _random_logits(b: int, n: int, v: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, v, generator=g) * scale


def test_align_next_token_shifts_once() -> None:
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    al, tg = align_next_token(logits, ids)
    assert torch.equal(al, logits[:, :3])
    assert tg.tolist() == [[6, 7, 8], [10, 11, 12]]


# ---------------------------------------------------------------- entropy


@pytest.mark.parametrize("v", [2, 3, 7, 13, 1000])
def test_entropy_of_uniform_logits_is_log_v(v: int) -> None:
    h = token_entropy(log_probs(torch.full((1, 2, v), 1.7)))
    torch.testing.assert_close(h, torch.full((1, 2), math.log(v)), rtol=1e-6, atol=0.0)


def test_entropy_matches_scipy_on_random_logits() -> None:
    logits = _random_logits(2, 5, 17, seed=0)
    h = token_entropy(log_probs(logits))
    p = scipy.special.softmax(logits.double().numpy(), axis=-1)
    ref = scipy.stats.entropy(p, axis=-1)
    np.testing.assert_allclose(h.numpy(), ref, rtol=1e-5)
    assert h.dtype == torch.float32


def test_entropy_of_nearly_one_hot_distribution() -> None:
    logits = torch.zeros(1, 1, 50)
    logits[0, 0, 7] = 30.0
    h = float(token_entropy(log_probs(logits)))
    p = scipy.special.softmax(logits.double().numpy()[0, 0])
    ref = float(scipy.stats.entropy(p))
    assert ref < 1e-9
    assert h == pytest.approx(ref, abs=1e-6)


def test_entropy_with_minus_inf_logits_ignores_zero_probability_entries() -> None:
    inf = float("inf")
    logits = torch.tensor([[[0.5, -inf, 2.0, -inf, -1.0], [-inf, 3.0, -inf, -inf, -inf]]])
    h = token_entropy(log_probs(logits))
    assert not torch.isnan(h).any()
    finite = scipy.special.softmax(np.array([0.5, 2.0, -1.0]))
    assert float(h[0, 0]) == pytest.approx(float(scipy.stats.entropy(finite)), rel=1e-6)
    assert float(h[0, 1]) == pytest.approx(0.0, abs=1e-7)
    # the fused path gives the same, also without NaN
    m = logit_metrics(logits, torch.tensor([[0, 1]]), LogitMetricParams(top_k=3))
    torch.testing.assert_close(m.entropy, h)
    assert float(m.logprob[0, 1]) == 0.0
    assert float(m.logprob[0, 0]) == pytest.approx(math.log(finite[0]), rel=1e-6)
    assert not torch.isnan(m.kurtosis).any()


# ---------------------------------------------------------------- logprob, rank, top-k


def test_target_logprob_matches_numpy_log_softmax() -> None:
    logits = _random_logits(2, 6, 11, seed=1)
    targets = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(2))
    lp = target_logprob(log_probs(logits), targets)
    ref = np.take_along_axis(_np_logsoftmax(logits.numpy()), targets.numpy()[..., None], axis=-1)[
        ..., 0
    ]
    np.testing.assert_allclose(lp.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_target_rank_with_ties() -> None:
    row = [1.0, 3.0, 3.0, 2.0, -5.0, 3.0]
    logits = torch.tensor([[row] * len(row)])
    targets = torch.arange(len(row)).unsqueeze(0)
    ranks = target_rank(logits, targets)
    assert ranks.tolist() == [[5, 1, 1, 4, 6, 1]]
    assert ranks[0].tolist() == [_naive_rank(row, t) for t in range(len(row))]
    assert ranks.dtype == torch.int64


def test_target_rank_matches_naive_loop_on_random_logits() -> None:
    # integer-valued logits create plenty of ties
    g = torch.Generator().manual_seed(3)
    logits = torch.randint(-3, 4, (2, 8, 9), generator=g).float()
    targets = torch.randint(0, 9, (2, 8), generator=g)
    ranks = target_rank(logits, targets)
    for b in range(2):
        for t in range(8):
            assert int(ranks[b, t]) == _naive_rank(logits[b, t].tolist(), int(targets[b, t]))


def test_top_k_order_and_probabilities() -> None:
    logits = _random_logits(2, 3, 10, seed=4)
    ids, probs = top_k(log_probs(logits), 4)
    p = scipy.special.softmax(logits.double().numpy(), axis=-1)
    order = np.argsort(-p, axis=-1)[..., :4]
    assert ids.tolist() == order.tolist()
    np.testing.assert_allclose(probs.numpy(), np.take_along_axis(p, order, -1), rtol=1e-5)
    assert (probs[..., :-1] >= probs[..., 1:]).all()


def test_top_k_larger_than_vocab_is_clipped() -> None:
    ids, probs = top_k(log_probs(_random_logits(1, 2, 3, seed=5)), 10)
    assert ids.shape == (1, 2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2))


def test_margin_is_gap_between_two_most_probable() -> None:
    logits = _random_logits(2, 4, 9, seed=6)
    _, probs = top_k(log_probs(logits), 3)
    p = np.sort(scipy.special.softmax(logits.double().numpy(), axis=-1), axis=-1)
    np.testing.assert_allclose(top_margin(probs).numpy(), p[..., -1] - p[..., -2], atol=1e-6)
    with pytest.raises(ValueError):
        top_margin(probs[..., :1])
    with pytest.raises(ValueError):
        logit_metrics(logits, torch.zeros(2, 4, dtype=torch.long), LogitMetricParams(top_k=1))


# ---------------------------------------------------------------- kurtosis


@pytest.mark.parametrize("excess", [False, True])
@pytest.mark.parametrize(("v", "scale"), [(13, 1.0), (50, 3.0), (1000, 5.0)])
def test_prob_kurtosis_matches_scipy(v: int, scale: float, excess: bool) -> None:
    logits = _random_logits(2, 4, v, seed=v, scale=scale)
    k = prob_kurtosis(log_probs(logits), excess=excess)
    p = scipy.special.softmax(logits.double().numpy(), axis=-1)
    ref = scipy.stats.kurtosis(p, axis=-1, fisher=excess, bias=True)
    assert k.dtype == torch.float32
    np.testing.assert_allclose(k.numpy(), ref, rtol=1e-4)


def test_prob_kurtosis_hand_computed() -> None:
    p = np.array([0.7, 0.1, 0.1, 0.1])
    d = p - 0.25
    expected = np.mean(d**4) / np.mean(d**2) ** 2
    k = prob_kurtosis(torch.tensor(np.log(p), dtype=torch.float32).view(1, 1, 4))
    assert float(k) == pytest.approx(expected, rel=1e-5)


def test_prob_kurtosis_uniform_over_a_subset_is_defined() -> None:
    """p = (1/2, 1/2, 0) is not uniform over |V| = 3: deviations 1/6, 1/6, -1/3 give K = 1.5."""
    logits = torch.tensor([[[0.0, 0.0, -float("inf")]]])
    assert float(prob_kurtosis(log_probs(logits))) == pytest.approx(1.5, rel=1e-5)
    ref = scipy.stats.kurtosis([0.5, 0.5, 0.0], fisher=False, bias=True)
    assert float(prob_kurtosis(log_probs(logits))) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("v", [2, 3, 5, 7, 10, 13, 1000, 49152])
def test_prob_kurtosis_of_uniform_distribution_is_nan(v: int) -> None:
    """m2 = 0 for a uniform distribution: float32 rounding of 1/|V| must not turn it into 1."""
    logp = log_probs(torch.zeros(1, 1, v))
    assert torch.isnan(prob_kurtosis(logp)).all()
    assert torch.isnan(prob_kurtosis(logp, excess=True)).all()
    m = logit_metrics(
        torch.zeros(1, 1, v), torch.zeros(1, 1, dtype=torch.long), LogitMetricParams(top_k=2)
    )
    assert torch.isnan(m.kurtosis).all()


# ---------------------------------------------------------------- GLTR buckets


def test_gltr_bucket_boundaries() -> None:
    ranks = torch.tensor([[1, 10, 11, 100, 101, 1000, 1001, 50_000]])
    assert gltr_bucket(ranks).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    assert GLTR_EDGES == (10, 100, 1000)
    assert gltr_bucket(torch.tensor([1, 2, 3, 4, 7]), (1, 3)).tolist() == [0, 1, 1, 2, 2]


# ---------------------------------------------------------------- fused logit_metrics


def _reference_metrics(
    logits: torch.Tensor, targets: torch.Tensor, k: int
) -> dict[str, np.ndarray]:
    x = logits.double().numpy()
    lp = _np_logsoftmax(x)
    p = np.exp(lp)
    tg = targets.numpy()
    b, n, _ = x.shape
    rank = np.array([[_naive_rank(x[i, t].tolist(), tg[i, t]) for t in range(n)] for i in range(b)])
    order = np.argsort(-p, axis=-1)[..., :k]
    top_p = np.take_along_axis(p, order, -1)
    return {
        "logprob": np.take_along_axis(lp, tg[..., None], -1)[..., 0],
        "entropy": scipy.stats.entropy(p, axis=-1),
        "rank": rank,
        "margin": top_p[..., 0] - top_p[..., 1],
        "kurtosis": scipy.stats.kurtosis(p, axis=-1, fisher=False, bias=True),
        "top_ids": order,
        "top_probs": top_p,
    }


def test_logit_metrics_matches_references() -> None:
    logits = _random_logits(2, 9, 21, seed=7)
    targets = torch.randint(0, 21, (2, 9), generator=torch.Generator().manual_seed(8))
    m = logit_metrics(logits, targets, LogitMetricParams(top_k=5, chunk_positions=4))
    ref = _reference_metrics(logits, targets, 5)
    for name in ("logprob", "entropy", "margin", "top_probs"):
        np.testing.assert_allclose(getattr(m, name).numpy(), ref[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.kurtosis.numpy(), ref["kurtosis"], rtol=1e-4)
    assert m.rank.tolist() == ref["rank"].tolist()
    assert m.top_ids.tolist() == ref["top_ids"].tolist()
    np.testing.assert_allclose(m.prob.numpy(), np.exp(ref["logprob"]), rtol=1e-5)
    np.testing.assert_allclose(m.surprisal_bits.numpy(), -ref["logprob"] / np.log(2), rtol=1e-5)
    np.testing.assert_allclose(
        m.surprisal_bits.numpy(), -np.log2(np.exp(ref["logprob"])), rtol=1e-5
    )
    assert (
        m.gltr_bucket((1, 3, 10)).tolist()
        == np.digitize(ref["rank"], [1, 3, 10], right=True).tolist()
    )
    excess = logit_metrics(logits, targets, LogitMetricParams(top_k=5, kurtosis_excess=True))
    torch.testing.assert_close(excess.kurtosis, m.kurtosis - 3.0)


def test_logit_metrics_chunking_does_not_change_results() -> None:
    logits = _random_logits(2, 10, 37, seed=9)
    targets = torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(10))
    results = [
        logit_metrics(logits, targets, LogitMetricParams(top_k=4, chunk_positions=c))
        for c in (1, 3, 64)
    ]
    names = ("logprob", "entropy", "rank", "margin", "kurtosis", "top_ids", "top_probs")
    for other in results[1:]:
        for name in names:
            a, b = getattr(results[0], name), getattr(other, name)
            assert a.shape == b.shape == ((2, 10, 4) if name.startswith("top") else (2, 10))
            torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)


def test_logit_metrics_on_zero_positions() -> None:
    m = logit_metrics(
        torch.zeros(2, 0, 5), torch.zeros(2, 0, dtype=torch.long), LogitMetricParams(top_k=3)
    )
    assert m.logprob.shape == (2, 0)
    assert m.top_ids.shape == (2, 0, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_give_float32_results(dtype: torch.dtype) -> None:
    logits = _random_logits(2, 6, 40, seed=11)
    targets = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(12))
    params = LogitMetricParams(top_k=3, chunk_positions=4)
    half = logit_metrics(logits.to(dtype), targets, params)
    # exactly the float32 computation on the rounded logits ...
    upcast = logit_metrics(logits.to(dtype).float(), targets, params)
    for name in ("logprob", "entropy", "rank", "margin", "kurtosis", "top_ids", "top_probs"):
        torch.testing.assert_close(getattr(half, name), getattr(upcast, name))
    for name in ("logprob", "entropy", "margin", "kurtosis", "top_probs"):
        assert getattr(half, name).dtype == torch.float32
    assert half.rank.dtype == torch.int64
    # ... and close to the full-precision one (bf16 keeps 8 bits of mantissa)
    full = logit_metrics(logits, targets, params)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(half.logprob, full.logprob, rtol=tol, atol=tol * 5)
    torch.testing.assert_close(half.entropy, full.entropy, rtol=tol, atol=tol)
    torch.testing.assert_close(half.kurtosis, full.kurtosis, rtol=tol * 5, atol=0.0)
    # the standalone helpers upcast too
    lp = log_probs(logits.to(dtype))
    assert lp.dtype == torch.float32
    assert prob_kurtosis(lp).dtype == torch.float32
    torch.testing.assert_close(token_entropy(lp), half.entropy)

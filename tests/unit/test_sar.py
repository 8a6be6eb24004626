"""TokenSAR / SentenceSAR / SAR against naive loops and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.sar import (
    clamp_similarity,
    sar,
    sentence_sar,
    token_relevance,
    token_sar,
    token_sar_contributions,
)


def _naive_relevance(sim_without: list[float], eps: float = 1e-8) -> list[float]:
    rel = [1.0 - min(max(s, 0.0), 1.0) for s in sim_without]
    total = sum(rel)
    if total <= eps:
        return [1.0 / len(rel)] * len(rel)
    return [r / total for r in rel]


def _naive_sentence_sar(ll: list[float], sim: list[list[float]], t: float) -> list[float]:
    """Direct formula -log(p_j + sum_{k != j} g_jk p_k / t) in plain floats (no underflow at
    the magnitudes used with it)."""
    out = []
    for j in range(len(ll)):
        acc = math.exp(ll[j])
        for k in range(len(ll)):
            if k != j:
                acc += min(max(sim[j][k], 0.0), 1.0) * math.exp(ll[k]) / t
        out.append(-math.log(acc))
    return out


def _logaddexp_sentence_sar(ll: np.ndarray, sim: np.ndarray, t: float) -> np.ndarray:
    """The same formula folded term by term with numpy logaddexp in float64."""
    out = np.empty(len(ll))
    for j in range(len(ll)):
        acc = float(ll[j])
        for k in range(len(ll)):
            g = min(max(float(sim[j, k]), 0.0), 1.0)
            if k != j and g > 0:
                acc = float(np.logaddexp(acc, math.log(g) + float(ll[k]) - math.log(t)))
        out[j] = -acc
    return out


def test_clamp_similarity() -> None:
    sim = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.2])
    got = clamp_similarity(sim)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), np.float32([0.0, 0.0, 0.3, 1.0, 1.0]))
    assert torch.isnan(clamp_similarity(torch.tensor([math.nan]))).all()


@pytest.mark.parametrize("seed", range(5))
def test_token_sar_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 20))
    sim = rng.uniform(-0.2, 1.1, size=n)  # out-of-range values exercise the clamp
    nll = rng.uniform(0.0, 8.0, size=n)
    rel = _naive_relevance(sim.tolist())
    contrib_ref = [r * x for r, x in zip(rel, nll, strict=True)]

    sim_t = torch.tensor(sim, dtype=torch.float32)
    nll_t = torch.tensor(nll, dtype=torch.float32)
    got_rel = token_relevance(sim_t)
    got_contrib = token_sar_contributions(nll_t, sim_t)
    assert got_rel.dtype == torch.float32 and got_contrib.dtype == torch.float32
    np.testing.assert_allclose(got_rel.numpy(), rel, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_contrib.numpy(), contrib_ref, rtol=1e-5, atol=1e-6)
    assert token_sar(nll_t, sim_t) == pytest.approx(sum(contrib_ref), rel=1e-5)


def test_token_sar_hand_values() -> None:
    # R = [0.1, 0.5, 0] -> weights [1/6, 5/6, 0]; contributions [2/6, 5/6, 0]
    sim = torch.tensor([0.9, 0.5, 1.0])
    nll = torch.tensor([2.0, 1.0, 7.0])
    np.testing.assert_allclose(token_relevance(sim).numpy(), [1 / 6, 5 / 6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        token_sar_contributions(nll, sim).numpy(), [1 / 3, 5 / 6, 0.0], rtol=1e-6
    )
    assert token_sar(nll, sim) == pytest.approx(7 / 6, rel=1e-6)


def test_token_relevance_uniform_fallback() -> None:
    sim = torch.tensor([1.0, 1.3, 1.0, 1.0])  # no token changes the meaning
    np.testing.assert_allclose(token_relevance(sim).numpy(), [0.25] * 4)
    nll = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert token_sar(nll, sim) == pytest.approx(3.0)  # the mean NLL
    # below eps also counts as all-zero
    tiny = torch.tensor([1.0 - 1e-9, 1.0])
    np.testing.assert_allclose(token_relevance(tiny, eps=1e-6).numpy(), [0.5, 0.5])


def test_token_sar_empty_and_shape_mismatch() -> None:
    assert token_relevance(torch.zeros(0)).shape == (0,)
    assert token_sar(torch.zeros(0), torch.zeros(0)) == 0.0
    with pytest.raises(ValueError):
        token_sar_contributions(torch.zeros(3), torch.zeros(2))


@pytest.mark.parametrize("seed", range(5))
def test_sentence_sar_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 8))
    ll = rng.uniform(-12.0, -0.1, size=k)
    sim = rng.uniform(-0.3, 1.0, size=(k, k))  # asymmetric, some negatives clamp to 0
    t = float(rng.choice([1e-3, 0.1, 1.0]))
    ref = _naive_sentence_sar(ll.tolist(), sim.tolist(), t)

    per, mean = sentence_sar(torch.tensor(ll), torch.tensor(sim, dtype=torch.float32), t)
    assert per.dtype == torch.float64
    # the float32 similarity is the input both sides see
    ref32 = _naive_sentence_sar(ll.tolist(), sim.astype(np.float32).astype(float).tolist(), t)
    np.testing.assert_allclose(per.numpy(), ref32, rtol=1e-12)
    np.testing.assert_allclose(per.numpy(), ref, rtol=1e-5)
    assert mean == pytest.approx(float(np.mean(ref32)), rel=1e-12)


def test_sentence_sar_hand_values() -> None:
    ll = torch.tensor([math.log(0.5), math.log(0.25)], dtype=torch.float64)
    sim = torch.tensor([[1.0, 0.5], [0.2, 1.0]], dtype=torch.float64)
    per, mean = sentence_sar(ll, sim, temperature=0.5)
    # E0 = -log(0.5 + 0.5 * 0.25 / 0.5), E1 = -log(0.25 + 0.2 * 0.5 / 0.5)
    np.testing.assert_allclose(per.numpy(), [-math.log(0.75), -math.log(0.45)], rtol=1e-12)
    assert mean == pytest.approx((-math.log(0.75) - math.log(0.45)) / 2, rel=1e-12)


def test_sentence_sar_single_sample_is_nll() -> None:
    per, mean = sentence_sar(torch.tensor([-3.5]), torch.tensor([[0.7]]))
    np.testing.assert_allclose(per.numpy(), [3.5])
    assert mean == pytest.approx(3.5)


def test_sentence_sar_ignores_diagonal() -> None:
    rng = np.random.default_rng(7)
    ll = torch.tensor(rng.uniform(-10, -1, size=5))
    sim = torch.tensor(rng.uniform(0, 1, size=(5, 5)))
    a, ma = sentence_sar(ll, sim)
    sim2 = sim.clone()
    sim2.fill_diagonal_(0.0)
    b, mb = sentence_sar(ll, sim2)
    sim3 = sim.clone()
    sim3.fill_diagonal_(123.0)
    c, mc = sentence_sar(ll, sim3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(a.numpy(), c.numpy())
    assert ma == mb == mc


def test_sentence_sar_zero_similarity_is_nll() -> None:
    ll = torch.tensor([-1.0, -2.0, -30.0])
    per, _ = sentence_sar(ll, torch.zeros(3, 3))
    np.testing.assert_allclose(per.numpy(), [1.0, 2.0, 30.0])


def test_sentence_sar_underflow_stays_finite() -> None:
    # exp(-2000) is 0 in float64: the naive formula would give -log(0) = inf
    ll = np.array([-2000.0, -2003.5, -1990.25, -2500.0])
    rng = np.random.default_rng(3)
    sim = rng.uniform(0.0, 1.0, size=(4, 4))
    sim[0, 1] = 0.0  # a dropped term
    sim[3, :] = 0.0  # no support at all: E_S = -l_3
    per, mean = sentence_sar(torch.tensor(ll), torch.tensor(sim))
    assert torch.isfinite(per).all() and math.isfinite(mean)
    ref = _logaddexp_sentence_sar(ll, sim, 1e-3)
    np.testing.assert_allclose(per.numpy(), ref, rtol=1e-12)
    assert per[3].item() == pytest.approx(2500.0)
    # shifting every log-likelihood by c shifts every score by -c (an exact identity)
    shifted, _ = sentence_sar(torch.tensor(ll + 2000.0), torch.tensor(sim))
    np.testing.assert_allclose(per.numpy(), shifted.numpy() + 2000.0, rtol=1e-12)


def test_sentence_sar_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        sentence_sar(torch.zeros(2), torch.zeros(2, 2), temperature=0.0)
    with pytest.raises(ValueError):
        sentence_sar(torch.zeros(2), torch.zeros(3, 3))
    per, mean = sentence_sar(torch.zeros(0), torch.zeros(0, 0))
    assert per.shape == (0,) and math.isnan(mean)


@pytest.mark.parametrize("seed", range(3))
def test_sar_is_sentence_sar_on_token_shifted_likelihoods(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 6
    e_t = rng.uniform(0.1, 5.0, size=k)
    sim = rng.uniform(0.0, 1.0, size=(k, k))
    per, mean = sar(torch.tensor(e_t, dtype=torch.float32), torch.tensor(sim), temperature=0.01)
    ref = _naive_sentence_sar((-e_t.astype(np.float32).astype(float)).tolist(), sim.tolist(), 0.01)
    np.testing.assert_allclose(per.numpy(), ref, rtol=1e-12)
    assert mean == pytest.approx(float(np.mean(ref)), rel=1e-12)


def test_sar_end_to_end_from_tokens() -> None:
    """TokenSAR per answer, then SAR, against a fully naive pipeline."""
    rng = np.random.default_rng(11)
    answers = [(rng.uniform(0, 4, size=n), rng.uniform(0, 1, size=n)) for n in (3, 5, 1, 4)]
    e_t = [token_sar(torch.tensor(nll), torch.tensor(sw)) for nll, sw in answers]
    sim = rng.uniform(0, 1, size=(4, 4))
    per, _ = sar(torch.tensor(e_t, dtype=torch.float64), torch.tensor(sim))
    naive_et = [
        sum(r * x for r, x in zip(_naive_relevance(sw.tolist()), nll, strict=True))
        for nll, sw in answers
    ]
    ref = _naive_sentence_sar([-e for e in naive_et], sim.tolist(), 1e-3)
    np.testing.assert_allclose(per.numpy(), ref, rtol=1e-5)

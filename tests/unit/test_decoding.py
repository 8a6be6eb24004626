"""Decoding-intervention math against hand formulas and direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.decoding import (
    apply_logit_bias,
    biased_probability,
    cntp_trials,
    ead_decay,
    ead_temperature,
    entropy_bits,
    marker_mass,
    perplexity,
    refusal_decision,
    rolling_mean,
    switch_indicator,
)


def _ead_hand(t: int, tau_max: float, tau_min: float, d: float, warmup: int) -> float:
    return 1.0 if t < warmup else max(1.0 + tau_max - math.exp(t / d), tau_min)


def test_ead_temperature_hand_values() -> None:
    assert float(ead_temperature(1)) == 1.0
    assert float(ead_temperature(9)) == 1.0  # last warm-up token (t < c = 10)
    assert float(ead_temperature(10)) == pytest.approx(2.2 - math.exp(10 / 200), rel=1e-6)
    assert float(ead_temperature(100)) == pytest.approx(2.2 - math.exp(0.5), rel=1e-6)
    # the floor: 1 + 1.2 − exp(t/200) <= 0.1 from t = 200·ln 2.1 ≈ 148.4 on
    assert float(ead_temperature(149)) == pytest.approx(0.1)
    assert float(ead_temperature(10**6)) == pytest.approx(0.1)  # exp overflow still floors
    assert float(ead_temperature(148)) > 0.1
    assert ead_temperature(5).shape == ()
    assert ead_temperature(5).dtype == torch.float32


@pytest.mark.parametrize(
    ("tau_max", "tau_min", "d", "warmup"),
    [(1.2, 0.1, 200.0, 10), (1.2, 0.6, 250.0, 10), (1.0, 0.3, 50.0, 0)],
)
def test_ead_temperature_vectorised_equals_scalar(
    tau_max: float, tau_min: float, d: float, warmup: int
) -> None:
    t = torch.arange(1, 401).reshape(20, 20)
    kw = {"tau_max": tau_max, "tau_min": tau_min, "d": d, "warmup": warmup}
    got = ead_temperature(t, **kw)
    assert got.shape == (20, 20) and got.dtype == torch.float32
    ref = np.array([_ead_hand(int(x), tau_max, tau_min, d, warmup) for x in t.flatten()])
    np.testing.assert_allclose(got.flatten().numpy(), ref, rtol=1e-6, atol=1e-6)
    loop = torch.stack([ead_temperature(int(x), **kw) for x in t.flatten()])
    assert torch.equal(got.flatten(), loop)
    with pytest.raises(ValueError):
        ead_temperature(torch.tensor([0, 1]))


def test_ead_decay_clips() -> None:
    assert ead_decay(0) == 200.0
    assert ead_decay(10) == 250.0
    assert ead_decay(7960) == 4e4  # exactly the cap
    assert ead_decay(10**6) == 4e4
    assert ead_decay(3, d0=250.0, alpha=5.0, d_max=260.0) == 260.0
    with pytest.raises(ValueError):
        ead_decay(-1)


def _cntp_naive(h: float, n_max: int, lo: float, hi: float) -> int:
    return int(1 + (n_max - 1) * min(max((h - lo) / (hi - lo), 0.0), 1.0))


@pytest.mark.parametrize("n_max", [1, 2, 10, 40])
def test_cntp_trials_matches_naive_int(n_max: int) -> None:
    rng = np.random.default_rng(0)
    h = torch.tensor(rng.uniform(-0.5, 3.0, size=200), dtype=torch.float32)
    got = cntp_trials(h, max_trials=n_max)
    assert got.dtype == torch.int64
    ref = [_cntp_naive(float(x), n_max, 0.01, 1.5) for x in h]
    assert got.tolist() == ref


def test_cntp_trials_edges() -> None:
    h = torch.tensor([[-1.0, 0.0, 0.01], [1.5, 2.0, 100.0]])
    got = cntp_trials(h)
    assert got.tolist() == [[1, 1, 1], [10, 10, 10]]
    # truncation toward zero: just below a step stays on the lower count
    lo, hi = 0.0, 1.0
    assert cntp_trials(torch.tensor([0.49, 0.5, 0.99]), h_low=lo, h_high=hi).tolist() == [5, 5, 9]
    with pytest.raises(ValueError):
        cntp_trials(torch.tensor([float("nan")]))
    with pytest.raises(ValueError):
        cntp_trials(h, h_low=1.0, h_high=1.0)


def test_perplexity() -> None:
    lp = torch.tensor([[math.log(0.5), math.log(0.25)], [0.0, 0.0]])
    np.testing.assert_allclose(perplexity(lp).numpy(), [math.sqrt(8), 1.0], rtol=1e-6)


def test_entropy_bits_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=4.0, size=(3, 5, 50))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = -(p * np.log2(p)).sum(-1)
    got = entropy_bits(torch.tensor(logits, dtype=torch.float32))
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    # bf16 input is promoted; large logits do not overflow; uniform gives log2 V
    assert float(entropy_bits(torch.zeros(64, dtype=torch.bfloat16))) == pytest.approx(6.0)
    big = torch.tensor([1e4, 1e4, -1e4])
    assert float(entropy_bits(big)) == pytest.approx(1.0, rel=1e-6)
    masked = torch.tensor([0.0, 0.0, float("-inf")])
    assert float(entropy_bits(masked)) == pytest.approx(1.0, rel=1e-6)


def _rolling_naive(v: list[float], w: int) -> list[float]:
    out = []
    for t in range(len(v)):
        win = v[max(0, t - w + 1) : t + 1]
        out.append(sum(win) / len(win))
    return out


@pytest.mark.parametrize("window", [1, 2, 5, 12])
def test_rolling_mean_matches_naive_loop(window: int) -> None:
    rng = np.random.default_rng(3)
    v = torch.tensor(rng.uniform(0.0, 6.0, size=9), dtype=torch.float32)
    got = rolling_mean(v, window)
    np.testing.assert_allclose(got.numpy(), _rolling_naive(v.tolist(), window), rtol=1e-6)
    batched = rolling_mean(torch.stack([v, v.flip(0)]), window)
    np.testing.assert_allclose(batched[0].numpy(), got.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        batched[1].numpy(), _rolling_naive(v.flip(0).tolist(), window), rtol=1e-6
    )


def test_rolling_mean_hand_values_and_edges() -> None:
    v = torch.tensor([2.0, 4.0, 6.0, 8.0])
    np.testing.assert_allclose(rolling_mean(v, 3).numpy(), [2.0, 3.0, 4.0, 6.0])
    assert rolling_mean(torch.zeros(0)).shape == (0,)
    with pytest.raises(ValueError):
        rolling_mean(v, 0)


def test_switch_indicator() -> None:
    h = torch.tensor([0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    # means with w = 5: 0, 0, 10/3, 2.5, 2, 2, 2, 0
    got = switch_indicator(h, threshold=2.0, window=5)
    assert got.dtype == torch.bool
    assert got.tolist() == [False, False, True, True, False, False, False, False]
    assert switch_indicator(h, threshold=1.9).tolist() == [False, False] + [True] * 5 + [False]


def test_apply_logit_bias_touches_only_targets() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 20)
    out = apply_logit_bias(logits, {4: 2.5, 11: -3.0})
    assert out is not logits and out.dtype == logits.dtype
    others = torch.ones(20, dtype=torch.bool)
    others[[4, 11]] = False
    assert torch.equal(out[..., others], logits[..., others])  # bitwise
    np.testing.assert_allclose(out[..., 4].numpy(), (logits[..., 4] + 2.5).numpy())
    np.testing.assert_allclose(out[..., 11].numpy(), (logits[..., 11] - 3.0).numpy())
    # the softmax moves as the algebra says: ratios to untouched tokens scale by e^b
    p, q = logits.softmax(-1), out.softmax(-1)
    np.testing.assert_allclose(
        (q[..., 4] / q[..., 0]).numpy(), (p[..., 4] / p[..., 0] * math.exp(2.5)).numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        (q[..., 11] / q[..., 0]).numpy(),
        (p[..., 11] / p[..., 0] * math.exp(-3.0)).numpy(),
        rtol=1e-5,
    )
    assert bool((q[..., others] < p[..., others]).all())  # a net positive bias takes mass away


def test_apply_logit_bias_tensor_form() -> None:
    logits = torch.zeros(4, 6, dtype=torch.bfloat16)
    out = apply_logit_bias(logits, (torch.tensor([1, 3, 1]), torch.tensor([1.0, -2.0, 0.5])))
    assert out.dtype == torch.bfloat16
    expected = torch.zeros(4, 6)
    expected[:, 1], expected[:, 3] = 1.5, -2.0  # the repeated id accumulates
    assert torch.equal(out.float(), expected)
    assert torch.equal(logits, torch.zeros(4, 6, dtype=torch.bfloat16))  # input untouched
    banned = apply_logit_bias(torch.zeros(6), {2: float("-inf")})
    assert float(banned.softmax(-1)[2]) == 0.0
    with pytest.raises(ValueError):
        apply_logit_bias(logits, {6: 1.0})
    with pytest.raises(ValueError):
        apply_logit_bias(logits, {-1: 1.0})


@pytest.mark.parametrize("b", [-5.0, 0.0, 2.5])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_biased_probability_equals_direct_softmax(b: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    vocab = 30
    logits = torch.randn(8, vocab, generator=g, dtype=torch.float64) * 3.0
    size = int(torch.randint(1, 6, (1,), generator=g))
    ids = torch.randperm(vocab, generator=g)[:size]
    p = logits.softmax(-1)[:, ids].sum(-1)
    direct = apply_logit_bias(logits, (ids, torch.full((size,), b))).softmax(-1)[:, ids].sum(-1)
    got = biased_probability(p.float(), b)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), direct.numpy(), rtol=1e-5, atol=1e-7)
    closed = (p * math.exp(b) / (1 - p + p * math.exp(b))).numpy()  # the §17 formula verbatim
    np.testing.assert_allclose(got.numpy(), closed, rtol=1e-5, atol=1e-7)


def test_biased_probability_edges() -> None:
    p = torch.tensor([0.0, 1.0, 0.5])
    np.testing.assert_allclose(
        biased_probability(p, 3.0).numpy(), [0.0, 1.0, 1 / (1 + math.exp(-3))]
    )
    # huge biases saturate instead of overflowing e^b
    np.testing.assert_allclose(biased_probability(p[2:], 200.0).numpy(), [1.0])
    np.testing.assert_allclose(biased_probability(p[2:], -200.0).numpy(), [0.0], atol=1e-30)
    sweep = biased_probability(torch.tensor(0.2), torch.tensor([-1.0, 0.0, 1.0]))
    assert sweep.shape == (3,) and float(sweep[1]) == pytest.approx(0.2)


def test_refusal_decision_both_modes() -> None:
    refuse = torch.tensor([0.3, 0.2, 0.05, 0.4])
    respond = torch.tensor([0.3, 0.5, 0.01, 0.1])
    # pairwise (threshold −1): ties refuse; other tokens are ignored
    assert refusal_decision(refuse, respond).tolist() == [True, False, True, True]
    assert refusal_decision(refuse, respond, threshold=0.25).tolist() == [True, False, False, True]
    assert refusal_decision(refuse, respond, threshold=0.0).all()
    assert refusal_decision(refuse, respond, threshold=0.3).tolist() == [True, False, False, True]


def test_marker_mass_counts_duplicates_once() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    ids = torch.tensor([3, 1, 3, 1, 1])
    np.testing.assert_allclose(marker_mass(probs, ids).numpy(), [0.6, 0.5], rtol=1e-6)
    assert marker_mass(probs, torch.tensor([], dtype=torch.long)).tolist() == [0.0, 0.0]
    batched = marker_mass(probs.reshape(2, 1, 4).expand(2, 3, 4), torch.tensor([0]))
    assert batched.shape == (2, 3)
    with pytest.raises(ValueError):
        marker_mass(probs, torch.tensor([4]))

"""Steering vectors and entropies against naive loops and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.steering import (
    SteeringVectorParams,
    contrastive_vector,
    distribution_entropy,
    empirical_entropy,
    entropy_weighted_vector,
    steering_delta,
)


def _naive_east(reps: np.ndarray, ent: np.ndarray, center: bool) -> np.ndarray:
    n, d = reps.shape
    mean = [sum(reps[i, j] for i in range(n)) / n for j in range(d)] if center else [0.0] * d
    num = [sum(ent[i] * (reps[i, j] - mean[j]) for i in range(n)) for j in range(d)]
    return np.array(num) / sum(ent)


def _data(n: int = 7, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    reps = torch.tensor(rng.normal(size=(n, d)) + 3.0, dtype=torch.float32)
    ent = torch.tensor(rng.uniform(0.0, 2.0, size=n), dtype=torch.float32)
    return reps, ent


@pytest.mark.parametrize("center", [True, False])
def test_entropy_weighted_vector_matches_naive_loop(center: bool) -> None:
    reps, ent = _data()
    got = entropy_weighted_vector(reps, ent, SteeringVectorParams(center=center, normalize="none"))
    ref = _naive_east(reps.double().numpy(), ent.double().numpy(), center)
    assert got.dtype == torch.float32 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_centring_cancels_a_constant_shift() -> None:
    reps, ent = _data()
    params = SteeringVectorParams(center=True, normalize="none")
    shift = torch.tensor([100.0, -50.0, 7.0, 0.0, 3.0])
    a = entropy_weighted_vector(reps, ent, params)
    b = entropy_weighted_vector(reps + shift, ent, params)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)
    # without centring the shift passes straight through (weights sum to one)
    raw = SteeringVectorParams(center=False, normalize="none")
    diff = entropy_weighted_vector(reps + shift, ent, raw) - entropy_weighted_vector(reps, ent, raw)
    np.testing.assert_allclose(diff.numpy(), shift.numpy(), atol=1e-4)


def test_entropy_weighted_hand_value() -> None:
    reps = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ent = torch.tensor([3.0, 1.0])
    # h̄ = (.5, .5); u = (3·(.5,−.5) + 1·(−.5,.5)) / 4 = (.25, −.25)
    got = entropy_weighted_vector(reps, ent, SteeringVectorParams(normalize="none"))
    np.testing.assert_allclose(got.numpy(), [0.25, -0.25])
    unit = entropy_weighted_vector(reps, ent, SteeringVectorParams(normalize="unit"))
    np.testing.assert_allclose(unit.numpy(), [1 / math.sqrt(2), -1 / math.sqrt(2)], rtol=1e-6)


def test_normalisations() -> None:
    reps, ent = _data()
    raw = entropy_weighted_vector(reps, ent, SteeringVectorParams(normalize="none"))
    unit = entropy_weighted_vector(reps, ent, SteeringVectorParams(normalize="unit"))
    mean_norm = entropy_weighted_vector(reps, ent, SteeringVectorParams(normalize="mean_norm"))
    target = float(np.mean(np.linalg.norm(reps.double().numpy(), axis=1)))  # uncentred reps
    assert float(unit.norm()) == pytest.approx(1.0, rel=1e-6)
    assert float(mean_norm.norm()) == pytest.approx(target, rel=1e-5)
    # same direction in all three
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(raw, unit, dim=0)) == pytest.approx(1.0, abs=1e-6)
    assert float(cos(raw, mean_norm, dim=0)) == pytest.approx(1.0, abs=1e-6)
    assert SteeringVectorParams().as_dict() == {"center": True, "normalize": "unit"}


def test_entropy_weighted_errors() -> None:
    reps, ent = _data()
    with pytest.raises(ValueError, match="zero"):
        entropy_weighted_vector(reps, torch.zeros(7), SteeringVectorParams())
    with pytest.raises(ValueError, match="empty"):
        entropy_weighted_vector(torch.zeros(0, 5), torch.zeros(0), SteeringVectorParams())
    with pytest.raises(ValueError):
        entropy_weighted_vector(reps, -ent, SteeringVectorParams())
    with pytest.raises(ValueError):
        entropy_weighted_vector(reps, ent[:3], SteeringVectorParams())
    # uniform entropies with centring give u = 0: nothing to normalise
    with pytest.raises(ValueError, match="zero"):
        entropy_weighted_vector(reps, torch.ones(7), SteeringVectorParams(normalize="unit"))
    zero = entropy_weighted_vector(reps, torch.ones(7), SteeringVectorParams(normalize="none"))
    assert float(zero.abs().max()) < 1e-5
    with pytest.raises(ValueError):
        SteeringVectorParams(normalize="l2")  # type: ignore[arg-type]


def test_contrastive_vector() -> None:
    rng = np.random.default_rng(1)
    pos = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
    neg = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float32)
    ref = pos.double().numpy().mean(0) - neg.double().numpy().mean(0)
    got = contrastive_vector(pos, neg, normalize="none")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    unit = contrastive_vector(pos, neg)
    np.testing.assert_allclose(unit.numpy(), ref / np.linalg.norm(ref), rtol=1e-5, atol=1e-6)
    pooled = np.concatenate([pos.double().numpy(), neg.double().numpy()])
    target = np.linalg.norm(pooled, axis=1).mean()
    mn = contrastive_vector(pos, neg, normalize="mean_norm")
    assert float(mn.norm()) == pytest.approx(target, rel=1e-5)
    with pytest.raises(ValueError):
        contrastive_vector(pos, neg[:, :2])
    with pytest.raises(ValueError):
        contrastive_vector(pos[:0], neg)
    with pytest.raises(ValueError):
        contrastive_vector(pos, pos)  # zero difference cannot be normalised


def test_steering_delta_adds_only_at_masked_positions() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3)
    v = torch.tensor([1.0, -2.0, 0.5])
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    out = steering_delta(hidden, v, 0.75, mask)
    assert out.shape == hidden.shape and out.dtype == torch.float32
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                np.testing.assert_allclose(
                    (out[b, t] - hidden[b, t]).numpy(), (0.75 * v).numpy(), atol=1e-6
                )
            else:
                assert torch.equal(out[b, t], hidden[b, t])
    everywhere = steering_delta(hidden, v, -1.0, None)
    np.testing.assert_allclose(everywhere.numpy(), (hidden - v).numpy(), atol=1e-6)
    assert not torch.equal(out, hidden)  # the input was not modified in place...
    assert torch.equal(steering_delta(hidden, v, 0.0, mask), hidden)  # ...and beta=0 is a no-op


def test_steering_delta_keeps_bf16() -> None:
    torch.manual_seed(1)
    hidden = torch.randn(1, 3, 4).to(torch.bfloat16)
    v = torch.randn(4)
    mask = torch.tensor([[True, False, True]])
    out = steering_delta(hidden, v, 2.0, mask)
    assert out.dtype == torch.bfloat16
    expected = (hidden.float() + 2.0 * v).to(torch.bfloat16)  # one rounding from float32
    assert torch.equal(out[0, 0], expected[0, 0]) and torch.equal(out[0, 2], expected[0, 2])
    assert torch.equal(out[0, 1], hidden[0, 1])
    with pytest.raises(ValueError):
        steering_delta(hidden, torch.randn(3), 1.0, None)
    with pytest.raises(ValueError):
        steering_delta(hidden, v, 1.0, torch.ones(3, dtype=torch.bool))


def test_distribution_entropy() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    got = distribution_entropy(probs)
    ref = [math.log(2), 0.0, -sum(p * math.log(p) for p in (0.2, 0.3, 0.5))]
    assert not torch.isnan(got).any()
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-7)
    uniform = distribution_entropy(torch.full((2, 3, 8), 1 / 8))
    assert uniform.shape == (2, 3)
    np.testing.assert_allclose(uniform.numpy(), math.log(8), rtol=1e-6)


def test_empirical_entropy() -> None:
    ref = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert empirical_entropy(["a", "a", "b"]) == pytest.approx(ref, rel=1e-6)
    assert empirical_entropy(("x", "x", "x")) == 0.0
    assert empirical_entropy(["a", "b", "c", "d"]) == pytest.approx(math.log(4), rel=1e-6)
    with pytest.raises(ValueError):
        empirical_entropy([])

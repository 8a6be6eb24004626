"""Gradient x input and Integrated Gradients against closed forms on hand-made functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenprism.analysis.attribution import (
    adaptive_integrated_gradients,
    completeness_error,
    direct_logit_attribution,
    grad_x_input,
    integrated_gradients,
    trapezoid,
)


def _sin_score(e: torch.Tensor) -> torch.Tensor:
    return torch.sin(e).sum(dim=(1, 2))


def test_grad_x_input_matches_hand_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    a = torch.randn(4, generator=gen, dtype=torch.float64)

    # f(e) = sum (a * e^2) + sum(e[0] * e[1]); df/de by hand
    def f(e: torch.Tensor) -> torch.Tensor:
        return (a * e**2).sum(dim=(1, 2)) + (e[:, 0] * e[:, 1]).sum(dim=1)

    grad = 2 * a.numpy() * x.numpy()
    grad[0] += x[1].numpy()
    grad[1] += x[0].numpy()
    got = grad_x_input(f, x)
    np.testing.assert_allclose(got.values.numpy(), (grad * x.numpy()).sum(1), rtol=1e-6)
    assert got.f_x == pytest.approx(float(f(x[None])[0]))
    assert np.isnan(got.completeness_error)


def test_integrated_gradients_separable_closed_form() -> None:
    # for f = sum sin(e), IG of each token is sum_d sin(x) - sin(baseline) exactly
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    base = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 0.1
    got = integrated_gradients(_sin_score, x, base, steps=300, batch_size=64)
    want = (np.sin(x.numpy()) - np.sin(base.numpy())).sum(1)
    np.testing.assert_allclose(got.values.numpy(), want, atol=1e-4)
    assert got.completeness_error < 1e-4


def test_more_steps_shrink_completeness_error() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64) * 2
    errors = [
        integrated_gradients(
            lambda e: torch.exp(e).sum(dim=(1, 2)), x, torch.zeros_like(x), steps=s, batch_size=3
        ).completeness_error
        for s in (2, 8, 32)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01


def test_batching_does_not_change_ig() -> None:
    x = torch.linspace(-1, 2, 12, dtype=torch.float64).reshape(4, 3)
    one = integrated_gradients(_sin_score, x, torch.zeros_like(x), steps=9, batch_size=1)
    many = integrated_gradients(_sin_score, x, torch.zeros_like(x), steps=9, batch_size=4)
    torch.testing.assert_close(one.values, many.values)


def test_trapezoid_and_completeness_helpers() -> None:
    alphas, weights = trapezoid(5)
    assert alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert weights.tolist() == [0.125, 0.25, 0.25, 0.25, 0.125]
    with pytest.raises(ValueError):
        trapezoid(1)
    assert completeness_error(1.1, 3.0, 2.0) == pytest.approx(0.1)
    assert completeness_error(0.0, 1.0, 1.0) == 0.0


def test_direct_logit_attribution_linear_split() -> None:
    gen = torch.Generator().manual_seed(4)
    comps = torch.randn(5, 8, generator=gen)
    direction = torch.randn(8, generator=gen)
    scale = torch.rand(8, generator=gen) + 0.5
    got = direct_logit_attribution(comps, direction, scale)
    want = np.array([float(np.dot(c * scale.numpy(), direction.numpy())) for c in comps.numpy()])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    centred = direct_logit_attribution(comps, direction, scale, centred=True)
    c0 = comps.numpy() - comps.numpy().mean(1, keepdims=True)
    np.testing.assert_allclose(
        centred.numpy(), (c0 * scale.numpy()) @ direction.numpy(), rtol=1e-5, atol=1e-6
    )


def _steps_score(w: torch.Tensor, centre: torch.Tensor, k: float):  # type: ignore[no-untyped-def]
    """f(e) = sum_t sigmoid(k (e[t] . w - centre[t])): one sharp switch per token."""

    def f(e: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(k * (e @ w - centre)).sum(dim=1)

    return f


def test_adaptive_ig_resolves_a_sharp_switch_that_the_even_grid_misses() -> None:
    # each token switches over ~1% of the path, at alphas 0.31 / 0.62 / 0.83; for a function
    # that is a sum over tokens of a function of that token alone, IG of token t is exactly
    # its own change f_t(x) - f_t(baseline)
    t, d = 3, 4
    w = torch.ones(d, dtype=torch.float64) / d
    x = torch.ones(t, d, dtype=torch.float64)
    base = torch.zeros(t, d, dtype=torch.float64)
    centre = torch.tensor([0.31, 0.62, 0.83], dtype=torch.float64)
    f = _steps_score(w, centre, 400.0)
    want = (torch.sigmoid(400.0 * (1 - centre)) - torch.sigmoid(-400.0 * centre)).numpy()
    even = integrated_gradients(f, x, base, steps=32, batch_size=8)
    adaptive = adaptive_integrated_gradients(f, x, base, steps=32, batch_size=8)
    assert even.completeness_error > 0.2
    assert adaptive.completeness_error < 0.05 and adaptive.steps == 32
    # the bisections follow the summed residual, so per-token errors shrink more slowly
    err_even = np.abs(even.values.numpy() - want).max()
    assert np.abs(adaptive.values.numpy() - want).max() < err_even / 2
    more = adaptive_integrated_gradients(f, x, base, steps=64, batch_size=8)
    np.testing.assert_allclose(more.values.numpy(), want, atol=0.05)
    assert adaptive.f_x == pytest.approx(float(f(x[None])[0]))
    assert adaptive.f_baseline == pytest.approx(float(f(base[None])[0]))


def test_adaptive_ig_equals_the_even_grid_when_no_points_are_added() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    base = torch.zeros_like(x)
    even = integrated_gradients(_sin_score, x, base, steps=17, batch_size=5)
    same = adaptive_integrated_gradients(_sin_score, x, base, steps=17, initial=17, batch_size=5)
    torch.testing.assert_close(same.values, even.values)
    smooth = adaptive_integrated_gradients(_sin_score, x, base, steps=64, batch_size=16)
    want = (np.sin(x.numpy()) - np.sin(base.numpy())).sum(1)
    np.testing.assert_allclose(smooth.values.numpy(), want, atol=1e-3)

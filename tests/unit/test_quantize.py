"""``Int8WeightLinear``: int8 weights per output channel, float activations."""

from __future__ import annotations

import torch

from tokenprism.backend.models.quantize import Int8WeightLinear


def test_int8_weight_linear_matches_its_dequantised_weight() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight[3] = 0  # an all-zero row must not divide by zero
        linear.weight[5, 7] = 40.0  # an outlier only coarsens its own row
    q = Int8WeightLinear(linear)
    assert q.qweight.dtype == torch.int8 and int(q.qweight.abs().max()) == 127
    assert torch.equal(q.qweight[3], torch.zeros(64, dtype=torch.int8)) and q.scale[3] == 1
    w = linear.weight.detach()
    dequant = q.qweight.float() * q.scale[:, None]
    assert bool(((dequant - w).abs() <= q.scale[:, None] / 2 + 1e-7).all())  # round to nearest
    assert q.scale[5] > 10 * q.scale[4]  # the outlier's scale stays in its row
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, dequant, linear.bias)
        torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-5)
        # bfloat16 activations: computed in bfloat16, close to the float result
        out = q(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)

"""Effective rank, prefix ranks and ERV / ERA against numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.geometry import (
    effective_rank,
    erv_era,
    layer_effective_ranks,
    prefix_effective_ranks,
    singular_values,
)

METHODS = ["svd", "gram"]


def _np_erank(x: np.ndarray, center: bool = True) -> float:
    """The documented formula in float64 with numpy's SVD."""
    z = np.asarray(x, dtype=np.float64)
    if z.shape[0] < 2:
        return 0.0
    if center:
        z = z - z.mean(axis=0, keepdims=True)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / (s.sum() + 1e-8)
    return float(np.exp(-np.sum(p * np.log(p + 1e-8))))


def _gaussian(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 5, 16])
def test_identity_has_full_effective_rank(n: int, method: str) -> None:
    er = effective_rank(torch.eye(n), center=False, method=method)  # type: ignore[arg-type]
    assert float(er) == pytest.approx(n, rel=1e-5)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(20, 6), (6, 20), (50, 30), (30, 50), (8, 8)])
def test_effective_rank_matches_numpy_svd(
    shape: tuple[int, int], method: str, center: bool
) -> None:
    x = _gaussian(shape, seed=shape[0] * 100 + shape[1])
    got = effective_rank(torch.tensor(x, dtype=torch.float32), center=center, method=method)  # type: ignore[arg-type]
    assert got.dtype == torch.float32 and got.shape == ()
    assert float(got) == pytest.approx(_np_erank(x, center), rel=_rtol(method, center, *shape))


def _rtol(method: str, center: bool, n: int, d: int) -> float:
    """Centring makes an n <= d matrix exactly rank-deficient; the Gram path then turns the zero
    singular value into sqrt(float32 noise) ~ 1e-3 s_max (documented), which moves small
    matrices' effective rank by up to ~1e-3 relative."""
    return 2e-3 if method == "gram" and center and n <= d else 1e-4


def test_effective_rank_hand_computed_diagonal() -> None:
    # singular values 3, 1 (uncentred): p = (3/4, 1/4)
    x = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    p = np.array([0.75, 0.25])
    expected = math.exp(-float(np.sum(p * np.log(p))))
    for method in METHODS:
        got = effective_rank(x, center=False, method=method)  # type: ignore[arg-type]
        assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("shape", [(10, 4), (4, 10), (30, 20)])
@pytest.mark.parametrize("center", [True, False])
def test_rank_one_matrix_has_effective_rank_one(shape: tuple[int, int], center: bool) -> None:
    rng = np.random.default_rng(7)
    x = torch.tensor(
        np.outer(rng.standard_normal(shape[0]), rng.standard_normal(shape[1])), dtype=torch.float32
    )
    assert float(effective_rank(x, center=center, method="svd")) == pytest.approx(1.0, rel=1e-4)
    # the Gram path is documented to be off by up to ~1 % on (nearly) low-rank input
    assert float(effective_rank(x, center=center, method="gram")) == pytest.approx(1.0, rel=2e-2)


@pytest.mark.parametrize("method", METHODS)
def test_fewer_than_two_rows_gives_zero(method: str) -> None:
    assert float(effective_rank(torch.ones(1, 5), method=method)) == 0.0  # type: ignore[arg-type]
    assert float(effective_rank(torch.ones(0, 5), method=method)) == 0.0  # type: ignore[arg-type]
    layered = effective_rank(torch.ones(3, 1, 5), method=method)  # type: ignore[arg-type]
    assert layered.tolist() == [0.0, 0.0, 0.0]


def test_centering_removes_a_constant_offset() -> None:
    x = _gaussian((12, 5), seed=3)
    shifted = torch.tensor(x + 100.0, dtype=torch.float32)
    got = effective_rank(shifted, center=True, method="svd")
    assert float(got) == pytest.approx(_np_erank(x, center=True), rel=1e-3)
    # without centring the offset dominates: one big singular value
    uncentred = float(effective_rank(shifted, center=False, method="svd"))
    assert uncentred == pytest.approx(_np_erank(x + 100.0, center=False), rel=1e-3)
    assert uncentred < 1.5 < float(got)


def test_singular_values_methods_agree() -> None:
    x = torch.tensor(_gaussian((3, 9, 6), seed=4), dtype=torch.float32)
    ref = np.linalg.svd(x.double().numpy(), compute_uv=False)
    svd = singular_values(x, "svd")
    gram = singular_values(x, "gram").flip(-1)  # eigvalsh returns ascending order
    np.testing.assert_allclose(svd.numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(gram.numpy(), ref, rtol=1e-4)
    wide = singular_values(x.transpose(-1, -2), "gram").flip(-1)
    np.testing.assert_allclose(wide.numpy(), ref, rtol=1e-4)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_layer_batching_equals_per_layer_calls(method: str, center: bool) -> None:
    h = torch.tensor(_gaussian((4, 9, 6), seed=5), dtype=torch.float32)
    batched = layer_effective_ranks(h, center=center, method=method)  # type: ignore[arg-type]
    single = torch.stack(
        [
            effective_rank(h[i], center=center, method=method)  # type: ignore[arg-type]
            for i in range(4)
        ]
    )
    assert batched.shape == (4,)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    ref = [_np_erank(h[i].double().numpy(), center) for i in range(4)]
    np.testing.assert_allclose(batched.numpy(), ref, rtol=1e-4)
    torch.testing.assert_close(
        effective_rank(h, center=center, method=method),  # type: ignore[arg-type]
        batched,
    )


def _naive_prefix_ranks(h: np.ndarray, stride: int, max_len: int, center: bool) -> list[float]:
    z = h[-max_len:]
    out = []
    j = 1
    while j * stride < z.shape[0]:
        out.append(_np_erank(z[: j * stride + 1], center))
        j += 1
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("t", "stride", "max_len"),
    [(30, 4, 512), (29, 7, 512), (50, 7, 30), (9, 8, 512), (40, 3, 11)],
)
def test_prefix_effective_ranks_match_naive_loop(
    t: int, stride: int, max_len: int, method: str
) -> None:
    h = _gaussian((t, 12), seed=t + stride)
    got = prefix_effective_ranks(
        torch.tensor(h, dtype=torch.float32), stride=stride, max_len=max_len, method=method
    )  # type: ignore[arg-type]
    ref = _naive_prefix_ranks(h, stride, max_len, center=True)
    assert got.shape == (len(ref),)
    assert len(ref) == (min(t, max_len) - 1) // stride
    # short prefixes have no more rows than the width 12: rank-deficient once centred
    np.testing.assert_allclose(got.numpy(), ref, rtol=_rtol(method, True, 1, 12))


def test_prefix_effective_ranks_uncentred_and_truncated() -> None:
    h = _gaussian((25, 8), seed=11)
    got = prefix_effective_ranks(
        torch.tensor(h, dtype=torch.float32), stride=5, max_len=20, center=False, method="svd"
    )
    ref = _naive_prefix_ranks(h, 5, 20, center=False)
    # the truncation keeps the last rows: the first prefix is rows 5..10 of the input
    assert ref[0] == pytest.approx(_np_erank(h[5:11], center=False))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4)


@pytest.mark.parametrize("t", [0, 1, 5, 10])
def test_prefix_effective_ranks_empty_when_too_short(t: int) -> None:
    got = prefix_effective_ranks(torch.ones(t, 4), stride=10)
    assert got.shape == (0,) and got.dtype == torch.float32


def _naive_erv_era(m: list[float]) -> tuple[float, float]:
    k = len(m)
    if k < 2:
        return 0.0, 0.0
    delta = {}
    for j in range(2, k + 1):  # 1-based as in the definition
        history = sum(m[: j - 1]) / (j - 1)
        delta[j] = m[j - 1] - history
    erv = sum(delta.values()) / len(delta)
    if k < 3:
        return erv, 0.0
    era = sum(delta[j] - delta[j - 1] for j in range(3, k + 1)) / (k - 2)
    return erv, era


def test_erv_era_hand_values() -> None:
    # delta_2 = 1, delta_3 = 4 - 1.5 = 2.5, delta_4 = 7 - 7/3 = 14/3
    erv, era = erv_era(torch.tensor([1.0, 2.0, 4.0, 7.0]))
    assert erv == pytest.approx((1 + 2.5 + 14 / 3) / 3)
    assert era == pytest.approx(((2.5 - 1) + (14 / 3 - 2.5)) / 2)


@pytest.mark.parametrize("k", [2, 3, 4, 9])
def test_erv_era_match_naive_loop(k: int) -> None:
    m = np.random.default_rng(k).uniform(1.0, 20.0, size=k).astype(np.float32)
    erv, era = erv_era(torch.tensor(m))
    ref_erv, ref_era = _naive_erv_era([float(x) for x in m])
    assert erv == pytest.approx(ref_erv, rel=1e-9, abs=1e-12)
    assert era == pytest.approx(ref_era, rel=1e-9, abs=1e-12)
    assert isinstance(erv, float) and isinstance(era, float)


def test_erv_era_too_few_prefixes() -> None:
    assert erv_era(torch.zeros(0)) == (0.0, 0.0)
    assert erv_era(torch.tensor([5.0])) == (0.0, 0.0)
    erv, era = erv_era(torch.tensor([2.0, 5.0]))
    assert erv == pytest.approx(3.0)
    assert era == 0.0


def test_erv_era_constant_sequence_is_zero() -> None:
    erv, era = erv_era(torch.full((6,), 3.25))
    assert erv == pytest.approx(0.0, abs=1e-12)
    assert era == pytest.approx(0.0, abs=1e-12)


def _low_rank_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(22)
    return {
        "rank1": np.outer(rng.standard_normal(200), rng.standard_normal(64)),
        "rank3": rng.standard_normal((200, 3)) @ rng.standard_normal((3, 64)),
        "rank1_wide": np.outer(rng.standard_normal(40), rng.standard_normal(64)),
        "identical_rows": np.tile(rng.standard_normal(64), (200, 1)),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["rank1", "rank3", "rank1_wide", "identical_rows"])
def test_effective_rank_exact_on_low_rank_inputs(
    name: str, method: str, dtype: torch.dtype
) -> None:
    """Issue 22: within 0.5 % of a float64 SVD (tested at 1e-3) on nearly degenerate inputs."""
    x = torch.tensor(_low_rank_inputs()[name], dtype=dtype)
    ref = _np_erank(x.double().numpy())
    got = float(effective_rank(x, method=method))  # type: ignore[arg-type]
    assert got == pytest.approx(ref, rel=1e-3)
    expected = {"rank1": 1.0, "rank1_wide": 1.0, "identical_rows": 1.0}
    if name in expected:  # the degenerate convention: one direction (or none) gives 1
        assert got == pytest.approx(expected[name], rel=1e-3)
    if name == "rank3":
        assert 2.0 < got < 3.0

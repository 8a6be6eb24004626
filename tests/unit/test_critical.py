"""Critical-token rules against hand cases and naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.critical import (
    budget_positions,
    ce_scores,
    critical_position,
    cure_critical_positions,
    latr_branching,
    pass_at_k,
)

NAN = math.nan


# --- rollout critical position ------------------------------------------------------------


def test_monotone_drop_gives_first_zero() -> None:
    assert critical_position([1.0, 0.8, 0.3, 0.0, 0.0, 0.0]) == 3


def test_recovery_above_threshold_restarts_and_later_zero_wins() -> None:
    c = [0.9, 0.0, 0.0, 10 / 64, 0.5, 0.0, 0.0]
    assert critical_position(c) == 5


def test_recovery_without_second_zero_falls_back_to_last_candidate() -> None:
    assert critical_position([0.9, 0.0, 0.2, 0.3]) == 1
    # two abandoned candidates: the last one is the fallback
    assert critical_position([0.0, 0.5, 0.0, 0.5]) == 2


def test_recovery_not_above_threshold_keeps_first() -> None:
    # exactly 3/64 is not "more than 3 of 64"
    assert critical_position([0.9, 0.0, 3 / 64, 2 / 64, 0.0]) == 1
    assert critical_position([0.9, 0.0, 4 / 64, 0.0]) == 3


def test_never_zero_is_none() -> None:
    assert critical_position([1.0, 0.5, 1 / 64]) is None
    assert critical_position([]) is None
    assert critical_position([NAN, NAN]) is None


def test_nan_gaps_are_skipped() -> None:
    assert critical_position([0.9, NAN, NAN, 0.0, NAN, 0.0]) == 3
    assert critical_position([0.9, 0.0, NAN, 0.4, NAN, 0.0]) == 5
    assert critical_position([NAN, 0.0]) == 1


def test_zero_threshold_is_configurable() -> None:
    assert critical_position([0.5, 1 / 16, 0.0], zero=1 / 16) == 1


def _naive_critical(c: list[float], zero: float, rec: float) -> int | None:
    """A transcription of the reference scan over string prefixes (``analyse_all_token``)."""
    min_prefix, last, found = None, None, False
    for t, v in enumerate(c):
        if v != v:
            continue
        if v <= zero and not found:
            min_prefix, found = t, True
        if found and v > rec:
            last, min_prefix, found = min_prefix, None, False
    return min_prefix if found else last


def test_critical_position_matches_reference_scan_on_random_curves() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 20))
        c = (rng.integers(0, 8, size=n) / 64).tolist()
        for i in np.flatnonzero(rng.random(n) < 0.2):
            c[i] = NAN
        assert critical_position(c) == _naive_critical(c, 0.0, 3 / 64)


# --- pass@k -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16, 64])
def test_pass_at_k_matches_comb_formula(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            ref = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_pass_at_k_edge_cases() -> None:
    assert pass_at_k(64, 0, 5) == 0.0
    assert pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k: every draw of 3 holds a correct one
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for bad in ((0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


# --- contrastive estimation ----------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_ce_scores_match_naive_numpy_softmax(beta: float, chunk_rows: int) -> None:
    gen = torch.Generator().manual_seed(0)
    zp = 4.0 * torch.randn(7, 50, generator=gen)
    zn = 4.0 * torch.randn(7, 50, generator=gen)
    tgt = torch.randint(0, 50, (7,), generator=gen)
    got = ce_scores(zp, zn, tgt, beta=beta, chunk_rows=chunk_rows)
    s = (1 + beta) * zp.double().numpy() - beta * zn.double().numpy()
    e = np.exp(s - s.max(-1, keepdims=True))
    ref = (e / e.sum(-1, keepdims=True))[np.arange(7), tgt.numpy()]
    assert got.dtype == torch.float32 and got.shape == (7,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_ce_score_of_identical_models_is_the_model_probability() -> None:
    z = torch.randn(4, 30, dtype=torch.bfloat16)
    tgt = torch.tensor([0, 5, 29, 3])
    expected = torch.softmax(z.float(), -1)[torch.arange(4), tgt]
    torch.testing.assert_close(ce_scores(z, z, tgt), expected, rtol=1e-5, atol=1e-6)


def test_ce_scores_shape_checks_and_empty() -> None:
    with pytest.raises(ValueError):
        ce_scores(torch.zeros(3, 5), torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        ce_scores(torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(2, dtype=torch.long))
    assert ce_scores(
        torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)
    ).shape == (0,)


# --- LATR -----------------------------------------------------------------------------------


def test_latr_branching_matches_naive_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(200, 30, generator=gen), -1)
    top = torch.topk(p, 3, dim=-1).values
    # add hand rows on both sides of each threshold
    extra = torch.tensor([[0.45, 0.40, 0.1], [0.45, 0.25, 0.1], [0.6, 0.3, 0.1], [0.5, 0.3, 0.2]])
    top = torch.cat([top, extra])
    for tau_abs, tau_rel in ((0.25, 0.15), (0.15, 0.25), (0.05, 0.5)):
        got = latr_branching(top, tau_abs, tau_rel)
        ref = [r[1] > tau_abs and r[0] - r[1] < tau_rel for r in top.tolist()]
        assert got.dtype == torch.bool
        assert got.tolist() == ref
    assert latr_branching(extra).tolist() == [True, False, False, False]


def test_latr_needs_two_columns() -> None:
    with pytest.raises(ValueError):
        latr_branching(torch.ones(3, 1))


# --- CURE -----------------------------------------------------------------------------------


def test_cure_filters_and_order() -> None:
    texts = ["Q", "uestion", " The", " =", "5", " answer", " is", "<eos>", " pad"]
    entropy = torch.tensor([9.0, 8.0, 7.0, 6.5, 6.0, 3.0, 3.0, 5.0, 10.0])
    eligible = torch.tensor([False, False, True, True, True, True, True, True, False])
    special = [False] * 7 + [True, False]
    got = cure_critical_positions(entropy, texts, eligible, k=20, special=special)
    # 2 is the first response token, 3 (" =") and 4 ("5") are single characters, 7 is special,
    # 0, 1, 8 are not eligible; 5 and 6 tie and keep position order
    assert got == [5, 6]
    assert cure_critical_positions(entropy, texts, eligible, k=1, special=special) == [5]
    # without the special flags the <eos> text survives the length filter
    assert cure_critical_positions(entropy, texts, eligible, k=20) == [7, 5, 6]


def test_cure_top_k_matches_naive_selection() -> None:
    rng = np.random.default_rng(2)
    n = 80
    entropy = torch.tensor(rng.uniform(0, 4, n).round(1), dtype=torch.float32)  # many ties
    texts = [rng.choice(["a", " b", "cd", " ef", "  ", "ghi", "\n"]) for _ in range(n)]
    eligible = torch.zeros(n, dtype=torch.bool)
    eligible[10:70] = True
    got = cure_critical_positions(entropy, texts, eligible, k=20)
    cand = [t for t in range(11, 70) if len(texts[t].strip()) > 1]
    ref = sorted(cand, key=lambda t: (-float(entropy[t]), t))[:20]
    assert got == ref


def test_cure_fewer_than_k_and_degenerate_inputs() -> None:
    texts = [" hello", " world"]
    eligible = torch.tensor([True, True])
    assert cure_critical_positions(torch.tensor([1.0, 2.0]), texts, eligible, k=20) == [1]
    assert cure_critical_positions(torch.tensor([1.0, NAN]), texts, eligible) == []
    assert cure_critical_positions(torch.zeros(0), [], torch.zeros(0, dtype=torch.bool)) == []
    assert (
        cure_critical_positions(torch.tensor([1.0, 2.0]), texts, torch.tensor([False, False])) == []
    )
    with pytest.raises(ValueError):
        cure_critical_positions(torch.tensor([1.0, 2.0]), texts[:1], eligible)


# --- budgeted positions --------------------------------------------------------------------


def test_budget_positions_properties() -> None:
    for n in range(0, 40):
        for budget in range(0, 45):
            pos = budget_positions(n, budget)
            assert pos == sorted(set(pos))
            assert all(0 <= p < n for p in pos)
            assert len(pos) == min(max(budget, 0), max(n, 0))
            if budget >= n:
                assert pos == list(range(n))
            if n >= 1 and budget >= 2:
                assert pos[0] == 0 and pos[-1] == n - 1
            if 2 <= budget < n:
                gaps = np.diff(pos)
                assert gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding
                ideal = np.arange(budget) * (n - 1) / (budget - 1)
                assert np.abs(np.array(pos) - ideal).max() <= 0.5


def test_budget_positions_hand_values() -> None:
    assert budget_positions(10, 1) == [0]
    assert budget_positions(10, 2) == [0, 9]
    assert budget_positions(10, 4) == [0, 3, 6, 9]
    assert budget_positions(5, 3) == [0, 2, 4]
    assert budget_positions(0, 5) == []
    assert budget_positions(5, 0) == []

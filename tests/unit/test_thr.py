"""Token Hidden Reward: the efficient M+ form against the literal double sum, and its rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.thr import (
    EMPTY_ANCHOR_REASON,
    NO_ANCHOR_REASON,
    ResponseFeatures,
    group_vocabulary,
    prediction_errors,
    reweighted_advantages,
    thr_agreement,
    thr_full_vocab,
    thr_naive,
    thr_scores,
    thr_threshold,
    top_thr_tokens,
)


def _group(
    lengths: list[int], rewards: list[float], d: int = 8, vocab_size: int = 20, seed: int = 0
) -> tuple[list[ResponseFeatures], torch.Tensor]:
    """A tiny-random-model stand-in: random token ids from a vocabulary of ``vocab_size`` ids
    (spread over a larger id space), softmax(random logits) restricted to the group vocabulary
    and random hidden states. Restricted probabilities are not renormalised, as in NTHR."""
    gen = torch.Generator().manual_seed(seed)
    id_space = torch.randperm(1000, generator=gen)[:vocab_size].sort().values
    ids = [id_space[torch.randint(0, vocab_size, (t,), generator=gen)] for t in lengths]
    vocab = group_vocabulary(ids)
    group = []
    for tok, r in zip(ids, rewards, strict=True):
        t = tok.numel()
        full = torch.softmax(3.0 * torch.randn(t, 1000, generator=gen), dim=-1)
        group.append(
            ResponseFeatures(
                token_ids=tok,
                probs=full[:, vocab],
                hidden=torch.randn(t, d, generator=gen),
                reward=r,
            )
        )
    return group, vocab


def _assert_close(got: list[torch.Tensor], ref: list[torch.Tensor], rtol: float = 1e-4) -> None:
    scale = max((float(r.abs().max()) for r in ref if r.numel()), default=1.0)
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == torch.float32
        assert g.shape == r.shape
        np.testing.assert_allclose(g.double().numpy(), r.numpy(), rtol=rtol, atol=rtol * scale)


def test_group_vocabulary_is_sorted_unique() -> None:
    vocab = group_vocabulary(
        [torch.tensor([5, 3, 5]), torch.tensor([], dtype=torch.long), torch.tensor([9, 3])]
    )
    assert vocab.tolist() == [3, 5, 9]
    assert group_vocabulary([]).numel() == 0


def test_prediction_errors_maps_ids_into_vocab_positions() -> None:
    vocab = torch.tensor([3, 5, 9])
    probs = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.1, 0.1]])
    g = prediction_errors(torch.tensor([9, 3]), probs, vocab)
    expected = -probs.clone()
    expected[0, 2] += 1.0
    expected[1, 0] += 1.0
    torch.testing.assert_close(g, expected)


def test_prediction_errors_rejects_ids_outside_vocab() -> None:
    vocab = torch.tensor([3, 5, 9])
    with pytest.raises(ValueError, match="not in the group vocabulary"):
        prediction_errors(torch.tensor([3, 4]), torch.zeros(2, 3), vocab)
    with pytest.raises(ValueError, match="not in the group vocabulary"):
        prediction_errors(torch.tensor([10]), torch.zeros(1, 3), vocab)
    with pytest.raises(ValueError):
        prediction_errors(torch.tensor([3]), torch.zeros(1, 4), vocab)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("lengths", "rewards"),
    [
        ([5, 3, 7, 4], [1, 0, 1, 0]),
        ([6, 2, 9], [0, 1, 0]),
        ([4, 4, 1, 8, 3], [1, 1, 0, 0, 1]),
    ],
)
def test_efficient_form_matches_naive_double_sum(
    lengths: list[int], rewards: list[float], seed: int
) -> None:
    group, vocab = _group(lengths, rewards, seed=seed)
    assert vocab.numel() <= 20
    got, reason = thr_scores(group, vocab)
    assert reason is None
    _assert_close(got, thr_naive(group, vocab))


def test_all_correct_group_works() -> None:
    group, vocab = _group([4, 6, 3], [1, 1, 1], seed=5)
    got, reason = thr_scores(group, vocab)
    assert reason is None
    assert all(torch.isfinite(t).all() for t in got)
    _assert_close(got, thr_naive(group, vocab))


def test_no_correct_response_gives_nan_and_reason() -> None:
    group, vocab = _group([4, 0, 3], [0, 0, 0], seed=3)
    got, reason = thr_scores(group, vocab)
    assert reason == NO_ANCHOR_REASON
    assert [t.numel() for t in got] == [4, 0, 3]
    assert all(torch.isnan(t).all() for t in got)
    assert all(torch.isnan(t).all() for t in thr_naive(group, vocab))


def test_empty_correct_response_is_no_anchor() -> None:
    group, vocab = _group([0, 3], [1, 0], seed=3)
    got, reason = thr_scores(group, vocab)
    assert reason == EMPTY_ANCHOR_REASON
    assert torch.isnan(got[1]).all()


def test_empty_responses_give_empty_tensors() -> None:
    group, vocab = _group([3, 0, 5, 0], [1, 1, 0, 0], seed=4)
    got, reason = thr_scores(group, vocab)
    assert reason is None
    assert [t.numel() for t in got] == [3, 0, 5, 0]
    _assert_close(got, thr_naive(group, vocab))


def test_sign_flips_with_reward() -> None:
    group, vocab = _group([5, 4, 6], [1, 0, 1], seed=6)
    base, _ = thr_scores(group, vocab)
    # Adding incorrect copies leaves M+ (the anchors) untouched, so each copy's THR is its
    # original's magnitude with the sign (2r - 1) = -1.
    wrong_twin = ResponseFeatures(**{**vars(group[1]), "reward": 0})
    wrong_anchor = ResponseFeatures(**{**vars(group[0]), "reward": 0})
    extended, _ = thr_scores([*group, wrong_twin, wrong_anchor], vocab)
    for i in range(3):
        torch.testing.assert_close(extended[i], base[i])
    torch.testing.assert_close(extended[3], base[1])
    torch.testing.assert_close(extended[4], -base[0])
    # making the incorrect response correct turns it into an anchor: still the naive sum
    flipped = [group[0], ResponseFeatures(**{**vars(group[1]), "reward": 1}), group[2]]
    got, _ = thr_scores(flipped, vocab)
    _assert_close(got, thr_naive(flipped, vocab))


def test_hand_computed_single_anchor() -> None:
    # one anchor token and one incorrect token, V' = 2, d = 1: THR = -<g, g'> <h, h'>
    vocab = torch.tensor([7, 8])
    anchor = ResponseFeatures(
        torch.tensor([7]), torch.tensor([[0.6, 0.4]]), torch.tensor([[2.0]]), 1
    )
    wrong = ResponseFeatures(
        torch.tensor([8]), torch.tensor([[0.3, 0.5]]), torch.tensor([[3.0]]), 0
    )
    got, _ = thr_scores([anchor, wrong], vocab)
    g_a, g_w = np.array([0.4, -0.4]), np.array([-0.3, 0.5])
    assert got[1].item() == pytest.approx(-float(g_a @ g_w) * 2.0 * 3.0, rel=1e-6)
    assert got[0].item() == pytest.approx(float(g_a @ g_a) * 4.0, rel=1e-6)


def test_bad_reward_is_rejected() -> None:
    group, vocab = _group([3], [1])
    with pytest.raises(ValueError, match="reward"):
        thr_scores([ResponseFeatures(**{**vars(group[0]), "reward": 0.5})], vocab)


def _naive_tau(thr: list[torch.Tensor], rewards: list[float], beta: float) -> float:
    means = []
    for t, r in zip(thr, rewards, strict=True):
        if r == 1 and t.numel():
            means.append(sum(float(v) for v in t) / t.numel())
    return beta * min(means) if means else math.nan


def test_threshold_matches_naive_loop() -> None:
    group, vocab = _group([5, 3, 7, 0, 4], [1, 0, 1, 1, 0], seed=7)
    thr, _ = thr_scores(group, vocab)
    rewards = [r.reward for r in group]
    for beta in (1.0, 0.1, 0.0):
        assert thr_threshold(thr, rewards, beta) == pytest.approx(
            _naive_tau(thr, rewards, beta), rel=1e-6, abs=1e-9
        )
    assert math.isnan(thr_threshold(thr, [0.0] * 5))
    with pytest.raises(ValueError):
        thr_threshold(thr, [1.0])


def test_reweighted_advantages_match_naive_loop() -> None:
    gen = torch.Generator().manual_seed(8)
    thr = [torch.randn(t, generator=gen) for t in (5, 0, 7)]
    thr[0][2] = 0.0
    advantages = [0.7, -1.2, -0.4]
    for tau, p in ((0.5, 0.1), (0.0, -0.1), (-1.0, 0.0)):
        got = reweighted_advantages(thr, advantages, tau, p)
        for s, a, g in zip(thr, advantages, got, strict=True):
            ref = []
            for v in s.tolist():
                sign = (v > 0) - (v < 0)
                ref.append((1.0 + sign * p) * a if abs(v) > tau else 0.0)
            assert g.dtype == torch.float32
            np.testing.assert_allclose(g.numpy(), ref, rtol=1e-6)


def test_reweighted_advantages_propagate_nan() -> None:
    out = reweighted_advantages([torch.tensor([1.0, math.nan])], [1.0], 0.5, 0.1)
    assert out[0][0].item() == pytest.approx(1.1)
    assert math.isnan(out[0][1].item())
    assert torch.isnan(reweighted_advantages([torch.tensor([1.0])], [1.0], math.nan, 0.1)[0]).all()


def test_top_tokens_ordering() -> None:
    thr = [
        torch.tensor([0.5, -2.0, 0.0]),
        torch.tensor([]),
        torch.tensor([3.0, math.nan, 0.5, -0.1]),
    ]
    pos, neg = top_thr_tokens(thr, 2)
    assert pos == [(2, 0, 3.0), (0, 0, 0.5)]  # the 0.5 tie keeps (response, position) order
    assert neg == [(0, 1, -2.0), (2, 3, pytest.approx(-0.1))]
    pos, neg = top_thr_tokens(thr, 10)
    assert [p[:2] for p in pos] == [(2, 0), (0, 0), (2, 2)]
    assert [n[:2] for n in neg] == [(0, 1), (2, 3)]
    assert top_thr_tokens([], 3) == ([], [])
    assert top_thr_tokens(thr, 0) == ([], [])


def test_top_tokens_agree_with_sorting_all_scores() -> None:
    group, vocab = _group([6, 5, 8], [1, 0, 0], seed=9)
    thr, _ = thr_scores(group, vocab)
    flat = [(i, k, float(v)) for i, t in enumerate(thr) for k, v in enumerate(t.tolist())]
    pos, neg = top_thr_tokens(thr, 3)
    assert pos == sorted((f for f in flat if f[2] > 0), key=lambda f: -f[2])[:3]
    assert neg == sorted((f for f in flat if f[2] < 0), key=lambda f: f[2])[:3]


# ---- full vocabulary (the default) -----------------------------------------------------------


def _head_group(
    lengths: list[int], *, vocab_size: int = 37, d: int = 6, seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Random tokens, hidden states and an LM head with a bias, in float64."""
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, vocab_size, (t,), generator=gen) for t in lengths]
    hidden = [torch.randn(t, d, generator=gen, dtype=torch.float64) for t in lengths]
    weight = 1.5 * torch.randn(vocab_size, d, generator=gen, dtype=torch.float64)
    bias = torch.randn(vocab_size, generator=gen, dtype=torch.float64)
    return ids, hidden, weight, bias


def _full_features(
    ids: list[torch.Tensor],
    hidden: list[torch.Tensor],
    rewards: list[float],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> list[ResponseFeatures]:
    """The same group with explicit full-vocabulary distributions (vocab = every id)."""
    out = []
    for t, h, r in zip(ids, hidden, rewards, strict=True):
        logits = h @ weight.T + (bias if bias is not None else 0.0)
        out.append(ResponseFeatures(t, torch.softmax(logits, dim=-1), h, r))
    return out


@pytest.mark.parametrize("max_block", [1 << 24, 64, 7])
@pytest.mark.parametrize(
    ("lengths", "rewards"),
    [([5, 3, 7, 4], [1, 0, 1, 0]), ([6, 0, 9], [0, 1, 1]), ([4, 4, 1], [1, 1, 1])],
)
def test_full_vocab_matrix_form_matches_naive_double_sum(
    lengths: list[int], rewards: list[float], max_block: int
) -> None:
    # max_block 64 and 7 force vocabulary chunks of 1..9 ids and row blocks of a few tokens
    ids, hidden, weight, bias = _head_group(lengths, seed=len(lengths) + max_block)
    got, reason = thr_full_vocab(
        ids, hidden, rewards, weight, bias, dtype=torch.float64, max_block=max_block
    )
    assert reason is None
    vocab = torch.arange(weight.shape[0])
    ref = thr_naive(_full_features(ids, hidden, rewards, weight, bias), vocab)
    scale = max(float(r.abs().max()) for r in ref if r.numel())
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == torch.float64 and g.shape == r.shape
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-10, atol=1e-12 * scale)


def test_full_vocab_accepts_a_precomputed_log_normaliser() -> None:
    ids, hidden, weight, bias = _head_group([5, 0, 6], seed=12)
    lse = [torch.logsumexp(h @ weight.T + bias, dim=-1) for h in hidden]
    rewards = [1, 1, 0]
    given, _ = thr_full_vocab(
        ids, hidden, rewards, weight, bias, log_normaliser=lse, dtype=torch.float64
    )
    computed, _ = thr_full_vocab(ids, hidden, rewards, weight, bias, dtype=torch.float64)
    for a, b in zip(given, computed, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="log_normaliser"):
        thr_full_vocab(ids, hidden, rewards, weight, bias, log_normaliser=lse[:1])


def test_full_vocab_float32_and_no_bias() -> None:
    ids, hidden, weight, _ = _head_group([5, 6, 3], seed=11)
    got, _ = thr_full_vocab(ids, hidden, [1, 0, 0], weight.float())
    ref = thr_naive(_full_features(ids, hidden, [1, 0, 0], weight, None), torch.arange(37))
    _assert_close(got, ref, rtol=1e-5)


def test_full_vocab_equals_group_form_when_the_group_covers_the_vocabulary() -> None:
    # with V* = V the NTHR restriction is no restriction: both forms are the same number
    ids, hidden, weight, bias = _head_group([40, 40], vocab_size=5, seed=2)
    vocab = group_vocabulary(ids)
    assert vocab.tolist() == list(range(5))
    full, _ = thr_full_vocab(ids, hidden, [1, 0], weight, bias, dtype=torch.float64)
    group, _ = thr_scores(_full_features(ids, hidden, [1, 0], weight, bias), vocab)
    for f, g in zip(full, group, strict=True):
        np.testing.assert_allclose(g.double().numpy(), f.numpy(), rtol=1e-4, atol=1e-4)


def test_full_vocab_without_anchor_and_bad_inputs() -> None:
    ids, hidden, weight, bias = _head_group([3, 0, 2], seed=3)
    got, reason = thr_full_vocab(ids, hidden, [0, 0, 0], weight, bias)
    assert reason == NO_ANCHOR_REASON
    assert [t.numel() for t in got] == [3, 0, 2] and all(torch.isnan(t).all() for t in got)
    _, reason = thr_full_vocab(ids, hidden, [0, 1, 0], weight, bias)
    assert reason == EMPTY_ANCHOR_REASON
    with pytest.raises(ValueError, match="token ids"):
        thr_full_vocab([torch.tensor([37])], [torch.zeros(1, 6)], [1], weight)
    with pytest.raises(ValueError, match="reward"):
        thr_full_vocab(ids, hidden, [0.5, 1, 0], weight)
    with pytest.raises(ValueError):
        thr_full_vocab(ids, hidden[:2], [1, 0, 0], weight)


def test_agreement_matches_scipy_and_counts_signs() -> None:
    from scipy.stats import spearmanr

    gen = torch.Generator().manual_seed(4)
    ref = [torch.randn(30, generator=gen), torch.randn(0), torch.randn(12, generator=gen)]
    approx = [r + 0.7 * torch.randn(r.shape, generator=gen) for r in ref]
    approx[0][:4] = approx[0][0]  # ties
    approx[2][3] = math.nan  # skipped
    got = thr_agreement(ref, approx)
    r = torch.cat(ref).numpy()
    a = torch.cat(approx).numpy()
    keep = ~np.isnan(a)
    assert got["n_tokens"] == int(keep.sum()) == 41
    assert got["spearman"] == pytest.approx(spearmanr(r[keep], a[keep]).statistic, rel=1e-12)
    assert got["sign_agreement"] == pytest.approx(
        float(np.mean(np.sign(r[keep]) == np.sign(a[keep]))), rel=1e-12
    )
    same = thr_agreement(ref, ref)
    assert same["spearman"] == pytest.approx(1.0) and same["sign_agreement"] == 1.0
    assert math.isnan(thr_agreement([torch.tensor([1.0])], [torch.tensor([2.0])])["spearman"])
    with pytest.raises(ValueError):
        thr_agreement(ref, approx[:2])


def test_negative_beta_is_refused_and_negative_tau_kept() -> None:
    thr = [torch.tensor([-1.0, -3.0]), torch.tensor([5.0])]
    assert thr_threshold(thr, [1, 1], 1.0) == -2.0  # a negative tau is kept, not clipped
    kept = reweighted_advantages(thr, [1.0, 1.0], -2.0, 0.1)
    assert (kept[0] != 0).all() and (kept[1] != 0).all()  # every token passes |THR| > tau
    for beta in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="beta"):
            thr_threshold(thr, [1, 1], beta)

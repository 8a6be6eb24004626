"""analysis.topk against naive loops, and the entropy bounds against true distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenprism.analysis.registry import get_metric
from tokenprism.analysis.topk import (
    DEFAULT_VOCAB,
    sequence_metrics,
    topk_token_metrics,
    vocab_size_for,
    window_mean,
)


def _true_entropy(p: np.ndarray) -> float:
    return float(sum(-x * math.log(x) for x in p if x > 0))


def _truncate(dist: np.ndarray, k: int, sampled: int) -> tuple[float, np.ndarray, bool, int]:
    """What an API returns for one position: (logprob, top-k logprobs, in top-k, true rank)."""
    order = np.argsort(-dist, kind="stable")
    top = np.log(dist[order[:k]])
    rank = 1 + int((dist > dist[sampled]).sum())
    return math.log(dist[sampled]), top, sampled in order[:k], rank


def test_exact_metrics_match_naive() -> None:
    dist = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    lp, top, inside, rank = _truncate(dist, 3, 2)
    out = topk_token_metrics(np.array([lp]), top[None, :], np.array([inside]), 5)
    assert out["prob"][0] == pytest.approx(0.15)
    assert out["surprisal_bits"][0] == pytest.approx(-math.log2(0.15))
    assert out["rank"][0] == rank == 3
    assert math.isnan(out["rank_gt"][0])
    assert out["margin"][0] == pytest.approx(0.3)
    assert out["topk_mass"][0] == pytest.approx(0.85)
    renorm = dist[:3] / dist[:3].sum()
    assert out["entropy"][0] == pytest.approx(_true_entropy(renorm))
    # V = 5: the two unseen tokens hold 0.15, each <= 0.15
    assert out["entropy_lower"][0] <= _true_entropy(dist) <= out["entropy_upper"][0]
    # upper bound by hand: even spread 0.075 + 0.075
    upper = _true_entropy(dist[:3]) + 2 * (-0.075 * math.log(0.075))
    assert out["entropy_upper"][0] == pytest.approx(upper)
    # lower bound by hand: one token of 0.15 (the cap)
    lower = _true_entropy(dist[:3]) - 0.15 * math.log(0.15)
    assert out["entropy_lower"][0] == pytest.approx(lower)


def test_sampled_outside_topk_is_valid() -> None:
    dist = np.array([0.6, 0.3, 0.06, 0.04])
    lp, top, inside, rank = _truncate(dist, 1, 3)
    out = topk_token_metrics(np.array([lp]), top[None, :], np.array([inside]), 4)
    assert not inside and rank == 4
    assert math.isnan(out["rank"][0]) and out["rank_gt"][0] == 1
    assert math.isnan(out["margin"][0])  # k = 1: p2 unknown
    assert out["entropy_lower"][0] <= _true_entropy(dist) <= out["entropy_upper"][0]


def test_full_vocabulary_listed_gives_exact_entropy() -> None:
    dist = np.array([0.4, 0.3, 0.2, 0.1])
    lp, top, inside, _ = _truncate(dist, 4, 0)
    out = topk_token_metrics(np.array([lp]), top[None, :], np.array([inside]), 4)
    for name in ("entropy", "entropy_lower", "entropy_upper"):
        assert out[name][0] == pytest.approx(_true_entropy(dist))


def test_padded_rows_and_no_alternatives() -> None:
    top = np.array([[math.log(0.9), np.nan], [np.nan, np.nan]])
    lp = np.array([math.log(0.9), math.log(0.5)])
    out = topk_token_metrics(lp, top, np.array([True, False]), 1000)
    assert out["rank"][0] == 1 and out["rank_gt"][1] == 0
    assert math.isnan(out["entropy"][1])
    # nothing listed: the rest (0.5) may sit in one token
    assert out["entropy_lower"][1] == pytest.approx(-2 * 0.5 * math.log(0.5))


@settings(max_examples=300, deadline=None)
@given(
    weights=st.lists(st.floats(1e-6, 1.0), min_size=2, max_size=60),
    k=st.sampled_from([1, 5, 20]),
    sharp=st.floats(0.2, 8.0),
    data=st.data(),
)
def test_bounds_bracket_true_entropy(
    weights: list[float], k: int, sharp: float, data: st.DataObject
) -> None:
    dist = np.asarray(weights) ** sharp
    dist = dist / dist.sum()
    sampled = data.draw(st.integers(0, len(dist) - 1))
    lp, top, inside, rank = _truncate(dist, k, sampled)
    out = topk_token_metrics(np.array([lp]), top[None, :], np.array([inside]), len(dist))
    true = _true_entropy(dist)
    assert out["entropy_lower"][0] <= true + 1e-9
    assert true <= out["entropy_upper"][0] + 1e-9
    # a larger assumed vocabulary keeps both bounds valid (the lower one does not use V)
    big = topk_token_metrics(np.array([lp]), top[None, :], np.array([inside]), 10 * len(dist))
    assert big["entropy_lower"][0] == out["entropy_lower"][0]
    assert true <= big["entropy_upper"][0] + 1e-9
    if inside:
        assert out["rank"][0] == rank
    else:
        assert math.isnan(out["rank"][0]) and out["rank_gt"][0] == min(k, len(dist))


def test_window_and_sequence_aggregates_match_naive() -> None:
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    got = window_mean(v, 2)
    assert got[:4].tolist() == [1.5, 2.5, 3.5, 4.5] and math.isnan(got[4])
    lp = np.log(np.array([0.5, 0.25, 0.8]))
    top = np.log(np.array([[0.5], [0.5], [0.8]]))
    tok = topk_token_metrics(lp, top, np.array([True, False, True]), 100)
    seq = sequence_metrics(tok)
    gm = (0.5 * 0.25 * 0.8) ** (1 / 3)
    assert seq["geometric_mean_confidence"] == pytest.approx(gm)
    assert seq["perplexity"] == pytest.approx(1 / gm)
    assert seq["mean_prob"] == pytest.approx((0.5 + 0.25 + 0.8) / 3)
    assert seq["mean_entropy_lower"] <= seq["mean_entropy_upper"]


def test_vocab_sizes_and_registry() -> None:
    assert vocab_size_for("gpt-4o-mini-2024-07-18")[0] == 200_019
    assert vocab_size_for("gpt-4-turbo")[0] == 100_277
    assert vocab_size_for("my-local-model")[0] == DEFAULT_VOCAB
    assert vocab_size_for("gpt-4o", 5000) == (5000, "given")
    for name in ("rank_gt", "topk_mass", "entropy_lower", "entropy_upper", "mean_entropy_upper"):
        assert get_metric(name).inputs == ("top_logprobs",)
    assert "renormalised" in get_metric("entropy").description

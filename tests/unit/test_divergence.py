"""analysis.divergence against a naive numpy computation on hand-made logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.divergence import (
    DIVERGENCE_METRICS,
    align_spans,
    most_moved,
    pair_divergence,
    shared_vocab_index,
    shared_vocab_logits,
    summarize,
)
from tokenprism.analysis.registry import get_metric


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _naive(a: np.ndarray, b: np.ndarray, t: int) -> dict[str, float]:
    """One position, float64, by the textbook formulas, one vocabulary entry at a time."""
    pa, pb = _softmax(a), _softmax(b)
    kl = sum(pa[v] * math.log(pa[v] / pb[v]) for v in range(len(a)))
    kl_rev = sum(pb[v] * math.log(pb[v] / pa[v]) for v in range(len(a)))
    m = (pa + pb) / 2
    js = 0.5 * sum(pa[v] * math.log(pa[v] / m[v]) for v in range(len(a))) + 0.5 * sum(
        pb[v] * math.log(pb[v] / m[v]) for v in range(len(a))
    )
    return {
        "kl": kl,
        "kl_rev": kl_rev,
        "js": js,
        "delta_logprob": math.log(pb[t]) - math.log(pa[t]),
        "top1_agree": float(np.argmax(a) == np.argmax(b)),
        "rank_b": 1 + int((b > b[t]).sum()),
    }


LOGITS_A = np.array(
    [
        [[2.0, 1.0, 0.0, -1.0, 0.5], [0.0, 0.0, 3.0, 1.0, -2.0], [1.0, 1.0, 1.0, 1.0, 1.0]],
        [[-1.0, 4.0, 0.0, 0.0, 2.0], [5.0, -5.0, 0.0, 1.0, 1.0], [0.3, 0.2, 0.1, 0.0, -0.1]],
    ]
)
LOGITS_B = np.array(
    [
        [[1.0, 2.0, 0.0, -1.0, 0.5], [0.0, 0.5, 2.5, 1.0, -2.0], [3.0, 0.0, 1.0, 1.0, 1.0]],
        [[-1.0, 4.0, 0.1, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0], [0.3, 0.2, 0.1, 0.0, 4.0]],
    ]
)
TARGETS = np.array([[0, 2, 4], [1, 3, 4]])


@pytest.mark.parametrize("chunk", [1, 2, 64])
def test_matches_naive_numpy(chunk: int) -> None:
    div = pair_divergence(
        torch.tensor(LOGITS_A, dtype=torch.float32),
        torch.tensor(LOGITS_B, dtype=torch.float32),
        torch.tensor(TARGETS),
        chunk_positions=chunk,
    )
    for r in range(2):
        for t in range(3):
            want = _naive(LOGITS_A[r, t], LOGITS_B[r, t], int(TARGETS[r, t]))
            for name, value in want.items():
                got = float(getattr(div, name)[r, t])
                assert got == pytest.approx(value, abs=2e-6), (name, r, t)
    assert (div.delta_logprob == div.logprob_b - div.logprob_a).all()


def test_js_is_bounded_and_symmetric() -> None:
    a = torch.tensor(LOGITS_A, dtype=torch.float32)
    b = torch.tensor(LOGITS_B, dtype=torch.float32)
    t = torch.tensor(TARGETS)
    ab, ba = pair_divergence(a, b, t), pair_divergence(b, a, t)
    assert torch.allclose(ab.js, ba.js, atol=1e-7)
    assert torch.allclose(ab.kl, ba.kl_rev, atol=1e-7)
    assert (ab.js >= 0).all() and (ab.js <= math.log(2) + 1e-6).all()


def test_model_against_itself_is_exactly_zero() -> None:
    torch.manual_seed(0)
    a = torch.randn(3, 7, 50) * 4
    t = torch.randint(0, 50, (3, 7))
    div = pair_divergence(a, a.clone(), t, chunk_positions=5)
    assert (div.kl == 0).all() and (div.kl_rev == 0).all() and (div.js == 0).all()
    assert (div.delta_logprob == 0).all() and (div.top1_agree == 1).all()


def test_zero_probability_entries() -> None:
    # A puts no mass on entry 2, B does: KL(A||B) stays finite, KL(B||A) is infinite.
    a = torch.tensor([[[0.0, 1.0, -math.inf]]])
    b = torch.tensor([[[0.0, 1.0, 0.0]]])
    div = pair_divergence(a, b, torch.tensor([[0]]))
    pa = _softmax(np.array([0.0, 1.0]))
    pb = _softmax(np.array([0.0, 1.0, 0.0]))
    want = pa[0] * math.log(pa[0] / pb[0]) + pa[1] * math.log(pa[1] / pb[1])
    assert float(div.kl) == pytest.approx(want, abs=1e-6)
    assert math.isinf(float(div.kl_rev))
    assert math.isfinite(float(div.js)) and float(div.js) <= math.log(2)


def _naive_vectorised(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """KL, reverse KL, JS of one position in float64 (finite logits)."""
    la = a - np.log(np.exp(a - a.max()).sum()) - a.max()
    lb = b - np.log(np.exp(b - b.max()).sum()) - b.max()
    pa, pb = np.exp(la), np.exp(lb)
    lm = np.log((pa + pb) / 2)
    kl, rev = float((pa * (la - lb)).sum()), float((pb * (lb - la)).sum())
    return kl, rev, float(0.5 * (pa * (la - lm)).sum() + 0.5 * (pb * (lb - lm)).sum())


def test_wide_vocabulary_and_a_masked_row_in_one_chunk() -> None:
    # the fused sweep (dot products, softplus form of JS) on a 20k vocabulary, small and large
    # shifts, and one row with masked (-inf) entries that must take the entry-by-entry path
    # without changing its neighbours
    rng = np.random.default_rng(0)
    a = rng.normal(0, 3, (4, 20_000))
    b = a + rng.normal(0, 1, a.shape) * np.array([[1e-3], [0.1], [1.0], [0.5]])
    a_t, b_t = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    a_t[3, :10] = -math.inf
    b_t[3, :10] = -math.inf
    div = pair_divergence(a_t[None], b_t[None], torch.zeros(1, 4, dtype=torch.long))
    for row in range(4):
        keep = slice(10, None) if row == 3 else slice(None)
        kl, rev, js = _naive_vectorised(a[row, keep], b[row, keep])
        assert float(div.kl[0, row]) == pytest.approx(kl, rel=1e-3, abs=1e-7), row
        assert float(div.kl_rev[0, row]) == pytest.approx(rev, rel=1e-3, abs=1e-7), row
        assert float(div.js[0, row]) == pytest.approx(js, rel=1e-3, abs=1e-7), row


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        pair_divergence(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2).long())


def test_shared_vocab_renormalises_over_common_strings() -> None:
    va, vb = ["a", "b", "c", "d"], ["x", "c", "a", "a", "b"]
    ia, ib = shared_vocab_index(va, vb)
    assert ia.tolist() == [0, 1, 2] and ib.tolist() == [2, 4, 1]
    la = torch.tensor([[[1.0, 2.0, 3.0, 9.0]]])
    lb = torch.tensor([[[0.0, 3.0, 1.0, 7.0, 2.0]]])
    div = pair_divergence(
        shared_vocab_logits(la, ia), shared_vocab_logits(lb, ib), torch.zeros(1, 1).long()
    )
    want = _naive(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]), 0)
    assert float(div.kl) == pytest.approx(want["kl"], abs=1e-7) == 0


def test_align_spans() -> None:
    # text "abcdefgh": A = ab|cd|efgh|, B = ab|c|d|ef|gh ; A's "cd" = B's c+d; "efgh" = ef+gh
    a = [(0, 0), (0, 2), (2, 4), (4, 8)]
    b = [(0, 2), (2, 3), (3, 4), (4, 6), (6, 8)]
    m = align_spans(a, b)
    assert m[0].reason is not None and "special" in m[0].reason
    assert m[1].exact and m[1].b_tokens == (0,)
    assert not m[2].exact and m[2].b_tokens == (1, 2) and m[2].reason is None
    assert m[3].b_tokens == (3, 4)
    # B merges A's two tokens: reported on the second, the first says why
    m = align_spans([(0, 1), (1, 2), (2, 3)], [(0, 2), (2, 3)])
    assert m[0].reason is not None and "ends inside" in m[0].reason
    assert m[1].b_tokens == (0,) and m[1].segment_start == 0 and not m[1].exact
    assert m[2].exact and m[2].segment_start == 2


def test_summary_and_most_moved() -> None:
    kl = np.array([0.5, np.nan, 2.0, 0.0, 1.0])
    agree = np.array([1.0, np.nan, 0.0, 1.0, 1.0])
    s = summarize(kl, kl / 2, -kl, agree)
    k = np.array([0.5, 2.0, 0.0, 1.0])
    assert s["n_tokens"] == 5 and s["n_compared"] == 4
    assert s["kl_mean"] == pytest.approx(k.mean())
    assert s["kl_p90"] == pytest.approx(np.percentile(k, 90))
    assert s["kl_max"] == 2.0 and s["top1_agree"] == pytest.approx(0.75)
    assert most_moved(kl, 2).tolist() == [2, 4]


def test_every_metric_is_registered() -> None:
    for name in DIVERGENCE_METRICS:
        assert get_metric(name).level == "token"

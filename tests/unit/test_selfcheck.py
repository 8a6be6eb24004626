"""SelfCheckGPT-style consistency scores against naive loops."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from tokenprism.analysis.selfcheck import (
    NgramScores,
    broadcast_to_tokens,
    embedding_inconsistency,
    ngram_inconsistency,
    words,
)

# ---------------------------------------------------------------- embedding variant


def _naive_embedding(sent: np.ndarray, samples: list[np.ndarray]) -> list[float]:
    out = []
    for r in sent:
        total = 0.0
        for sample in samples:
            best = 0.0 if len(sample) == 0 else -math.inf
            for s in sample:
                cos = float(np.dot(r, s) / (np.linalg.norm(r) * np.linalg.norm(s)))
                best = max(best, cos)
            total += best
        out.append(1.0 - total / len(samples))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_embedding_inconsistency_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 8
    sent = rng.normal(size=(5, d)) * rng.uniform(0.5, 3.0, size=(5, 1))  # unnormalised rows
    samples = [rng.normal(size=(int(j), d)) for j in rng.integers(1, 6, size=4)]
    samples.insert(2, np.zeros((0, d)))  # a sample with no sentences
    got = embedding_inconsistency(
        torch.tensor(sent, dtype=torch.float32),
        [torch.tensor(s, dtype=torch.float32) for s in samples],
    )
    assert got.dtype == torch.float32 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), _naive_embedding(sent, samples), rtol=1e-5, atol=1e-6)


def test_embedding_identical_sample_scores_zero() -> None:
    rng = np.random.default_rng(1)
    sent = torch.tensor(rng.normal(size=(3, 6)), dtype=torch.float32)
    # every sample contains the response sentences verbatim (scaled, shuffled, plus extras)
    extra = torch.tensor(rng.normal(size=(2, 6)), dtype=torch.float32)
    samples = [sent.clone(), torch.cat([extra, 2.5 * sent.flip(0)])]
    np.testing.assert_allclose(embedding_inconsistency(sent, samples).numpy(), 0.0, atol=1e-6)


def test_embedding_empty_samples_contribute_zero_support() -> None:
    sent = torch.eye(3)
    samples = [torch.eye(3), torch.zeros(0, 3)]
    np.testing.assert_allclose(embedding_inconsistency(sent, samples).numpy(), 0.5, atol=1e-6)
    assert torch.isnan(embedding_inconsistency(sent, [])).all()


# ---------------------------------------------------------------- words()


def test_words_punctuation_unicode_decimals() -> None:
    got = words("Hello, World! It's 3.14 -- or 2.")
    assert got == ["hello", "world", "it", "s", "3.14", "or", "2"]
    assert words("Élan naïve CAFÉ; straße") == ["élan", "naïve", "café", "straße"]
    assert words("Версия 1.2.3 вышла") == ["версия", "1.2.3", "вышла"]
    assert words("snake_case, 42nd, x.5") == ["snake_case", "42nd", "x", "5"]
    assert words("...!?") == []
    assert words("") == []


# ---------------------------------------------------------------- n-gram variant


def _naive_ngram(sentences: list[str], samples: list[str], n: int, k: float) -> NgramScores:
    def toks(text: str) -> list[str]:
        return words(text)

    def grams(t: list[str]) -> list[tuple[str, ...]]:
        p = ["<s>"] * (n - 1) + t
        return [tuple(p[i : i + n]) for i in range(len(t))]

    pool = [toks(s) for s in sentences] + [toks(s) for s in samples]
    full: Counter[tuple[str, ...]] = Counter()
    for t in pool:
        full.update(grams(t))
    vocab = {w for t in pool for w in t}
    total = sum(len(t) for t in pool)

    def logp(g: tuple[str, ...]) -> float:
        if n == 1:
            return math.log((full[g] + k) / (total + k * len(vocab)))
        ctx_count = sum(c for h, c in full.items() if h[:-1] == g[:-1])
        return math.log((full[g] + k) / (ctx_count + k * len(vocab)))

    avg, mx, everything = [], [], []
    for s in sentences:
        nll = [-logp(g) for g in grams(toks(s))]
        if not nll:
            avg.append(math.nan)
            mx.append(math.nan)
            continue
        avg.append(float(np.mean(nll)))
        mx.append(float(np.max(nll)))
        everything += nll
    doc_max = float(np.nanmean(mx)) if any(not math.isnan(m) for m in mx) else math.nan
    doc_avg = float(np.mean(everything)) if everything else math.nan
    return NgramScores(avg=avg, max=mx, doc_avg=doc_avg, doc_max=doc_max)


SENTENCES = [
    "Paris is the capital of France.",
    "It has 2.1 million inhabitants.",
    "!!!",
    "The Eiffel Tower was built in 1889 by Gustave Eiffel.",
]
SAMPLES = [
    "Paris is the capital of France. About 2.1 million people live there.",
    "The capital of France is Paris; the Eiffel Tower dates from 1889.",
    "Paris, capital of France, has roughly 2 million inhabitants.",
]


@pytest.mark.parametrize("k", [0.0, 1.0])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_matches_naive_counter(n: int, k: float) -> None:
    got = ngram_inconsistency(SENTENCES, SAMPLES, n=n, k=k)
    ref = _naive_ngram(SENTENCES, SAMPLES, n, k)
    np.testing.assert_allclose(got.avg, ref.avg, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got.max, ref.max, rtol=1e-12, equal_nan=True)
    assert got.doc_avg == pytest.approx(ref.doc_avg, rel=1e-12)
    assert got.doc_max == pytest.approx(ref.doc_max, rel=1e-12)
    assert math.isnan(got.avg[2]) and math.isnan(got.max[2])
    assert all(math.isfinite(v) for i, v in enumerate(got.avg) if i != 2)


def test_ngram_unigram_hand_values() -> None:
    # pool: "a b" + "a a" -> counts a=3, b=1, total 4
    got = ngram_inconsistency(["A b."], ["a, a"], n=1, k=0.0)
    nll_a, nll_b = -math.log(3 / 4), -math.log(1 / 4)
    assert got.avg == pytest.approx([(nll_a + nll_b) / 2])
    assert got.max == pytest.approx([nll_b])
    assert got.doc_avg == pytest.approx((nll_a + nll_b) / 2)
    assert got.doc_max == pytest.approx(nll_b)
    # add-one: (3+1)/(4+2), (1+1)/(4+2)
    one = ngram_inconsistency(["A b."], ["a, a"], n=1, k=1.0)
    assert one.max == pytest.approx([-math.log(2 / 6)])


def test_ngram_supported_words_score_lower() -> None:
    got = ngram_inconsistency(["paris is in france", "zorblat quux"], ["paris is in france"] * 4)
    assert got.avg[0] < got.avg[1]


def test_ngram_no_words_and_bad_args() -> None:
    got = ngram_inconsistency(["...", ""], ["some sample"])
    assert all(math.isnan(v) for v in got.avg + got.max)
    assert math.isnan(got.doc_avg) and math.isnan(got.doc_max)
    with pytest.raises(ValueError):
        ngram_inconsistency(["a"], [], n=0)
    with pytest.raises(ValueError):
        ngram_inconsistency(["a"], [], k=-1.0)
    # no samples: the response alone is the pool
    solo = ngram_inconsistency(["a a b"], [])
    assert solo.max == pytest.approx([-math.log(1 / 3)])


# ---------------------------------------------------------------- broadcast_to_tokens


def _naive_broadcast(values: list[float], positions: list[list[int]], length: int) -> list[float]:
    out = [math.nan] * length
    for v, pos in zip(values, positions, strict=True):
        if math.isnan(v):
            continue
        for p in pos:
            out[p] = v if math.isnan(out[p]) else max(out[p], v)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_broadcast_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    length = 20
    i = int(rng.integers(1, 6))
    values = rng.uniform(-1, 3, size=i)
    if i > 2:
        values[1] = math.nan
    positions = [
        np.sort(rng.choice(length, size=int(rng.integers(0, 7)), replace=False)) for _ in range(i)
    ]
    got = broadcast_to_tokens(
        torch.tensor(values, dtype=torch.float64), [torch.tensor(p) for p in positions], length
    )
    ref = _naive_broadcast(
        values.astype(np.float32).tolist(), [p.tolist() for p in positions], length
    )
    assert got.dtype == torch.float32 and got.shape == (length,)
    np.testing.assert_array_equal(got.numpy(), np.float32(ref))


def test_broadcast_hand_values() -> None:
    values = torch.tensor([0.2, 0.7, math.nan])
    positions = [torch.tensor([0, 1, 2]), torch.tensor([2, 3]), torch.tensor([3, 4])]
    got = broadcast_to_tokens(values, positions, 6)
    nan = math.nan
    np.testing.assert_allclose(got.numpy(), [0.2, 0.2, 0.7, 0.7, nan, nan], equal_nan=True)


def test_broadcast_edge_cases() -> None:
    assert torch.isnan(broadcast_to_tokens(torch.zeros(0), [], 4)).all()
    empty = broadcast_to_tokens(torch.tensor([1.0]), [torch.zeros(0, dtype=torch.long)], 3)
    assert torch.isnan(empty).all()
    neg = broadcast_to_tokens(torch.tensor([-math.inf]), [torch.tensor([1])], 2)
    assert math.isnan(neg[0].item()) and neg[1].item() == -math.inf
    with pytest.raises(ValueError):
        broadcast_to_tokens(torch.tensor([1.0]), [torch.tensor([3])], 3)
    with pytest.raises(ValueError):
        broadcast_to_tokens(torch.tensor([1.0, 2.0]), [torch.tensor([0])], 3)

"""Linear hallucination probes: labels, loss, training and metrics against naive computations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from tokenprism.analysis.probe import (
    LabelledSpan,
    LinearProbe,
    ProbeExample,
    ProbeTrainParams,
    TokenLabels,
    batch_examples,
    evaluate_scores,
    probe_loss,
    roc_auc,
    roc_curve,
    span_max_scores,
    span_token_labels,
    train_probe,
)

# --------------------------------------------------------------------------- span labelling


def _tricky_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompt tokens (a zero-width BOS first), then a response with two zero-width
    tokens: t3 [10,14) t4 [14,14) t5 [14,20) t6 [20,25) t7 [25,30) t8 [30,30) t9 [30,36)."""
    offsets = torch.tensor(
        [[0, 0], [0, 5], [5, 10], [10, 14], [14, 14], [14, 20], [20, 25], [25, 30], [30, 30],
         [30, 36]]
    )  # fmt: skip
    eligible = torch.tensor([False] * 3 + [True] * 7)
    return offsets, eligible


SPANS = [
    LabelledSpan(12, 16, 0),  # 0: starts mid-token t3, reaches into t5; skips zero-width t4
    LabelledSpan(26, 28, 0),  # 1: inside t7, which the positive span 2 also touches
    LabelledSpan(22, 26, 1),  # 2: t6 and t7
    LabelledSpan(0, 8, 1),  # 3: prompt only -> unmatched
    LabelledSpan(14, 14, 1),  # 4: zero-width span at the zero-width token -> unmatched
    LabelledSpan(30, 33, 0),  # 5: touches t7's end only at a boundary -> t9 alone
    LabelledSpan(18, 19, 0),  # 6: second negative span over t5: t5 keeps the first id (0)
]


@pytest.mark.parametrize("default_ignore", [False, True])
def test_span_token_labels_on_a_tricky_tokenisation(default_ignore: bool) -> None:
    offsets, eligible = _tricky_tokens()
    got = span_token_labels(
        offsets, eligible, SPANS, default_ignore=default_ignore, pos_weight=10.0, neg_weight=3.0
    )
    ig = -100.0
    d, dw = (ig, 0.0) if default_ignore else (0.0, 1.0)  # eligible tokens outside all spans
    assert got.labels.tolist() == [ig, ig, ig, 0.0, d, 0.0, 1.0, 1.0, d, 0.0]
    assert got.weights.tolist() == [0.0, 0.0, 0.0, 3.0, dw, 3.0, 10.0, 10.0, dw, 3.0]
    assert got.span_ids.tolist() == [-1, -1, -1, 0, -1, 0, 2, 2, -1, 5]
    assert got.span_labels.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert got.unmatched == [3, 4]
    assert got.labels.dtype == got.weights.dtype == torch.float32
    assert got.span_ids.dtype == torch.long


def test_span_token_labels_without_spans_and_bad_spans() -> None:
    offsets, eligible = _tricky_tokens()
    got = span_token_labels(offsets, eligible, [])
    assert got.labels.tolist() == [-100.0] * 3 + [0.0] * 7
    assert got.weights.tolist() == [0.0] * 3 + [1.0] * 7
    assert (got.span_ids == -1).all() and got.span_labels.shape == (0,) and got.unmatched == []
    with pytest.raises(ValueError):
        span_token_labels(offsets, eligible, [LabelledSpan(0, 4, 2)])
    with pytest.raises(ValueError):
        span_token_labels(offsets, eligible, [LabelledSpan(5, 4, 1)])


# --------------------------------------------------------------------------- loss


def _bce(x: float, y: float) -> float:
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def _naive_loss(
    logits: list[float],
    labels: list[float],
    weights: list[float],
    span_ids: list[int],
    span_labels: list[float],
    omega: float,
) -> float:
    tok = [
        w * _bce(min(max(x, -100.0), 100.0), y)
        for x, y, w in zip(logits, labels, weights, strict=True)
        if y != -100.0
    ]
    tok_loss = sum(tok) / len(tok) if tok else 0.0
    span_terms = []
    for s, ys in enumerate(span_labels):
        members = [i for i, sid in enumerate(span_ids) if sid == s]
        if not members or any(labels[i] == -100.0 for i in members):
            continue
        span_terms.append(_bce(max(logits[i] for i in members), ys))
    span_loss = sum(span_terms) / len(span_terms) if span_terms else 0.0
    return (1 - omega) * tok_loss + omega * span_loss


def _loss_case() -> tuple[list[float], list[float], list[float], list[int], list[float]]:
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, size=14).tolist()
    logits[1] = 150.0  # beyond the clamp: the token term must use 100, the span max 150
    labels = [0.0, 0.0, 1.0, 1.0, -100.0, 0.0, 1.0, 0.0, 0.0, -100.0, 1.0, 0.0, 1.0, 0.0]
    weights = [1.0, 10.0, 10.0, 10.0, 0.0, 3.0, 10.0, 1.0, 1.0, 0.0, 10.0, 1.0, 10.0, 1.0]
    # span 2 holds an ignored token (4) and is skipped; span 4 has no token at all
    span_ids = [-1, 0, 0, 1, 2, 2, 3, -1, -1, -1, 5, -1, 5, -1]
    span_labels = [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    return logits, labels, weights, span_ids, span_labels


@pytest.mark.parametrize("omega", [0.0, 0.5, 1.0])
def test_probe_loss_matches_naive_loop(omega: float) -> None:
    logits, labels, weights, span_ids, span_labels = _loss_case()
    x = torch.tensor(logits, requires_grad=True)
    got = probe_loss(
        x,
        torch.tensor(labels),
        torch.tensor(weights),
        torch.tensor(span_ids),
        torch.tensor(span_labels),
        omega,
    )
    ref = _naive_loss(logits, labels, weights, span_ids, span_labels, omega)
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(ref, rel=1e-5)
    got.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_probe_loss_skips_spans_with_an_ignored_token() -> None:
    logits, labels, weights, span_ids, span_labels = _loss_case()
    args = (torch.tensor(labels), torch.tensor(weights), torch.tensor(span_ids))
    base = probe_loss(torch.tensor(logits), *args, torch.tensor(span_labels), 1.0)
    moved = list(logits)
    moved[5] += 7.0  # the labelled token of skipped span 2
    assert probe_loss(torch.tensor(moved), *args, torch.tensor(span_labels), 1.0) == base
    moved[3] += 7.0  # span 1 counts
    assert probe_loss(torch.tensor(moved), *args, torch.tensor(span_labels), 1.0) != base


def test_probe_loss_without_spans_or_labels_is_zero_with_a_graph() -> None:
    x = torch.randn(4, requires_grad=True)
    loss = probe_loss(
        x, torch.full((4,), -100.0), torch.zeros(4), torch.full((4,), -1), torch.zeros(0), 0.5
    )
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None


# --------------------------------------------------------------------------- metrics


def _naive_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_scipy_and_pairwise_loop_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.3).astype(np.int64)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes many ties
    got = roc_auc(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels))
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    assert got == pytest.approx(u / ((labels == 1).sum() * (labels == 0).sum()), abs=1e-12)
    assert got == pytest.approx(_naive_auc(scores, labels), abs=1e-12)


def test_roc_auc_edge_cases() -> None:
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.5]), torch.tensor([1, 1])))
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.5]), torch.tensor([0.0, 0.0])))
    assert roc_auc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1, 0, 0])) == 0.5
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([False, True])) == 1.0
    with pytest.raises(ValueError):
        roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([-100.0, 1.0]))
    with pytest.raises(ValueError):
        roc_auc(torch.tensor([math.nan, 0.9]), torch.tensor([0, 1]))


def test_roc_curve_matches_threshold_loop_and_its_area_is_the_auc() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(200) < 0.4).astype(np.int64)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1).astype(np.float32)
    fpr, tpr, thr = roc_curve(torch.tensor(scores), torch.tensor(labels))
    ref_thr = [math.inf, *sorted(set(scores.tolist()), reverse=True)]
    ref_tpr = [float(np.mean(scores[labels == 1] >= t)) for t in ref_thr]
    ref_fpr = [float(np.mean(scores[labels == 0] >= t)) for t in ref_thr]
    np.testing.assert_array_equal(thr.numpy(), np.array(ref_thr, dtype=np.float32))
    np.testing.assert_allclose(tpr.numpy(), ref_tpr, atol=1e-6)
    np.testing.assert_allclose(fpr.numpy(), ref_fpr, atol=1e-6)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    area = np.trapezoid(tpr.double().numpy(), fpr.double().numpy())
    assert area == pytest.approx(roc_auc(torch.tensor(scores), torch.tensor(labels)), abs=1e-6)


def test_span_max_scores_matches_naive_loop() -> None:
    rng = np.random.default_rng(7)
    scores = rng.random(60).astype(np.float32)
    scores[rng.random(60) < 0.15] = np.nan
    span_ids = rng.integers(-1, 9, size=60)  # spans 9..11 have no token
    got = span_max_scores(torch.tensor(scores), torch.tensor(span_ids), 12)
    ref = np.full(12, np.nan)
    for s in range(12):
        vals = [v for v, sid in zip(scores, span_ids, strict=True) if sid == s and v == v]
        if vals:
            ref[s] = max(vals)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), ref.astype(np.float32))


def _eval_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    scores = torch.tensor([0.9, 0.2, 0.7, 0.4, 0.6, math.nan, 0.99, 0.3])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, -100.0, 1.0])
    span_ids = torch.tensor([0, 0, 1, 1, -1, 2, 2, 3])  # span 2: only NaN / ignored tokens
    span_labels = torch.tensor([1.0, 0.0, 1.0, 1.0])
    return scores, labels, span_ids, span_labels


def test_evaluate_scores_hand_case() -> None:
    got = evaluate_scores(*_eval_case())
    # evaluated tokens: scores .9 .2 .7 .4 .6 .3, labels 1 0 1 0 0 1; predictions 1 0 1 0 1 0
    expected = {
        "token_auc": 7 / 9,
        "span_max_auc": 0.5,  # positive spans .9 and .3 against the negative .7
        "accuracy": 4 / 6,
        "precision": 2 / 3,
        "recall": 2 / 3,
        "f1": 2 / 3,
        "recall_at_fpr_0_1": 2 / 3,  # 1 of 3 negatives is already FPR 1/3 > 0.1
        "n_tokens": 6,
        "n_positive_tokens": 3,
        "n_spans": 3,
        "n_positive_spans": 2,
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_evaluate_scores_lower_means_hallucinated() -> None:
    scores, labels, span_ids, span_labels = _eval_case()
    got = evaluate_scores(scores, labels, span_ids, span_labels, higher_means_hallucinated=False)
    assert got["token_auc"] == pytest.approx(2 / 9)
    # spans score max(-s): positive spans -.2 and -.3 both beat the negative span's -.4
    assert got["span_max_auc"] == pytest.approx(1.0)
    assert got["precision"] == pytest.approx(1 / 3)  # predictions: score <= 0.5
    assert got["recall"] == pytest.approx(1 / 3)
    all_positive = torch.where(labels == 0, 1.0, labels)
    one_class = evaluate_scores(scores, all_positive, span_ids, span_labels)
    assert math.isnan(one_class["token_auc"]) and math.isnan(one_class["recall_at_fpr_0_1"])


# --------------------------------------------------------------------------- probe + training


def test_linear_probe_init_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b, c = LinearProbe(512, seed=42), LinearProbe(512, seed=42), LinearProbe(512, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a.linear.weight, b.linear.weight)
    assert not torch.equal(a.linear.weight, c.linear.weight)
    assert a.linear.bias.item() == 0.0
    assert a.linear.weight.std().item() == pytest.approx(0.01, rel=0.15)
    h = torch.randn(2, 3, 512)
    assert a(h).shape == (2, 3)
    torch.testing.assert_close(a.probabilities(h), torch.sigmoid(h @ a.linear.weight[0]))


D_MODEL = 64
NUISANCE = (3, 17, 40)  # "massive activation" dims: large offset and spread, no signal


def _synthetic_examples(
    n_seq: int, gen: torch.Generator, direction: torch.Tensor
) -> list[ProbeExample]:
    """Sequences of 30 four-character tokens: 5 prompt tokens, then a response with 3 spans of
    2-4 tokens, each hallucinated or supported at random. Hidden states are Gaussian noise
    shifted along ``direction`` by +4 in hallucinated and -1 in supported spans."""
    out = []
    n_tok = 30
    for _ in range(n_seq):
        offsets = torch.stack([torch.arange(n_tok) * 4, torch.arange(n_tok) * 4 + 4], 1)
        eligible = torch.arange(n_tok) >= 5
        spans = []
        for k in range(3):
            first = 6 + 8 * k + int(torch.randint(0, 3, (1,), generator=gen))
            length = int(torch.randint(2, 5, (1,), generator=gen))
            label = int(torch.randint(0, 2, (1,), generator=gen))
            # start one character into the first token: a mid-token start still claims it
            spans.append(LabelledSpan(first * 4 + 1, (first + length) * 4, label))
        labels = span_token_labels(offsets, eligible, spans)
        shift = torch.zeros(n_tok)
        in_span = labels.span_ids >= 0
        shift[in_span] = torch.where(labels.span_labels[labels.span_ids[in_span]] == 1, 4.0, -1.0)
        h = torch.randn(n_tok, D_MODEL, generator=gen) + shift[:, None] * direction
        for dim in NUISANCE:
            h[:, dim] = 300.0 + 100.0 * torch.randn(n_tok, generator=gen)
        out.append(ProbeExample(h, labels))
    return out


def _planted() -> tuple[list[ProbeExample], list[ProbeExample]]:
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(D_MODEL, generator=gen)
    direction[list(NUISANCE)] = 0.0
    direction /= direction.norm()
    return _synthetic_examples(60, gen, direction), _synthetic_examples(30, gen, direction)


def _evaluate(probe: LinearProbe, examples: list[ProbeExample]) -> dict[str, float]:
    feats, labels, _, span_ids, span_labels = batch_examples(examples)
    with torch.no_grad():
        return evaluate_scores(probe.probabilities(feats), labels, span_ids, span_labels)


def test_train_probe_recovers_a_planted_direction() -> None:
    train, held_out = _planted()
    untrained = _evaluate(LinearProbe(D_MODEL), held_out)
    assert abs(untrained["token_auc"] - 0.5) < 0.15
    probe, history = train_probe(train, ProbeTrainParams())
    got = _evaluate(probe, held_out)
    assert got["token_auc"] > 0.95
    assert got["span_max_auc"] > 0.95
    assert got["n_spans"] == 90 and 0 < got["n_positive_spans"] < 90
    assert history[-1] < history[0]


def test_standardisation_is_folded_into_the_returned_weights() -> None:
    """Training on raw features with ``standardize`` must give the probe that training on
    features standardised by hand would give, but read raw features."""
    train, held_out = _planted()
    params = ProbeTrainParams(epochs=3, batch_size=8)
    probe, _ = train_probe(train, params)

    labelled = np.concatenate(
        [ex.features[ex.labels.labels != -100].double().numpy() for ex in train]
    )
    mean, std = labelled.mean(0), labelled.std(0)
    mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    standardised = [ProbeExample((ex.features - mean_t) / std_t, ex.labels) for ex in train]
    plain, _ = train_probe(standardised, dataclasses.replace(params, standardize=False))

    raw = torch.cat([ex.features for ex in held_out])
    with torch.no_grad():
        folded = probe(raw)
        unfolded = plain((raw - mean_t) / std_t)
    torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-4)
    assert folded.std() > 0.1  # not trivially equal


def test_train_probe_is_deterministic_and_reports_progress() -> None:
    train, _ = _planted()
    params = ProbeTrainParams(epochs=2, batch_size=16)
    calls: list[tuple[int, int, float]] = []
    a, hist_a = train_probe(train, params, progress=lambda s, t, lo: calls.append((s, t, lo)))
    b, hist_b = train_probe(train, params)
    c, hist_c = train_probe(train, ProbeTrainParams(epochs=2, batch_size=16, seed=7))
    assert torch.equal(a.linear.weight, b.linear.weight) and hist_a == hist_b
    assert not torch.equal(a.linear.weight, c.linear.weight) and hist_a != hist_c
    total = 2 * math.ceil(60 / 16)
    assert len(hist_a) == total
    assert [s for s, _, _ in calls] == list(range(1, total + 1))
    assert all(t == total for _, t, _ in calls)
    assert [lo for _, _, lo in calls] == hist_a


def test_batch_examples_offsets_span_ids() -> None:
    def example(t: int, ids: list[int], n_spans: int) -> ProbeExample:
        lab = TokenLabels(
            torch.zeros(t), torch.ones(t), torch.tensor(ids), torch.arange(n_spans).float()
        )
        return ProbeExample(torch.randn(t, 4), lab)

    feats, labels, weights, span_ids, span_labels = batch_examples(
        [example(3, [-1, 0, 1], 2), example(2, [0, -1], 1), example(2, [1, 1], 3)]
    )
    assert feats.shape == (7, 4) and labels.shape == weights.shape == (7,)
    assert span_ids.tolist() == [-1, 0, 1, 2, -1, 4, 4]
    assert span_labels.tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 2.0]
    with pytest.raises(ValueError):
        ProbeExample(torch.randn(3, 4), example(2, [0, 0], 1).labels)


def test_train_params() -> None:
    assert ProbeTrainParams().as_dict()["epochs"] == 20
    with pytest.raises(ValueError):
        ProbeTrainParams(batch_size=0)
    with pytest.raises(ValueError):
        train_probe([], ProbeTrainParams())


def test_train_probe_follows_the_omega_schedule_of_a_hand_written_loop() -> None:
    """One full batch per epoch, 4 steps, ``anneal_warmup=0.5``: omega = (step / 4) / 0.5 capped
    at 1, i.e. 0, 0.5, 1, 1; replay that with plain AdamW on hand-standardised features."""
    train, _ = _planted()
    params = ProbeTrainParams(epochs=4, batch_size=len(train), anneal_warmup=0.5, lr=1e-2)
    _, history = train_probe(train, params)

    feats, labels, weights, span_ids, span_labels = batch_examples(train)
    keep = labels != -100
    mean, std = feats[keep].mean(0), feats[keep].std(0, unbiased=False)
    z = (feats - mean) / std
    probe = LinearProbe(D_MODEL, seed=params.seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2, eps=1e-8, weight_decay=0.0)
    ref = []
    for omega in (0.0, 0.5, 1.0, 1.0):
        loss = probe_loss(probe(z), labels, weights, span_ids, span_labels, omega)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(history, ref, rtol=1e-4)

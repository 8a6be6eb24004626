"""score_forward against a naive per-row recomputation in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from tokenprism.analysis.logits import LogitMetricParams
from tokenprism.analysis.scoring import ScoringParams, score_forward

B, T, V, D, N_LAYERS = 2, 7, 13, 6, 3
LENGTHS = [7, 5]
PROMPT = 2
EDGES = (1, 3, 6)  # small-vocabulary GLTR edges so every bucket occurs


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2.0
    input_ids = torch.randint(0, V, (B, T), generator=g)
    attention = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        attention[b, :n] = True
    # padding holds garbage that must not leak into any result
    logits[1, LENGTHS[1] :] = 1e4
    input_ids[1, LENGTHS[1] :] = 0
    # response = everything after a 2-token prompt, deliberately also True on padding
    response = torch.ones(B, T, dtype=torch.bool)
    response[:, :PROMPT] = False
    hidden = tuple(torch.randn(B, T, D, generator=g) for _ in range(N_LAYERS))
    return {
        "logits": logits,
        "input_ids": input_ids,
        "attention": attention,
        "response": response,
        "hidden": hidden,
    }  # type: ignore[dict-item]


def _params(**kw: object) -> ScoringParams:
    kw.setdefault("layers", "all")  # these tests check every layer's effective rank
    return ScoringParams(
        logits=LogitMetricParams(top_k=4, gltr_edges=EDGES, chunk_positions=3), **kw
    )  # type: ignore[arg-type]


def _np_erank(x: np.ndarray) -> float:
    if x.shape[0] < 2:
        return 0.0
    z = x - x.mean(axis=0, keepdims=True)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / (s.sum() + 1e-8)
    return float(np.exp(-np.sum(p * np.log(p + 1e-8))))


def _naive_row(logits: np.ndarray, ids: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Token metrics at positions 0..length-1: position t uses logits[t-1] and token t."""
    out = {
        k: np.full(length, np.nan)
        for k in ("logprob", "prob", "surprisal_bits", "entropy", "margin", "kurtosis")
    }
    out["rank"] = np.full(length, -1)
    out["gltr_bucket"] = np.full(length, -1)
    out["top_ids"] = np.full((length, 4), -1)
    for t in range(1, length):
        row = logits[t - 1].astype(np.float64)
        lp = scipy.special.log_softmax(row)
        p = np.exp(lp)
        target = int(ids[t])
        rank = 1 + sum(1 for x in row if x > row[target])
        order = sorted(range(V), key=lambda v, p=p: -p[v])[:4]
        out["logprob"][t] = lp[target]
        out["prob"][t] = p[target]
        out["surprisal_bits"][t] = -lp[target] / math.log(2)
        out["entropy"][t] = -np.sum(p * lp)
        out["margin"][t] = p[order[0]] - p[order[1]]
        out["kurtosis"][t] = scipy.stats.kurtosis(p, fisher=False, bias=True)
        out["rank"][t] = rank
        out["gltr_bucket"][t] = sum(1 for e in EDGES if rank > e)
        out["top_ids"][t] = order
    return out


def test_token_metrics_match_naive_recomputation() -> None:
    d = _batch()
    scored = score_forward(
        d["logits"], d["hidden"], d["input_ids"], d["attention"], d["response"], _params()
    )
    assert len(scored) == B
    for b, sc in enumerate(scored):
        n = LENGTHS[b]
        assert sc.length == n
        ref = _naive_row(d["logits"][b].numpy(), d["input_ids"][b].numpy(), n)
        for name in ("logprob", "prob", "surprisal_bits", "entropy", "margin"):
            got = sc.token[name]
            assert got.shape == (n,) and got.dtype == torch.float32
            assert torch.isnan(got[0])
            np.testing.assert_allclose(got.numpy(), ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(sc.token["kurtosis"].numpy(), ref["kurtosis"], rtol=1e-4)
        assert sc.token["rank"].tolist() == ref["rank"].tolist()
        assert sc.token["gltr_bucket"].tolist() == ref["gltr_bucket"].tolist()
        assert sc.top_ids.shape == (n, 4)
        assert sc.top_ids.tolist() == ref["top_ids"].tolist()
        assert torch.isnan(sc.top_probs[0]).all()
        np.testing.assert_allclose(
            (sc.top_probs[1:, 0] - sc.top_probs[1:, 1]).numpy(),
            ref["margin"][1:],
            rtol=1e-5,
            atol=1e-6,
        )
        # response_mask: response tokens that have a prediction
        expected_mask = [PROMPT <= t < n for t in range(n)]
        assert sc.response_mask.tolist() == expected_mask


def test_top_probs_are_the_probabilities_of_top_ids() -> None:
    d = _batch(1)
    scored = score_forward(
        d["logits"], None, d["input_ids"], d["attention"], d["response"], _params()
    )
    for b, sc in enumerate(scored):
        p = scipy.special.softmax(d["logits"][b].double().numpy(), axis=-1)
        for t in range(1, sc.length):
            ids = sc.top_ids[t].tolist()
            np.testing.assert_allclose(sc.top_probs[t].numpy(), p[t - 1, ids], rtol=1e-5)
            assert ids[0] == int(np.argmax(p[t - 1]))


def test_sequence_aggregates_cover_response_tokens_only() -> None:
    d = _batch()
    scored = score_forward(
        d["logits"], d["hidden"], d["input_ids"], d["attention"], d["response"], _params()
    )
    for b, sc in enumerate(scored):
        n = LENGTHS[b]
        ref = _naive_row(d["logits"][b].numpy(), d["input_ids"][b].numpy(), n)
        sel = slice(PROMPT, n)
        lp = ref["logprob"][sel]
        s = sc.sequence
        assert s["n_tokens"] == n - PROMPT
        assert s["geometric_mean_confidence"] == pytest.approx(math.exp(lp.mean()), rel=1e-5)
        assert s["perplexity"] == pytest.approx(math.exp(-lp.mean()), rel=1e-5)
        assert s["mean_prob"] == pytest.approx(np.exp(lp).mean(), rel=1e-5)
        assert s["mean_entropy"] == pytest.approx(ref["entropy"][sel].mean(), rel=1e-5)
        assert s["mean_kurtosis"] == pytest.approx(ref["kurtosis"][sel].mean(), rel=1e-4)
        buckets = ref["gltr_bucket"][sel]
        fractions = [float(np.mean(buckets == k)) for k in range(4)]
        got = [s["gltr_top10"], s["gltr_top100"], s["gltr_top1000"], s["gltr_rest"]]
        assert got == pytest.approx(fractions, abs=1e-6)
        assert sum(got) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("mode", ["inclusive", "following"])
def test_window_entropy_is_aligned_with_token_positions(mode: str) -> None:
    d = _batch()
    scored = score_forward(
        d["logits"],
        None,
        d["input_ids"],
        d["attention"],
        d["response"],
        _params(window=2, window_mode=mode),
    )
    offset = 0 if mode == "inclusive" else 1
    for b, sc in enumerate(scored):
        n = LENGTHS[b]
        ent = _naive_row(d["logits"][b].numpy(), d["input_ids"][b].numpy(), n)["entropy"]
        expected = np.full(n, np.nan)
        for t in range(PROMPT, n):
            window = range(t + offset, t + offset + 2)
            if window[-1] < n:
                expected[t] = np.mean([ent[j] for j in window])
        np.testing.assert_allclose(
            sc.token["window_entropy"].numpy(), expected, rtol=1e-5, equal_nan=True
        )


def test_step_first_surprisal_only_at_step_positions() -> None:
    d = _batch()
    # out-of-range positions (0, >= length) are dropped
    steps = [[2, 5], [0, 3, 7, 99]]
    scored = score_forward(
        d["logits"],
        None,
        d["input_ids"],
        d["attention"],
        d["response"],
        _params(),
        step_positions=steps,
    )
    for b, sc in enumerate(scored):
        n = LENGTHS[b]
        kept = [p for p in steps[b] if 0 < p < n]
        lp = _naive_row(d["logits"][b].numpy(), d["input_ids"][b].numpy(), n)["logprob"]
        sfs = sc.token["step_first_surprisal"]
        assert sfs.shape == (n,)
        assert torch.nonzero(~torch.isnan(sfs)).flatten().tolist() == kept
        np.testing.assert_allclose(sfs[kept].numpy(), -lp[kept], rtol=1e-5)
        assert sc.sequence["n_steps"] == len(kept)
        assert sc.sequence["mean_step_first_surprisal"] == pytest.approx(-lp[kept].mean(), rel=1e-5)


def test_no_step_positions() -> None:
    d = _batch()
    for steps in (None, [[], []]):
        scored = score_forward(
            d["logits"],
            None,
            d["input_ids"],
            d["attention"],
            d["response"],
            _params(),
            step_positions=steps,
        )
        for sc in scored:
            assert torch.isnan(sc.token["step_first_surprisal"]).all()
            assert sc.sequence["n_steps"] == 0.0
            assert math.isnan(sc.sequence["mean_step_first_surprisal"])


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_layer_effective_rank_uses_response_positions(method: str) -> None:
    d = _batch()
    scored = score_forward(
        d["logits"],
        d["hidden"],
        d["input_ids"],
        d["attention"],
        d["response"],
        _params(erank_method=method),
    )
    # responses of 5 and 3 rows in width 6 are rank-deficient once centred (see test_geometry)
    rtol = 1e-4 if method == "svd" else 5e-3
    for b, sc in enumerate(scored):
        er = sc.layers["effective_rank"]
        assert er.shape == (N_LAYERS,)
        ref = [_np_erank(h[b, PROMPT : LENGTHS[b]].double().numpy()) for h in d["hidden"]]
        np.testing.assert_allclose(er.numpy(), ref, rtol=rtol)


def test_predicting_alignment_shifts_hidden_positions_by_one() -> None:
    d = _batch()
    token = score_forward(
        d["logits"],
        d["hidden"],
        d["input_ids"],
        d["attention"],
        d["response"],
        _params(erank_method="svd"),
    )
    pred = score_forward(
        d["logits"],
        d["hidden"],
        d["input_ids"],
        d["attention"],
        d["response"],
        _params(erank_method="svd", hidden_alignment="predicting"),
    )
    for b in range(B):
        ref = [_np_erank(h[b, PROMPT - 1 : LENGTHS[b] - 1].double().numpy()) for h in d["hidden"]]
        np.testing.assert_allclose(pred[b].layers["effective_rank"].numpy(), ref, rtol=1e-4)
        assert not torch.allclose(
            pred[b].layers["effective_rank"], token[b].layers["effective_rank"]
        )
        # token metrics do not depend on the hidden alignment
        torch.testing.assert_close(
            pred[b].token["logprob"], token[b].token["logprob"], equal_nan=True
        )


def test_predicting_alignment_drops_a_response_starting_at_zero() -> None:
    d = _batch()
    response = d["attention"].clone()  # whole text is the response, including position 0
    scored = score_forward(
        d["logits"],
        d["hidden"],
        d["input_ids"],
        d["attention"],
        response,
        _params(erank_method="svd", hidden_alignment="predicting"),
    )
    for b, sc in enumerate(scored):
        ref = [_np_erank(h[b, : LENGTHS[b] - 1].double().numpy()) for h in d["hidden"]]
        np.testing.assert_allclose(sc.layers["effective_rank"].numpy(), ref, rtol=1e-4)
        assert sc.sequence["n_tokens"] == LENGTHS[b] - 1


def test_erv_era_from_final_layer_prefixes() -> None:
    d = _batch()
    scored = score_forward(
        d["logits"],
        d["hidden"],
        d["input_ids"],
        d["attention"],
        d["response"],
        _params(erank_method="svd", erv_stride=1),
    )
    for b, sc in enumerate(scored):
        final = d["hidden"][-1][b, PROMPT : LENGTHS[b]].double().numpy()
        m = [_np_erank(final[: j + 1]) for j in range(1, final.shape[0])]
        deltas = [m[j] - np.mean(m[:j]) for j in range(1, len(m))]
        assert sc.sequence["erv"] == pytest.approx(np.mean(deltas), rel=1e-4, abs=1e-5)
        era = np.mean(np.diff(deltas)) if len(deltas) >= 2 else 0.0
        assert sc.sequence["era"] == pytest.approx(era, rel=1e-4, abs=1e-5)
    # default stride 40 leaves no prefix in such short responses
    default = score_forward(
        d["logits"], d["hidden"], d["input_ids"], d["attention"], d["response"], _params()
    )
    assert all(sc.sequence["erv"] == 0.0 and sc.sequence["era"] == 0.0 for sc in default)


def test_layer_metrics_skipped_without_hidden_states_or_when_disabled() -> None:
    d = _batch()
    for hidden, params in ((None, _params()), (d["hidden"], _params(layer_metrics=False))):
        scored = score_forward(
            d["logits"], hidden, d["input_ids"], d["attention"], d["response"], params
        )
        for sc in scored:
            assert sc.layers == {}
            assert "erv" not in sc.sequence and "era" not in sc.sequence


def test_batched_scores_equal_single_row_scores() -> None:
    """Right padding must not change a row's results."""
    d = _batch()
    batched = score_forward(
        d["logits"],
        d["hidden"],
        d["input_ids"],
        d["attention"],
        d["response"],
        _params(erank_method="svd", erv_stride=1),
    )
    n = LENGTHS[1]
    single = score_forward(
        d["logits"][1:, :n],
        tuple(h[1:, :n] for h in d["hidden"]),
        d["input_ids"][1:, :n],
        d["attention"][1:, :n],
        d["response"][1:, :n],
        _params(erank_method="svd", erv_stride=1),
    )[0]
    for name, value in single.token.items():
        torch.testing.assert_close(batched[1].token[name], value, equal_nan=True, msg=name)
    assert batched[1].sequence == pytest.approx(single.sequence, rel=1e-6, nan_ok=True)
    torch.testing.assert_close(batched[1].layers["effective_rank"], single.layers["effective_rank"])


def test_empty_response_gives_nan_aggregates() -> None:
    d = _batch()
    response = torch.zeros(B, T, dtype=torch.bool)
    scored = score_forward(
        d["logits"], d["hidden"], d["input_ids"], d["attention"], response, _params()
    )
    for sc in scored:
        assert sc.sequence["n_tokens"] == 0.0
        for name in ("geometric_mean_confidence", "perplexity", "mean_entropy", "gltr_top10"):
            assert math.isnan(sc.sequence[name])
        assert sc.layers["effective_rank"].tolist() == [0.0] * N_LAYERS
        # token metrics are still reported for every position with a prediction
        assert not torch.isnan(sc.token["logprob"][1:]).any()

"""API-shaped logprob files built from the tiny model's true distributions truncated to top-k."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenprism.backend.audit.logprob_render import render_turn
from tokenprism.backend.audit.logprob_runs import item_metrics, store_logprob_runs
from tokenprism.backend.audit.logprobs import parse_logprobs
from tokenprism.backend.store import Store

CHATS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris. Café, naïve — 日本語!"},
    ],
    [
        {"role": "user", "content": "How much do 7 pens cost?"},
        {
            "role": "assistant",
            "content": "Each pen costs 3 dollars.\n\nSeven pens cost 21 dollars.",
        },
    ],
]


@pytest.mark.parametrize("k", [1, 5, 20])
def test_truncated_true_distributions(tiny_lm: Any, k: int) -> None:
    turns = [render_turn(tiny_lm, chat, k, model_name="tiny-local") for chat in CHATS]
    text = "\n".join(json.dumps(t.response) for t in turns)
    items = parse_logprobs(text, "tiny.jsonl")
    assert [it.response for it in items] == [c[-1]["content"] for c in CHATS]
    vocab = len(tiny_lm.tokenizer)
    for item, truth in zip(items, turns, strict=True):
        for size in (vocab, None):
            tok = item_metrics(item, size or 262_144)
            np.testing.assert_allclose(tok["logprob"], truth.logprob, rtol=0, atol=1e-12)
            true_rank = np.asarray(truth.rank, dtype=float)
            listed = true_rank <= k
            # ties at the k-th place may push a rank-k token out of the list; none here
            np.testing.assert_array_equal(tok["rank"][listed], true_rank[listed])
            assert np.isnan(tok["rank"][~listed]).all()
            assert (tok["rank_gt"][~listed] == k).all()
            h = np.asarray(truth.entropy)
            assert (tok["entropy_lower"] <= h + 1e-6).all()
            assert (h <= tok["entropy_upper"] + 1e-6).all()
        # offsets cover the response, split multi-byte characters share their character
        spans = item.offsets
        assert spans[0][0] == 0 and spans[-1][1] == len(item.response)
        assert all(b[0] >= a[0] for a, b in zip(spans, spans[1:], strict=False))


def test_stored_like_other_runs(tiny_lm: Any, tmp_path: Path) -> None:
    turns = [render_turn(tiny_lm, chat, 5, model_name="tiny-local") for chat in CHATS]
    items = parse_logprobs("\n".join(json.dumps(t.response) for t in turns), "t.jsonl")
    with Store(tmp_path / "db.duckdb") as store:
        ids = store_logprob_runs(store, items, vocab_size=len(tiny_lm.tokenizer))
        run = store.get_run(ids[0])
    prov = (
        run["provenance"] if isinstance(run["provenance"], dict) else json.loads(run["provenance"])
    )
    assert prov["source"] == "logprobs" and prov["k"] == 5
    toks = run["tokens"]
    assert len(toks) == len(turns[0].logprob)
    assert toks[0]["logprob"] == pytest.approx(turns[0].logprob[0])
    assert all(
        t["entropy_lower"] <= h + 1e-6 <= t["entropy_upper"] + 2e-6
        for t, h in zip(toks, turns[0].entropy, strict=True)
    )
    assert "kurtosis" not in toks[0] or toks[0]["kurtosis"] is None
    assert math.isclose(run["sequence"]["perplexity"], math.exp(-np.mean(turns[0].logprob)))


def test_cli_audit_from_logprobs_loads_no_model(tmp_path: Path) -> None:
    from tests.conftest import run_cli
    from tests.unit.test_logprobs_formats import chat_completion

    path = tmp_path / "resp.json"
    path.write_text(json.dumps(chat_completion()))
    # a default model that does not exist: any attempt to load one would fail the command
    env = {"TOKENPRISM_DEFAULT_MODEL": str(tmp_path / "no-such-model")}
    done = run_cli(
        "audit",
        str(path),
        "--source",
        "logprobs",
        "--metrics",
        "ccp",  # the judge (offline fallback) loads; no language model does
        "--export",
        str(tmp_path / "t.csv"),
        home=tmp_path / "home",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "mean entropy in [" in done.stdout and "4 tokens" in done.stdout
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert "entropy_lower" in header and "rank_gt" in header and "ccp" in header.split(",")


@pytest.mark.parametrize("preset", ["lm-polygraph", "tokenprism"])
def test_ccp_from_topk_equals_the_local_ccp_at_k(tiny_lm: Any, tmp_path: Path, preset: str) -> None:
    """The same model wrote the file: CCP over its top-5 equals the local path's CCP with 5
    alternatives, token by token (both use the judge on the same words and probabilities)."""
    from tests.integration.test_uncertainty_tiny import ContraJudge
    from tokenprism.analysis.ccp import ccp_params
    from tokenprism.backend.scoring.encoding import encode_chat
    from tokenprism.backend.scoring.extras import ExtraPlan, ExtraRequest
    from tokenprism.backend.scoring.runner import score_one
    from tokenprism.backend.settings import Settings

    settings = Settings(home=tmp_path / "home", device="cpu")

    def plan(n: int) -> ExtraPlan:
        request = ExtraRequest(metrics=("ccp",), ccp=ccp_params(preset, n_alternatives=n))
        return ExtraPlan(request=request, settings=settings, judge=ContraJudge())  # type: ignore[arg-type]

    turns = [render_turn(tiny_lm, chat, 5, model_name="tiny-local") for chat in CHATS]
    items = parse_logprobs("\n".join(json.dumps(t.response) for t in turns), "t.jsonl")
    with Store(tmp_path / "db.duckdb") as store:
        # n_alternatives 10 > k = 5: the file's k caps the alternatives
        ids = store_logprob_runs(store, items, vocab_size=len(tiny_lm.tokenizer), ccp=plan(10))
        runs = [store.get_run(i) for i in ids]
    compared = 0
    for chat, run in zip(CHATS, runs, strict=True):
        enc = encode_chat(tiny_lm.tokenizer, chat, context_length=tiny_lm.context_length)
        local = score_one(tiny_lm, enc, extras=plan(5)).scores.token["ccp"]
        start, end = enc.response_span[0], enc.response_span[0] + len(enc.response)
        # the response's own tokens, in order, as render_turn wrote them (no template tokens)
        positions = [
            i
            for i, (p, (a, b)) in enumerate(zip(enc.is_prompt, enc.offsets, strict=True))
            if not p and i > 0 and a >= start and b <= end and b > a
        ]
        assert len(positions) == len(run["tokens"])
        for tok, pos in zip(run["tokens"], positions, strict=True):
            assert tok["ccp"] == pytest.approx(float(local[pos]), rel=1e-4, abs=1e-6), tok
            compared += 1
        assert any(t["ccp"] < 0.99 for t in run["tokens"])
        # claims are the response's sentences, their CCP the product over their tokens
        assert [c["text"] for c in run["claims"]]
        for claim in run["claims"]:
            inside = [
                t["ccp"]
                for t in run["tokens"]
                if t["char_start"] < claim["char_end"] and t["char_end"] > claim["char_start"]
            ]
            assert claim["metrics"]["ccp"] == pytest.approx(math.prod(inside), rel=1e-4)
        prov = run["provenance"]
        assert prov["extras"]["ccp"]["judge"] == "stub-contra"
        assert prov["extras"]["ccp"]["preset"] == preset
        product = math.prod(t["ccp"] for t in run["tokens"])
        assert run["sequence"]["ccp_uncertainty"] == pytest.approx(1 - product, rel=1e-4)
    assert compared == sum(len(it.tokens) for it in items)

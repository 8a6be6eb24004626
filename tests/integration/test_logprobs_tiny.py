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
        "--export",
        str(tmp_path / "t.csv"),
        home=tmp_path / "home",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "mean entropy in [" in done.stdout and "4 tokens" in done.stdout
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert "entropy_lower" in header and "rank_gt" in header

"""Streaming generation on the tiny model: live metrics equal the stored teacher-forced run."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tokenprism.analysis.stream_rules import StreamRule
from tokenprism.backend.probes.storage import StoredProbe
from tokenprism.backend.sampling.stream import (
    IncrementalDecoder,
    StreamParams,
    TokenStream,
    encode_ids,
)
from tokenprism.backend.sampling.types import prompt_ids
from tokenprism.backend.scoring.runner import score_batch


def _stream(lm, params: StreamParams, prompt: str = "What is the capital of France?"):  # type: ignore[no-untyped-def]
    ids, chat = prompt_ids(lm, prompt)
    stream = TokenStream(lm, ids, params)
    events = list(stream)
    return ids, chat, stream.result, events


def test_incremental_decoder_across_multibyte(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    tok = tiny_lm.tokenizer
    text = "Paris 🙂 is 東京? naïve — ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == tok.decode(ids) == text
    assert "" in pieces  # byte-level BPE split at least one character over tokens
    assert all("\ufffd" not in p for p in pieces)


def test_streamed_metrics_equal_stored_run(tiny_lm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = int(tiny_lm.model.config.hidden_size)
    gen = torch.Generator().manual_seed(3)
    probe = StoredProbe(
        "rand", tmp_path, {"layer": 0}, torch.randn(d, generator=gen), torch.tensor(0.1), None
    )
    params = StreamParams(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=7, probe=probe)
    ids, chat, result, events = _stream(tiny_lm, params)
    assert [e["index"] for e in events] == list(range(len(events)))
    assert result.token_ids == [e["token_id"] for e in events]
    enc = encode_ids(
        tiny_lm, result, chat=chat, prompt="What is the capital of France?", system=None
    )
    assert enc.input_ids == ids + result.token_ids  # the sampled ids, not a re-tokenisation
    assert "".join(enc.token_texts) == enc.text
    (scored,) = score_batch(tiny_lm, [enc])
    n = len(ids)
    for e in events:
        pos = n + e["index"]
        assert abs(e["logprob"] - float(scored.scores.token["logprob"][pos])) < 1e-4
        assert abs(e["entropy"] - float(scored.scores.token["entropy"][pos])) < 1e-4
        stored_win = float(scored.scores.token["window_entropy"][pos - 3])
        if e["index"] >= 3:
            assert abs(e["window_entropy"] - stored_win) < 1e-4
        else:
            assert e["window_entropy"] is None
        assert len(e["top"]) == 5
        assert e["top"][0]["logprob"] >= e["logprob"] - 1e-6
    # the probe reads the same hidden state as a teacher-forced pass over the ids
    with torch.inference_mode():
        out = tiny_lm.model(
            input_ids=torch.tensor([enc.input_ids]), output_hidden_states=True, use_cache=False
        )
    full = probe.apply(out.hidden_states)[0]
    for e in events:
        assert abs(e["probe"] - float(full[n + e["index"]])) < 1e-4


def test_seed_reproducible_and_greedy(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    a = _stream(tiny_lm, StreamParams(max_new_tokens=12, seed=5))[2].token_ids
    b = _stream(tiny_lm, StreamParams(max_new_tokens=12, seed=5))[2].token_ids
    assert a == b
    ids, _, result, _ = _stream(tiny_lm, StreamParams(max_new_tokens=10, temperature=0))
    with torch.inference_mode():
        ref = tiny_lm.model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=10, pad_token_id=0
        )[0, len(ids) :].tolist()
    assert result.token_ids == ref[: len(result.token_ids)]


def test_stop_rule_ends_early_and_records(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    free = _stream(tiny_lm, StreamParams(max_new_tokens=30, seed=1))[3]
    ent = [e["entropy"] for e in free]
    thr = sorted(ent)[len(ent) // 2]  # the median: some tokens are above it
    rule = StreamRule("entropy", thr, patience=1, action="stop")
    _, _, result, events = _stream(tiny_lm, StreamParams(max_new_tokens=30, seed=1, rules=[rule]))
    first = next(i for i, h in enumerate(ent) if h > thr)
    assert len(events) == first + 1  # cut right at the first token past the line
    assert result.stop_reason == "rule:0"
    assert result.fired == [{"rule": 0, "action": "stop", "index": first, "spec": rule.describe()}]


def test_mark_spans_and_branch(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    free = _stream(tiny_lm, StreamParams(max_new_tokens=20, seed=2))[3]
    ent = [e["entropy"] for e in free]
    thr = sorted(ent)[len(ent) // 3]
    mark = StreamRule("entropy", thr, patience=2, action="mark")
    _, _, result, events = _stream(tiny_lm, StreamParams(max_new_tokens=20, seed=2, rules=[mark]))
    assert [e["token_id"] for e in events] == [e["token_id"] for e in free]  # mark changes nothing
    flagged = {i for m in result.marks for i in range(m["start"], m["end"] + 1)}
    naive = set()
    for i in range(1, len(ent)):
        if ent[i] > thr and ent[i - 1] > thr:
            naive |= {i - 1, i}
    assert flagged == naive
    branch = StreamRule("entropy", -1.0, patience=1, action="branch", branches=4)  # always fires
    params = StreamParams(max_new_tokens=6, seed=2, rules=[branch], max_branches=3)
    _, _, result, events = _stream(tiny_lm, params)
    assert len(result.branches) == 3
    for b in result.branches:
        alts = b["alternatives"]
        assert b["chosen"] == min(alts, key=lambda a: a["next_entropy"])["token_id"]
        assert events[b["index"]]["token_id"] == b["chosen"]
        assert all(math.isfinite(a["next_entropy"]) for a in alts)


def test_cancel_within_one_token(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    ids, _ = prompt_ids(tiny_lm, "Hello")
    seen: list[dict] = []
    stream = TokenStream(
        tiny_lm, ids, StreamParams(max_new_tokens=50, seed=0), cancelled=lambda: len(seen) >= 3
    )
    for event in stream:
        seen.append(event)
    assert len(seen) == 3 and stream.result.stop_reason in ("cancelled", "eos")

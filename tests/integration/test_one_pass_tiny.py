"""The head-chunked pass and one pass per conversation give today's values (tiny model)."""

from __future__ import annotations

import math

import pytest
import torch

from tokenprism.analysis.scoring import ScoringParams
from tokenprism.backend.scoring.encoding import encode_chat, encode_text
from tokenprism.backend.scoring.runner import (
    _score_batch_full,
    score_batch,
    score_views_pass,
    text_view,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy? Let me think step by step."},
    {"role": "assistant", "content": "Let me think.\n\nFirst, Italy.\n\nThe answer is Rome."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "Hello there! How can I help you today?"},
]


def _assert_same(a, b, tol: float = 1e-5) -> None:  # type: ignore[no-untyped-def]
    assert a.length == b.length
    assert torch.equal(a.response_mask, b.response_mask)
    for name, value in a.token.items():
        torch.testing.assert_close(
            value.double(), b.token[name].double(), rtol=tol, atol=tol, equal_nan=True, msg=name
        )
    assert torch.equal(a.top_ids, b.top_ids)
    torch.testing.assert_close(a.top_probs, b.top_probs, rtol=tol, atol=tol, equal_nan=True)
    assert set(a.sequence) == set(b.sequence)
    for name, value in a.sequence.items():
        other = b.sequence[name]
        assert (math.isnan(value) and math.isnan(other)) or value == pytest.approx(
            other, rel=tol, abs=tol
        ), name
    assert set(a.layers) == set(b.layers)
    for name, value in a.layers.items():
        torch.testing.assert_close(value, b.layers[name], rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("layers", ["final", "all"])
def test_head_chunked_pass_equals_full_logits_pass(tiny_lm, layers: str) -> None:  # type: ignore[no-untyped-def]
    encs = [
        encode_text(tiny_lm.tokenizer, "The capital of France is Paris. " * k, context_length=256)
        for k in (1, 3, 6)
    ] + [encode_chat(tiny_lm.tokenizer, CHAT[:5], context_length=256)]
    params = ScoringParams(layers=layers, erv_stride=4)  # type: ignore[arg-type]
    fast = score_batch(tiny_lm, encs, params)
    full = _score_batch_full(tiny_lm, encs, params, None, None, 0.0)
    for a, b in zip(fast, full, strict=True):
        _assert_same(a.scores, b.scores)
    er = fast[-1].scores.layers["effective_rank"]
    assert er.shape == (tiny_lm.model.config.num_hidden_layers + 1,)
    if layers == "final":
        assert torch.isnan(er[:-1]).all() and not torch.isnan(er[-1])
    else:
        assert not torch.isnan(er).any()


def test_small_head_blocks_do_not_change_results(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    enc = encode_chat(tiny_lm.tokenizer, CHAT, context_length=256)
    base = ScoringParams()
    small = ScoringParams(logits=type(base.logits)(chunk_positions=3, head_positions=7))
    (a,) = score_views_pass(tiny_lm, [enc], [text_view(0, enc)], base) or []
    (b,) = score_views_pass(tiny_lm, [enc], [text_view(0, enc)], small) or []
    _assert_same(a, b, tol=1e-5)

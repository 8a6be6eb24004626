"""Logprob transcript formats: every shape parsed, every hostile input a line-named refusal."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from tokenprism.backend.audit.ingest import TranscriptError
from tokenprism.backend.audit.logprobs import (
    detect_logprobs,
    every_turn_has_logprobs,
    parse_logprobs,
)

LN = math.log


def _entry(token: str, p: float, top: list[tuple[str, float]], raw: bytes | None = None) -> dict:
    return {
        "token": token,
        "logprob": LN(p),
        "bytes": list(raw if raw is not None else token.encode()),
        "top_logprobs": [{"token": t, "logprob": LN(q), "bytes": list(t.encode())} for t, q in top],
    }


def chat_completion() -> dict[str, Any]:
    # "é" (2 bytes) split over two tokens, as APIs return it
    content = [
        _entry("Caf", 0.9, [("Caf", 0.9), ("Tea", 0.05)]),
        _entry("\\xc3", 0.6, [(" is", 0.3)], raw=b"\xc3"),
        _entry("\\xa9", 0.99, [], raw=b"\xa9"),
        _entry("!", 0.02, [(".", 0.7), ("?", 0.2)]),  # sampled outside its top-2
    ]
    content[1]["top_logprobs"].insert(0, {"token": "\\xc3", "logprob": LN(0.6), "bytes": [0xC3]})
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Café!"},
                "logprobs": {"content": content},
            }
        ],
    }


def test_chat_completion_parsed_with_offsets_and_ranks() -> None:
    text = json.dumps(chat_completion(), indent=2)  # pretty-printed single document
    assert detect_logprobs(text) and every_turn_has_logprobs(text)
    (item,) = parse_logprobs(text)
    assert item.response == "Café!" and item.model == "gpt-4o-mini" and item.k == 2
    assert item.offsets == [(0, 3), (3, 4), (3, 4), (4, 5)]
    assert item.in_topk.tolist() == [True, True, False, False]
    assert item.messages[0] == {"role": "assistant", "content": "Café!"}


def test_request_pair_and_messages_and_legacy() -> None:
    pair = {
        "request": {"messages": [{"role": "user", "content": "Hi?"}]},
        "response": chat_completion(),
    }
    msgs = {
        "messages": [
            {"role": "user", "content": "Hi?"},
            {
                "role": "assistant",
                "content": "Café!",
                "logprobs": chat_completion()["choices"][0]["logprobs"],
            },
        ]
    }
    legacy = {
        "model": "llama-3-8b",
        "choices": [
            {
                "text": "Hi there",
                "logprobs": {
                    "tokens": ["Hi", " there"],
                    "token_logprobs": [LN(0.5), LN(0.25)],
                    "top_logprobs": [{"Hi": LN(0.5), "Hello": LN(0.3)}, {" you": LN(0.4)}],
                    "text_offset": [10, 12],
                },
            }
        ],
    }
    items = parse_logprobs("\n".join(json.dumps(r) for r in (pair, msgs, legacy)))
    assert [it.kind for it in items] == ["chat", "messages", "completions"]
    assert items[0].messages[0]["content"] == "Hi?" and items[1].messages[0]["content"] == "Hi?"
    assert items[2].in_topk.tolist() == [True, False] and items[2].offsets == [(0, 2), (2, 8)]


def test_batch_output_joined_with_input() -> None:
    out = {
        "id": "b1",
        "custom_id": "req-1",
        "response": {"status_code": 200, "body": chat_completion()},
        "error": None,
    }
    inp = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Q"}]},
    }
    (alone,) = parse_logprobs(json.dumps(out))
    assert alone.messages[:-1] == []  # prompt empty without the input file
    (joined,) = parse_logprobs(json.dumps(out), batch_input=json.dumps(inp))
    assert joined.messages[0] == {"role": "user", "content": "Q"}
    other = dict(inp, custom_id="req-2")
    with pytest.raises(TranscriptError, match=r"line 1: custom_id 'req-1' is not in the uploaded"):
        parse_logprobs(json.dumps(out), batch_input=json.dumps(other))


def _bad(mutate: Any) -> str:
    good = chat_completion()
    bad = copy.deepcopy(good)
    mutate(bad)
    return json.dumps(good) + "\n" + json.dumps(bad)  # the problem is on line 2


def _tokens(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return rec["choices"][0]["logprobs"]["content"]


HOSTILE = {
    "rebuild": (lambda r: _tokens(r)[0].update(bytes=list(b"Tea")), "do not rebuild"),
    "content": (lambda r: r["choices"][0]["message"].update(content="Cafe!"), "do not rebuild"),
    "positive": (lambda r: _tokens(r)[0].update(logprob=0.5), "positive"),
    "nan": (lambda r: _tokens(r)[0].update(logprob=float("nan")), "not finite"),
    "inf": (lambda r: _tokens(r)[3]["top_logprobs"][0].update(logprob=float("-inf")), "not finite"),
    "mass": (lambda r: _tokens(r)[3]["top_logprobs"][1].update(logprob=LN(0.5)), "above 1"),
    "bytes": (lambda r: _tokens(r)[1].update(bytes=[300]), "integers 0-255"),
    "utf8": (lambda r: _tokens(r)[2].update(bytes=[0x41]), "not UTF-8|do not rebuild"),
    "beats_kth": (
        lambda r: (
            _tokens(r)[3].update(logprob=LN(0.1)),
            _tokens(r)[3]["top_logprobs"][1].update(logprob=LN(0.05)),
        ),
        "more probable than the k-th",
    ),
    "no_logprobs": (lambda r: r["choices"][0].update(logprobs=None), "no logprobs"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs_name_line_and_problem(name: str) -> None:
    mutate, pattern = HOSTILE[name]
    with pytest.raises(TranscriptError, match=rf"line 2: .*({pattern})") as info:
        parse_logprobs(_bad(mutate), "f.jsonl")
    assert [line for line, _ in info.value.problems] == [2]


def test_legacy_unequal_lengths_refused() -> None:
    rec = {
        "choices": [
            {
                "text": "Hi",
                "logprobs": {
                    "tokens": ["H", "i"],
                    "token_logprobs": [-0.1],
                    "top_logprobs": [{}, {}],
                },
            }
        ]
    }
    with pytest.raises(TranscriptError, match=r"line 1: .*unequal lengths \(tokens 2, "):
        parse_logprobs(json.dumps(rec))


def test_plain_chat_is_not_a_logprobs_file() -> None:
    text = json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    assert not detect_logprobs(text)

"""Transcript parsing (every format, role and failure) and how audits encode chat turns."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.tiny import build_tokenizer
from tokenprism.backend.audit.ingest import (
    TranscriptError,
    WorkItem,
    decode_text,
    detect_format,
    parse_transcript,
    parse_with_report,
)
from tokenprism.backend.errors import InputTooLong, UserError
from tokenprism.backend.scoring.encoding import (
    _left_truncate,
    encode_chat,
    encode_text,
    encode_turn,
    template_roles,
)


def chats(items: list[WorkItem]) -> list[tuple[int, int, int, str]]:
    """(line, conversation, turn_index, scored text) of each item."""
    out = []
    for it in items:
        assert it.messages is not None
        out.append((it.line, it.conversation, it.turn_index, it.messages[-1]["content"]))
    return out


def problems(text: str, fmt: str, **kw: Any) -> list[tuple[int, str]]:
    with pytest.raises(TranscriptError) as info:
        parse_transcript(text, fmt, "f", **kw)
    return info.value.problems


SHAREGPT = {
    "id": "x",
    "conversations": [
        {"from": "gpt", "value": "I start mid-conversation."},
        {"from": "human", "value": "Go on."},
        {"from": "bing", "value": ""},
        {"from": "human", "value": ""},
        {"from": "bard", "value": "Last."},
    ],
}


# ---- formats ------------------------------------------------------------------------------


def test_json_array_of_every_record_shape() -> None:
    records = [
        SHAREGPT,
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {
            "conversation_id": "l",
            "conversation": [
                {"role": "user", "content": "u", "language": "English"},
                {"role": "assistant", "content": "lmsys", "toxic": False},
            ],
        },
        {"instruction": "Name it.", "input": "France", "output": "Paris."},
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
        {"prompt": "p", "completion": "c"},
    ]
    text = json.dumps(records, indent=2)
    assert detect_format("export.json", text) == "json"
    items, report = parse_with_report(text, "json", "f")
    assert [(c, t, s) for _, c, t, s in chats(items)] == [
        (1, 0, "I start mid-conversation."),
        (1, 2, "Last."),
        (2, 0, "A"),
        (3, 0, "lmsys"),
        (4, 0, "Paris."),
        (5, 0, "Hi."),
        (6, 0, "c"),
    ]
    # each item's line is where its record starts in the pretty-printed file
    starts = [i + 1 for i, line in enumerate(text.split("\n")) if line == "  {"]
    assert sorted({it.line for it in items}) == starts
    assert items[3].messages is not None and items[3].messages[0]["content"] == "u"
    assert items[4].messages is not None and items[4].messages[0]["content"] == "Name it.\nFrance"
    assert items[5].messages is not None and items[5].messages[0]["content"] == "Say hi."
    # the assistant-first turn has no context at all; the later one sees only non-empty messages
    assert items[0].messages == [{"role": "assistant", "content": "I start mid-conversation."}]
    assert [m["content"] for m in items[1].messages or []] == [
        "I start mid-conversation.",
        "Go on.",
        "Last.",
    ]
    assert items[1].message_index == 4
    assert report.conversations == 6 and report.assistant_turns == 8 and report.to_score == 7
    assert report.empty_messages == 2
    assert report.skipped == [
        {"line": starts[0], "conversation": 1, "turn_index": 1, "reason": "empty assistant message"}
    ]
    assert [it.index for it in items] == list(range(7))


def test_jsonl_twin_gives_the_same_items_with_line_numbers() -> None:
    records = [SHAREGPT, {"prompt": "p", "response": "r"}]
    text = "\n".join(json.dumps(r) for r in records)
    array = parse_transcript(json.dumps(records), "json")
    lines = parse_transcript(text, "jsonl")
    assert [c[1:] for c in chats(lines)] == [c[1:] for c in chats(array)]
    assert [it.line for it in lines] == [1, 1, 2]


def test_jsonl_splits_on_newline_only() -> None:
    # U+2028, U+2029, U+0085, U+000B/C and U+001C-1E split str.splitlines() but are legal inside
    # JSON strings (raw, not escaped) and occur in real chat text
    odd = "a\u2028b\u2029c\u0085d\x0be\x0cf\x1cg\x1dh\x1ei"
    line = json.dumps({"prompt": "p", "response": odd}, ensure_ascii=False)
    assert len(line.splitlines()) > 1
    text = f"{line}\r\n\r\n{line}\n"
    items = parse_transcript(text, "jsonl")
    assert [(it.line, (it.messages or [])[-1]["content"]) for it in items] == [(1, odd), (3, odd)]


def test_bare_array_of_messages_is_one_chat() -> None:
    text = json.dumps(
        [{"role": "system", "content": "S"}, {"role": "assistant", "content": "after system"}]
    )
    items = parse_transcript(text, "json")
    assert len(items) == 1 and items[0].messages == [
        {"role": "system", "content": "S"},
        {"role": "assistant", "content": "after system"},
    ]


def test_single_object_document_and_list_records() -> None:
    obj = (
        '{\n "messages": [{"role": "user", "content": "q"},\n'
        ' {"role": "assistant", "content": "a"}]\n}'
    )
    assert chats(parse_transcript(obj, "json")) == [(1, 1, 0, "a")]
    nested = json.dumps([[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]])
    assert chats(parse_transcript(nested, "json")) == [(1, 1, 0, "a")]


def test_content_parts_keep_text_and_count_the_rest() -> None:
    record = {
        "system": "Top-level system.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "one"}, "two"]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "A"}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]},
        ],
    }
    items, report = parse_with_report(json.dumps(record), "jsonl")
    assert len(items) == 1
    assert items[0].messages == [
        {"role": "system", "content": "Top-level system."},
        {"role": "user", "content": "one\ntwo"},
        {"role": "assistant", "content": "A"},
    ]
    assert report.notes["non-text content part skipped (image_url)"] == 1
    assert report.notes["non-text content part skipped (tool_use)"] == 1
    assert report.empty_messages == 2 and report.assistant_turns == 2


@pytest.mark.parametrize(
    ("role", "mapped"),
    [
        ("human", "user"),
        ("user", "user"),
        ("gpt", "assistant"),
        ("chatgpt", "assistant"),
        ("bing", "assistant"),
        ("bard", "assistant"),
        ("assistant", "assistant"),
        ("GPT", "assistant"),
        ("system", "system"),
        ("tool", "tool"),
        ("function", "tool"),
        ("observation", "tool"),
    ],
)
def test_roles_in_the_wild(role: str, mapped: str) -> None:
    record = {
        "conversations": [
            {"from": role, "value": "first"},
            {"from": "gpt", "value": "answer"},
        ]
    }
    items = parse_transcript(json.dumps(record), "jsonl")
    assert items[-1].messages is not None and items[-1].messages[0]["role"] == mapped


def test_csv_and_text_as_before() -> None:
    items = parse_transcript('prompt,response\n"a\nb",c\nd,e\n', "csv")
    assert [(it.line, (it.messages or [])[-1]["content"]) for it in items] == [(3, "c"), (4, "e")]
    assert parse_transcript("just text", "text")[0].text == "just text"


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("x.json", '[{"a": 1}]', "json"),
        ("x.jsonl", '  \n[{"a": 1}]', "json"),
        ("noext", "[1]", "json"),
        ("x.json", '{"a": 1}', "jsonl"),
        ("x.json", "42", "jsonl"),
        ("noext", '{"a": 1}', "jsonl"),
        ("x.txt", "[Verse 1]", "text"),
        ("x.csv", "[a],b", "csv"),
        ("noext", "hello", "text"),
    ],
)
def test_detect_format_from_content(name: str, text: str, fmt: str) -> None:
    assert detect_format(name, text) == fmt


# ---- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt", "line", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "json", 1, "nested too deeply"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "jsonl", 1, "nested too deeply"),
        ('[{"prompt": "a", "response": "b", "n": ' + "1" * 5000 + "}]", "json", 1, "5000 digits"),
        ('{"prompt": "a", "response": "\\ud800"}', "jsonl", 1, "surrogate"),
        ('{"messages": [{"role": "user", "content": "\\udc00x"}]}', "jsonl", 1, "surrogate"),
        ('{"prompt": "a", "prompt": "b", "response": "c"}', "jsonl", 1, "duplicate key 'prompt'"),
        ('[\n{"prompt": "a", "response": "b"},\n{"a": 1, "a": 2}]', "json", 3, "duplicate key"),
        ('{"prompt": "a", "response": "b"}\n\ufeff{"prompt": "a", "response": "b"}', "jsonl", 2,
         "byte-order mark"),
        ('\ufeff[{"prompt": "a", "response": "b"}]', "json", 1, "two byte-order marks"),
        ("42", "json", 1, "neither an array"),
        ('"s"', "json", 1, "neither an array"),
        ("42", "jsonl", 1, "expected a JSON object, found a number"),
        ("[1, 2]", "json", 1, "found a number"),
        ('[{"prompt": "a", "response": "b"},\n {"prompt": "c"', "json", 2, "invalid JSON"),
        ('[{"prompt": "a", "response": "b"}\n {"prompt": "c"}]', "json", 2, "expected ','"),
        ('[{"prompt": "a", "response": "b"}]\nx', "json", 2, "extra data"),
        ('{"prompt": "a", "response": "b"} x', "jsonl", 1, "extra data"),
        ('{"messages": [{"role": "wizard", "content": "x"}]}', "jsonl", 1, "'wizard'"),
        ('{"conversations": [{"from": null, "value": "x"}]}', "jsonl", 1, "unknown from None"),
        ('{"messages": [{"role": "user", "content": 3}]}', "jsonl", 1, "content of type int"),
        ('{"messages": []}', "jsonl", 1, "empty"),
        ('{"messages": "hi"}', "jsonl", 1, "not a list"),
        ('{"messages": [1]}', "jsonl", 1, "message 1 is not an object"),
        ('{"question": "q", "answer": "a"}', "jsonl", 1, "keys found: 'question', 'answer'"),
        ('{"prompt": 1, "response": "b"}', "jsonl", 1, "must be strings"),
        ('{"messages": [{"role": "user", "content": [{"type": "text"}]}]}', "jsonl", 1,
         "text part"),
        ("question,answer\nHi,Hello\n", "csv", 1, "'prompt' and 'response' columns"),
        ('prompt,response\na,b,c\n', "csv", 2, "more fields"),
    ],
)  # fmt: skip
def test_every_parser_failure_names_its_line(text: str, fmt: str, line: int, needle: str) -> None:
    found = problems(text, fmt)
    assert found[-1][0] == line, found
    assert needle in found[-1][1], found


def test_non_utf8_and_boms() -> None:
    assert decode_text(b"\xef\xbb\xbf[1]", "f") == "[1]"  # one leading UTF-8 BOM is dropped
    with pytest.raises(UserError, match="UTF-16 text .*line 1"):
        decode_text("[1]".encode("utf-16"), "f")
    with pytest.raises(UserError, match="not UTF-8 text .*line 2"):
        decode_text(b'{"a": 1}\n"\xed\xa0\x80"', "f")  # a raw (UTF-8 encoded) surrogate


def test_strict_lists_every_invalid_record_lenient_skips_them() -> None:
    text = "\n".join(
        [
            json.dumps({"prompt": "a", "response": "good 1"}),
            json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),
            "{broken",
            json.dumps({"prompt": "a", "response": "good 2"}),
        ]
    )
    with pytest.raises(TranscriptError) as info:
        parse_transcript(text, "jsonl", "f")
    assert [ln for ln, _ in info.value.problems] == [2, 3]
    assert (info.value.valid, info.value.invalid) == (2, 2)
    assert info.value.details["conversations_valid"] == 2
    items, report = parse_with_report(text, "jsonl", "f", skip_invalid=True)
    assert chats(items) == [(1, 1, 0, "good 1"), (4, 4, 0, "good 2")]
    summary = report.as_dict()
    assert summary["conversations_invalid"] == 2 and summary["skipped_count"] == 2
    assert [(s["line"], "wizard" in s["reason"] or "invalid JSON" in s["reason"])
            for s in summary["skipped"]] == [(2, True), (3, True)]  # fmt: skip


def test_a_syntax_error_in_an_array_is_fatal_even_when_lenient() -> None:
    text = '[{"prompt": "a", "response": "b"},\n{"prompt": ]'
    found = problems(text, "json", skip_invalid=True)
    assert found[-1][0] == 2 and "cannot be read" in found[-1][1]


def test_nothing_to_score_and_limits() -> None:
    with pytest.raises(UserError, match="holds no conversations"):
        parse_transcript("[]", "json", "f")
    with pytest.raises(UserError, match="1 × no assistant message"):
        parse_transcript('[{"messages": [{"role": "user", "content": "hi"}]}]', "json", "f")
    with pytest.raises(UserError, match="3 turns to score; the limit is 2"):
        parse_transcript('{"prompt": "a", "response": "b"}\n' * 3, "jsonl", "f", max_items=2)


# ---- encoding chat turns as they are ------------------------------------------------------

STRICT = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and (loop.first or messages[loop.index0 - 1]['role'] "
    "!= 'user') %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOLS = STRICT.replace("raise_exception('Conversation roles must alternate')", "''") + (
    "{# tool results: role 'tool' #}"
)


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


def test_assistant_first_renders_with_the_template(tok: Any) -> None:
    msgs = [{"role": "assistant", "content": "Hello there!"}]
    enc = encode_turn(tok, msgs, context_length=256)
    assert enc.rendering == "template" and enc.truncated_tokens == 0
    assert enc.text.endswith("<|im_start|>assistant\nHello there!<|im_end|>")
    scored = "".join(t for t, p in zip(enc.token_texts, enc.is_prompt, strict=True) if not p)
    assert scored == "Hello there!<|im_end|>"
    assert encode_chat(tok, msgs, context_length=256).text == enc.text  # not a fallback


def test_a_template_that_refuses_gives_a_raw_continuation() -> None:
    tok = build_tokenizer()
    tok.chat_template = STRICT
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi."}]
    with pytest.raises(UserError, match="cannot render this chat"):
        encode_chat(tok, msgs, context_length=256)
    enc = encode_turn(tok, msgs, context_length=256)
    assert enc.rendering == "raw_continuation" and enc.kind == "chat"
    assert enc.text == "Be brief.\n\nHi." and enc.response_span == (11, 14)
    assert "Conversation roles must alternate" in enc.notes[0]
    assert "".join(t for t, p in zip(enc.token_texts, enc.is_prompt, strict=True) if not p) == "Hi."
    alone = encode_turn(tok, [{"role": "assistant", "content": "Hi."}], context_length=256)
    assert alone.text == "Hi." and not any(alone.is_prompt)
    tok.chat_template = None
    raw = encode_turn(tok, msgs, context_length=256)
    assert raw.rendering == "raw_continuation" and raw.notes == ["the model has no chat template"]
    with pytest.raises(UserError, match="no chat template"):
        encode_chat(tok, msgs, context_length=256)


def test_tool_messages_use_the_tool_role_or_become_user_text(tok: Any) -> None:
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "tool", "content": "21 C"},
        {"role": "assistant", "content": "It is 21 C."},
    ]
    mapped, notes = template_roles(tok.chat_template, msgs)
    assert [m["role"] for m in mapped] == ["user", "user", "assistant"]
    assert notes == ["1 tool message(s) rendered as user text (the template has no tool role)"]
    enc = encode_turn(tok, msgs, context_length=256)
    assert "<|im_start|>user\n21 C" in enc.text and enc.notes == notes
    with_tools = build_tokenizer()
    with_tools.chat_template = TOOLS
    enc = encode_turn(with_tools, msgs, context_length=256)
    assert "<|im_start|>tool\n21 C" in enc.text and enc.notes == []


def test_long_history_is_left_truncated_turn_kept_whole(tok: Any) -> None:
    long_q = "The quick brown fox jumps over the lazy dog. " * 40
    msgs = [{"role": "user", "content": long_q}, {"role": "assistant", "content": "Paris."}]
    full = encode_chat(tok, msgs, context_length=10_000)
    with pytest.raises(InputTooLong):
        encode_chat(tok, msgs, context_length=64)
    enc = encode_turn(tok, msgs, context_length=64)
    assert enc.n_tokens == 64 and enc.truncated_tokens == full.n_tokens - 64
    # exactly the last 64 tokens of the full encoding, text and spans shifted with them
    assert enc.input_ids == full.input_ids[-64:]
    assert enc.is_prompt == full.is_prompt[-64:]
    assert full.text.endswith(enc.text) and "".join(enc.token_texts) == enc.text
    assert enc.text[enc.response_span[0] :].startswith("Paris.") and enc.response == "Paris."
    for (s, e), piece in zip(enc.offsets, enc.token_texts, strict=True):
        assert enc.text[s:e].endswith(piece) or piece == ""


def test_a_turn_longer_than_the_context_scores_its_last_window(tok: Any) -> None:
    answer = "Hello there! How can I help you today? " * 30
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
    full = encode_chat(tok, msgs, context_length=10_000)
    enc = encode_turn(tok, msgs, context_length=32)
    assert enc.input_ids == full.input_ids[-32:] and not any(enc.is_prompt)
    assert enc.truncated_tokens == full.n_tokens - 32
    assert answer.endswith(enc.response) and enc.text.startswith(enc.response)
    assert enc.text == enc.response + "<|im_end|>"


def test_raw_text_is_scored_on_its_last_window(tok: Any) -> None:
    text = "The capital of France is Paris. " * 20
    full = encode_text(tok, text, context_length=10_000)
    enc = encode_text(tok, text, context_length=16, truncate=True)
    assert enc.input_ids == full.input_ids[-16:] and enc.rendering == "text"
    assert enc.truncated_tokens == full.n_tokens - 16 and text.endswith(enc.text)
    with pytest.raises(InputTooLong):
        encode_text(tok, text, context_length=16)


def test_left_truncate_keeps_a_leading_bos() -> None:
    ids = [1, 10, 11, 12, 13]
    offsets = [(0, 0), (0, 2), (2, 4), (4, 6), (6, 8)]
    kept, spans, cut, dropped = _left_truncate(ids, offsets, 3, {1})
    assert (kept, spans, cut, dropped) == ([1, 12, 13], [(0, 0), (0, 2), (2, 4)], 4, 2)
    kept, spans, cut, dropped = _left_truncate(ids[1:], offsets[1:], 3, {1})
    assert (kept, spans, cut, dropped) == ([11, 12, 13], [(0, 2), (2, 4), (4, 6)], 2, 1)


def test_the_bench_export_parses_the_same_as_array_and_jsonl(tmp_path: Any) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "ingest.py"
    spec = importlib.util.spec_from_file_location("bench_ingest", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    array, lines, n = bench.write_files(tmp_path, 64 * 1024)
    a, report = parse_with_report(array.read_text(encoding="utf-8"), "json")
    b = parse_transcript(lines.read_text(encoding="utf-8"), "jsonl")
    assert report.conversations == n and len(a) == len(b) > n // 2
    assert [it.messages for it in a] == [it.messages for it in b]
    assert any("\u2028" in (it.messages or [])[-1]["content"] for it in a)

"""ASAP step onsets and character-to-token mapping."""

from __future__ import annotations

import torch

from tokenprism.analysis.steps import chars_to_tokens, step_char_starts


def test_steps_split_on_blank_lines() -> None:
    text = "First step.\n\nSecond step.\n\nThird."
    assert step_char_starts(text) == [0, text.index("Second"), text.index("Third")]


def test_blank_line_with_horizontal_whitespace() -> None:
    text = "One.\n \nTwo.\n\t \nThree.\n\r\nFour."
    assert step_char_starts(text) == [text.index(w) for w in ("One", "Two", "Three", "Four")]


def test_single_newline_does_not_split() -> None:
    text = "Line one\nline two\n  still the same step"
    assert step_char_starts(text) == [0]


def test_leading_and_trailing_blank_lines() -> None:
    text = "\n\n\n  Alpha\n\n\n\nBeta  \n\n \n"
    assert step_char_starts(text) == [text.index("Alpha"), text.index("Beta")]


def test_single_step_and_indentation() -> None:
    assert step_char_starts("   only one step") == [3]
    assert step_char_starts("x") == [0]


def test_empty_and_blank_spans() -> None:
    assert step_char_starts("") == []
    assert step_char_starts("\n\n \n\n") == []
    assert step_char_starts("abc\n\ndef", 4, 4) == []


def test_sub_span_offsets_refer_to_the_full_text() -> None:
    prompt = "Question?\n\nAnswer follows.\n\n"
    response = "Step A.\n\nStep B.\n\nStep C."
    tail = "\n\n<end>"
    text = prompt + response + tail
    start, end = len(prompt), len(prompt) + len(response)
    starts = step_char_starts(text, start, end)
    assert starts == [text.index("Step A"), text.index("Step B"), text.index("Step C")]
    # the prompt and the tail are outside the span
    assert step_char_starts(text, start) == [*starts, text.index("<end>")]
    # a span that starts mid-step counts the remainder as a step
    assert step_char_starts(text, start + 2, end) == [start + 2, *starts[1:]]


def test_chars_to_tokens_with_a_token_spanning_the_blank_line() -> None:
    text = "Step one.\n\nStep two."
    # hand-made tokenisation: "Step" " one" "." "\n\nStep" " two" "."
    pieces = ["Step", " one", ".", "\n\nStep", " two", "."]
    assert "".join(pieces) == text
    ends = torch.tensor([4, 8, 9, 15, 19, 20])
    starts = step_char_starts(text)
    assert starts == [0, 11]
    assert chars_to_tokens(ends, starts).tolist() == [0, 3]


def test_chars_to_tokens_boundaries_and_zero_width_tokens() -> None:
    # a zero-width special token at 0 (BOS), then tokens [0,3) [3,5) [5,5) [5,9)
    ends = torch.tensor([0, 3, 5, 5, 9])
    got = chars_to_tokens(ends, [0, 2, 3, 4, 5, 8])
    assert got.tolist() == [1, 1, 2, 2, 4, 4]
    assert got.dtype == torch.int64
    # naive reference: the first token whose exclusive end is after the character
    for c, tok in zip([0, 2, 3, 4, 5, 8], got.tolist(), strict=True):
        assert tok == next(i for i, e in enumerate(ends.tolist()) if e > c)
    assert chars_to_tokens(ends, []).tolist() == []

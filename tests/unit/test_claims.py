"""Claim splitting and claim-to-token mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenprism.analysis.claims import (
    SPLITTERS,
    Claim,
    claim_token_positions,
    get_splitter,
    split_lines,
    split_sentences,
)


def _texts(claims: list[Claim]) -> list[str]:
    return [c.text for c in claims]


def _check_offsets(text: str, claims: list[Claim]) -> None:
    assert [c.index for c in claims] == list(range(len(claims)))
    for c in claims:
        assert text[c.char_start : c.char_end] == c.text
        assert c.text == c.text.strip() and c.text


def test_basic_sentences_and_punctuation_runs() -> None:
    text = "Is it true?! Yes... It is. Done!"
    claims = split_sentences(text)
    assert _texts(claims) == ["Is it true?!", "Yes...", "It is.", "Done!"]
    _check_offsets(text, claims)


def test_decimals_and_inner_periods_do_not_split() -> None:
    text = "Pi is 3.14 roughly. See example.com now. Version 2.0.1 works"
    claims = split_sentences(text)
    assert _texts(claims) == ["Pi is 3.14 roughly.", "See example.com now.", "Version 2.0.1 works"]
    _check_offsets(text, claims)


def test_question_and_exclamation_always_split() -> None:
    text = "Why?Because!ok"
    assert _texts(split_sentences(text)) == ["Why?", "Because!", "ok"]


def test_cjk_terminators() -> None:
    text = "你好。世界！真的吗？是"
    claims = split_sentences(text)
    assert _texts(claims) == ["你好。", "世界！", "真的吗？", "是"]
    _check_offsets(text, claims)


def test_newlines_always_split() -> None:
    text = "First line without stop\nSecond line. Third\n\n  \nFourth"
    claims = split_sentences(text)
    assert _texts(claims) == ["First line without stop", "Second line.", "Third", "Fourth"]
    _check_offsets(text, claims)


def test_closing_quotes_and_brackets_stay_with_the_sentence() -> None:
    text = "He said \"Go.\" Then (he left.) She stayed.'' End"
    claims = split_sentences(text)
    assert _texts(claims) == ['He said "Go."', "Then (he left.)", "She stayed.''", "End"]
    _check_offsets(text, claims)


def test_period_then_closer_then_letter_does_not_split() -> None:
    text = 'a."b c. d'
    assert _texts(split_sentences(text)) == ['a."b c.', "d"]


def test_leading_and_trailing_whitespace_offsets() -> None:
    text = "   \t Hello world.   Bye now.  \n\n   "
    claims = split_sentences(text)
    assert _texts(claims) == ["Hello world.", "Bye now."]
    assert claims[0].char_start == 5
    assert claims[1].char_end == text.index("now.") + 4
    _check_offsets(text, claims)


def test_unfinished_last_sentence_is_a_claim() -> None:
    text = "Complete one. And an unfinished"
    claims = split_sentences(text)
    assert _texts(claims) == ["Complete one.", "And an unfinished"]
    assert claims[-1].char_end == len(text)


def test_empty_and_blank_text() -> None:
    assert split_sentences("") == []
    assert split_sentences(" \n\t \n") == []
    assert split_sentences("...") == [Claim(0, "...", 0, 3)]
    assert split_lines("\n \n") == []


def test_sub_span_offsets_point_into_the_full_text() -> None:
    prompt = "User: what is 2.5 + 1? "
    response = " It is 3.5. Easy!\nAnything else?"
    text = prompt + response + "<eos>"
    start, end = len(prompt), len(prompt) + len(response)
    claims = split_sentences(text, start, end)
    assert _texts(claims) == ["It is 3.5.", "Easy!", "Anything else?"]
    assert claims[0].index == 0
    assert all(start <= c.char_start and c.char_end <= end for c in claims)
    _check_offsets(text, claims)
    # the span end counts as end of text: a period right before it splits
    cut = text.index("3.5") + 2  # "...It is 3." with the span ending after the period
    assert _texts(split_sentences(text, start, cut)) == ["It is 3."]


def test_bad_span_raises() -> None:
    with pytest.raises(ValueError):
        split_sentences("abc", 2, 1)
    with pytest.raises(ValueError):
        split_lines("abc", 0, 4)


def test_lines_splitter() -> None:
    text = "  one. two.\n\n three  \nfour"
    claims = split_lines(text)
    assert _texts(claims) == ["one. two.", "three", "four"]
    _check_offsets(text, claims)
    sub = split_lines(text, text.index("three"), len(text))
    assert _texts(sub) == ["three", "four"]
    _check_offsets(text, sub)


def test_get_splitter() -> None:
    assert get_splitter("sentences") is split_sentences
    assert get_splitter("lines") is split_lines
    assert set(SPLITTERS) == {"sentences", "lines"}
    with pytest.raises(ValueError, match="lines, sentences"):
        get_splitter("paragraphs")


def _naive_positions(
    claims: list[Claim], offsets: np.ndarray, eligible: np.ndarray
) -> list[list[int]]:
    out = []
    for c in claims:
        pos = []
        for t in range(len(offsets)):
            s, e = int(offsets[t, 0]), int(offsets[t, 1])
            if eligible[t] and s < e and s < c.char_end and e > c.char_start:
                pos.append(t)
        out.append(pos)
    return out


def test_claim_token_positions_hand_case() -> None:
    text = "Hi there.\nThe end."
    claims = split_sentences(text)
    # "Hi", " there", ".\nThe" straddles both claims, " end", ".", then a zero-width eos
    offsets = torch.tensor([[0, 2], [2, 8], [8, 13], [13, 17], [17, 18], [18, 18]])
    eligible = torch.ones(6, dtype=torch.bool)
    got = claim_token_positions(claims, offsets, eligible)
    assert [g.tolist() for g in got] == [[0, 1, 2], [2, 3, 4]]
    assert all(g.dtype == torch.long for g in got)
    eligible[0] = False
    got = claim_token_positions(claims, offsets, eligible)
    assert [g.tolist() for g in got] == [[1, 2], [2, 3, 4]]
    # ".\n" ending exactly where the next claim starts touches it without overlapping
    offsets = torch.tensor([[0, 8], [8, 10], [10, 18]])
    got = claim_token_positions(claims, offsets, torch.ones(3, dtype=torch.bool))
    assert [g.tolist() for g in got] == [[0, 1], [2]]


@pytest.mark.parametrize("seed", range(5))
def test_claim_token_positions_match_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta.", "gamma?", "3.14", "delta!", "\n", "eps", "zeta."]
    text = " ".join(rng.choice(words, size=40))
    claims = split_sentences(text)
    # random contiguous tokenisation with some zero-width tokens and a few overlapping spans
    cuts = np.sort(rng.choice(np.arange(1, len(text)), size=30, replace=False))
    bounds = np.concatenate([[0], cuts, [len(text)]])
    offsets = np.stack([bounds[:-1], bounds[1:]], axis=1)
    zero = rng.choice(len(offsets), size=4, replace=False)
    offsets[zero, 1] = offsets[zero, 0]
    offsets[::7, 0] = np.maximum(offsets[::7, 0] - 2, 0)  # straddle the previous token
    eligible = rng.random(len(offsets)) < 0.8
    got = claim_token_positions(claims, torch.tensor(offsets), torch.tensor(eligible))
    ref = _naive_positions(claims, offsets, eligible)
    assert [g.tolist() for g in got] == ref
    assert sum(len(r) for r in ref) > 0


def test_claim_token_positions_empty_inputs() -> None:
    assert claim_token_positions([], torch.zeros(3, 2, dtype=torch.long), torch.ones(3)) == []
    claims = [Claim(0, "x", 0, 1)]
    got = claim_token_positions(claims, torch.zeros(0, 2, dtype=torch.long), torch.ones(0))
    assert len(got) == 1 and got[0].numel() == 0

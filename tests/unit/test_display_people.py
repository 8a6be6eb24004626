"""How numbers, metric names and token context are shown to people (backend/display.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tokenprism.analysis.registry import get_metric
from tokenprism.backend.display import metric_help, metric_label, sentence_context, shown_number


@pytest.mark.parametrize(
    ("stored", "shown"),
    [(0, 1), (4, 5), (None, None), (-1, None), (True, None), (2.0, None), ("3", None)],
)
def test_shown_number_counts_from_one(stored: Any, shown: int | None) -> None:
    assert shown_number(stored) == shown


def test_metric_label_and_help_come_from_the_registry() -> None:
    assert metric_label("entropy") == "entropy (nats)"
    assert metric_label("rank") == "rank"  # the unit would only repeat the name
    assert metric_label("not_a_metric") == "not_a_metric"
    thr = metric_help("thr")
    assert thr.startswith(get_metric("thr").description)
    assert "signed, centred on 0" in thr
    assert "higher = more certain" in metric_help("prob")
    assert "not in the metric registry" in metric_help("not_a_metric")


def _tokens(texts: list[str], prompt: int = 0) -> list[dict[str, Any]]:
    return [{"position": i, "text": t, "is_prompt": i < prompt} for i, t in enumerate(texts)]


def test_sentence_context_is_the_sentence_around_the_token() -> None:
    texts = ["Q?", "The", " sky", " is", " blue", ".", " Grass", " is", " green", "!", " End"]
    tokens = _tokens(texts, prompt=1)
    # a naive reading: split the response at sentence ends, find the one holding the token
    assert sentence_context(tokens, 4) == ("The sky is", " blue", ".")
    assert sentence_context(tokens, 7) == ("Grass", " is", " green!")
    assert sentence_context(tokens, 9) == ("Grass is green", "!", "")  # the token ends it
    assert sentence_context(tokens, 10) == ("", " End", "")
    assert sentence_context(tokens, 1) == ("", "The", " sky is blue.")  # never into the prompt
    assert sentence_context(tokens, 0) == ("", "Q?", "")
    assert sentence_context(tokens, 99) == ("", "", "")
    assert sentence_context(None, 0) == ("", "", "")


def test_sentence_context_stops_at_newlines_and_cuts_long_sides() -> None:
    tokens = _tokens(["Line one", "\n", "two", " and", " more", "\n", "three"])
    assert sentence_context(tokens, 3) == ("two", " and", " more")
    words = [f" w{i}" for i in range(60)]
    before, token, after = sentence_context(_tokens([*words, " X", *words]), 60, limit=20)
    assert token == " X"
    assert before.startswith("…") and len(before) == 21 and before.endswith("w59")
    assert after.endswith("…") and len(after) == 21 and after.startswith(" w0")

"""Labelled hallucination data from fact tables: ask, answer, check the entity against the table.

The tables in ``data/facts/`` (capitals, arithmetic, dates, authors, chemical symbols) turn
into questions; a model answers each one greedily; the answer's entity (the city, number,
year, author or symbol) is found in the text and labelled against the table: the right entity
is a *supported* span (0), a different entity of the same kind a *hallucinated* span (1). An
answer whose entity cannot be found is dropped (counted in the build summary), so every kept
example has exactly one labelled span. The output is the probe-training JSONL format
(``prompt``, ``response``, ``spans`` with offsets into the response, ``split``).
"""

from __future__ import annotations

import csv
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenprism.backend.limits import stopping_criteria
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.resources import shipped

FACTS_DIR = shipped("facts")
_NUM = re.compile(r"(?<![\w.])[-−]?\d+(?:\.\d+)?(?![\w])")
_NAME = re.compile(r"\b[A-Z][\w'’-]*(?:\s+(?:[A-Z][\w'’-]*|de|of|the|da|von))*\b")
_SYMBOL = re.compile(r"(?<![\w])[A-Z][a-z]?(?![\w])")


@dataclass(frozen=True)
class Question:
    """One question with the table's answer and how to find the entity in a response."""

    table: str
    prompt: str
    answer: str
    find: Callable[[str, Question], tuple[int, int, int] | None]  # -> (start, end, label)
    exclude: tuple[str, ...] = ()  # words of the question that are not answers


def _rows(name: str, directory: Path) -> list[dict[str, str]]:
    with (directory / f"{name}.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _fold(text: str) -> str:
    """Drop accents so "Brontë" matches the table's "Bronte" (same length: one char each)."""
    return "".join(
        unicodedata.normalize("NFKD", c)[0] if unicodedata.normalize("NFKD", c) else c for c in text
    )


def _find_name(response: str, q: Question, pool: set[str]) -> tuple[int, int, int] | None:
    """The expected name (case- and accent-insensitive) → supported; else the first table
    name or capitalised phrase that is not part of the question → hallucinated."""
    folded = _fold(response)
    m = re.search(rf"(?<!\w){re.escape(_fold(q.answer))}(?!\w)", folded, flags=re.IGNORECASE)
    if m:
        return m.start(), m.end(), 0
    return _other_table_name(response, q, pool) or _capitalised_phrase(response, q)


def _other_table_name(response: str, q: Question, pool: set[str]) -> tuple[int, int, int] | None:
    """The earliest table name other than the answer (a wrong entity of the right kind)."""
    hits = []
    for name in pool:
        if name.casefold() == q.answer.casefold():
            continue
        for m in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", response):
            hits.append((m.start(), m.end()))
    if not hits:
        return None
    start, end = min(hits)
    return start, end, 1


def _capitalised_phrase(response: str, q: Question) -> tuple[int, int, int] | None:
    """The first capitalised phrase not made of the question's own words or filler."""
    skip = {w.casefold() for phrase in q.exclude for w in phrase.split()}
    skip |= {"the", "i", "it", "this", "yes", "no", "a", "an", "in", "of", "answer"}
    for m in _NAME.finditer(response):
        words = m.group(0).split()
        sentence_start = m.start() == 0 or response[m.start() - 2 : m.start()].strip() in (
            ".",
            "!",
            "?",
        )
        # sentence-initial capitals are mostly ordinary words; keep only multi-word names
        if sentence_start and len(words) < 2 and words[0].casefold() in skip | {"the", "it"}:
            continue
        kept = [w for w in words if w.casefold() not in skip]
        if not kept:
            continue
        first = response.index(kept[0], m.start())
        last = response.index(kept[-1], first) + len(kept[-1])
        return first, last, 1
    return None


def _find_number(response: str, q: Question) -> tuple[int, int, int] | None:
    """The number after '=' or 'is' when there is one, else the last number that is not an
    operand of the question."""
    operands = set(q.exclude)
    numbers = [m for m in _NUM.finditer(response) if m.group(0) not in operands]
    if not numbers:
        return None
    after = [m for m in numbers if re.search(r"(=|\bis|\bequals|\bin)\s*$", response[: m.start()])]
    m = after[0] if after else numbers[-1]
    value = m.group(0).replace("−", "-")
    try:
        right = float(value) == float(q.answer)
    except ValueError:
        return None
    return m.start(), m.end(), 0 if right else 1


def _find_year(response: str, q: Question) -> tuple[int, int, int] | None:
    """The first 3-4 digit number, unless the answer was cut off right after it."""
    for m in _NUM.finditer(response):
        if 3 <= len(m.group(0)) <= 4 and m.end() < len(response):
            return m.start(), m.end(), 0 if m.group(0) == q.answer else 1
    return None


def _find_symbol(response: str, q: Question) -> tuple[int, int, int] | None:
    m = re.search(rf"(?<![\w]){re.escape(q.answer)}(?![\w])", response)
    if m:
        return m.start(), m.end(), 0
    for m in _SYMBOL.finditer(response):
        if m.group(0) not in ("I", "A", "The") and m.start() > 0:
            return m.start(), m.end(), 1
    return None


def questions(directory: Path = FACTS_DIR) -> list[Question]:
    """Every question the fact tables give, in a fixed order."""
    out: list[Question] = []
    capitals = _rows("capitals", directory)
    cities = {r["capital"] for r in capitals}
    for r in capitals:
        out.append(
            Question(
                "capitals",
                f"What is the capital of {r['country']}? Answer in one short sentence.",
                r["capital"],
                lambda s, q, pool=cities: _find_name(s, q, pool),  # type: ignore[misc]
                (r["country"],),
            )
        )
    symbols = {"+": "plus", "-": "minus", "*": "times"}
    for r in _rows("arithmetic", directory):
        out.append(
            Question(
                "arithmetic",
                f"What is {r['a']} {symbols[r['op']]} {r['b']}? Answer in one short sentence.",
                r["result"],
                _find_number,
                (r["a"], r["b"]),
            )
        )
    for r in _rows("events", directory):
        out.append(
            Question(
                "events",
                f"In what year did {r['event']}? Answer in one short sentence.",
                r["year"],
                _find_year,
                (),
            )
        )
    books = _rows("books", directory)
    authors = {r["author"] for r in books}
    for r in books:
        out.append(
            Question(
                "books",
                f"Who wrote {r['book']}? Answer in one short sentence.",
                r["author"],
                lambda s, q, pool=authors: _find_name(s, q, pool),  # type: ignore[misc]
                (r["book"],),
            )
        )
    for r in _rows("elements", directory):
        out.append(
            Question(
                "elements",
                f"What is the chemical symbol for {r['element']}? Answer in one short sentence.",
                r["symbol"],
                _find_symbol,
                (),
            )
        )
    return out


def split_of(prompt: str, test_fraction: float) -> str:
    """A stable train/test assignment from the prompt's hash (independent of order)."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def greedy_answers(
    lm: LoadedModel, prompts: list[str], *, max_new_tokens: int = 40, batch_size: int = 16
) -> Iterator[str]:
    """Greedy chat answers, batched with left padding (yielded in order)."""
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i in range(0, len(prompts), batch_size):
        rendered = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts[i : i + batch_size]
        ]
        ids = [tok(r, add_special_tokens=False)["input_ids"] for r in rendered]
        width = max(len(x) for x in ids)
        batch = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            batch[row, width - len(x) :] = torch.tensor(x)
            mask[row, width - len(x) :] = 1
        with torch.inference_mode():
            out = lm.model.generate(
                batch.to(lm.device),
                attention_mask=mask.to(lm.device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
                stopping_criteria=stopping_criteria(),
            )
        yield from (t.strip() for t in tok.batch_decode(out[:, width:], skip_special_tokens=True))


def build_examples(
    lm: LoadedModel,
    qs: list[Question],
    *,
    test_fraction: float = 0.3,
    max_new_tokens: int = 40,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Answer every question and label the entity; return JSONL rows and a summary."""
    rows: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    answers = greedy_answers(lm, [q.prompt for q in qs], max_new_tokens=max_new_tokens)
    for n, (q, response) in enumerate(zip(qs, answers, strict=False), start=1):
        found = q.find(response, q) if response else None
        if found is None:
            dropped[q.table] = dropped.get(q.table, 0) + 1
        else:
            start, end, label = found
            rows.append(
                {
                    "prompt": q.prompt,
                    "response": response,
                    "spans": [{"start": start, "end": end, "label": label}],
                    "split": split_of(q.prompt, test_fraction),
                    "table": q.table,
                    "expected": q.answer,
                }
            )
        if progress is not None:
            progress(n, len(qs))
    summary = {
        "questions": len(qs),
        "kept": len(rows),
        "dropped_no_entity": dropped,
        "hallucinated": sum(r["spans"][0]["label"] for r in rows),
        "by_table": {
            t: {
                "kept": sum(r["table"] == t for r in rows),
                "hallucinated": sum(r["table"] == t and r["spans"][0]["label"] for r in rows),
            }
            for t in sorted({q.table for q in qs})
        },
    }
    return rows, summary

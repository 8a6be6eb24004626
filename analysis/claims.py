"""Claims: pieces of a response text that Claim-Conditioned Probability scores one by one.

A claim here is a sentence (or a line), as in LM-Polygraph's sentence-level CCP; we do not
extract atomic facts with an LLM. Each claim keeps its character offsets into the full text,
and :func:`claim_token_positions` maps it to the tokens whose character spans overlap it, using
the offsets the tokenizer already returned (re-tokenising a sentence would give other tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# LM-Polygraph's sentence separators; the newline is handled on its own (it always splits).
_TERMINALS = frozenset(".?!。？！")
# Quotes and brackets that close a sentence right after its terminal punctuation.
_CLOSERS = frozenset("\"')]}’”»›」』）】〉》")


@dataclass(frozen=True)
class Claim:
    """One claim of a text.

    Attributes:
        index: 0-based order among the claims one splitter call returned.
        text: the claim's text, stripped of surrounding whitespace.
        char_start: offset into the full text of the claim's first character.
        char_end: exclusive end offset; ``full_text[char_start:char_end] == text``.
    """

    index: int
    text: str
    char_start: int
    char_end: int


Splitter = Callable[[str, int, int], list[Claim]]


def _span(text: str, start: int, end: int | None) -> int:
    end = len(text) if end is None else end
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"span [{start}, {end}) does not lie inside a text of {len(text)} chars")
    return end


def _append(claims: list[Claim], text: str, start: int, end: int) -> None:
    """Append ``text[start:end]`` stripped of whitespace, unless nothing is left."""
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return
    lead = len(piece) - len(piece.lstrip())
    char_start = start + lead
    claims.append(Claim(len(claims), stripped, char_start, char_start + len(stripped)))


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[Claim]:
    """Split ``text[start:end]`` into sentences.

    Rules (LM-Polygraph's separators ``.?!。？！`` and the newline):

    * a newline always ends a sentence;
    * ``?``, ``!``, ``。``, ``？``, ``！`` always end a sentence;
    * ``.`` ends a sentence only when the punctuation run is followed by whitespace or the end
      of the span, so ``3.14``, ``e.g.x`` and ``example.com`` stay whole (``"e.g. this"``
      does split: we keep no abbreviation list);
    * a run of terminal punctuation (``?!``, ``...``) and the closing quotes / brackets right
      after it stay with the sentence they end;
    * whitespace-only pieces are skipped, and each claim is stripped of surrounding whitespace;
    * an unfinished last sentence (no terminator before the end of the span) is still a claim,
      since a response cut off by a token limit still asserts what it says.

    Returns:
        The claims, with offsets into the full ``text`` and indices from 0.
    """
    end = _span(text, start, end)
    claims: list[Claim] = []
    piece_start = start
    i = start
    while i < end:
        ch = text[i]
        if ch == "\n":
            _append(claims, text, piece_start, i)
            piece_start = i = i + 1
            continue
        if ch not in _TERMINALS:
            i += 1
            continue
        j = i
        while j < end and text[j] in _TERMINALS:
            j += 1
        only_periods = all(c == "." for c in text[i:j])
        while j < end and text[j] in _CLOSERS:
            j += 1
        if not only_periods or j == end or text[j].isspace():
            _append(claims, text, piece_start, j)
            piece_start = j
        i = j
    _append(claims, text, piece_start, end)
    return claims


def split_lines(text: str, start: int = 0, end: int | None = None) -> list[Claim]:
    """One claim per non-blank line of ``text[start:end]``, stripped of surrounding whitespace."""
    end = _span(text, start, end)
    claims: list[Claim] = []
    piece_start = start
    while True:
        cut = text.find("\n", piece_start, end)
        if cut < 0:
            _append(claims, text, piece_start, end)
            return claims
        _append(claims, text, piece_start, cut)
        piece_start = cut + 1


SPLITTERS: dict[str, Splitter] = {"sentences": split_sentences, "lines": split_lines}


def get_splitter(name: str) -> Splitter:
    """The splitter registered under ``name``; ``ValueError`` names the known splitters."""
    try:
        return SPLITTERS[name]
    except KeyError:
        known = ", ".join(sorted(SPLITTERS))
        raise ValueError(f"unknown claim splitter {name!r}; known splitters: {known}") from None


def claim_token_positions(
    claims: Sequence[Claim], token_offsets: Tensor, eligible: Tensor
) -> list[Tensor]:
    """Token positions of each claim, by character overlap.

    A token belongs to a claim when its span overlaps the claim's:
    ``token_start < claim_end and token_end > claim_start``. Zero-width tokens (``start ==
    end``, e.g. special tokens) never belong. A token straddling two claims (``".\\n"``,
    ``" The"`` when the tokenizer's offsets include the space) belongs to every claim it
    overlaps, so no claim loses the token that carries its boundary.

    Args:
        claims: the claims, offsets into the same text as ``token_offsets``.
        token_offsets: ``[T, 2]`` int (char_start, char_end) of each token in the full text.
        eligible: ``[T]`` bool, tokens that may belong to a claim (e.g. response tokens that
            have a prediction).

    Returns:
        Per claim, a 1-D int64 tensor of ascending token positions (possibly empty).
    """
    if not claims:
        return []
    device = token_offsets.device
    bounds = torch.tensor(
        [[c.char_start, c.char_end] for c in claims], dtype=torch.long, device=device
    )
    tok_start = token_offsets[:, 0].long()
    tok_end = token_offsets[:, 1].long()
    tok_ok = eligible.bool() & (tok_end > tok_start)
    overlap = (
        (tok_start[None, :] < bounds[:, 1:2])
        & (tok_end[None, :] > bounds[:, 0:1])
        & tok_ok[None, :]
    )  # [n_claims, T]
    # nonzero() walks rows in order, so splitting its column indices by row counts gives the
    # per-claim positions already sorted.
    hits = overlap.nonzero()[:, 1]
    counts = overlap.sum(dim=1).tolist()
    return list(torch.split(hits, counts))

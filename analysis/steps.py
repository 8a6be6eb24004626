"""Reasoning steps and ASAP first-token surprisal.

ASAP (Zeng et al. 2025) splits reasoning on blank lines and scores only the first token of
each step. The reference code finds step onsets by re-encoding growing prefixes, which can be
off by one when BPE merges across the ``"\\n\\n"`` boundary; we map each step's first
non-whitespace character to the token whose character span contains it, using the offsets the
tokenizer already returned.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def step_char_starts(text: str, start: int = 0, end: int | None = None) -> list[int]:
    """Character index (into ``text``) of the first non-space character of each step.

    Steps are the non-empty pieces of ``text[start:end]`` between blank lines (a newline,
    optional horizontal whitespace, a newline), as in ASAP.
    """
    end = len(text) if end is None else end
    span = text[start:end]
    starts: list[int] = []
    piece_start = 0
    for cut in [*_BLANK_LINE.finditer(span), None]:
        piece_end = cut.start() if cut is not None else len(span)
        piece = span[piece_start:piece_end]
        stripped = len(piece) - len(piece.lstrip())
        if piece.strip():
            starts.append(start + piece_start + stripped)
        if cut is not None:
            piece_start = cut.end()
    return starts


def chars_to_tokens(char_end: Tensor, chars: list[int]) -> Tensor:
    """Index of the token whose span contains each character.

    Args:
        char_end: ``[n]`` exclusive end offset of each token, non-decreasing.
        chars: character indices to locate.

    Returns:
        ``[len(chars)]`` int64 token indices (the first token ending after the character).
    """
    query = torch.tensor(chars, dtype=char_end.dtype, device=char_end.device)
    return torch.searchsorted(char_end, query, right=True)

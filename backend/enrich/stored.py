"""Stored turns read back as the scorer's objects, from their stored token ids (no tokenising).

A turn's :class:`~backend.scoring.encoding.EncodedText` and
:class:`~analysis.scoring.ScoredSequence` are rebuilt from its rows: the token ids, offsets and
texts, the prompt flags, the core values (log-prob, prob, entropy) and the top-k alternatives.
A turn scored in its conversation's single pass stores only its response tokens; its other
tokens are read from the conversation's context run and sibling turns, below its length, as
``Store.tokens_json`` reads them. The extras then run on these objects exactly as they run on
the outputs of a fresh pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import torch

from tokenprism.analysis.scoring import ScoredSequence
from tokenprism.backend.errors import UserError
from tokenprism.backend.scoring.encoding import EncodedText
from tokenprism.backend.store import Store, schema

_TOKEN_COLUMNS = (
    "run_id, position, token_id, text, char_start, char_end, is_prompt, logprob, prob, "
    "entropy, top_k"
)


@dataclass
class TurnMeta:
    """What planning needs of a stored turn, without its tokens."""

    run_id: str
    n_tokens: int
    context_run_id: str | None
    item_index: int | None


@dataclass
class StoredTurn:
    """A stored turn as the extras take it, with the claims its run stored."""

    meta: TurnMeta
    encoded: EncodedText
    scores: ScoredSequence
    claims: list[tuple[int, int, int]]  # (claim_index, char_start, char_end) as stored


def turn_metas(store: Store, run_ids: Sequence[str]) -> list[TurnMeta]:
    """The runs' lengths and context links, in ``run_ids`` order."""
    r = schema.runs
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.c.run_id, r.c.n_tokens, r.c.context_run_id, r.c.item_index).where(
                r.c.run_id.in_(list(run_ids))
            )
        ).all()
    found = {row[0]: TurnMeta(row[0], int(row[1]), row[2], row[3]) for row in rows}
    return [found[r] for r in run_ids if r in found]


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _token_rows(
    conn: sa.Connection, metas: Sequence[TurnMeta], siblings: dict[str, list[str]]
) -> dict[str, dict[int, tuple[Any, ...]]]:
    """Rows of every run the turns read from, by run and position."""
    members = {m.run_id for m in metas} | {s for group in siblings.values() for s in group}
    query = sa.text(
        f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE run_id IN :ids ORDER BY run_id, position"
    ).bindparams(sa.bindparam("ids", expanding=True))
    out: dict[str, dict[int, tuple[Any, ...]]] = {}
    for row in conn.execute(query, {"ids": sorted(members)}):
        out.setdefault(row[0], {})[int(row[1])] = tuple(row)
    return out


def _siblings(conn: sa.Connection, metas: Sequence[TurnMeta]) -> dict[str, list[str]]:
    """Per context run: itself and every turn pointing to it."""
    contexts = sorted({m.context_run_id for m in metas if m.context_run_id})
    if not contexts:
        return {}
    r = schema.runs
    out: dict[str, list[str]] = {c: [c] for c in contexts}
    for run_id, ctx in conn.execute(
        sa.select(r.c.run_id, r.c.context_run_id).where(r.c.context_run_id.in_(contexts))
    ):
        out[ctx].append(run_id)
    return out


def _positions(
    meta: TurnMeta, rows: dict[str, dict[int, tuple[Any, ...]]], siblings: dict[str, list[str]]
) -> list[tuple[Any, ...]]:
    """The turn's token rows at positions 0..n-1, its own first, then its conversation's."""
    sources = [meta.run_id]
    if meta.context_run_id:
        sources += [s for s in siblings.get(meta.context_run_id, []) if s != meta.run_id]
    out: list[tuple[Any, ...]] = []
    for p in range(meta.n_tokens):
        found = next((rows[s][p] for s in sources if p in rows.get(s, {})), None)
        if found is None:
            raise UserError(f"run {meta.run_id} lacks its token at position {p}; it cannot be read")
        out.append(found)
    return out


def _response_start(text: str, response: str, first_response_char: int | None) -> int:
    """Where the response content starts in the rendered text (the scorer's response_span[0]).

    The first response token overlaps the content's first character, so the content is the
    first occurrence of the response at or after that token's start.
    """
    if first_response_char is not None:
        found = text.find(response, first_response_char)
        if found >= 0:
            return found
    found = text.rfind(response)
    return max(found, 0)


def _encoded(run: dict[str, Any], rows: list[tuple[Any, ...]]) -> EncodedText:
    rid = run["run_id"]
    is_prompt = [bool(r[6]) or r[0] != rid for r in rows]
    offsets = [(int(r[4]), int(r[5])) for r in rows]
    first = next((offsets[p][0] for p, prompt in enumerate(is_prompt) if not prompt), None)
    start = _response_start(run["text"], run["response"], first)
    ends = [offsets[p][1] for p, prompt in enumerate(is_prompt) if not prompt]
    provenance = json.loads(run["provenance"])
    return EncodedText(
        kind=run["kind"],
        text=run["text"],
        input_ids=[int(r[2]) for r in rows],
        offsets=offsets,
        token_texts=[str(r[3]) for r in rows],
        is_prompt=is_prompt,
        response_span=(start, max(ends, default=start + len(run["response"]))),
        prompt=run["prompt"],
        response=run["response"],
        system_prompt=run["system_prompt"],
        messages=json.loads(run["messages"]) if run["messages"] else None,
        template=provenance.get("chat_template"),
        rendering=provenance.get("rendering") or "template",
        truncated_tokens=int(provenance.get("truncated_tokens") or 0),
        truncated=bool(provenance.get("truncated")),
    )


def _scores(rows: list[tuple[Any, ...]], is_prompt: list[bool], k: int) -> ScoredSequence:
    """The stored core values as the scorer's ``[T]`` / ``[T, k]`` float32 arrays.

    Stored values are float64 copies of the pass's float32 ones, so the round trip is exact.
    """
    n = len(rows)
    top_ids = torch.full((n, k), -1, dtype=torch.long)
    top_probs = torch.full((n, k), math.nan, dtype=torch.float32)
    for p, row in enumerate(rows):
        for j, alt in enumerate((row[10] or [])[:k]):
            top_ids[p, j] = int(alt["token_id"])
            top_probs[p, j] = float(alt["prob"])

    def column(i: int) -> torch.Tensor:
        return torch.tensor([_float(r[i]) for r in rows], dtype=torch.float32)

    # the scorer's response mask: response tokens that have a prediction (not position 0)
    mask = torch.tensor([not prompt and p > 0 for p, prompt in enumerate(is_prompt)])
    return ScoredSequence(
        length=n,
        response_mask=mask,
        token={"logprob": column(7), "prob": column(8), "entropy": column(9)},
        top_ids=top_ids,
        top_probs=top_probs,
        sequence={},
        layers={},
    )


def _stored_claims(
    conn: sa.Connection, run_ids: list[str]
) -> dict[str, list[tuple[int, int, int]]]:
    c = schema.claims
    out: dict[str, list[tuple[int, int, int]]] = {r: [] for r in run_ids}
    for run_id, index, start, end in conn.execute(
        sa.select(c.c.run_id, c.c.claim_index, c.c.char_start, c.c.char_end)
        .where(c.c.run_id.in_(run_ids))
        .order_by(c.c.run_id, c.c.claim_index)
    ):
        out[run_id].append((int(index), int(start), int(end)))
    return out


def load_turns(store: Store, metas: Sequence[TurnMeta], k: int) -> list[StoredTurn]:
    """The turns of ``metas`` rebuilt from their stored rows, ``k`` alternatives per token."""
    ids = [m.run_id for m in metas]
    r = schema.runs
    with store.engine.connect() as conn:
        runs = {
            row["run_id"]: dict(row)
            for row in conn.execute(
                sa.select(
                    r.c.run_id,
                    r.c.kind,
                    r.c.prompt,
                    r.c.response,
                    r.c.text,
                    r.c.system_prompt,
                    r.c.messages,
                    r.c.n_response_tokens,
                    r.c.provenance,
                ).where(r.c.run_id.in_(ids))
            ).mappings()
        }
        siblings = _siblings(conn, metas)
        rows = _token_rows(conn, metas, siblings)
        claims = _stored_claims(conn, ids)
    out = []
    for meta in metas:
        run = runs[meta.run_id]
        turn_rows = _positions(meta, rows, siblings)
        enc = _encoded(run, turn_rows)
        sc = _scores(turn_rows, enc.is_prompt, k)
        if int(sc.response_mask.sum()) != int(run["n_response_tokens"]):
            raise UserError(
                f"run {meta.run_id}: its stored tokens give {int(sc.response_mask.sum())} "
                f"response tokens, its row says {run['n_response_tokens']}; it cannot be read"
            )
        out.append(StoredTurn(meta, enc, sc, claims[meta.run_id]))
    return out

"""One forward pass per conversation: every assistant turn scored from its conversation's pass.

An audit's items are assistant turns, each with its whole history. Scored one by one, a
conversation with k assistant turns goes through the model k times and stores its context's
token rows k times. Here a conversation is rendered once (its longest turn's rendering, from
:func:`backend.encoding.encode_chat`); every turn whose own rendering is a token-id prefix of it
becomes a :class:`analysis.scoring.View` of that single pass (a causal model gives the prefix
the same logits and hidden states), and only turns that fail the check (a template that renders
history differently, a truncated history) are scored in passes of their own. The turn's
:class:`~backend.encoding.EncodedText` is the same as in the per-turn path, so its stored run
looks the same; only its token rows differ: a one-pass turn stores its response tokens, and the
conversation's other tokens are stored once in a context run (``kind = "context"``) that the
turns point to (``runs.context_run_id``, read back by ``Store.tokens_json``).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import torch

from tokenprism.analysis.scoring import ScoringParams, View
from tokenprism.backend.audit.ingest import WorkItem
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.encoding import EncodedText
from tokenprism.backend.scoring.runner import (
    ScoredText,
    make_results,
    score_batch,
    score_views_pass,
    text_view,
)
from tokenprism.backend.store.store import CONTEXT_KIND
from tokenprism.backend.store.tables import RUN_TABLES, run_tables


@dataclass
class Unit:
    """One batch row: a rendered conversation (or a lone turn) and the turns it scores.

    Attributes:
        row: the tokens fed to the model.
        turns: ``(position in the item list, the turn's own encoding)``; each encoding is a
            token prefix of ``row``.
        shared: the turns share a context run (a conversation in one pass).
    """

    row: EncodedText
    turns: list[tuple[int, EncodedText]] = field(default_factory=list)
    shared: bool = False

    @property
    def n_items(self) -> int:
        return len(self.turns)


@dataclass
class OnePassCounts:
    """What the one-pass planner did, for the job summary."""

    conversations: int = 0
    one_pass_turns: int = 0
    fallback_turns: int = 0

    def add(self, other: OnePassCounts) -> None:
        self.conversations += other.conversations
        self.one_pass_turns += other.one_pass_turns
        self.fallback_turns += other.fallback_turns

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def is_prefix(prefix: EncodedText, full: EncodedText) -> bool:
    """True when ``prefix``'s token ids start ``full``'s (the one-pass condition)."""
    n = prefix.n_tokens
    return n <= full.n_tokens and full.input_ids[:n] == prefix.input_ids


def plan_units(
    items: Sequence[WorkItem], encoded: Sequence[EncodedText]
) -> tuple[list[Unit], OnePassCounts]:
    """Group turns by conversation into one-pass units; failed prefix checks get their own.

    The row of a conversation is its longest turn's encoding (the whole conversation up to its
    last assistant turn, cut where encode_chat cuts). Raw-text items are units of their own.
    """
    groups: dict[int, list[int]] = {}
    units: list[Unit] = []
    counts = OnePassCounts()
    for pos, item in enumerate(items):
        if item.messages is None:
            units.append(Unit(encoded[pos], [(pos, encoded[pos])]))
        else:
            groups.setdefault(item.conversation, []).append(pos)
    for members in groups.values():
        row = max(members, key=lambda p: (encoded[p].n_tokens, items[p].turn_index))
        unit = Unit(encoded[row], shared=True)
        for pos in sorted(members, key=lambda p: items[p].turn_index):
            if is_prefix(encoded[pos], encoded[row]):
                unit.turns.append((pos, encoded[pos]))
            else:
                units.append(Unit(encoded[pos], [(pos, encoded[pos])]))
                counts.fallback_turns += 1
        counts.conversations += 1
        counts.one_pass_turns += unit.n_items
        if unit.n_items == 1:  # nothing to share: store it like any single text
            unit.shared = False
        units.append(unit)
    return units, counts


def unit_batches(units: Sequence[Unit], batch_tokens: int) -> list[list[int]]:
    """Length-bucketed batches of units: sorted by row length, at most ``batch_tokens`` padded."""
    batches: list[list[int]] = []
    for i in sorted(range(len(units)), key=lambda j: units[j].row.n_tokens):
        current = batches[-1] if batches else None
        if current and units[i].row.n_tokens * (len(current) + 1) <= batch_tokens:
            current.append(i)
        else:
            batches.append([i])
    return batches


def score_units(
    lm: LoadedModel, units: Sequence[Unit], params: ScoringParams | None = None
) -> list[list[ScoredText]]:
    """One forward pass for all ``units`` (one batch); per unit, its turns' scored texts.

    Falls back to :func:`backend.runner.score_batch` per turn when the model's head cannot be
    applied separately (then the values still come from one pass per turn).
    """
    params = params or ScoringParams()
    began = time.perf_counter()
    rows = [u.row for u in units]
    views: list[View] = []
    for r, unit in enumerate(units):
        views += [dataclasses.replace(text_view(r, enc)) for _, enc in unit.turns]
    scored = score_views_pass(lm, rows, views, params)
    if scored is None:
        return [score_batch(lm, [enc for _, enc in u.turns], params) for u in units]
    elapsed = time.perf_counter() - began
    turns = [enc for u in units for _, enc in u.turns]
    results = make_results(lm, turns, scored, params, batch_size=len(rows), elapsed=elapsed)
    out, start = [], 0
    for unit in units:
        mine = results[start : start + unit.n_items]
        start += unit.n_items
        for res in mine:
            res.provenance["one_pass"] = {
                "conversation_tokens": unit.row.n_tokens,
                "shared_context": unit.shared,
            }
        out.append(mine)
    return out


def context_run(turns: Sequence[ScoredText]) -> ScoredText:
    """The context run of a one-pass conversation: every token no turn stores as response."""
    last = max(turns, key=lambda t: t.encoded.n_tokens)
    responses = {p for t in turns for p, prompt in enumerate(t.encoded.is_prompt) if not prompt}
    enc = dataclasses.replace(
        last.encoded,
        kind=CONTEXT_KIND,
        is_prompt=[True] * last.encoded.n_tokens,
    )
    sc = last.scores
    scores = dataclasses.replace(
        sc, response_mask=torch.zeros_like(sc.response_mask), sequence={}, layers={}
    )
    keep = [p for p in range(enc.n_tokens) if p not in responses]
    provenance = {**last.provenance, "kind": CONTEXT_KIND}
    return ScoredText(encoded=enc, scores=scores, provenance=provenance, stored_positions=keep)


def batch_tables(
    lm: LoadedModel,
    items: Sequence[WorkItem],
    units: Sequence[Unit],
    scored: Sequence[Sequence[ScoredText]],
    *,
    upload_id: str | None,
    job_id: str | None,
) -> dict[str, pa.Table]:
    """The store rows of a scored batch of units (turn runs and context runs)."""
    texts: list[ScoredText] = []
    run_ids: list[str] = []
    turn_idx: list[int | None] = []
    item_idx: list[int | None] = []
    ctx_ids: list[str | None] = []
    for unit, results in zip(units, scored, strict=True):
        ctx: str | None = None
        if unit.shared:
            ctx = uuid.uuid4().hex
            texts.append(context_run(results))
            run_ids.append(ctx)
            turn_idx.append(None)
            item_idx.append(None)
            ctx_ids.append(None)
        for (pos, _), res in zip(unit.turns, results, strict=True):
            if ctx is not None:
                res.stored_positions = [
                    p for p, prompt in enumerate(res.encoded.is_prompt) if not prompt
                ]
            texts.append(res)
            run_ids.append(uuid.uuid4().hex)
            turn_idx.append(items[pos].turn_index)
            item_idx.append(items[pos].index)
            ctx_ids.append(ctx)
    return run_tables(
        lm,
        texts,
        run_ids,
        upload_id=upload_id,
        job_id=job_id,
        turn_indices=turn_idx,
        item_indices=item_idx,
        context_run_ids=ctx_ids,
    )


def scored_batches(
    lm: LoadedModel,
    items: Sequence[WorkItem],
    encoded: Sequence[EncodedText],
    *,
    batch_tokens: int,
    upload_id: str | None = None,
    job_id: str | None = None,
    params: ScoringParams | None = None,
    counts: OnePassCounts | None = None,
) -> Iterator[tuple[int, dict[str, pa.Table]]]:
    """Score ``items`` conversation by conversation; yield ``(items done, tables)`` per batch.

    The shared code of the local and the Ray engine. ``counts`` receives the planner's counts.
    """
    units, planned = plan_units(items, encoded)
    if counts is not None:
        counts.add(planned)
    budget = batch_token_budget(lm, batch_tokens)
    for batch in unit_batches(units, budget):
        chosen = [units[i] for i in batch]
        scored = score_units(lm, chosen, params)
        tables = batch_tables(lm, items, chosen, scored, upload_id=upload_id, job_id=job_id)
        yield sum(u.n_items for u in chosen), tables


def batch_token_budget(lm: LoadedModel, default: int) -> int:
    """Padded tokens per forward pass: ``default`` on CPU; on CUDA, sized from free memory.

    Peak activation memory of the head-chunked pass is one decoder block's temporaries per
    token (about ``8 x d_model + 3 x d_ffn`` values: attention projections, residual, the
    gated MLP) plus the kept final states; the logits are bounded by the head chunk. The
    budget is 70 % of the free memory divided by that, never below ``default``.
    """
    if lm.device.type != "cuda" or not torch.cuda.is_available():
        return default
    free, _total = torch.cuda.mem_get_info(lm.device)
    cfg = lm.model.config
    ffn = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
    per_token = (9 * cfg.hidden_size + 3 * ffn) * torch.finfo(lm.compute_dtype).bits // 8
    return max(default, int(free * 0.7) // max(1, per_token))


def concat_tables(parts: Sequence[dict[str, pa.Table]]) -> dict[str, pa.Table]:
    return {name: pa.concat_tables([p[name] for p in parts]) for name in RUN_TABLES}

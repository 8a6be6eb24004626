"""Audits of uploads that carry API logprobs: ``source`` = ``logprobs``, ``model`` or ``both``.

* ``logprobs``: the metrics come from the file's own top-k (:mod:`analysis.topk`); no model is
  loaded, so a server started with ``--no-model`` runs these audits.
* ``model``: the turns are re-scored with a local model, as any transcript.
* ``both``: the local re-score is stored too (a run of its own, without the upload id, linked
  from the logprobs run's provenance ``local_run_id``), and the logprobs run gets the per-token
  ``logprob_disagreement`` = local logprob - API logprob wherever the two tokenizations share
  the token's boundaries (the local pieces' log-probabilities are summed).

An upload keeps the file as given; a Batch API output sent with its input file is kept as one
JSON document ``{"output", "batch_input"}`` under the format ``logprobs+batch``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from tokenprism.backend.audit.ingest import WorkItem
from tokenprism.backend.audit.logprob_runs import store_logprob_runs
from tokenprism.backend.audit.logprobs import (
    LogprobItem,
    detect_logprobs,
    every_turn_has_logprobs,
    parse_logprobs,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.store import schema

if TYPE_CHECKING:
    from tokenprism.backend.store import Store

SOURCES = ("logprobs", "model", "both")
FORMAT = "logprobs"
BATCH_FORMAT = "logprobs+batch"
FORMATS = (FORMAT, BATCH_FORMAT)
# The models column of an upload audited without a model.
NO_MODEL = "(API logprobs)"


def choose_source(text: str, requested: str | None) -> str | None:
    """The source to audit with, or None for a plain transcript (no logprobs, none asked)."""
    if requested is not None and requested not in SOURCES:
        raise UserError(f"unknown source {requested!r}; choose {', '.join(SOURCES)}")
    has = detect_logprobs(text)
    if requested in ("logprobs", "both") and not has:
        raise UserError(f"source={requested} needs a file with logprobs; this one has none")
    if requested is None:
        return "logprobs" if has and every_turn_has_logprobs(text) else None
    return requested if has else None


def pack(text: str, batch_input: str | None) -> tuple[str, str]:
    """``(content, format)`` an upload stores for a logprobs file (and its batch input)."""
    if batch_input is None:
        return text, FORMAT
    return json.dumps({"output": text, "batch_input": batch_input}), BATCH_FORMAT


def items_of(
    content: str, fmt: str, source: str, max_items: int | None = None
) -> list[LogprobItem]:
    """Parse a stored (or about to be stored) logprobs upload."""
    if fmt == BATCH_FORMAT:
        doc = json.loads(content)
        return parse_logprobs(
            doc["output"], source, batch_input=doc["batch_input"], max_items=max_items
        )
    return parse_logprobs(content, source, max_items=max_items)


def disagreement(item: LogprobItem, local: dict[str, Any]) -> np.ndarray:
    """``[n]`` local logprob - API logprob per API token; NaN where boundaries differ.

    ``local`` is a stored local run (``Store.get_run``): its response tokens are located in the
    rendered text at the response's last occurrence.
    """
    n = len(item.tokens)
    out = np.full(n, np.nan)
    start = local["text"].rfind(item.response)
    if start < 0:
        return out
    spans: dict[tuple[int, int], float] = {}
    starts: dict[int, float] = {}
    for t in local["tokens"]:
        a, b = t["char_start"] - start, t["char_end"] - start
        if t["is_prompt"] or a < 0 or b > len(item.response) or t["logprob"] is None:
            continue
        spans[(a, b)] = float(t["logprob"])
        starts[a] = 0.0
    ordered = sorted(spans)
    prev_end = 0
    for j, (a, b) in enumerate(item.offsets):
        if a >= b or a < prev_end:
            prev_end = max(prev_end, b)
            continue  # a piece of a split character: no shared boundary
        prev_end = b
        inside = [s for s in ordered if s[0] >= a and s[1] <= b]
        if inside and inside[0][0] == a and inside[-1][1] == b and a in starts:
            covered = all(x[1] == y[0] for x, y in zip(inside, inside[1:], strict=False))
            if covered:
                out[j] = sum(spans[s] for s in inside) - float(item.logprob[j])
    return out


def _local_runs(store: Store, run_ids: list[str]) -> dict[int, str]:
    """Item index -> run id of the local runs just stored (batches come back length-sorted)."""
    r = schema.runs
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(r.c.item_index, r.c.run_id).where(r.c.run_id.in_(run_ids)))
        return {int(i): str(run) for i, run in rows}


def run_logprob_audit(
    store: Store,
    items: list[LogprobItem],
    *,
    source: str,
    upload_id: str | None,
    job_id: str | None,
    vocab_size: int | None = None,
    rescore: Callable[[list[WorkItem]], list[str]] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Store the logprobs runs of ``items`` (and, for ``both``, the local re-scores).

    ``rescore`` (``source=both``) scores plain chat items with a local model, stores them and
    returns their run ids (the audit's ``score_items`` bound to a model).
    """
    extra: dict[int, dict[str, np.ndarray]] = {}
    local_ids: dict[int, str] = {}
    if source == "both":
        if rescore is None:
            raise UserError("source=both needs a local model")
        stored = rescore([it.work_item() for it in items])
        by_index = _local_runs(store, stored)
        for item in items:
            run_id = by_index[item.index]
            local_ids[item.index] = run_id
            extra[item.index] = {"logprob_disagreement": disagreement(item, store.get_run(run_id))}
    elif source != "logprobs":
        raise UserError(f"run_logprob_audit serves source=logprobs or both, not {source!r}")
    run_ids = store_logprob_runs(
        store,
        items,
        vocab_size=vocab_size,
        upload_id=upload_id,
        job_id=job_id,
        extra=extra,
        local_runs=local_ids,
    )
    if on_progress:
        on_progress(len(items))
    return {"source": source, "runs": len(run_ids), "local_runs": len(local_ids)}

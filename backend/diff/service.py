"""A diff job: inputs (a text, a stored run, a whole upload) -> stored per-token divergences.

Resumable: every run's rows are written with its ``diff_runs`` row in one transaction, and a
resumed job skips the item indices already there. Runs on the local engine (one process, the
model lock held per batch); the Ray engine of audits is not wired in, since a diff of a
135M-parameter model over an upload takes seconds to minutes on one machine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import pyarrow as pa

from tokenprism.analysis.divergence import DIVERGENCE_METRICS, summarize
from tokenprism.backend.diff.core import (
    CrossVocab,
    DiffItem,
    RunDiff,
    capture_logits,
    compare_batch,
    same_vocabulary,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.encoding import encode_text
from tokenprism.backend.scoring.runner import score_batch
from tokenprism.backend.store import Store
from tokenprism.backend.store.diffs import (
    create_diff,
    diff_run_rows,
    diff_tokens,
    diff_values,
    diffed_items,
    get_diff_header,
    most_moved_tokens,
    run_tokens,
    save_diff_run,
    set_diff_models,
    set_diff_summary,
    upload_run_ids,
)

MAX_TEXT_CHARS = 200_000
BATCH_TOKENS = 4096  # tokens per batched pass: bounds the [batch, seq, vocab] logits of A and B
BATCH_ROWS = 16
MOST_MOVED = 10


class Cancelled(Exception):
    """The job was asked to stop (between batches)."""


def check_source(source: dict[str, Any]) -> dict[str, Any]:
    """Validate ``{"kind": "text"|"run"|"upload", ...}``; returns it normalised."""
    kind = source.get("kind")
    if kind == "text":
        text = source.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UserError("diff text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise UserError(f"diff text over {MAX_TEXT_CHARS} characters")
        return {"kind": "text", "text": text}
    if kind in ("run", "upload"):
        key = f"{kind}_id"
        value = source.get(key)
        if not isinstance(value, str) or not value:
            raise UserError(f"a {kind} diff needs {key}")
        return {"kind": kind, key: value}
    raise UserError("give exactly one input: a text, a run id or an upload id")


def source_model(store: Store, source: dict[str, Any]) -> str | None:
    """The model a stored run was scored by (model A of a run diff), else None."""
    if source["kind"] == "run":
        return str(run_tokens(store, source["run_id"])["model"])
    return None


def start_diff(
    store: Store,
    lm_a: LoadedModel,
    lm_b: LoadedModel,
    source: dict[str, Any],
    *,
    job_id: str | None = None,
) -> str:
    params = {"batch_tokens": BATCH_TOKENS, "chunk_positions": 64}
    return create_diff(
        store,
        job_id=job_id,
        model_a=lm_a.provenance(),
        model_b=lm_b.provenance(),
        source=source,
        params=params,
    )


def _stored_items(store: Store, lm_a: LoadedModel, source: dict[str, Any]) -> list[str]:
    if source["kind"] == "run":
        return [source["run_id"]]
    run_ids = upload_run_ids(store, source["upload_id"], lm_a.name)
    if not run_ids:
        raise UserError(
            f"upload {source['upload_id']!r} has no runs scored by {lm_a.name!r}; "
            "audit it with that model first"
        )
    return run_ids


def _batches(lengths: list[tuple[int, int]]) -> Iterator[list[int]]:
    """Item indices in consecutive batches of at most BATCH_TOKENS tokens / BATCH_ROWS rows."""
    batch: list[int] = []
    width = 0
    for index, n in lengths:
        if batch and (max(width, n) * (len(batch) + 1) > BATCH_TOKENS or len(batch) >= BATCH_ROWS):
            yield batch
            batch, width = [], 0
        batch.append(index)
        width = max(width, n)
    if batch:
        yield batch


def _save(store: Store, diff_id: str, index: int, rd: RunDiff) -> None:
    positions, metrics, values = [], [], []
    for name in DIVERGENCE_METRICS:
        column = rd.values[name]
        keep = np.flatnonzero(np.isfinite(column))
        positions.extend(keep.tolist())
        metrics.extend([name] * len(keep))
        values.extend(column[keep].tolist())
    table = pa.table(
        {
            "position": pa.array(positions, pa.int32()),
            "metric": pa.array(metrics, pa.string()),
            "value": pa.array(values, pa.float64()),
        }
    )
    notes = pa.table(
        {
            "position": pa.array(list(rd.notes), pa.int32()),
            "reason": pa.array(list(rd.notes.values()), pa.string()),
        }
    )
    run = {
        "run_id": rd.run_id,
        "item_index": index,
        "same_tokens": rd.same_tokens,
        "n_tokens": rd.n_tokens,
        "n_compared": rd.n_compared,
    }
    save_diff_run(store, diff_id, run, table, notes)


def _text_item(
    store: Store, lm_a: LoadedModel, text: str, job_id: str | None
) -> tuple[DiffItem, list[Any]]:
    """Score a new text with A (its one pass, stored as a run) and keep A's logits."""
    enc = encode_text(lm_a.tokenizer, text, context_length=lm_a.context_length)
    kept, on_forward = capture_logits()
    scored = score_batch(lm_a, [enc], on_forward=on_forward)
    run_id = store.save_runs(lm_a, scored, job_id=job_id)[0]
    item = DiffItem(run_id, enc.text, list(enc.input_ids), list(enc.offsets), list(enc.is_prompt))
    return item, kept


def run_diff(
    store: Store,
    lm_a: LoadedModel,
    lm_b: LoadedModel,
    diff_id: str,
    source: dict[str, Any],
    *,
    job_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_lock: threading.Lock | None = None,
) -> dict[str, Any]:
    """Compute and store every item of the diff not stored yet; return (and store) its summary."""
    lock = model_lock if model_lock is not None else nullcontext()
    done = diffed_items(store, diff_id)
    cross = None if same_vocabulary(lm_a, lm_b) else CrossVocab.build(lm_a, lm_b)
    if source["kind"] == "text":
        total = 1
        if 0 not in done:
            with lock:
                item, logits_a = _text_item(store, lm_a, source["text"], job_id)
                (rd,) = compare_batch(lm_a, lm_b, [item], logits_a=logits_a, cross=cross)
            _save(store, diff_id, 0, rd)
    else:
        run_ids = _stored_items(store, lm_a, source)
        total = len(run_ids)
        todo = [i for i in range(total) if i not in done]
        tokens = {i: run_tokens(store, run_ids[i]) for i in todo}
        for bad in (t for t in tokens.values() if t["model"] != lm_a.name):
            raise UserError(
                f"run {bad['run_id']} was scored by {bad['model']!r}; diff it with that model as A"
            )
        finished = total - len(todo)
        for batch in _batches([(i, len(tokens[i]["input_ids"])) for i in todo]):
            if should_stop is not None and should_stop():
                raise Cancelled
            items = [
                DiffItem(t["run_id"], t["text"], t["input_ids"], t["offsets"], t["is_prompt"])
                for t in (tokens[i] for i in batch)
            ]
            with lock:
                results = compare_batch(lm_a, lm_b, items, cross=cross)
            for index, rd in zip(batch, results, strict=True):
                _save(store, diff_id, index, rd)
            finished += len(batch)
            if progress is not None:
                progress(finished, total)
    summary = diff_summary(store, diff_id)
    set_diff_summary(store, diff_id, summary)
    return summary


def diff_summary(store: Store, diff_id: str) -> dict[str, Any]:
    """Mean / p90 / p99 / max KL, top-1 agreement over response tokens; the most-moved tokens."""
    values = diff_values(store, diff_id)
    summary: dict[str, Any] = dict(
        summarize(
            np.array(values["kl"]),
            np.array(values["js"]),
            np.array(values["delta_logprob"]),
            np.array(values["top1_agree"]),
        )
    )
    summary["most_moved"] = most_moved_tokens(store, diff_id, limit=MOST_MOVED)
    return summary


def _run_summary(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    resp = [t for t in tokens if not t["is_prompt"]]

    def col(name: str) -> np.ndarray:
        return np.array([np.nan if t[name] is None else t[name] for t in resp], dtype=float)

    return dict(summarize(col("kl"), col("js"), col("delta_logprob"), col("top1_agree")))


def diff_result(
    store: Store, diff_id: str, *, max_runs: int = 50, offset: int = 0, tokens: bool = True
) -> dict[str, Any]:
    """The ``diff --json`` shape: ``{"diff_id", "a", "b", "summary", "runs": [...]}``."""
    head = get_diff_header(store, diff_id)
    runs = []
    for row in diff_run_rows(store, diff_id, limit=max_runs, offset=offset):
        toks = diff_tokens(store, diff_id, row["run_id"])
        for t in toks:
            t["prob_a"] = None if t["logprob_a"] is None else float(np.exp(t["logprob_a"]))
            t["prob_b"] = None if t["logprob_b"] is None else float(np.exp(t["logprob_b"]))
        entry = {**row, "summary": _run_summary(toks)}
        if tokens:
            entry["tokens"] = toks
        runs.append(entry)
    prov = head["provenance"]
    return {
        "diff_id": diff_id,
        "a": {"id": head["model_a"], "revision": head["model_a_revision"], **prov["a"]},
        "b": {"id": head["model_b"], "revision": head["model_b_revision"], **prov["b"]},
        "source": head["source"],
        "job_id": head["job_id"],
        "created_at": head["created_at"],
        "summary": head["summary"],
        "runs": runs,
    }


def run_diff_job(
    store: Store,
    get_model: Callable[[str], LoadedModel],
    job: dict[str, Any],
    live: Any,
    model_lock: threading.Lock,
    report: Callable[[int], None],
) -> dict[str, Any]:
    """The ``diff`` job of the job manager: params ``diff_id, model_a, model_b, source``.

    ``live`` has ``total``, ``done`` and ``cancel`` (a threading.Event); ``report(done)``
    records progress. Raises :class:`Cancelled` when cancelled between batches.
    """
    params = job["params"]
    lm_a, lm_b = get_model(params["model_a"]), get_model(params["model_b"])
    set_diff_models(store, params["diff_id"], lm_a.provenance(), lm_b.provenance())

    def progress(done: int, total: int) -> None:
        live.total, live.done = total, done
        report(done)

    summary = run_diff(
        store,
        lm_a,
        lm_b,
        params["diff_id"],
        params["source"],
        job_id=job["job_id"],
        progress=progress,
        should_stop=live.cancel.is_set,
        model_lock=model_lock,
    )
    return {"diff_id": params["diff_id"], "kl_mean": summary.get("kl_mean")}

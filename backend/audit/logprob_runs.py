"""Runs from API logprobs: metrics from the top-k (no model loaded) stored like any other run.

A run from logprobs has the response's tokens only (the API gives no prompt tokens), character
offsets into the response (``runs.text`` = the response), ``token_id`` -1 (APIs give strings,
not ids), the core columns ``logprob``/``prob``/``rank``/``entropy`` (``entropy`` = the top-k
renormalised entropy, ``rank`` NULL outside the top-k) and the other metrics of
:mod:`analysis.topk` in ``token_metrics``. Metrics that need logits over the full vocabulary or
hidden states (kurtosis, GLTR buckets, effective rank, probes, ...) are absent, not estimated;
provenance says ``source=logprobs``, k and the vocabulary size the upper bound assumed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from tokenprism.analysis.topk import (
    sequence_metrics,
    topk_token_metrics,
    vocab_size_for,
    window_mean,
)
from tokenprism.backend.audit.logprobs import LogprobItem
from tokenprism.backend.display import visible_whitespace
from tokenprism.backend.store import Store
from tokenprism.backend.store.tables import CORE_TOKEN_METRICS, model_key

API_SOURCE = "api-logprobs"
WINDOW = 4  # ARES default window, as for local runs
ABSENT = (
    "kurtosis",
    "gltr_bucket",
    "step_first_surprisal",
    "effective_rank",
    "erv",
    "era",
    "probe",
)


def api_model_record(name: str | None) -> dict[str, Any]:
    """The ``models`` row of a model known only by the name its API responses carry."""
    return {
        "name": name or "unknown (API logprobs)",
        "source": API_SOURCE,
        "revision": "api",
        "label": None,
        "architecture": None,
        "context_length": None,
    }


def item_metrics(item: LogprobItem, vocab_size: int) -> dict[str, np.ndarray]:
    """Every token metric of one item (``[n]`` float64 arrays, NaN where absent)."""
    tok = topk_token_metrics(item.logprob, item.top_logprobs, item.in_topk, vocab_size)
    tok["window_entropy"] = window_mean(tok["entropy"], WINDOW)
    tok["window_entropy_lower"] = window_mean(tok["entropy_lower"], WINDOW)
    tok["window_entropy_upper"] = window_mean(tok["entropy_upper"], WINDOW)
    return tok


def _prompt_of(messages: list[dict[str, str]]) -> tuple[str | None, str | None]:
    """(last user message, system prompt) of the messages before the assistant turn."""
    users = [m["content"] for m in messages[:-1] if m["role"] == "user"]
    systems = [m["content"] for m in messages[:-1] if m["role"] == "system"]
    return (users[-1] if users else None), (systems[0] if systems else None)


def _token_table(run_id: str, item: LogprobItem, tok: dict[str, np.ndarray]) -> pa.Table:
    n = len(item.tokens)
    rank = tok["rank"]
    top_probs = np.exp(item.top_logprobs)
    structs, offsets = [], [0]
    for i in range(n):
        for j, text in enumerate(item.top_tokens[i]):
            structs.append({"token_id": -1, "text": text, "prob": float(top_probs[i, j])})
        offsets.append(len(structs))
    struct_type = pa.struct(
        [("token_id", pa.int32()), ("text", pa.string()), ("prob", pa.float64())]
    )
    top_k = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(structs, type=struct_type)
    )
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "position": pa.array(np.arange(n, dtype=np.int32)),
            "token_id": pa.array(np.full(n, -1, dtype=np.int32)),
            "text": pa.array(item.tokens, pa.string()),
            "display": pa.array([visible_whitespace(t) for t in item.tokens], pa.string()),
            "char_start": pa.array([o[0] for o in item.offsets], pa.int32()),
            "char_end": pa.array([o[1] for o in item.offsets], pa.int32()),
            "is_prompt": pa.array(np.zeros(n, dtype=bool)),
            "logprob": pa.array(tok["logprob"], pa.float64()),
            "prob": pa.array(tok["prob"], pa.float64()),
            "rank": pa.array(np.nan_to_num(rank, nan=-1).astype(np.int32), mask=np.isnan(rank)),
            "entropy": pa.array(tok["entropy"], pa.float64(), from_pandas=True),
            "top_k": top_k,
        }
    )


def _alternative_table(run_id: str, item: LogprobItem) -> pa.Table:
    rows: dict[str, list[Any]] = {"position": [], "alt_rank": [], "text": [], "prob": []}
    for i, texts in enumerate(item.top_tokens):
        for j, text in enumerate(texts):
            rows["position"].append(i)
            rows["alt_rank"].append(j + 1)
            rows["text"].append(text)
            rows["prob"].append(float(np.exp(item.top_logprobs[i, j])))
    count = len(rows["text"])
    return pa.table(
        {
            "run_id": pa.array([run_id] * count, pa.string()),
            "position": pa.array(rows["position"], pa.int32()),
            "alt_rank": pa.array(rows["alt_rank"], pa.int16()),
            "token_id": pa.array([-1] * count, pa.int32()),
            "text": pa.array(rows["text"], pa.string()),
            "prob": pa.array(rows["prob"], pa.float64()),
        }
    )


def _long_table(run_id: str, values: dict[str, np.ndarray]) -> pa.Table:
    """``token_metrics`` rows: every non-core metric at every position where it has a value."""
    names, pos, vals = [], [], []
    for name, arr in values.items():
        if name in CORE_TOKEN_METRICS:
            continue
        keep = np.flatnonzero(~np.isnan(arr))
        names += [name] * len(keep)
        pos.append(keep.astype(np.int32))
        vals.append(arr[keep])
    return pa.table(
        {
            "run_id": pa.array([run_id] * len(names), pa.string()),
            "position": pa.array(np.concatenate(pos) if pos else [], pa.int32()),
            "metric": pa.array(names, pa.string()),
            "value": pa.array(np.concatenate(vals) if vals else [], pa.float64()),
        }
    )


def _run_row(
    run_id: str, item: LogprobItem, key: str, provenance: dict[str, Any], ids: dict[str, Any]
) -> dict[str, Any]:
    prompt, system = _prompt_of(item.messages)
    n = len(item.tokens)
    return {
        "run_id": run_id,
        "model_key": key,
        "kind": "chat",
        "prompt": prompt,
        "response": item.response,
        "text": item.response,
        "system_prompt": system,
        "messages": json.dumps(item.messages),
        "n_tokens": n,
        "n_response_tokens": n,
        "upload_id": ids.get("upload_id"),
        "job_id": ids.get("job_id"),
        "group_id": None,
        "turn_index": item.turn_index,
        "item_index": item.index,
        "provenance": json.dumps(provenance),
        "created_at": datetime.now(UTC).replace(tzinfo=None),
    }


def provenance_of(item: LogprobItem, vocab_size: int | None) -> dict[str, Any]:
    """How a logprobs run was made: source, format, k and the vocabulary size assumed."""
    size, how = vocab_size_for(item.model, vocab_size)
    return {
        "source": "logprobs",
        "format": item.kind,
        "model": item.model,
        "k": item.k,
        "vocab_size": size,
        "vocab_size_from": how,
        "entropy": "top-k renormalised; entropy_lower / entropy_upper bound the true entropy",
        "absent": list(ABSENT),
    }


def logprob_tables(
    items: Sequence[LogprobItem],
    run_ids: Sequence[str],
    *,
    vocab_size: int | None = None,
    upload_id: str | None = None,
    job_id: str | None = None,
    extra: dict[str, dict[str, np.ndarray]] | None = None,
    local_runs: dict[str, str | None] | None = None,
) -> dict[str, pa.Table]:
    """Every row storing ``items`` (one model) writes; ``extra`` adds token metrics by run id."""
    key = model_key(api_model_record(items[0].model))
    runs: list[dict[str, Any]] = []
    parts: dict[str, list[pa.Table]] = {n: [] for n in ("tokens", "token_metrics", "alternatives")}
    seq_rows: dict[str, list[Any]] = {"run_id": [], "metric": [], "value": []}
    ids = {"upload_id": upload_id, "job_id": job_id}
    for run_id, item in zip(run_ids, items, strict=True):
        prov = provenance_of(item, vocab_size)
        if (local_runs or {}).get(run_id):
            prov["local_run_id"] = (local_runs or {})[run_id]
        tok = item_metrics(item, prov["vocab_size"])
        tok.update((extra or {}).get(run_id, {}))
        runs.append(_run_row(run_id, item, key, prov, ids))
        parts["tokens"].append(_token_table(run_id, item, tok))
        parts["token_metrics"].append(_long_table(run_id, tok))
        parts["alternatives"].append(_alternative_table(run_id, item))
        seq = sequence_metrics(tok)
        if "logprob_disagreement" in tok and np.isfinite(tok["logprob_disagreement"]).any():
            seq["mean_logprob_disagreement"] = float(np.nanmean(tok["logprob_disagreement"]))
        for name, value in seq.items():
            seq_rows["run_id"].append(run_id)
            seq_rows["metric"].append(name)
            seq_rows["value"].append(value if np.isfinite(value) else None)
    runs_table = pa.Table.from_pylist(runs)
    empty = {name: pa.table({}) for name in ("layer_metrics", "claims", "claim_metrics")}
    return {
        "runs": runs_table,
        **{name: pa.concat_tables(found) for name, found in parts.items()},
        "sequence_metrics": pa.table(
            {
                "run_id": pa.array(seq_rows["run_id"], pa.string()),
                "metric": pa.array(seq_rows["metric"], pa.string()),
                "value": pa.array(seq_rows["value"], pa.float64()),
            }
        ),
        **empty,
    }


def store_logprob_runs(
    store: Store,
    items: Sequence[LogprobItem],
    *,
    vocab_size: int | None = None,
    upload_id: str | None = None,
    job_id: str | None = None,
    extra: dict[int, dict[str, np.ndarray]] | None = None,
    local_runs: dict[int, str] | None = None,
) -> list[str]:
    """Store every item as a run (one transaction per model name); the run ids, in item order.

    ``extra`` maps an item index to more token metrics (``source=both``'s disagreement) and
    ``local_runs`` to the run id of its local re-score (kept in provenance).
    """
    run_ids = [uuid.uuid4().hex for _ in items]
    by_model: dict[str | None, list[int]] = {}
    for i, item in enumerate(items):
        by_model.setdefault(item.model, []).append(i)
    for model, indices in by_model.items():
        chosen = [items[i] for i in indices]
        chosen_ids = [run_ids[i] for i in indices]
        extras = {run_ids[i]: (extra or {}).get(items[i].index, {}) for i in indices}
        tables = logprob_tables(
            chosen,
            chosen_ids,
            vocab_size=vocab_size,
            upload_id=upload_id,
            job_id=job_id,
            extra=extras,
            local_runs={run_ids[i]: (local_runs or {}).get(items[i].index) for i in indices},
        )
        store.ingest_tables(api_model_record(model), tables)
    return run_ids

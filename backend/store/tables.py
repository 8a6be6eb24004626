"""Scored texts as Arrow tables, one per store table, ready for a bulk insert or a Parquet shard.

The local engine inserts these tables straight into DuckDB; the Ray engine writes them as
Parquet shards on its workers and the driver inserts the same tables later. One builder for
both keeps the two engines' stored rows identical.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import tokenprism.backend.store.schema as schema
from tokenprism.backend.display import visible_whitespace
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.runner import ScoredText

# Token metrics with their own column in ``tokens``; all others go to ``token_metrics``.
CORE_TOKEN_METRICS = ("logprob", "prob", "rank", "entropy")
# Tables a batch of scored texts fills, in insert order.
RUN_TABLES = ("runs", *schema.BULK_TABLES)
MODEL_FIELDS = ("name", "source", "revision", "label", "architecture", "context_length")


def model_record(lm: LoadedModel) -> dict[str, Any]:
    """The ``models`` row of a loaded model (without its key and creation time)."""
    return {
        "name": lm.name,
        "source": lm.source,
        "revision": lm.revision,
        "label": lm.label,
        "architecture": type(lm.model).__name__,
        "context_length": lm.context_length,
    }


def model_key(record: dict[str, Any]) -> str:
    """Stable key of a model: the same name, source and revision share one ``models`` row."""
    text = f"{record['name']}|{record['source']}|{record['revision']}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_tables(
    lm: LoadedModel,
    scored: Sequence[ScoredText],
    run_ids: Sequence[str],
    *,
    upload_id: str | None = None,
    job_id: str | None = None,
    group_id: str | None = None,
    turn_indices: Sequence[int | None] | None = None,
    item_indices: Sequence[int | None] | None = None,
    created_at: datetime | None = None,
    context_run_ids: Sequence[str | None] | None = None,
) -> dict[str, pa.Table]:
    """Every row that storing ``scored`` under ``run_ids`` writes, one Arrow table per table.

    Tables a batch does not fill (no claims, say) are present with zero rows, so a shard's
    schema never depends on its content.
    """
    if not scored:
        raise ValueError("run_tables needs at least one scored text")
    created = (created_at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    key = model_key(model_record(lm))
    n = len(scored)
    runs = pa.table(
        {
            "run_id": pa.array(list(run_ids), pa.string()),
            "model_key": pa.array([key] * n, pa.string()),
            "kind": pa.array([s.encoded.kind for s in scored], pa.string()),
            "prompt": pa.array([s.encoded.prompt for s in scored], pa.string()),
            "response": pa.array([s.encoded.response for s in scored], pa.string()),
            "text": pa.array([s.encoded.text for s in scored], pa.string()),
            "system_prompt": pa.array([s.encoded.system_prompt for s in scored], pa.string()),
            "messages": pa.array(
                [
                    json.dumps(s.encoded.messages) if s.encoded.messages is not None else None
                    for s in scored
                ],
                pa.string(),
            ),
            "n_tokens": pa.array([s.encoded.n_tokens for s in scored], pa.int32()),
            "n_response_tokens": pa.array(
                [int(s.scores.response_mask.sum()) for s in scored], pa.int32()
            ),
            "upload_id": pa.array([upload_id] * n, pa.string()),
            "job_id": pa.array([job_id] * n, pa.string()),
            "group_id": pa.array([group_id] * n, pa.string()),
            "turn_index": pa.array(
                list(turn_indices) if turn_indices is not None else [None] * n, pa.int32()
            ),
            "item_index": pa.array(
                list(item_indices) if item_indices is not None else [None] * n, pa.int32()
            ),
            "provenance": pa.array([json.dumps(s.provenance) for s in scored], pa.string()),
            "created_at": pa.array([created] * n, pa.timestamp("us")),
            "context_run_id": pa.array(
                list(context_run_ids) if context_run_ids is not None else [None] * n, pa.string()
            ),
        }
    )
    parts: dict[str, list[pa.Table]] = {name: [] for name in schema.BULK_TABLES}
    for run_id, item in zip(run_ids, scored, strict=True):
        for name, table in _bulk_rows(run_id, item, lm).items():
            if item.stored_positions is not None and "position" in table.column_names:
                keep = pa.array(item.stored_positions, pa.int32())
                table = table.filter(pc.is_in(table.column("position"), value_set=keep))
            parts[name].append(table)
    return {"runs": runs, **{name: pa.concat_tables(found) for name, found in parts.items()}}


def _bulk_rows(run_id: str, item: ScoredText, lm: LoadedModel) -> dict[str, pa.Table]:
    """One scored text's rows of every bulk table."""
    sc = item.scores
    positions = np.arange(item.encoded.n_tokens, dtype=np.int32)
    tok = {k: v.numpy() for k, v in sc.token.items()}
    alternatives, top_k = _alternative_rows(run_id, item, lm, positions)
    claims, claim_values = _claim_rows(run_id, item)
    return {
        # the alternatives nested per token too: reads of whole runs need no aggregation
        "tokens": _token_rows(run_id, item, positions, tok).append_column("top_k", top_k),
        "token_metrics": _token_metric_rows(run_id, positions, tok),
        "alternatives": alternatives,
        "sequence_metrics": _sequence_rows(run_id, item),
        "layer_metrics": _layer_rows(run_id, item),
        "claims": claims,
        "claim_metrics": claim_values,
    }


def _token_rows(
    run_id: str, item: ScoredText, positions: np.ndarray, tok: dict[str, np.ndarray]
) -> pa.Table:
    """``tokens`` without its ``top_k`` column: the text and the core metrics of each token."""
    enc = item.encoded
    n = enc.n_tokens
    rank = tok["rank"]
    return pa.table(
        {
            "run_id": pa.array([run_id] * n),
            "position": positions,
            "token_id": np.asarray(enc.input_ids, dtype=np.int32),
            "text": enc.token_texts,
            "display": [visible_whitespace(t) for t in enc.token_texts],
            "char_start": np.asarray([o[0] for o in enc.offsets], dtype=np.int32),
            "char_end": np.asarray([o[1] for o in enc.offsets], dtype=np.int32),
            "is_prompt": np.asarray(enc.is_prompt, dtype=bool),
            "logprob": pa.array(tok["logprob"].astype(np.float64), from_pandas=True),
            "prob": pa.array(tok["prob"].astype(np.float64), from_pandas=True),
            "rank": pa.array(rank.astype(np.int32), mask=rank < 0),
            "entropy": pa.array(tok["entropy"].astype(np.float64), from_pandas=True),
        }
    )


def _token_metric_rows(run_id: str, positions: np.ndarray, tok: dict[str, np.ndarray]) -> pa.Table:
    """``token_metrics``: every non-core token metric, one row per token that has a value."""
    names, values, pos = [], [], []
    for name, arr in tok.items():
        if name in CORE_TOKEN_METRICS:
            continue
        vals = arr.astype(np.float64)
        if np.issubdtype(arr.dtype, np.integer):
            vals[arr < 0] = np.nan
        keep = ~np.isnan(vals)
        names.append(np.full(int(keep.sum()), name, dtype=object))
        values.append(vals[keep])
        pos.append(positions[keep])
    metric_names = np.concatenate(names) if names else np.array([], dtype=object)
    return pa.table(
        {
            "run_id": pa.array([run_id] * len(metric_names), pa.string()),
            "position": pa.array(np.concatenate(pos) if pos else [], pa.int32()),
            "metric": pa.array(metric_names, pa.string()),
            "value": pa.array(np.concatenate(values) if values else [], pa.float64()),
        }
    )


def _alternative_rows(
    run_id: str, item: ScoredText, lm: LoadedModel, positions: np.ndarray
) -> tuple[pa.Table, pa.ListArray]:
    """``alternatives`` (one row per top-k entry) and the same entries as the ``tokens`` table's
    nested ``top_k`` column (one list per token)."""
    sc = item.scores
    n = item.encoded.n_tokens
    ids = sc.top_ids.numpy()
    probs = sc.top_probs.numpy().astype(np.float64)
    valid = ids >= 0
    k = ids.shape[1] if ids.ndim == 2 else 0
    alt_pos = np.repeat(positions, k).reshape(n, k)[valid]
    alt_rank = np.tile(np.arange(1, k + 1, dtype=np.int16), n).reshape(n, k)[valid]
    alt_ids = ids[valid]
    vocab = lm.vocab_array
    alt_id_arr = pa.array(alt_ids, pa.int32())
    alt_text_arr = pa.array(vocab[alt_ids], pa.string())
    alt_prob_arr = pa.array(probs[valid], pa.float64())
    alternatives = pa.table(
        {
            "run_id": pa.array([run_id] * len(alt_ids), pa.string()),
            "position": pa.array(alt_pos, pa.int32()),
            "alt_rank": pa.array(alt_rank, pa.int16()),
            "token_id": alt_id_arr,
            "text": alt_text_arr,
            "prob": alt_prob_arr,
        }
    )
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    top_k = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.StructArray.from_arrays(
            [alt_id_arr, alt_text_arr, alt_prob_arr], names=["token_id", "text", "prob"]
        ),
    )
    return alternatives, top_k


def _sequence_rows(run_id: str, item: ScoredText) -> pa.Table:
    """``sequence_metrics``: one row per sequence metric."""
    sequence = item.scores.sequence
    names = list(sequence)
    return pa.table(
        {
            "run_id": pa.array([run_id] * len(names), pa.string()),
            "metric": pa.array(names, pa.string()),
            "value": pa.array([float(sequence[s]) for s in names], pa.float64()),
        }
    )


def _layer_rows(run_id: str, item: ScoredText) -> pa.Table:
    """``layer_metrics``: one row per layer of every layer metric."""
    rows: dict[str, list[Any]] = {"layer": [], "metric": [], "value": []}
    for name, layer_values in item.scores.layers.items():
        per_layer = layer_values.double().tolist()
        rows["layer"] += list(range(len(per_layer)))
        rows["metric"] += [name] * len(per_layer)
        rows["value"] += per_layer
    return pa.table(
        {
            "run_id": pa.array([run_id] * len(rows["layer"]), pa.string()),
            "layer": pa.array(rows["layer"], pa.int32()),
            "metric": pa.array(rows["metric"], pa.string()),
            "value": pa.array(rows["value"], pa.float64()),
        }
    )


def _claim_rows(run_id: str, item: ScoredText) -> tuple[pa.Table, pa.Table]:
    rows: dict[str, list[Any]] = {
        k: []
        for k in ("claim_index", "text", "char_start", "char_end", "position_start")
        + ("position_end", "n_tokens")
    }
    values: dict[str, list[Any]] = {"claim_index": [], "metric": [], "value": []}
    for c in item.claims:
        rows["claim_index"].append(c.claim.index)
        rows["text"].append(c.claim.text)
        rows["char_start"].append(c.claim.char_start)
        rows["char_end"].append(c.claim.char_end)
        rows["position_start"].append(min(c.positions) if c.positions else None)
        rows["position_end"].append(max(c.positions) if c.positions else None)
        rows["n_tokens"].append(len(c.positions))
        for name, value in c.metrics.items():
            values["claim_index"].append(c.claim.index)
            values["metric"].append(name)
            values["value"].append(None if value != value else float(value))
    claims = pa.table(
        {
            "run_id": pa.array([run_id] * len(rows["text"]), pa.string()),
            "claim_index": pa.array(rows["claim_index"], pa.int32()),
            "text": pa.array(rows["text"], pa.string()),
            "char_start": pa.array(rows["char_start"], pa.int32()),
            "char_end": pa.array(rows["char_end"], pa.int32()),
            "position_start": pa.array(rows["position_start"], pa.int32()),
            "position_end": pa.array(rows["position_end"], pa.int32()),
            "n_tokens": pa.array(rows["n_tokens"], pa.int32()),
        }
    )
    claim_values = pa.table(
        {
            "run_id": pa.array([run_id] * len(values["metric"]), pa.string()),
            "claim_index": pa.array(values["claim_index"], pa.int32()),
            "metric": pa.array(values["metric"], pa.string()),
            "value": pa.array(values["value"], pa.float64()),
        }
    )
    return claims, claim_values

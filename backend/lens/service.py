"""Lens and attribution of stored runs: bounds, computation, storage, reading back.

A run's tokens come from the ``tokens`` table, so the lens and attributions see exactly the ids
that were scored. Results go to the v8 tables: ``lens_layers`` (one row per position and
layer; the per-token ``decided_layer`` in ``token_metrics`` and the per-layer ``lens_kl_final``
in ``layer_metrics``), ``attributions`` (one row per run, target and method, replaced when
recomputed) and ``attribution_values`` (one row per input position), all queryable in SQL.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
import torch

import tokenprism.backend.store.schema as schema
from tokenprism.backend.errors import UserError
from tokenprism.backend.lens.compute import (
    BASELINES,
    METHODS,
    RULES,
    Target,
    attribute,
    block_contributions,
    run_lens,
    top_alternative,
)
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.store import Store
from tokenprism.backend.store.diffs import run_tokens as stored_run_tokens

MAX_LENS_TOKENS = 4096  # lens of longer runs would hold L x T x k top-k rows per request
SYNC_LENS_TOKENS = 256  # the API computes shorter runs in the request, longer ones in a job
MAX_ATTR_TOKENS = 1024  # inputs of one attribution (IG holds steps x inputs activations)
MAX_STEPS = 256
MAX_SPAN = 32
SYNC_ATTR_WORK = 64 * 256  # steps x input tokens answered in the request; more is a job
MAX_READ_POSITIONS = 1024  # positions of a lens returned by one read
TOP_K = 5


@dataclass
class RunTokens:
    """What the lens needs of a stored run."""

    run_id: str
    model: str
    revision: str
    ids: list[int]
    texts: list[str]
    is_prompt: list[bool]


def run_tokens(store: Store, run_id: str) -> RunTokens:
    """The model and whole token sequence of a stored run (a one-pass audit turn's context
    included, see :func:`store.diffs.run_tokens`); :class:`UserError` when it does not exist."""
    run = stored_run_tokens(store, run_id)
    return RunTokens(
        run_id, run["model"], run["revision"], run["input_ids"], run["texts"], run["is_prompt"]
    )


def check_model(run: RunTokens, lm: LoadedModel) -> None:
    """Refuse a model whose weights differ from the run's: its lens would explain another
    model."""
    if lm.revision != run.revision:
        raise UserError(
            f"run {run.run_id} was scored with {run.model} revision {run.revision}; the loaded "
            f"model has revision {lm.revision}"
        )


def check_lens(run: RunTokens) -> None:
    if len(run.ids) < 2:
        raise UserError(f"run {run.run_id} has {len(run.ids)} token(s); the lens needs two")
    if len(run.ids) > MAX_LENS_TOKENS:
        raise UserError(
            f"run {run.run_id} has {len(run.ids)} tokens; the lens is bounded at {MAX_LENS_TOKENS}"
        )


def compute_lens(lm: LoadedModel, store: Store, run: RunTokens) -> dict[str, Any]:
    """Compute and store the lens of ``run``; return a summary."""
    check_lens(run)
    check_model(run, lm)
    result = run_lens(lm, torch.tensor(run.ids), top_k=TOP_K)
    n_layers, n_pos = result.rank.shape
    positions = np.tile(np.arange(1, n_pos + 1, dtype=np.int32), n_layers)
    layers = np.repeat(np.arange(n_layers, dtype=np.int32), n_pos)
    vocab = lm.vocab_array
    top_ids = result.top_ids.reshape(-1, result.top_ids.shape[-1]).cpu().numpy()
    top_probs = result.top_probs.reshape(-1, result.top_probs.shape[-1]).cpu().numpy()
    top_k = [
        [
            {"token_id": int(i), "text": str(vocab[i]) if i < len(vocab) else "", "prob": float(p)}
            for i, p in zip(ids, probs, strict=True)
        ]
        for ids, probs in zip(top_ids, top_probs, strict=True)
    ]
    rows = pa.table(
        {
            "run_id": pa.array([run.run_id] * len(positions), pa.string()),
            "position": pa.array(positions, pa.int32()),
            "layer": pa.array(layers, pa.int32()),
            "rank": pa.array(result.rank.reshape(-1).cpu().numpy().astype(np.int32), pa.int32()),
            "prob": pa.array(result.prob.reshape(-1).double().cpu().numpy(), pa.float64()),
            "kl_final": pa.array(result.kl_final.reshape(-1).double().cpu().numpy(), pa.float64()),
            "top_k": pa.array(
                top_k,
                pa.list_(
                    pa.struct(
                        [("token_id", pa.int32()), ("text", pa.string()), ("prob", pa.float64())]
                    )
                ),
            ),
        }
    )
    decided = np.full(len(run.ids), np.nan)
    decided[1:] = result.decided_layer.cpu().numpy().astype(np.float64)
    decided[decided < 0] = np.nan  # never decided: no value
    layer_kl = result.layer_kl.double().cpu().numpy()
    _store_lens(store, run.run_id, rows, layer_kl)
    store.replace_metrics(
        run.run_id,
        token={"decided_layer": decided},
        sequence={},
        claims={},
        provenance_key="lens",
        provenance={"layers": n_layers, "top_k": TOP_K, "model_revision": lm.revision},
    )
    return {
        "run_id": run.run_id,
        "layers": n_layers,
        "positions": n_pos,
        "decided": int(np.isfinite(decided).sum()),
    }


def _store_lens(store: Store, run_id: str, rows: pa.Table, layer_kl: np.ndarray) -> None:
    ll, lm_ = schema.lens_layers, schema.layer_metrics
    with store.writing() as conn:
        conn.execute(ll.delete().where(ll.c.run_id == run_id))
        conn.execute(lm_.delete().where(lm_.c.run_id == run_id, lm_.c.metric == "lens_kl_final"))
        store._append(conn.connection.dbapi_connection, "lens_layers", rows)
        for layer, value in enumerate(layer_kl):
            conn.execute(
                lm_.insert().values(
                    run_id=run_id, layer=layer, metric="lens_kl_final", value=float(value)
                )
            )
    store._forget({run_id})


def read_lens(
    store: Store, run_id: str, *, start: int = 0, limit: int = MAX_READ_POSITIONS
) -> dict[str, Any] | None:
    """The stored lens of positions ``start .. start + limit - 1`` (None when not computed).

    Returns ``{"run_id", "layers", "positions": [{"position", "text", "decided_layer",
    "cells": [{"layer", "rank", "prob", "kl_final", "top_k"}]}], "layer_kl": [...]}``.
    """
    limit = max(1, min(limit, MAX_READ_POSITIONS))
    ll, t = schema.lens_layers, schema.tokens
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ll)
            .where(ll.c.run_id == run_id, ll.c.position >= start, ll.c.position < start + limit)
            .order_by(ll.c.position, ll.c.layer)
        ).mappings()
        cells: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            cells.setdefault(row["position"], []).append(
                {
                    "layer": row["layer"],
                    "rank": row["rank"],
                    "prob": row["prob"],
                    "kl_final": row["kl_final"],
                    "top_k": row["top_k"],
                }
            )
        any_row = conn.execute(sa.select(ll.c.layer).where(ll.c.run_id == run_id).limit(1))
        if any_row.first() is None:
            return None
        texts = dict(
            conn.execute(
                sa.select(t.c.position, t.c.text).where(
                    t.c.run_id == run_id, t.c.position.in_(list(cells))
                )
            ).all()
        )
        decided = dict(
            conn.execute(
                sa.select(schema.token_metrics.c.position, schema.token_metrics.c.value).where(
                    schema.token_metrics.c.run_id == run_id,
                    schema.token_metrics.c.metric == "decided_layer",
                )
            ).all()
        )
        kl = conn.execute(
            sa.select(schema.layer_metrics.c.layer, schema.layer_metrics.c.value)
            .where(
                schema.layer_metrics.c.run_id == run_id,
                schema.layer_metrics.c.metric == "lens_kl_final",
            )
            .order_by(schema.layer_metrics.c.layer)
        ).all()
    positions = [
        {
            "position": pos,
            "text": texts.get(pos, ""),
            "decided_layer": None if decided.get(pos) is None else int(decided[pos]),
            "cells": layer_cells,
        }
        for pos, layer_cells in cells.items()
    ]
    return {
        "run_id": run_id,
        "layers": len(kl),
        "layer_kl": [{"layer": int(layer), "lens_kl_final": float(v)} for layer, v in kl],
        "positions": positions,
    }


@dataclass
class AttributionRequest:
    """What to attribute, as the CLI and API give it."""

    position: int
    end: int | None = None
    method: str = "ig"
    foil: str | None = None
    foil_token_id: int | None = None
    steps: int = 32
    baseline: str = "pad"
    blocks: bool = True
    rule: str = "adaptive"


def check_attribution(
    run: RunTokens, req: AttributionRequest, vocab_size: int | None = None
) -> Target:
    """Validate ``req`` against ``run`` (every problem a :class:`UserError`)."""
    n = len(run.ids)
    end = req.position if req.end is None else req.end
    if req.method not in METHODS:
        raise UserError(f"unknown method {req.method!r}; choose one of {', '.join(METHODS)}")
    if req.rule not in RULES:
        raise UserError(f"unknown rule {req.rule!r}; choose one of {', '.join(RULES)}")
    if req.baseline not in BASELINES:
        raise UserError(f"unknown baseline {req.baseline!r}; choose one of {', '.join(BASELINES)}")
    if not 1 <= req.position < n:
        raise UserError(f"position {req.position} is outside the run's tokens 1..{n - 1}")
    if not req.position <= end < n:
        raise UserError(f"end {end} must lie in {req.position}..{n - 1}")
    if end - req.position + 1 > MAX_SPAN:
        raise UserError(f"a span holds at most {MAX_SPAN} tokens")
    if end > MAX_ATTR_TOKENS:
        raise UserError(f"attribution is bounded at {MAX_ATTR_TOKENS} input tokens")
    _check_method(req, end, vocab_size)
    return Target(req.position, end)


def _check_method(req: AttributionRequest, end: int, vocab_size: int | None) -> None:
    if req.method != "grad_x_input" and not 2 <= req.steps <= MAX_STEPS:
        raise UserError(f"steps must lie in 2..{MAX_STEPS}, not {req.steps}")
    if req.method == "contrastive" and end != req.position:
        raise UserError("contrastive attribution takes one target position, not a span")
    if req.method != "contrastive" and (req.foil is not None or req.foil_token_id is not None):
        raise UserError("a foil needs method 'contrastive'")
    if req.foil_token_id is not None and vocab_size is not None:
        if not 0 <= req.foil_token_id < vocab_size:
            raise UserError(f"foil_token_id must lie in 0..{vocab_size - 1}")


def _foil_id(lm: LoadedModel, ids: torch.Tensor, req: AttributionRequest) -> int:
    if req.foil_token_id is not None:
        foil = req.foil_token_id
    elif req.foil is not None:
        pieces = lm.tokenizer.encode(req.foil, add_special_tokens=False)
        if len(pieces) != 1:
            raise UserError(
                f"foil {req.foil!r} is {len(pieces)} tokens for this tokenizer; give one token"
            )
        foil = int(pieces[0])
    else:
        return top_alternative(lm, ids, req.position)
    if foil == int(ids[req.position]):
        raise UserError("the foil is the target token itself; choose another token")
    return foil


def compute_attribution(
    lm: LoadedModel, store: Store, run: RunTokens, req: AttributionRequest
) -> dict[str, Any]:
    """Attribute, store (replacing the same run, target and method) and return the result."""
    vocab_size = int(lm.model.get_input_embeddings().weight.shape[0])
    target = check_attribution(run, req, vocab_size)
    check_model(run, lm)
    ids = torch.tensor(run.ids)
    if req.method == "contrastive":
        target.foil = _foil_id(lm, ids, req)
    result = attribute(
        lm, ids, target, method=req.method, steps=req.steps, baseline=req.baseline, rule=req.rule
    )
    blocks = block_contributions(lm, ids, target.start) if req.blocks else []
    values = result.values.double().cpu().numpy()
    is_ig = req.method != "grad_x_input"
    record = {
        "attribution_id": uuid.uuid4().hex,
        "run_id": run.run_id,
        "target_position": target.start,
        "target_end": target.end,
        "method": req.method,
        "foil_token_id": target.foil,
        "steps": result.steps,
        "baseline": req.baseline if is_ig else None,
        "rule": req.rule if is_ig else None,
        "score": "logprob_diff" if target.foil is not None else "logprob",
        "f_x": result.f_x,
        "f_baseline": _finite(result.f_baseline),
        "total": float(values.sum()),
        "completeness_error": _finite(result.completeness_error),
        "blocks": json.dumps(blocks),
        "created_at": datetime.now(UTC).replace(tzinfo=None),
    }
    _store_attribution(store, record, values)
    return _attribution_json(record, values, run)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _store_attribution(store: Store, record: dict[str, Any], values: np.ndarray) -> None:
    a, av = schema.attributions, schema.attribution_values
    rows = pa.table(
        {
            "attribution_id": pa.array([record["attribution_id"]] * len(values), pa.string()),
            "run_id": pa.array([record["run_id"]] * len(values), pa.string()),
            "position": pa.array(np.arange(len(values), dtype=np.int32), pa.int32()),
            "value": pa.array(values, pa.float64()),
        }
    )
    with store.writing() as conn:
        old = [
            r[0]
            for r in conn.execute(
                sa.select(a.c.attribution_id).where(
                    a.c.run_id == record["run_id"],
                    a.c.target_position == record["target_position"],
                    a.c.method == record["method"],
                )
            )
        ]
        if old:
            conn.execute(av.delete().where(av.c.attribution_id.in_(old)))
            conn.execute(a.delete().where(a.c.attribution_id.in_(old)))
        conn.execute(a.insert().values(**record))
        store._append(conn.connection.dbapi_connection, "attribution_values", rows)


def _attribution_json(record: dict[str, Any], values: np.ndarray, run: RunTokens) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("blocks", "created_at")}
    out["created_at"] = record["created_at"].isoformat()
    out["blocks"] = json.loads(record["blocks"]) if record["blocks"] else []
    out["target_text"] = "".join(run.texts[record["target_position"] : record["target_end"] + 1])
    out["attributions"] = [
        {"position": i, "text": run.texts[i], "is_prompt": run.is_prompt[i], "value": float(v)}
        for i, v in enumerate(values)
    ]
    return out


def read_attributions(
    store: Store, run_id: str, position: int | None = None
) -> list[dict[str, Any]]:
    """Stored attributions of a run (optionally of one target position), newest first."""
    a, av = schema.attributions, schema.attribution_values
    run = run_tokens(store, run_id)
    query = sa.select(a).where(a.c.run_id == run_id).order_by(a.c.created_at.desc())
    if position is not None:
        query = query.where(a.c.target_position == position)
    out = []
    with store.engine.connect() as conn:
        # fetch first: a second query on this connection would end the open result
        for rec in conn.execute(query).mappings().all():
            vals = conn.execute(
                sa.select(av.c.value)
                .where(av.c.attribution_id == rec["attribution_id"])
                .order_by(av.c.position)
            ).all()
            out.append(_attribution_json(dict(rec), np.array([v[0] for v in vals]), run))
    return out

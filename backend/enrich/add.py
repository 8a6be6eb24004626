"""Adding CCP / probe / SAR / SelfCheck to an upload's stored turns, without re-scoring them.

Each family computes only what it needs on top of the stored rows (:mod:`.stored`):

* ``ccp``: the stored top-k alternatives and log-probs, plus the NLI judge; no model pass.
* ``probe``: hidden states, from one forward pass per conversation over the stored token ids
  (turns sharing a context run are token prefixes of its longest turn, as in the one-pass
  audit), read at the probe's layer.
* ``sar``: the stored log-probs and the sentence encoder; no model pass.
* ``selfcheck``: new samples from the model for each turn's prompt, scored like fresh texts.

Only the new rows are written: token, sequence and claim metrics of the family's names
(:data:`backend.scoring.extras.FAMILY_METRICS`), and under the run's provenance
``extras.added.<family>`` what produced them. That mark makes the work idempotent and
resumable: a turn marked (or scored with the family from the start) is never done again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
import torch

from tokenprism.backend.audit.items import length_batches
from tokenprism.backend.enrich.stored import StoredTurn, TurnMeta, load_turns, turn_metas
from tokenprism.backend.errors import UserError
from tokenprism.backend.limits import JobCancelled
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.probes.storage import StoredProbe
from tokenprism.backend.scoring.extras import FAMILY_METRICS, ClaimScore, ExtraPlan
from tokenprism.backend.scoring.runner import score_batch
from tokenprism.backend.store import Store, schema
from tokenprism.backend.store.store import CONTEXT_KIND


class FamilyUnavailable(UserError):
    """A family cannot be added to these runs (422): the message says why."""


# ---- what is there already ----------------------------------------------------------------


def upload_turns(store: Store, upload_id: str) -> list[str]:
    """The upload's turn runs (not context runs) in item order."""
    r = schema.runs
    with store.engine.connect() as conn:
        return [
            row[0]
            for row in conn.execute(
                sa.select(r.c.run_id)
                .where(r.c.upload_id == upload_id, r.c.kind != CONTEXT_KIND)
                .order_by(r.c.item_index, r.c.turn_index, r.c.run_id)
            )
        ]


def present_families(store: Store, run_ids: Sequence[str]) -> dict[str, set[str]]:
    """Per run, the families it has: scored with them from the start or added since."""
    r = schema.runs
    requested = sa.func.json_extract(r.c.provenance, "$.extras.request.metrics")
    added = sa.func.json_keys(sa.func.json_extract(r.c.provenance, "$.extras.added"))
    out: dict[str, set[str]] = {}
    with store.engine.connect() as conn:
        for run_id, req, keys in conn.execute(
            sa.select(r.c.run_id, sa.cast(requested, sa.String), added).where(
                r.c.run_id.in_(list(run_ids))
            )
        ):
            have = set(json.loads(req)) if req else set()
            out[run_id] = have | set(keys or [])
    return out


def pending(
    store: Store, run_ids: Sequence[str], families: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """Per run that lacks some of ``families``: the ones it lacks (canonical order)."""
    have = present_families(store, run_ids)
    out = {}
    for run_id in run_ids:
        missing = tuple(f for f in families if f not in have.get(run_id, set()))
        if missing:
            out[run_id] = missing
    return out


# ---- what can be added --------------------------------------------------------------------

API_REASONS = {
    "ccp": "CCP judges the model's own top-k token ids; runs from API logprobs carry token "
    "strings only",
    "probe": "a probe reads the model's hidden states; runs from API logprobs have no model",
    "sar": "SAR is added to model-scored runs only (it needs their offsets into the rendered "
    "chat); runs from API logprobs are not supported",
    "selfcheck": "SelfCheck samples new answers from the model; runs from API logprobs have "
    "no model",
}


def run_models(store: Store, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The distinct models (name, source, revision) of ``run_ids``."""
    r, m = schema.runs, schema.models
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(m.c.name, m.c.source, m.c.revision)
            .distinct()
            .join(r, r.c.model_key == m.c.model_key)
            .where(r.c.run_id.in_(list(run_ids)))
        ).all()
    return [dict(row._mapping) for row in rows]


def stored_top_k(store: Store, run_ids: Sequence[str]) -> int:
    """Alternatives kept per token by the pass that scored these runs (smallest over runs)."""
    r = schema.runs
    k = sa.func.json_extract_string(r.c.provenance, "$.params.logits.top_k")
    with store.engine.connect() as conn:
        values = [v for (v,) in conn.execute(sa.select(k).where(r.c.run_id.in_(list(run_ids))))]
    return min((int(v) for v in values if v is not None), default=0)


def check_addable(
    store: Store,
    run_ids: Sequence[str],
    families: Sequence[str],
    plan: ExtraPlan | None,
    lm_revision: str | None,
) -> None:
    """Refuse (:class:`FamilyUnavailable`) families these runs cannot get, naming why."""
    models = run_models(store, run_ids)
    if any(m["source"] == "api-logprobs" for m in models):
        reasons = "; ".join(f"{f}: {API_REASONS[f]}" for f in families)
        raise FamilyUnavailable(
            f"cannot add {', '.join(families)} to this upload: {reasons}. Upload the file "
            "with source=model (scored by a local model) to get these families"
        )
    changed = [m for m in models if lm_revision is not None and m["revision"] != lm_revision]
    if changed:
        m = changed[0]
        raise FamilyUnavailable(
            f"the runs were scored with {m['name']!r} revision {str(m['revision'])[:16]}, but "
            f"that name now loads revision {str(lm_revision)[:16]}: its token ids and hidden "
            "states would not match the stored rows"
        )
    if "ccp" in families and plan is not None:
        k, need = stored_top_k(store, run_ids), plan.request.ccp.n_alternatives
        if k < need:
            raise FamilyUnavailable(
                f"CCP with this preset judges {need} alternatives per token, but these runs "
                f"kept {k}; re-score the upload with a top-k of at least {need}"
            )


# ---- computing ----------------------------------------------------------------------------


def _body(lm: LoadedModel) -> Any:
    """The decoder without its LM head (no ``[batch, T, vocab]`` logits), else the model."""
    model = lm.model
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return body if body is not None and body is not model else model


def conversation_rows(turns: Sequence[StoredTurn]) -> list[tuple[list[int], list[StoredTurn]]]:
    """One row per conversation: its longest turn's ids, and the turns that are its prefixes.

    Turns sharing a context run were scored in one pass; a turn that is not a token prefix of
    its conversation's longest (never, for stored one-pass turns) gets a row of its own.
    """
    groups: dict[str, list[StoredTurn]] = {}
    for t in turns:
        groups.setdefault(t.meta.context_run_id or t.meta.run_id, []).append(t)
    rows = []
    for members in groups.values():
        longest = max(members, key=lambda t: t.encoded.n_tokens).encoded.input_ids
        shared = [t for t in members if longest[: t.encoded.n_tokens] == t.encoded.input_ids]
        rows.append((longest, shared))
        rows += [(t.encoded.input_ids, [t]) for t in members if t not in shared]
    return rows


def probe_values(
    lm: LoadedModel, probe: StoredProbe, turns: Sequence[StoredTurn]
) -> dict[str, torch.Tensor]:
    """``run_id -> [T]`` probe probabilities, one forward pass over the turns' conversations.

    A causal model gives a prefix the hidden states it has inside the longer row, so each
    turn reads its first ``T`` positions of its conversation's row.
    """
    rows = conversation_rows(turns)
    width = max(len(ids) for ids, _ in rows)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, _) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.inference_mode(), lm.autocast_context():
        out = _body(lm)(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            output_hidden_states=True,
            use_cache=False,
        )
        values = probe.apply(out.hidden_states).float().cpu()
    del out
    return {
        t.meta.run_id: values[i, : t.encoded.n_tokens] for i, (_, ts) in enumerate(rows) for t in ts
    }


def _variant(plan: ExtraPlan, families: tuple[str, ...]) -> ExtraPlan:
    """``plan`` restricted to ``families`` (its loaded judge / probe / encoder shared)."""
    request = dataclasses.replace(plan.request, metrics=families)
    return dataclasses.replace(
        plan,
        request=request,
        judge=plan.judge if "ccp" in families else None,
        probe=plan.probe if "probe" in families else None,
        encoder=plan.encoder if {"sar", "selfcheck"} & set(families) else None,
    )


def _check_claims(turn: StoredTurn, claims: Sequence[ClaimScore]) -> None:
    found = [(c.claim.index, c.claim.char_start, c.claim.char_end) for c in claims]
    if found != turn.claims:
        raise UserError(
            f"run {turn.meta.run_id}: its claims split again differ from the stored ones "
            f"({len(found)} vs {len(turn.claims)}); its metrics were not added"
        )


def apply_families(
    lm: LoadedModel,
    plan: ExtraPlan,
    turns: Sequence[StoredTurn],
    missing: dict[str, tuple[str, ...]],
) -> list[tuple[StoredTurn, tuple[str, ...], list[ClaimScore], dict[str, Any]]]:
    """Compute each turn's missing families in place on its scores; claims and extras out."""
    by_set: dict[tuple[str, ...], list[StoredTurn]] = {}
    for t in turns:
        by_set.setdefault(missing[t.meta.run_id], []).append(t)
    out = []
    for families, group in by_set.items():
        variant = _variant(plan, families)
        probes = None
        if variant.probe is not None:
            values = probe_values(lm, variant.probe, group)
            probes = torch.full((len(group), max(t.scores.length for t in group)), math.nan)
            for i, t in enumerate(group):
                probes[i, : t.scores.length] = values[t.meta.run_id]
        applied = variant.apply(
            lm, [t.encoded for t in group], [t.scores for t in group], probes, rescore=score_batch
        )
        for t, (claims, extras) in zip(group, applied, strict=True):
            _check_claims(t, claims)
            out.append((t, families, claims, extras))
    return out


# ---- writing ------------------------------------------------------------------------------


def _added_provenance(
    plan: ExtraPlan, families: tuple[str, ...], extras: dict[str, Any], job_id: str | None
) -> dict[str, Any]:
    """What ``extras.added`` records per family: the request, the models used, when."""
    base = {"job_id": job_id, "added_at": datetime.now(UTC).isoformat()}
    prov = plan.provenance()
    request = {**prov["request"], "metrics": list(families)}
    detail = {
        "ccp": {"ccp": prov.get("ccp")},
        "probe": {"probe": prov.get("probe")},
        "sar": {"encoder": prov.get("encoder"), **extras.get("sar", {})},
        "selfcheck": {"encoder": prov.get("encoder"), "samples": extras.get("samples")},
    }
    return {f: {**base, "request": request, **detail[f]} for f in families}


def metric_tables(
    results: Sequence[tuple[StoredTurn, tuple[str, ...], list[ClaimScore], dict[str, Any]]],
) -> dict[str, pa.Table]:
    """The new token / sequence / claim metric rows of ``results`` (NaN token values dropped)."""
    tok: dict[str, list[Any]] = {"run_id": [], "position": [], "metric": [], "value": []}
    seq: dict[str, list[Any]] = {"run_id": [], "metric": [], "value": []}
    cla: dict[str, list[Any]] = {"run_id": [], "claim_index": [], "metric": [], "value": []}
    for turn, families, claims, _ in results:
        rid, sc = turn.meta.run_id, turn.scores
        for family in families:
            names = FAMILY_METRICS[family]
            for name in names.token:
                if name not in sc.token:
                    continue
                values = sc.token[name].double().numpy()
                keep = np.flatnonzero(~np.isnan(values))
                tok["run_id"] += [rid] * len(keep)
                tok["position"] += keep.tolist()
                tok["metric"] += [name] * len(keep)
                tok["value"] += values[keep].tolist()
            for name in names.sequence:
                if name in sc.sequence:
                    value = float(sc.sequence[name])
                    seq["run_id"].append(rid)
                    seq["metric"].append(name)
                    seq["value"].append(value if math.isfinite(value) else None)
            for c in claims:
                for name in names.claim:
                    if name in c.metrics:
                        value = float(c.metrics[name])
                        cla["run_id"].append(rid)
                        cla["claim_index"].append(c.claim.index)
                        cla["metric"].append(name)
                        cla["value"].append(value if math.isfinite(value) else None)
    return {
        "token_metrics": pa.table(
            {
                "run_id": pa.array(tok["run_id"], pa.string()),
                "position": pa.array(tok["position"], pa.int32()),
                "metric": pa.array(tok["metric"], pa.string()),
                "value": pa.array(tok["value"], pa.float64()),
            }
        ),
        "sequence_metrics": pa.table(
            {
                "run_id": pa.array(seq["run_id"], pa.string()),
                "metric": pa.array(seq["metric"], pa.string()),
                "value": pa.array(seq["value"], pa.float64()),
            }
        ),
        "claim_metrics": pa.table(
            {
                "run_id": pa.array(cla["run_id"], pa.string()),
                "claim_index": pa.array(cla["claim_index"], pa.int32()),
                "metric": pa.array(cla["metric"], pa.string()),
                "value": pa.array(cla["value"], pa.float64()),
            }
        ),
    }


def family_names(families: Sequence[str]) -> dict[str, list[str]]:
    """Per metric table, every name the ``families`` write (what a batch replaces)."""
    out: dict[str, list[str]] = {"token_metrics": [], "sequence_metrics": [], "claim_metrics": []}
    for f in families:
        out["token_metrics"] += FAMILY_METRICS[f].token
        out["sequence_metrics"] += FAMILY_METRICS[f].sequence
        out["claim_metrics"] += FAMILY_METRICS[f].claim
    return out


# ---- the job ------------------------------------------------------------------------------


def conversation_batches(metas: Sequence[TurnMeta], batch_tokens: int) -> list[list[TurnMeta]]:
    """Turns in batches of whole conversations, at most ``batch_tokens`` padded per batch."""
    units: dict[str, list[TurnMeta]] = {}
    for m in metas:
        units.setdefault(m.context_run_id or m.run_id, []).append(m)
    groups = list(units.values())
    lengths = [max(m.n_tokens for m in g) for g in groups]
    return [
        [m for i in batch for m in groups[i]] for batch in length_batches(lengths, batch_tokens)
    ]


def add_metrics(
    lm: LoadedModel,
    store: Store,
    plan: ExtraPlan,
    run_ids: Sequence[str],
    *,
    job_id: str | None = None,
    batch_tokens: int = 4096,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_lock: threading.Lock | None = None,
) -> dict[str, Any]:
    """Add ``plan``'s families to the runs of ``run_ids`` that lack them; what was done.

    ``on_progress`` receives the number of ``run_ids`` done so far (those found done already
    included); ``should_stop`` is checked between batches (then :class:`JobCancelled`).
    """
    todo = pending(store, run_ids, plan.metrics)
    already = len(run_ids) - len(todo)
    if on_progress:
        on_progress(already)
    done = 0
    k = stored_top_k(store, list(todo)) if todo else 0
    for batch in conversation_batches(turn_metas(store, list(todo)), batch_tokens):
        if should_stop and should_stop():
            raise JobCancelled
        turns = load_turns(store, batch, k)
        with model_lock or nullcontext():
            results = apply_families(lm, plan, turns, todo)
        provenance = {
            t.meta.run_id: _added_provenance(plan, fams, extras, job_id)
            for t, fams, _, extras in results
        }
        replaced: dict[tuple[str, ...], list[str]] = {}
        for t, fams, _, _ in results:
            replaced.setdefault(fams, []).append(t.meta.run_id)
        store.add_run_metrics(
            metric_tables(results),
            provenance,
            [(ids, family_names(fams)) for fams, ids in replaced.items()],
        )
        done += len(batch)
        if on_progress:
            on_progress(already + done)
    return {"runs": len(run_ids), "added": done, "already_present": already}

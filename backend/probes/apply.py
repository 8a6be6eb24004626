"""Applying a stored probe to a stored run: one forward pass over the run's own token ids."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch

from tokenprism.backend.errors import UserError
from tokenprism.backend.models.variants import get_model
from tokenprism.backend.probes.storage import probe_for
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store, schema


def _run_model(store: Store, run_id: str) -> tuple[str, str, list[int], list[bool]]:
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(schema.models.c.name, schema.models.c.revision)
            .join(schema.runs, schema.runs.c.model_key == schema.models.c.model_key)
            .where(schema.runs.c.run_id == run_id)
        ).first()
        if row is None:
            raise UserError(f"no run with id {run_id!r}")
        toks = conn.execute(
            sa.select(schema.tokens.c.token_id, schema.tokens.c.is_prompt)
            .where(schema.tokens.c.run_id == run_id)
            .order_by(schema.tokens.c.position)
        ).all()
    return str(row[0]), str(row[1]), [int(t[0]) for t in toks], [bool(t[1]) for t in toks]


def apply_probe_to_run(
    store: Store, run_id: str, probe_name: str | None, settings: Settings
) -> dict[str, Any]:
    """Compute the ``probe`` token metric of a stored run and store it (replacing an older one).

    The run's model is loaded (it must be loadable here) and checked against the probe's
    model revision; claim-level ``probe`` values (max over the claim's tokens) and the
    sequence values ``probe_max`` / ``probe_mean`` are updated with it.
    """
    model, revision, ids, is_prompt = _run_model(store, run_id)
    lm = get_model(model, settings)
    if lm.revision != revision:
        raise UserError(
            f"run {run_id} was scored with {model!r} revision {revision[:16]}, but that name "
            f"now loads revision {lm.revision[:16]}; its hidden states would not match"
        )
    probe = probe_for(lm, settings, probe_name)
    with torch.inference_mode():
        out = lm.model(
            input_ids=torch.tensor([ids], device=lm.device),
            output_hidden_states=True,
            use_cache=False,
        )
        values = probe.apply(out.hidden_states)[0].cpu().double().numpy()
    response = ~np.asarray(is_prompt, dtype=bool)
    values[~response] = np.nan
    # position 0 has no prediction and is never part of the analysed response tokens
    scored = values.copy()
    scored[0] = np.nan
    run = store.get_run(run_id, metrics=[])
    claims: dict[int, dict[str, float]] = {}
    for c in run["claims"]:
        if c["position_start"] is None:
            continue
        span = scored[c["position_start"] : c["position_end"] + 1]
        span = span[~np.isnan(span)]
        if len(span):
            claims[int(c["index"])] = {"probe": float(span.max())}
    finite = scored[~np.isnan(scored)]
    sequence = {
        "probe_max": float(finite.max()) if len(finite) else math.nan,
        "probe_mean": float(finite.mean()) if len(finite) else math.nan,
    }
    store.replace_metrics(
        run_id,
        token={"probe": scored},
        sequence=sequence,
        claims=claims,
        provenance_key="probe",
        provenance=probe.provenance(),
    )
    return {"run_id": run_id, "probe": probe.name, **sequence, "claims": len(claims)}

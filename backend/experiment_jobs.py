"""Turning experiment parameters (API / CLI / job JSON) into experiment runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from backend.errors import UserError
from backend.models import LoadedModel
from backend.settings import Settings
from backend.store import Store

KINDS = ("refusal-sweep", "east-sweep", "decode")
_TUPLES = {"prompts", "values", "phrases", "betas"}


def _build(cls: Any, params: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise UserError(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    values = {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in params.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise UserError(f"bad experiment parameters: {err}") from None


def check_experiment(kind: str, params: dict[str, Any]) -> Any:
    """Validate ``params`` for ``kind``; return the experiment dataclass."""
    from backend import experiments

    if kind == "refusal-sweep":
        return _build(experiments.RefusalSweep, params)
    if kind == "east-sweep":
        return _build(experiments.EastSweep, params)
    if kind == "decode":
        return _build(experiments.DecodeExperiment, params)
    raise UserError(f"unknown experiment kind {kind!r}; choose from {', '.join(KINDS)}")


def run_experiment(
    lm: LoadedModel,
    store: Store,
    settings: Settings,
    kind: str,
    params: dict[str, Any],
    *,
    job_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Run an experiment of ``kind``; return its id."""
    from backend import experiments

    spec = check_experiment(kind, params)
    if kind == "refusal-sweep":
        return experiments.run_refusal_sweep(lm, store, spec, job_id=job_id, progress=progress)
    if kind == "east-sweep":
        return experiments.run_east_sweep(
            lm, store, settings, spec, job_id=job_id, progress=progress
        )
    return experiments.run_decode(lm, store, settings, spec, job_id=job_id, progress=progress)

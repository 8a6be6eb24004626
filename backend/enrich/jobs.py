"""Asking for families on a stored upload (checked before any job exists) and the job itself.

``POST /api/v1/uploads/{id}/metrics`` and ``tokenprism add-metrics`` call :func:`prepare`:
every refusal happens there (unknown runs, an upload still being scored, families these runs
cannot get, a missing probe or judge), so a queued job only computes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tokenprism.backend.enrich.add import add_metrics, check_addable, pending, upload_turns
from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.extras import (
    ExtraPlan,
    ExtraRequest,
    extra_request,
    plan_extras,
    request_from_dict,
)
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store, schema
from tokenprism.backend.store.records import UNFINISHED, get_job

JOB_KIND = "add_metrics"


class UploadNotReady(UserError):
    """The upload's audit has not finished (409): its turns are not all stored yet."""


@dataclass
class Prepared:
    """A checked request: the runs it covers, those lacking a family, and the job params."""

    upload_id: str
    families: tuple[str, ...]
    run_ids: list[str]
    todo: dict[str, tuple[str, ...]]
    params: dict[str, Any]

    def already(self) -> dict[str, int]:
        """Per family, how many of the runs have it already."""
        return {
            f: sum(1 for r in self.run_ids if f not in self.todo.get(r, ())) for f in self.families
        }


def _chosen_runs(
    store: Store, upload: dict[str, Any], run_ids: Sequence[str] | None, max_items: int
) -> list[str]:
    turns = upload_turns(store, upload["upload_id"])
    if run_ids is not None:
        if len(run_ids) > max_items:
            raise UserError(f"at most {max_items} run ids (the upload item limit)")
        unknown = sorted(set(run_ids) - set(turns))
        if unknown:
            raise UserError(
                f"not turns of upload {upload['upload_id']}: {', '.join(unknown[:5])}"
                + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            )
        turns = [r for r in turns if r in set(run_ids)]
    if not turns:
        raise UploadNotReady(f"upload {upload['upload_id']} has no scored turns to add metrics to")
    return turns


def _check_audit_done(store: Store, upload: dict[str, Any]) -> None:
    job = get_job(store, upload["job_id"]) if upload.get("job_id") else None
    if job is not None and job["status"] != "done":
        raise UploadNotReady(
            f"upload {upload['upload_id']} is still being audited (job {job['job_id']} is "
            f"{job['status']}); add metrics once it is done (resume it if it stopped)"
        )


def prepare(
    store: Store,
    settings: Settings,
    upload: dict[str, Any],
    families: tuple[str, ...],
    get_model: Callable[[str], LoadedModel],
    *,
    ccp_preset: str | None = None,
    probe: str | None = None,
    run_ids: Sequence[str] | None = None,
) -> Prepared:
    """Check a request to add ``families`` to an upload's turns; what a job would do."""
    if not families:
        raise UserError("name at least one metric family: ccp, probe, sar or selfcheck")
    _check_audit_done(store, upload)
    runs = _chosen_runs(store, upload, run_ids, settings.upload_max_items)
    check_addable(store, runs, families, None, None)  # API-logprob runs: refused, no model
    request = extra_request(families, ccp_preset=ccp_preset, probe=probe)
    lm = get_model(upload["model"])
    plan = plan_extras(lm, request, settings)  # a missing probe or judge fails now
    check_addable(store, runs, families, plan, lm.revision)
    params = {
        "upload_id": upload["upload_id"],
        "model": upload["model"],
        "extras": request.as_dict(),
        "run_ids": list(run_ids) if run_ids is not None else None,
    }
    return Prepared(upload["upload_id"], families, runs, pending(store, runs, families), params)


def unfinished_job(store: Store, prepared: Prepared) -> str | None:
    """A queued or running add-metrics job of the same upload, families and runs, if any."""
    j = schema.jobs
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(j.c.job_id, j.c.params).where(
                j.c.kind == JOB_KIND,
                j.c.status.in_(UNFINISHED),
                sa.func.json_extract_string(j.c.params, "$.upload_id") == prepared.upload_id,
            )
        ).all()
    for job_id, raw in rows:
        params = json.loads(raw)
        same_runs = params.get("run_ids") == prepared.params["run_ids"]
        if same_runs and params["extras"]["metrics"] == list(prepared.families):
            return str(job_id)
    return None


def job_runs(store: Store, params: dict[str, Any]) -> list[str]:
    """The runs a job covers: those it named, else every turn of its upload."""
    turns = upload_turns(store, params["upload_id"])
    if params.get("run_ids") is not None:
        chosen = set(params["run_ids"])
        return [r for r in turns if r in chosen]
    return turns


def job_plan(
    lm: LoadedModel, store: Store, settings: Settings, params: dict[str, Any]
) -> tuple[ExtraPlan, list[str]]:
    """The plan and runs of a queued job, checked again (the model may have changed since)."""
    request: ExtraRequest = request_from_dict(params["extras"])
    plan = plan_extras(lm, request, settings)
    runs = job_runs(store, params)
    check_addable(store, runs, request.metrics, plan, lm.revision)
    return plan, runs


def run_job(
    lm: LoadedModel,
    store: Store,
    settings: Settings,
    params: dict[str, Any],
    *,
    job_id: str | None,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_lock: threading.Lock | None = None,
) -> dict[str, Any]:
    """Run an add-metrics job (resumable: turns already given the families are skipped)."""
    plan, runs = job_plan(lm, store, settings, params)
    done = add_metrics(
        lm,
        store,
        plan,
        runs,
        job_id=job_id,
        batch_tokens=settings.batch_tokens,
        on_progress=on_progress,
        should_stop=should_stop,
        model_lock=model_lock,
    )
    return {"upload_id": params["upload_id"], "metrics": list(plan.metrics), **done}

"""The ``lens`` job kind: a long run's lens or an expensive attribution, off the request."""

from __future__ import annotations

from typing import Any

from tokenprism.backend.lens import service


def run_lens_job(manager: Any, job: dict[str, Any], _live: Any) -> dict[str, Any]:
    """Handler for :class:`~backend.jobs.worker.JobManager` (params as the API queued them)."""
    params = dict(job["params"])
    action = params.pop("action")
    run = service.run_tokens(manager.store, params.pop("run_id"))
    lm = manager.get_model(params.pop("model"))
    with manager.model_lock:
        if action == "lens":
            return service.compute_lens(lm, manager.store, run)
        result = service.compute_attribution(
            lm, manager.store, run, service.AttributionRequest(**params)
        )
    return {k: result[k] for k in ("attribution_id", "run_id", "completeness_error", "f_x")}

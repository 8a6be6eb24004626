"""The job queue: one worker thread drains it, so one model and one writer do the work.

Jobs live in the ``jobs`` table (status, progress, error, result) and in memory while they run
(cancel flag, pace for the ETA). Status moves ``queued -> running -> done | failed |
cancelled``; a job left unfinished by a crash is marked ``interrupted`` at the next start and
can be resumed: its handler skips the items already stored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tokenprism.backend.audit.ingest import WorkItem
from tokenprism.backend.audit.logprob_ccp import logprob_ccp_plan
from tokenprism.backend.audit.logprob_jobs import items_of, run_logprob_audit
from tokenprism.backend.audit.upload import (
    JobCancelled,
    eta_seconds,
    score_items,
    score_upload,
    upload_items,
)
from tokenprism.backend.errors import QueueFull, UserError
from tokenprism.backend.lens.jobs import run_lens_job
from tokenprism.backend.limits import cancel_scope
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store
from tokenprism.backend.store.records import (
    TERMINAL,
    create_job,
    get_job,
    get_upload,
    interrupt_unfinished,
    repair_job_text,
    update_job,
)

log = logging.getLogger(__name__)

RESUMABLE = ("interrupted", "failed", "cancelled")


class JobStateError(UserError):
    """The job is not in a state that allows the requested transition."""


class JobNotFound(UserError):
    """No job has this id."""


@dataclass
class LiveJob:
    """In-memory state of the job being worked on."""

    job_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    skipped: int = 0
    done: int = 0
    total: int = 0


class JobManager:
    """Queue, worker thread and state transitions of background jobs."""

    def __init__(
        self,
        store: Store,
        get_model: Callable[[str], LoadedModel],
        settings: Settings,
        model_lock: threading.Lock,
    ) -> None:
        self.store = store
        self.get_model = get_model
        self.settings = settings
        self.model_lock = model_lock
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._live: dict[str, LiveJob] = {}
        # cancel() and the worker's queued -> running step must not interleave, or a cancel
        # landing between the worker's read and its write is lost and the job runs anyway.
        self._transition = threading.Lock()
        self._thread: threading.Thread | None = None
        # set by stop(): every generation of the running job raises at its next token, and the
        # job is recorded "interrupted" (resumable), not "cancelled"
        self.stopping = threading.Event()
        self.repaired = repair_job_text(store)
        self.interrupted = interrupt_unfinished(store)
        self.handlers: dict[str, Callable[[dict[str, Any], LiveJob], dict[str, Any]]] = {
            "audit": self._run_audit,
            "probe_train": self._run_probe_train,
            "group": self._run_group,
            "rollouts": self._run_rollouts,
            "contrastive": self._run_contrastive,
            "experiment": self._run_experiment,
            "add_metrics": self._run_add_metrics,
            "lens": lambda job, live: run_lens_job(self, job, live),
            "diff": self._run_diff,
        }

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._drain, name="tokenprism-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker: the running job stops at its next token and is left
        ``interrupted`` (resumable); waits at most ``timeout`` (default: the shutdown grace)."""
        self.stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(self.settings.shutdown_grace_s if timeout is None else timeout)

    @property
    def queue_length(self) -> int:
        return self._queue.qsize()

    # ---- transitions -------------------------------------------------------------------

    def submit(self, kind: str, params: dict[str, Any], total: int) -> str:
        if kind not in self.handlers:
            raise UserError(f"unknown job kind {kind!r}")
        limit = self.settings.max_queued_jobs
        if self._queue.qsize() >= limit:
            raise QueueFull(
                f"the job queue is full ({limit} jobs waiting); try again later "
                "(TOKENPRISM_MAX_QUEUED_JOBS sets the limit)"
            )
        job_id = create_job(self.store, kind, params, total)
        self._queue.put(job_id)
        return job_id

    def _require(self, job_id: str) -> dict[str, Any]:
        job = get_job(self.store, job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._transition:
            job = self._require(job_id)
            if job["status"] in TERMINAL:
                raise JobStateError(f"job {job_id} is already {job['status']}")
            live = self._live.get(job_id)
            if live is not None:
                live.cancel.set()  # the worker stops between batches and records "cancelled"
            else:
                update_job(self.store, job_id, status="cancelled", finished_at=datetime.now(UTC))
        return self.status(job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        job = self._require(job_id)
        if job["status"] not in RESUMABLE:
            raise JobStateError(
                f"job {job_id} is {job['status']}; only {', '.join(RESUMABLE)} jobs resume"
            )
        update_job(self.store, job_id, status="queued", error=None, finished_at=None)
        self._queue.put(job_id)
        return self.status(job_id)

    def status(self, job_id: str) -> dict[str, Any]:
        job = self._require(job_id)
        live = self._live.get(job_id)
        eta = None
        if live is not None and job["status"] == "running":
            job["done"] = max(job["done"], live.done)
            eta = eta_seconds(live.started, live.done, live.total, live.skipped)
        job["eta_seconds"] = None if eta is None else round(eta, 1)
        job["progress"] = job["done"] / job["total"] if job["total"] else None
        return job

    # ---- worker ------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self.stopping.is_set():
                return
            try:
                self._run(job_id)
            except Exception:  # keep the worker alive whatever a job does
                log.exception("job %s crashed the worker loop", job_id)

    def _run(self, job_id: str) -> None:
        with self._transition:
            job = get_job(self.store, job_id)
            if job is None or job["status"] != "queued":
                return  # cancelled while waiting
            live = LiveJob(job_id, total=job["total"])
            self._live[job_id] = live
            update_job(self.store, job_id, status="running", started_at=datetime.now(UTC))
        try:
            with cancel_scope(live.cancel, self.stopping):
                result = self.handlers[job["kind"]](job, live)
        except JobCancelled:
            update_job(
                self.store,
                job_id,
                # the server stopping leaves the job resumable, as a crash would
                status="interrupted" if self.stopping.is_set() else "cancelled",
                done=live.done,
                finished_at=datetime.now(UTC),
            )
        except UserError as err:
            update_job(
                self.store,
                job_id,
                status="failed",
                error=str(err),
                done=live.done,
                finished_at=datetime.now(UTC),
            )
        except Exception as err:
            log.exception("job %s failed", job_id)
            update_job(
                self.store,
                job_id,
                status="failed",
                done=live.done,
                error=f"internal error: {type(err).__name__}: {err}",
                finished_at=datetime.now(UTC),
            )
        else:
            update_job(
                self.store,
                job_id,
                status="done",
                done=live.total,
                result=result,
                finished_at=datetime.now(UTC),
            )
        finally:
            self._live.pop(job_id, None)

    def _progress(self, live: LiveJob) -> Callable[[int], None]:
        first = True

        def report(done: int) -> None:
            nonlocal first
            if first:  # items stored by an earlier attempt do not count for the pace
                live.skipped, live.started, first = done, time.monotonic(), False
            live.done = done
            update_job(self.store, live.job_id, done=done)

        return report

    def _run_audit(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        params = job["params"]
        if params.get("source") in ("logprobs", "both"):
            return self._run_logprob_audit(job, live)
        upload, items = upload_items(self.store, params["upload_id"])
        live.total = len(items)
        lm = self.get_model(params["model"])
        plan = None
        if params.get("extras"):
            from tokenprism.backend.scoring.extras import plan_extras, request_from_dict

            plan = plan_extras(lm, request_from_dict(params["extras"]), self.settings)
        done = score_upload(
            lm,
            self.store,
            items,
            settings=self.settings,
            source=upload["filename"],
            upload_id=upload["upload_id"],
            job_id=job["job_id"],
            engine=params.get("engine", "local"),
            ray_options=params.get("ray"),
            extras=plan,
            on_progress=self._progress(live),
            should_stop=lambda: live.cancel.is_set() or self.stopping.is_set(),
            model_lock=self.model_lock,
        )
        return {"upload_id": upload["upload_id"], "items": len(items), **done}

    def _run_logprob_audit(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        """An audit from the file's own logprobs (no model unless source=both)."""
        params, store = job["params"], self.store
        upload = get_upload(store, params["upload_id"], content=True)
        if upload is None:
            raise UserError(f"the upload {params['upload_id']} is gone")
        items = items_of(upload["content"], upload["format"], upload["filename"])
        live.total = len(items)

        def rescore(work: list[WorkItem]) -> list[str]:
            lm = self.get_model(params["model"])
            return score_items(
                lm,
                store,
                work,
                source=upload["filename"],
                job_id=job["job_id"],
                batch_tokens=self.settings.batch_tokens,
                model_lock=self.model_lock,
            )

        return run_logprob_audit(
            store,
            items,
            source=params["source"],
            upload_id=upload["upload_id"],
            job_id=job["job_id"],
            vocab_size=params.get("vocab_size"),
            rescore=rescore,
            on_progress=self._progress(live),
            ccp=logprob_ccp_plan(params.get("extras"), self.settings),  # the judge, no LM
        )

    def _run_add_metrics(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        """CCP / probe / SAR / SelfCheck added to stored turns (backend.enrich)."""
        from tokenprism.backend.enrich.jobs import run_job

        params = job["params"]
        live.total = job["total"]
        return run_job(
            self.get_model(params["model"]),
            self.store,
            self.settings,
            params,
            job_id=job["job_id"],
            on_progress=self._progress(live),
            should_stop=lambda: live.cancel.is_set() or self.stopping.is_set(),
            model_lock=self.model_lock,
        )

    # stages of a probe-training job and their share of its 1000 progress units
    _PROBE_STAGES = {"features": (0, 300), "training": (300, 850), "ccp baseline": (850, 1000)}

    def _run_probe_train(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        from tokenprism.analysis.probe import ProbeTrainParams
        from tokenprism.backend.probes.storage import save_probe
        from tokenprism.backend.probes.training import ccp_baseline_plan, train_and_evaluate
        from tokenprism.backend.store.records import get_upload

        params = job["params"]
        upload = get_upload(self.store, params["upload_id"], content=True)
        if upload is None:
            raise UserError(f"the labelled data {params['upload_id']} is gone")
        lm = self.get_model(params["model"])
        plan = ccp_baseline_plan(lm, params.get("judge"), self.settings) if params["ccp"] else None
        live.total = 1000

        def progress(stage: str, done: int, total: int) -> None:
            if live.cancel.is_set() or self.stopping.is_set():
                raise JobCancelled
            low, high = self._PROBE_STAGES.get(stage, (0, 1000))
            live.done = low + int((high - low) * done / max(total, 1))
            update_job(self.store, live.job_id, done=live.done)

        probe, layer, report = train_and_evaluate(
            lm,
            upload["content"],
            upload["filename"],
            layer=params.get("layer"),
            params=ProbeTrainParams(epochs=params["epochs"], lr=params["lr"]),
            test_fraction=params["test_fraction"],
            ccp_plan=plan,
            progress=progress,
            model_lock=self.model_lock,
        )
        save_probe(
            probe,
            params["name"],
            lm,
            layer,
            self.settings.probes_dir,
            config={"description": f"trained on {upload['filename']}", "job_id": job["job_id"]},
            report=report,
        )
        held = report["held_out"]
        return {
            "probe": params["name"],
            "layer": layer,
            "token_auc": held["token_auc"],
            "span_max_auc": held["span_max_auc"],
        }

    # ---- groups --------------------------------------------------------------------------

    def _staged(self, live: LiveJob, stages: dict[str, tuple[int, int]]) -> Any:
        """A progress callback mapping (stage, done, total) onto the job's 1000 units."""

        def progress(stage: str, done: int, total: int) -> None:
            if live.cancel.is_set() or self.stopping.is_set():
                raise JobCancelled
            low, high = stages.get(stage, (0, 1000))
            live.done = low + int((high - low) * done / max(total, 1))
            update_job(self.store, live.job_id, done=live.done)

        return progress

    def _run_group(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        from tokenprism.backend.groups.core import GroupRequest, run_group

        params = dict(job["params"])
        lm = self.get_model(params.pop("model"))
        live.total = 1000
        progress = self._staged(live, {"sampling": (0, 600), "scoring": (600, 1000)})
        with self.model_lock:
            group_id = run_group(
                lm, self.store, GroupRequest(**params), job_id=job["job_id"], progress=progress
            )
        return {"group_id": group_id}

    def _run_rollouts(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        from tokenprism.backend.groups.rollouts import RolloutRequest, run_rollouts

        params = dict(job["params"])
        lm = self.get_model(params.pop("model"))
        live.total = 1000
        staged = self._staged(live, {})
        with self.model_lock:
            result = run_rollouts(
                lm,
                self.store,
                RolloutRequest(**params),
                progress=lambda done, total: staged("rollouts", done, total),
            )
        return {k: result[k] for k in ("run_id", "critical_position", "critical_token")}

    def _run_contrastive(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        from tokenprism.backend.groups.contrastive import ContrastiveRequest, train_contrastive

        params = dict(job["params"])
        lm = self.get_model(params.pop("model"))
        if "target_modules" in params:
            params["target_modules"] = tuple(params["target_modules"])
        live.total = 1000
        staged = self._staged(live, {})
        with self.model_lock:
            summary = train_contrastive(
                lm,
                self.store,
                self.settings,
                ContrastiveRequest(**params),
                progress=lambda done, total: staged("training", done, total),
            )
        return {"group_id": summary["group_id"], "final_loss": summary["final_loss"]}

    # ---- experiments ---------------------------------------------------------------------

    def _run_experiment(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        from tokenprism.backend.lab.jobs import run_experiment

        params = job["params"]
        lm = self.get_model(params["model"])
        live.total = 1000
        staged = self._staged(live, {})
        with self.model_lock:
            experiment_id = run_experiment(
                lm,
                self.store,
                self.settings,
                params["kind"],
                params["params"],
                job_id=job["job_id"],
                progress=lambda done, total: staged("running", done, total),
            )
        return {"experiment_id": experiment_id}

    # ---- model diffs ---------------------------------------------------------------------

    def _run_diff(self, job: dict[str, Any], live: LiveJob) -> dict[str, Any]:
        from tokenprism.backend.diff.service import Cancelled, run_diff_job

        report = self._progress(live)
        try:
            return run_diff_job(self.store, self.get_model, job, live, self.model_lock, report)
        except Cancelled:
            raise JobCancelled from None

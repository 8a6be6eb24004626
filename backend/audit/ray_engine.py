"""The Ray engine: an audit's items scored by a pool of model-holding actors, one per slot.

Items are sorted by token length and cut into shards of similar length (``shard_items`` each).
``ray.data`` sends the shards to an actor pool; every actor loads the model once and scores its
shard with the same code as the local engine (:func:`backend.runner.score_batch` in
length-sorted batches, then :func:`backend.store.tables.run_tables`), and returns the shard's
tables as Parquet. The driver writes each shard atomically to ``<shard_dir>/shard-NNNNN/`` (one
Parquet file per store table and a ``manifest.json``) and inserts it into DuckDB in one
transaction, so:

* the stored rows are those the local engine would store (the same table builder);
* a crash at any point leaves whole shards: on resume, shards whose items are stored are
  skipped, shards on disk but not stored are inserted without scoring again, and the rest are
  scored; a killed actor is restarted by Ray and its shard retried;
* workers need no shared file system: only the driver writes files;
* the shards stay on disk, so DuckDB can also query them in place:
  ``SELECT * FROM read_parquet('<shard_dir>/*/tokens.parquet')``.

Ray is an optional dependency (``pip install -e '.[distributed]'``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from tokenprism.backend.audit.ingest import WorkItem
from tokenprism.backend.errors import UserError
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store
from tokenprism.backend.store.records import finished_items
from tokenprism.backend.store.tables import RUN_TABLES, model_record

if TYPE_CHECKING:
    from tokenprism.analysis.scoring import ScoringParams
    from tokenprism.backend.models.loader import LoadedModel
    from tokenprism.backend.scoring.extras import ExtraRequest

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
MANIFEST = "manifest.json"
SHARD_FORMAT = 1


@dataclass(frozen=True)
class RayOptions:
    """How to reach or start the cluster and how to cut the work.

    Attributes:
        address: a running cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None
            starts a local cluster with ``workers`` CPU slots, in a child process inside a
            private network namespace (:mod:`backend.audit.ray_local`).
        workers: actors in the pool (one model copy each); None = one per GPU when the
            cluster has GPUs, else one per ``cpus_per_worker`` CPUs.
        cpus_per_worker: CPU slots each actor reserves; torch uses that many threads.
        gpus_per_worker: GPUs each actor reserves (1 on GPU clusters; 0 on CPU).
        shard_items: items per shard, the unit of scheduling, storage and resume.
        batch_tokens: padded-token budget of one forward pass inside a shard.
        object_store_mb: object store size of a local cluster (MiB).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    shard_items: int = 64
    batch_tokens: int = 4096
    object_store_mb: int = 512


@dataclass(frozen=True)
class ShardPlan:
    """One shard: its number and the item indices it holds (shortest first)."""

    shard: int
    items: tuple[int, ...]


@dataclass
class RayReport:
    """What a Ray audit did: shards skipped (already stored), ingested from disk, scored."""

    shard_dir: str
    shards: int = 0
    skipped: list[int] = field(default_factory=list)
    from_disk: list[int] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)
    worker_pids: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    # turns scored from their conversation's single pass vs in a pass of their own
    one_pass_turns: int = 0
    fallback_turns: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShardJob:
    """What scoring a job's shards needs besides the shards: the model by name, JSON-safe
    extras / parameters (as sent to the actors) and where the shards go."""

    model: str
    record: dict[str, Any]
    settings: Settings
    options: RayOptions
    extras: dict[str, Any] | None
    params: dict[str, Any] | None
    upload_id: str | None
    job_id: str
    shard_dir: Path

    def manifest(self, plan: ShardPlan, pid: int) -> dict[str, Any]:
        return {
            "format": SHARD_FORMAT,
            "shard": plan.shard,
            "items": list(plan.items),
            "job_id": self.job_id,
            "upload_id": self.upload_id,
            "model": self.record,
            "worker_pid": pid,
        }


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            "the Ray engine needs Ray: pip install -e '.[distributed]' (or pip install 'ray[data]')"
        ) from None
    return ray


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}")
    if engine == "ray":
        require_ray()
    return engine


def plan_shards(
    lengths: dict[int, int], shard_items: int, groups: dict[int, int] | None = None
) -> list[ShardPlan]:
    """Cut items (index -> token length) into shards of about ``shard_items`` items.

    With ``groups`` (index -> conversation), a conversation's items always share a shard (it
    is scored in one forward pass): conversations are ordered by their longest item and
    packed whole, so a shard may exceed ``shard_items`` by one conversation's turns. The order
    (length, then index) depends only on the items, so a resumed job finds the same shards as
    the attempt before it.
    """
    if shard_items < 1:
        raise UserError("shard_items must be at least 1")
    units: dict[int, list[int]] = {}
    for i in lengths:
        units.setdefault(groups[i] if groups is not None else -1 - i, []).append(i)
    ordered = sorted(
        (sorted(m) for m in units.values()), key=lambda m: (max(lengths[i] for i in m), m[0])
    )
    shards: list[ShardPlan] = []
    current: list[int] = []
    for members in ordered:
        if current and len(current) + len(members) > shard_items:
            shards.append(ShardPlan(len(shards), tuple(current)))
            current = []
        current += sorted(members, key=lambda i: (lengths[i], i))
    if current:
        shards.append(ShardPlan(len(shards), tuple(current)))
    return shards


def shard_path(shard_dir: Path, shard: int) -> Path:
    return shard_dir / f"shard-{shard:05d}"


def read_shard(path: Path) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """A complete shard directory's manifest and tables."""
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != SHARD_FORMAT:
        raise UserError(f"{path} was written by another shard format; delete it to re-score")
    return manifest, {name: pq.read_table(path / f"{name}.parquet") for name in RUN_TABLES}


def write_shard(path: Path, manifest: dict[str, Any], parquet: dict[str, bytes]) -> None:
    """Write a shard next to its final place, then rename it there (all or nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        for name, data in parquet.items():
            (tmp / f"{name}.parquet").write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if path.exists():  # an older, unstored copy of the same shard
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _item_payload(item: WorkItem) -> dict[str, Any]:
    return {
        "index": item.index,
        "line": item.line,
        "conversation": item.conversation,
        "turn_index": item.turn_index,
        "messages": item.messages,
        "text": item.text,
    }


class ShardScorer:
    """A ``ray.data`` actor: loads the model once, then scores one shard per call."""

    def __init__(
        self,
        model: str,
        settings: Settings,
        extras: dict[str, Any] | None,
        upload_id: str | None,
        job_id: str | None,
        batch_tokens: int,
        threads: int,
        params: dict[str, Any] | None = None,
    ) -> None:
        import torch

        from tokenprism.backend.models.loader import load_model

        torch.set_num_threads(max(1, threads))
        self.lm = load_model(model, settings)
        self.plan = None
        if extras:
            from tokenprism.backend.scoring.extras import plan_extras, request_from_dict

            self.plan = plan_extras(self.lm, request_from_dict(extras), settings)
        self.upload_id, self.job_id, self.batch_tokens = upload_id, job_id, batch_tokens
        self.params = _params_from_dict(params)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "table": [], "data": [], "pid": []}
        for shard, payload in zip(batch["shard"], batch["payload"], strict=True):
            tables = self.score_shard([WorkItem(**p) for p in json.loads(payload)])
            for name, table in tables.items():
                out["shard"].append(int(shard))
                out["table"].append(name)
                out["data"].append(_parquet_bytes(table))
                out["pid"].append(os.getpid())
        return out

    def score_shard(self, items: Sequence[WorkItem]) -> dict[str, pa.Table]:
        """The shard's store rows, made by the local engine's code (one pass per conversation).

        With extras the turns are scored one by one, as the local engine does.
        """
        from tokenprism.backend.audit.conversation import concat_tables, scored_batches
        from tokenprism.backend.audit.items import encode_items, length_batches
        from tokenprism.backend.scoring.runner import score_batch
        from tokenprism.backend.store.tables import run_tables

        encoded = encode_items(self.lm, items, "shard")
        if self.plan is None:
            batches = scored_batches(
                self.lm,
                items,
                encoded,
                batch_tokens=self.batch_tokens,
                upload_id=self.upload_id,
                job_id=self.job_id,
                params=self.params,
            )
            return concat_tables([tables for _, tables in batches])
        parts: list[dict[str, pa.Table]] = []
        for batch in length_batches([e.n_tokens for e in encoded], self.batch_tokens):
            scored = score_batch(
                self.lm, [encoded[i] for i in batch], self.params, extras=self.plan
            )
            parts.append(
                run_tables(
                    self.lm,
                    scored,
                    [uuid.uuid4().hex for _ in batch],
                    upload_id=self.upload_id,
                    job_id=self.job_id,
                    turn_indices=[items[i].turn_index for i in batch],
                    item_indices=[items[i].index for i in batch],
                )
            )
        return concat_tables(parts)


def _params_from_dict(params: dict[str, Any] | None) -> Any:
    """Scoring parameters sent to a worker as JSON-safe fields (None: the defaults)."""
    from tokenprism.analysis.logits import LogitMetricParams
    from tokenprism.analysis.scoring import ScoringParams

    if not params:
        return ScoringParams()
    fields = dict(params)
    logits = fields.pop("logits", None) or {}
    if "gltr_edges" in logits:
        logits["gltr_edges"] = tuple(logits["gltr_edges"])
    return ScoringParams(logits=LogitMetricParams(**logits), **fields)


def _init_ray(ray: Any, options: RayOptions) -> bool:
    """Connect to (or start) a cluster; True when this call started it."""
    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "logging_level": logging.ERROR}
    if options.address:
        ray.init(address=options.address, **common)
    else:
        slots = options.workers or max(1, (os.cpu_count() or 1) // 2)
        # A cluster of our own, on loopback: address="local" never joins a cluster named by a
        # stray RAY_ADDRESS (only TOKENPRISM_RAY_ADDRESS / --address do), the node advertises
        # 127.0.0.1 and the dashboard (an unauthenticated job API) is off. Ray's own gRPC
        # servers still bind every interface in Ray 2.60 (no setting changes that), so this
        # normally runs in backend.audit.ray_child inside a private network namespace whose
        # only interface is loopback; in-process only with TOKENPRISM_RAY_ALLOW_WILDCARD=1.
        ray.init(
            address="local",
            num_cpus=max(1, int(slots * options.cpus_per_worker)),
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            object_store_memory=options.object_store_mb * 1024 * 1024,
            **common,
        )
    return True


def _pool_size(ray: Any, options: RayOptions) -> int:
    if options.workers:
        return options.workers
    resources = ray.cluster_resources()
    if options.gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // options.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // options.cpus_per_worker))


def _count_turns(
    report: RayReport, items: Sequence[WorkItem], encoded: Sequence[Any], *, one_pass: bool
) -> None:
    """How many turns the one-pass path takes and how many fall back to a pass of their own
    (with extras every turn is scored alone, as the local engine does)."""
    if not one_pass:
        report.fallback_turns = len(items)
        return
    from tokenprism.backend.audit.conversation import plan_units

    counts = plan_units(items, encoded)[1]
    report.one_pass_turns, report.fallback_turns = counts.one_pass_turns, counts.fallback_turns


def _resume_shards(
    shards: Sequence[ShardPlan],
    done: set[int],
    shard_dir: Path,
    job_id: str,
    report: RayReport,
    ingest: Callable[[ShardPlan, Path], None],
) -> list[ShardPlan]:
    """Skip stored shards, store shards a job left on disk, return the ones still to score."""
    todo: list[ShardPlan] = []
    for plan in shards:
        if set(plan.items) <= done:
            report.skipped.append(plan.shard)
        elif set(plan.items) & done:
            # a shard is stored in one transaction, so this means other items than planned
            raise UserError(f"shard {plan.shard} of job {job_id} is partly stored; cannot resume")
        elif (shard_path(shard_dir, plan.shard) / MANIFEST).is_file():
            ingest(plan, shard_path(shard_dir, plan.shard))
            report.from_disk.append(plan.shard)
        else:
            todo.append(plan)
    return todo


def score_items_ray(
    lm: LoadedModel,
    store: Store,
    items: Sequence[WorkItem],
    *,
    settings: Settings,
    source: str,
    job_id: str,
    upload_id: str | None = None,
    options: RayOptions | None = None,
    extras: ExtraRequest | None = None,
    shard_dir: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    params: ScoringParams | None = None,
) -> RayReport:
    """Score and store ``items`` on a Ray cluster, shard by shard; resume what a job left.

    ``lm`` (the driver's copy of the model) encodes every item first, so a too-long or empty
    turn fails before anything is stored; the workers load their own copies by name with
    ``settings`` (a local cluster shares this machine's model cache). ``on_progress`` gets the
    number of items stored so far, ``on_shard(shard, worker pid)`` each scored shard;
    ``should_stop`` is checked between shards (:class:`backend.audit.JobCancelled`).
    """
    from tokenprism.backend.audit.items import encode_items
    from tokenprism.backend.limits import JobCancelled

    ray = require_ray()
    options = options or RayOptions()
    began = time.perf_counter()
    shard_dir = shard_dir or settings.home / "shards" / job_id
    report = RayReport(shard_dir=str(shard_dir))
    encoded = encode_items(lm, items, source)
    by_index = {it.index: it for it in items}
    _count_turns(report, items, encoded, one_pass=extras is None)
    shards = plan_shards(
        {it.index: e.n_tokens for it, e in zip(items, encoded, strict=True)},
        options.shard_items,
        {it.index: it.conversation for it in items},
    )
    report.shards = len(shards)
    done = finished_items(store, job_id)
    stored = len(done & set(by_index))
    if on_progress:
        on_progress(stored)

    def ingest(plan: ShardPlan, path: Path) -> None:
        nonlocal stored
        manifest, tables = read_shard(path)
        if tuple(manifest["items"]) != plan.items or manifest["job_id"] != job_id:
            raise UserError(f"{path} holds other items than this job's shard {plan.shard}")
        store.ingest_tables(manifest["model"], tables)
        stored += len(plan.items)
        if on_progress:
            on_progress(stored)

    todo = _resume_shards(shards, done, shard_dir, job_id, report, ingest)
    if todo and should_stop and should_stop():
        raise JobCancelled
    record = model_record(lm)
    shard_job = ShardJob(
        model=lm.name,
        record=record,
        settings=settings,
        options=options,
        extras=extras.as_dict() if extras is not None else None,
        params=params.as_dict() if params is not None else None,
        upload_id=upload_id,
        job_id=job_id,
        shard_dir=shard_dir,
    )
    written = _written_shards(ray, shard_job, todo, by_index)
    with closing(written):  # a cancelled job shuts a cluster it started down at once
        for plan, path, pid in written:
            ingest(plan, path)
            report.scored.append(plan.shard)
            report.worker_pids[plan.shard] = pid
            if on_shard:
                on_shard(plan.shard, pid)
            if should_stop and should_stop():
                raise JobCancelled
    report.seconds = round(time.perf_counter() - began, 3)
    return report


def _written_shards(
    ray: Any, job: ShardJob, todo: list[ShardPlan], by_index: dict[int, WorkItem]
) -> Generator[tuple[ShardPlan, Path, int], None, None]:
    """Score ``todo`` and write each shard to disk; yield ``(plan, path, worker pid)``.

    A cluster of TokenPrism's own runs in a child process inside a private network namespace
    (Ray's servers bind every interface, so only a namespace keeps them off the network); a
    configured address or a cluster this process already joined is used in-process.
    """
    if not todo:
        return
    if job.options.address is None and not ray.is_initialized():
        from tokenprism.backend.audit.ray_local import namespaced_shards, wildcard_allowed

        if not wildcard_allowed(job.settings):
            plans = {plan.shard: plan for plan in todo}
            child_job = _child_job(job, todo, by_index)
            yield from namespaced_shards(child_job, plans, lambda s: shard_path(job.shard_dir, s))
            return
    for plan, parquet, pid in _scored_shards(ray, job, todo, by_index):
        path = shard_path(job.shard_dir, plan.shard)
        write_shard(path, job.manifest(plan, pid), parquet)
        yield plan, path, pid


def _child_job(job: ShardJob, todo: list[ShardPlan], by_index: dict[int, WorkItem]) -> str:
    """The job of :mod:`backend.audit.ray_child` as one JSON line (items as actors get them)."""
    return json.dumps(
        {
            "model": job.model,
            "record": job.record,
            "settings": job.settings.model_dump(mode="json"),
            "options": asdict(job.options),
            "extras": job.extras,
            "params": job.params,
            "upload_id": job.upload_id,
            "job_id": job.job_id,
            "shard_dir": str(job.shard_dir),
            "shards": [
                {"shard": p.shard, "items": [_item_payload(by_index[i]) for i in p.items]}
                for p in todo
            ],
        }
    )


def _scored_shards(
    ray: Any,
    job: ShardJob,
    todo: list[ShardPlan],
    by_index: dict[int, WorkItem],
) -> Generator[tuple[ShardPlan, dict[str, bytes], int], None, None]:
    """Score ``todo`` on the cluster; yield each shard's Parquet tables as it completes.

    A cluster this call started is shut down when the iteration ends, also when the caller
    stops early (a cancelled job).
    """
    if not todo:
        return
    options, settings = job.options, job.settings
    started = _init_ray(ray, options)
    try:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI and the job show their own progress
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
        worker_settings = settings.model_copy(
            update={"device": "cuda" if options.gpus_per_worker > 0 else "cpu"}
        )
        rows = [
            {
                "shard": plan.shard,
                "payload": json.dumps([_item_payload(by_index[i]) for i in plan.items]),
            }
            for plan in todo
        ]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ShardScorer,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(_pool_size(ray, options), len(todo))),
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
            fn_constructor_kwargs={
                "model": job.model,
                "settings": worker_settings,
                "extras": job.extras,
                "upload_id": job.upload_id,
                "job_id": job.job_id,
                "batch_tokens": options.batch_tokens,
                "threads": max(1, int(options.cpus_per_worker)),
                "params": job.params,
            },
        )
        plans = {plan.shard: plan for plan in todo}
        for shard, parquet, pid in _collect_shards(dataset.iter_rows(), len(RUN_TABLES)):
            yield plans[shard], parquet, pid
    finally:
        if started:
            ray.shutdown()


def _collect_shards(
    rows: Iterator[dict[str, Any]], n_tables: int
) -> Iterator[tuple[int, dict[str, bytes], int]]:
    """Group the streamed ``(shard, table, parquet)`` rows into whole shards as they complete."""
    pending: dict[int, dict[str, bytes]] = {}
    for row in rows:
        shard = int(row["shard"])
        tables = pending.setdefault(shard, {})
        tables[str(row["table"])] = bytes(row["data"])
        if len(tables) == n_tables:
            yield shard, pending.pop(shard), int(row["pid"])

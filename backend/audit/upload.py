"""Transcript audits: scoring an upload's items, ranking turns and tokens, exports.

The same code serves the server's upload jobs and ``tokenprism audit``: items are encoded,
sorted by length into padding-aware batches, scored, and stored batch by batch with their item
index, so a job that stops half way resumes without redoing stored items.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa
from rich.console import Console

from tokenprism.analysis.registry import MetricSpec, get_metric
from tokenprism.analysis.scoring import ScoringParams
from tokenprism.backend.audit.conversation import OnePassCounts, scored_batches
from tokenprism.backend.audit.ingest import (
    IngestReport,
    WorkItem,
    parse_with_report,
)
from tokenprism.backend.audit.items import encode_item, encode_items, length_batches  # noqa: F401
from tokenprism.backend.audit.logprob_jobs import FORMATS as LOGPROB_FORMATS
from tokenprism.backend.audit.logprob_jobs import items_of
from tokenprism.backend.errors import UserError
from tokenprism.backend.limits import (
    JobCancelled as JobCancelled,  # re-exported: callers import it here
)
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.runner import score_batch
from tokenprism.backend.store import Store, schema
from tokenprism.backend.store.records import finished_items, get_upload
from tokenprism.backend.store.store import CONTEXT_KIND, CORE_TOKEN_METRICS
from tokenprism.backend.store.tables import model_record

if TYPE_CHECKING:
    from tokenprism.backend.scoring.extras import ExtraPlan
    from tokenprism.backend.settings import Settings

DEFAULT_TURN_METRIC = "mean_entropy"
DEFAULT_TOKEN_METRIC = "entropy"


def _stop_if_asked(should_stop: Callable[[], bool] | None) -> None:
    if should_stop and should_stop():
        raise JobCancelled


def _turn_run_ids(runs: Any) -> list[str]:
    """The run ids of a stored batch's turns (a conversation's context run is not a turn)."""
    ids, kinds = runs.column("run_id").to_pylist(), runs.column("kind").to_pylist()
    return [r for r, k in zip(ids, kinds, strict=True) if k != CONTEXT_KIND]


def score_items(
    lm: LoadedModel,
    store: Store,
    items: Sequence[WorkItem],
    *,
    source: str,
    upload_id: str | None = None,
    job_id: str | None = None,
    batch_tokens: int = 4096,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_lock: threading.Lock | None = None,
    extras: ExtraPlan | None = None,
    one_pass: bool = True,
    counts: OnePassCounts | None = None,
    params: ScoringParams | None = None,
) -> list[str]:
    """Score and store ``items`` in length-sorted batches; skip items the job already stored.

    With ``one_pass`` (the default) and no extras, each conversation goes through the model
    once (:mod:`backend.audit.conversation`); ``one_pass=False`` scores every turn with its whole
    history in a pass of its own (the former path, kept for comparison and for extras).
    ``counts`` receives how many turns took each path. Returns the run ids stored by this call.
    ``on_progress`` receives the number of items done
    so far (including those found already stored); ``should_stop`` is checked between batches.
    """
    done = finished_items(store, job_id) if job_id else set()
    todo = [it for it in items if it.index not in done]
    encoded = encode_items(lm, todo, source)
    progress = len(items) - len(todo)
    if on_progress:
        on_progress(progress)
    stored: list[str] = []
    if extras is None and one_pass:
        # one forward pass per conversation (backend.audit.conversation); extras (CCP, probes, ...)
        # need each turn's own full outputs and keep the per-turn path below
        batches = scored_batches(
            lm,
            todo,
            encoded,
            batch_tokens=batch_tokens,
            upload_id=upload_id,
            job_id=job_id,
            counts=counts,
            params=params,
        )
        while True:
            _stop_if_asked(should_stop)
            with model_lock or nullcontext():
                step = next(batches, None)
            if step is None:
                return stored
            n_items, tables = step
            store.ingest_tables(model_record(lm), tables)
            stored += _turn_run_ids(tables["runs"])
            progress += n_items
            if on_progress:
                on_progress(progress)
    if counts is not None:
        counts.fallback_turns += len(todo)
    for batch in length_batches([e.n_tokens for e in encoded], batch_tokens):
        if should_stop and should_stop():
            raise JobCancelled
        with model_lock or nullcontext():
            scored = score_batch(lm, [encoded[i] for i in batch], params, extras=extras)
        stored += _save_turns(store, lm, scored, [todo[i] for i in batch], upload_id, job_id)
        progress += len(batch)
        if on_progress:
            on_progress(progress)
    return stored


def _save_turns(
    store: Store,
    lm: LoadedModel,
    scored: list[Any],
    items: list[WorkItem],
    upload_id: str | None,
    job_id: str | None,
) -> list[str]:
    """Store turns scored one pass each (the per-turn path) with their item and turn numbers."""
    return store.save_runs(
        lm,
        scored,
        upload_id=upload_id,
        job_id=job_id,
        turn_indices=[it.turn_index for it in items],
        item_indices=[it.index for it in items],
    )


def score_upload(
    lm: LoadedModel,
    store: Store,
    items: Sequence[WorkItem],
    *,
    settings: Settings,
    source: str,
    upload_id: str,
    job_id: str,
    engine: str = "local",
    ray_options: dict[str, Any] | None = None,
    extras: ExtraPlan | None = None,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_lock: threading.Lock | None = None,
    params: ScoringParams | None = None,
) -> dict[str, Any]:
    """Score an upload's items with the ``local`` or the ``ray`` engine; what was done.

    Both engines store the same rows and resume a job from what it already stored.
    ``ray_options`` are :class:`backend.distributed.RayOptions` fields (JSON-safe, as a job
    keeps them in its parameters).
    """
    if engine == "ray":
        from tokenprism.backend.audit.ray_engine import RayOptions, check_engine, score_items_ray

        check_engine(engine)
        defaults = {
            "batch_tokens": settings.batch_tokens,
            "address": settings.ray_address,
            "workers": settings.ray_workers,
        }
        options = RayOptions(**{**defaults, **(ray_options or {})})
        report = score_items_ray(
            lm,
            store,
            items,
            settings=settings,
            source=source,
            upload_id=upload_id,
            job_id=job_id,
            options=options,
            extras=extras.request if extras is not None else None,
            on_progress=on_progress,
            should_stop=should_stop,
            params=params,
        )
        return {"engine": "ray", **report.as_dict()}
    if engine != "local":
        raise UserError(f"unknown engine {engine!r}; choose local or ray")
    counts = OnePassCounts()
    stored = score_items(
        lm,
        store,
        items,
        source=source,
        upload_id=upload_id,
        job_id=job_id,
        batch_tokens=settings.batch_tokens,
        on_progress=on_progress,
        should_stop=should_stop,
        model_lock=model_lock,
        extras=extras,
        counts=counts,
        params=params,
    )
    return {"engine": "local", "runs_stored_by_this_attempt": len(stored), **counts.as_dict()}


# ---- ranking ------------------------------------------------------------------------------


def _spec(name: str, level: str) -> MetricSpec:
    try:
        spec = get_metric(name)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    if spec.level != level:
        raise UserError(f"{name!r} is a {spec.level} metric; choose a {level} metric")
    return spec


def _riskiest_first(spec: MetricSpec) -> bool:
    """True when larger values are riskier (sort descending)."""
    return spec.higher_means != "confident"


def upload_ingest(
    store: Store, upload_id: str
) -> tuple[dict[str, Any], list[WorkItem], IngestReport]:
    """An upload's row, items and ingest report, parsed again from its stored content.

    Parsed with ``skip_invalid``: a file validated strictly at upload has no invalid record, so
    it gives the very same items; one sent with ``skip_invalid`` gets its skipped records back
    in the report.
    """
    upload = get_upload(store, upload_id, content=True)
    if upload is None:
        raise UserError(f"no upload with id {upload_id!r}")
    if upload["format"] in LOGPROB_FORMATS:  # API logprobs files (backend.audit.logprob_jobs)
        turns = items_of(upload["content"], upload["format"], upload["filename"])
        n = len(turns)
        done = IngestReport(upload["format"], conversations=n, assistant_turns=n, to_score=n)
        return upload, [t.work_item() for t in turns], done
    items, report = parse_with_report(
        upload["content"], upload["format"], upload["filename"], skip_invalid=True
    )
    return upload, items, report


def upload_items(store: Store, upload_id: str) -> tuple[dict[str, Any], list[WorkItem]]:
    upload, items, _ = upload_ingest(store, upload_id)
    return upload, items


def rendering_facts(store: Store, upload_id: str) -> dict[str, tuple[str, int]]:
    """``run_id -> (rendering, truncated_tokens)`` of an upload's runs, read from their
    provenance inside DuckDB (the provenance holds the rendered chat: not parsed in Python)."""
    r = schema.runs
    rendering = sa.func.json_extract_string(r.c.provenance, "$.rendering")
    dropped = sa.func.json_extract_string(r.c.provenance, "$.truncated_tokens")
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.c.run_id, rendering, dropped).where(
                r.c.upload_id == upload_id,
                r.c.kind != CONTEXT_KIND,  # turns, not shared context
            )
        ).all()
    return {run_id: (how or "template", int(n or 0)) for run_id, how, n in rows}


def ingest_summary(report: IngestReport, facts: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """What the upload held and what became of it: the parse report plus, from the stored
    runs, how many turns were scored, truncated (and tokens dropped) and how each was rendered."""
    renderings = Counter(how for how, _ in facts.values())
    truncated = [n for _, n in facts.values() if n > 0]
    return {
        **report.as_dict(),
        "scored": len(facts),
        "truncated": len(truncated),
        "truncated_tokens": sum(truncated),
        "rendering": dict(renderings),
    }


def audit_summary(
    store: Store,
    upload_id: str,
    *,
    metric: str = DEFAULT_TURN_METRIC,
    token_metric: str = DEFAULT_TOKEN_METRIC,
    top: int = 20,
) -> dict[str, Any]:
    """Turns ranked by a sequence metric and the riskiest tokens by a token metric."""
    turn_spec, token_spec = _spec(metric, "sequence"), _spec(token_metric, "token")
    upload, items, report = upload_ingest(store, upload_id)
    by_index = {it.index: it for it in items}
    runs = store.list_runs(upload_id=upload_id, limit=len(items) + 1)
    facts = rendering_facts(store, upload_id)
    descending = _riskiest_first(turn_spec)
    turns = []
    for run in runs:
        item = by_index.get(run["item_index"])
        value = run["sequence"].get(metric)
        turns.append(
            {
                "run_id": run["run_id"],
                "item_index": run["item_index"],
                "conversation": item.conversation if item else None,
                "turn_index": run["turn_index"],
                "line": item.line if item else None,
                "prompt": run["prompt"],
                "response": run["response"],
                "n_tokens": run["n_response_tokens"],
                "risk": value,
                "sequence": run["sequence"],
                "rendering": facts.get(run["run_id"], ("template", 0))[0],
                "truncated_tokens": facts.get(run["run_id"], ("template", 0))[1],
            }
        )

    def turn_key(t: dict[str, Any]) -> tuple[bool, float]:
        v = t["risk"]
        missing = v is None or not math.isfinite(v)
        return (missing, 0.0 if missing else (-v if descending else v))

    turns.sort(key=turn_key)
    info = {t["run_id"]: t for t in turns}
    tokens = []
    for row in riskiest_tokens(store, upload_id, token_spec, top):
        turn = info.get(row["run_id"], {})
        tokens.append(
            {**row, "conversation": turn.get("conversation"), "turn_index": turn.get("turn_index")}
        )
    upload.pop("content", None)
    return {
        "upload": upload,
        "metric": metric,
        "higher_means": turn_spec.higher_means,
        "token_metric": token_metric,
        "token_higher_means": token_spec.higher_means,
        "n_scored": len(turns),
        "ingest": ingest_summary(report, facts),
        "turns": turns,
        "tokens": tokens,
    }


def riskiest_tokens(
    store: Store, upload_id: str, spec: MetricSpec, top: int
) -> list[dict[str, Any]]:
    t, r, tm = schema.tokens, schema.runs, schema.token_metrics
    if spec.name in CORE_TOKEN_METRICS:
        value = t.c[spec.name]
        query = sa.select(
            t.c.run_id, t.c.position, t.c.text, value.label("value"), t.c.prob, t.c.entropy
        )
        query = query.select_from(t.join(r, r.c.run_id == t.c.run_id))
    else:
        value = tm.c.value
        query = sa.select(
            t.c.run_id, t.c.position, t.c.text, value.label("value"), t.c.prob, t.c.entropy
        )
        query = query.select_from(
            t.join(r, r.c.run_id == t.c.run_id).join(
                tm,
                (tm.c.run_id == t.c.run_id)
                & (tm.c.position == t.c.position)
                & (tm.c.metric == spec.name),
            )
        )
    order = value.desc() if _riskiest_first(spec) else value.asc()
    query = query.where(r.c.upload_id == upload_id, ~t.c.is_prompt, value.is_not(None))
    query = query.order_by(order, t.c.run_id, t.c.position).limit(top)
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


# ---- exports ------------------------------------------------------------------------------

EXPORT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "html": "text/html; charset=utf-8",
}


def token_frame(store: Store, upload_id: str) -> pd.DataFrame:
    """Every response token of an upload, one row each, every stored token metric a column."""
    _, items = upload_items(store, upload_id)
    by_index = {it.index: it for it in items}
    t, r, tm = schema.tokens, schema.runs, schema.token_metrics
    with store.engine.connect() as conn:
        base = pd.DataFrame(
            conn.execute(
                sa.select(
                    r.c.run_id,
                    r.c.item_index,
                    r.c.turn_index,
                    t.c.position,
                    t.c.token_id,
                    t.c.text,
                    t.c.logprob,
                    t.c.prob,
                    t.c.rank,
                    t.c.entropy,
                )
                .select_from(t.join(r, r.c.run_id == t.c.run_id))
                .where(r.c.upload_id == upload_id, ~t.c.is_prompt)
                .order_by(r.c.item_index, t.c.position)
            ).all()
        )
        extra = pd.DataFrame(
            conn.execute(
                sa.select(tm.c.run_id, tm.c.position, tm.c.metric, tm.c.value)
                .select_from(tm.join(r, r.c.run_id == tm.c.run_id))
                .where(r.c.upload_id == upload_id)
            ).all(),
            columns=["run_id", "position", "metric", "value"],
        )
    if base.empty:
        raise UserError("this upload has no scored turns yet")
    if not extra.empty:
        wide = extra.pivot_table(index=["run_id", "position"], columns="metric", values="value")
        base = base.merge(wide.reset_index(), on=["run_id", "position"], how="left")
    base.insert(1, "conversation", base["item_index"].map(lambda i: by_index[i].conversation))
    base.insert(2, "line", base["item_index"].map(lambda i: by_index[i].line))
    base.insert(0, "upload_id", upload_id)
    return base


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``= + - @``, tab, CR first) gets a
    leading ``'``, the usual CSV-injection defence; numbers and other cells are unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def export_upload(
    store: Store,
    upload_id: str,
    fmt: str,
    *,
    metric: str = DEFAULT_TURN_METRIC,
    token_metric: str = DEFAULT_TOKEN_METRIC,
    max_turns: int | None = None,
) -> tuple[bytes, str, str]:
    """``(content, media type, file name)`` of an upload's export in ``fmt``.

    The HTML report shows at most ``max_turns`` turns (the riskiest first) and says so when it
    cuts; CSV text cells are made formula-safe (:func:`csv_safe`).
    """
    if fmt not in EXPORT_TYPES:
        raise UserError(f"unknown export format {fmt!r}; choose csv, parquet or html")
    name = f"tokenprism-audit-{upload_id[:12]}.{fmt}"
    if fmt == "html":
        from tokenprism.backend.audit.report import render_audit_report

        summary = audit_summary(store, upload_id, metric=metric, token_metric=token_metric)
        if max_turns is not None and len(summary["turns"]) > max_turns:
            summary["cut_note"] = (
                f"This report shows the {max_turns:,} riskiest of {len(summary['turns']):,} "
                "scored turns (the server's export_max_runs); the CSV and Parquet exports "
                "hold every token."
            )
            summary["turns"] = summary["turns"][:max_turns]
        tokens = {t["run_id"]: store.get_run(t["run_id"])["tokens"] for t in summary["turns"]}
        html = render_audit_report(summary, tokens, colour_metric=token_metric)
        return html.encode("utf-8"), EXPORT_TYPES[fmt], name
    frame = token_frame(store, upload_id)
    buffer = io.BytesIO()
    if fmt == "csv":
        safe = frame.apply(
            lambda col: col if pd.api.types.is_numeric_dtype(col) else col.map(csv_safe)
        )
        buffer.write(safe.to_csv(index=False).encode("utf-8"))
    else:
        frame.to_parquet(buffer, index=False)
    return buffer.getvalue(), EXPORT_TYPES[fmt], name


# ---- terminal summaries -------------------------------------------------------------------


def most_uncertain(run: dict[str, Any], metric: str, top: int) -> list[dict[str, Any]]:
    """The ``top`` response tokens that look most uncertain by ``metric``.

    The metric's registered direction decides the order: for "confident" metrics (prob,
    logprob, margin, ...) the smallest values come first.
    """
    spec = _spec(metric, "token")
    sign = 1.0 if _riskiest_first(spec) else -1.0
    candidates = [
        t
        for t in run["tokens"]
        if not t["is_prompt"]
        and isinstance(t.get(metric), int | float)
        and math.isfinite(t[metric])
    ]
    return sorted(candidates, key=lambda t: -sign * t[metric])[:top]


def summarise_turn(
    console: Console, item: WorkItem, run: dict[str, Any], *, rank_by: str, top: int
) -> None:
    seq = run["sequence"]
    prompt = item.messages[-2]["content"] if item.messages and len(item.messages) > 1 else ""
    console.print(
        f"[bold]conversation {item.conversation}, turn {item.turn_index + 1}[/] (line {item.line})"
        f"  run {run['run_id'][:12]}"
    )
    console.print(f"  prompt:   {prompt[:90]!r}", markup=False)
    console.print(f"  response: {run['response'][:90]!r}", markup=False)
    console.print(
        f"  {int(seq.get('n_tokens') or 0)} tokens"
        f" · GM confidence {seq['geometric_mean_confidence']:.3f}"
        f" · mean prob {seq['mean_prob']:.3f} · perplexity {seq['perplexity']:.2f}"
        f" · mean entropy {seq['mean_entropy']:.3f} nats · top-10 share {seq['gltr_top10']:.0%}",
        markup=False,
    )
    listed = ", ".join(
        f"{t['display']!r}@{t['position']} ({rank_by} {t[rank_by]:.2f}, p={t['prob']:.2f})"
        for t in most_uncertain(run, rank_by, top)
    )
    console.print(f"  most uncertain by {rank_by}: {listed}", markup=False)


def eta_seconds(started: float, done: int, total: int, skipped: int = 0) -> float | None:
    """Remaining seconds from the pace of the items done by this process."""
    worked = done - skipped
    if worked <= 0 or total <= done:
        return None if total > done else 0.0
    return (time.monotonic() - started) / worked * (total - done)


def upload_ingest_summary(store: Store, upload_id: str) -> dict[str, Any]:
    """:func:`ingest_summary` of a stored upload."""
    _, _, report = upload_ingest(store, upload_id)
    return ingest_summary(report, rendering_facts(store, upload_id))


def ingest_lines(summary: dict[str, Any], *, listed: int = 20) -> list[str]:
    """The upload summary as plain lines for a terminal: counts, then the skipped ones."""
    rendering = ", ".join(f"{n} {how}" for how, n in sorted(summary["rendering"].items()))
    lines = [
        f"{summary['conversations']} conversations ({summary['conversations_invalid']} invalid, "
        f"skipped) · {summary['assistant_turns']} assistant turns found · "
        f"{summary['to_score']} to score · {summary['scored']} scored · "
        f"{summary['skipped_count']} skipped · {summary['empty_messages']} empty messages",
        f"truncated to fit the context: {summary['truncated']} turns "
        f"({summary['truncated_tokens']} tokens dropped) · rendered: {rendering or 'none yet'}",
    ]
    for entry in summary["skipped"][:listed]:
        where = f"line {entry['line']}"
        if entry.get("conversation") is not None:
            where += f", conversation {entry['conversation']}"
        if entry.get("turn_index") is not None:
            where += f", turn {entry['turn_index'] + 1}"
        lines.append(f"  skipped {where}: {entry['reason']}")
    if summary["skipped_count"] > listed:
        lines.append(f"  … and {summary['skipped_count'] - listed} more skipped")
    return lines

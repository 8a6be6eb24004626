"""Rows of model diffs: ``diffs``, ``diff_runs``, ``diff_token_metrics``, ``diff_token_notes``.

A diff's per-token values are keyed ``(diff_id, run_id, position, metric)``: the diff id stands
for the compared model B, so diffs of one run against several models never collide with each
other nor with the run's own ``token_metrics``. A run's rows and its ``diff_runs`` row are
written in one transaction, so a resumed diff job skips exactly the runs already complete.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

import tokenprism.backend.store.schema as schema
from tokenprism.backend.errors import UserError
from tokenprism.backend.store.store import CONTEXT_KIND, Store


class DiffNotFound(UserError):
    """No diff has this id."""


def create_diff(
    store: Store,
    *,
    job_id: str | None,
    model_a: dict[str, Any],
    model_b: dict[str, Any],
    source: dict[str, Any],
    params: dict[str, Any],
) -> str:
    """Insert a diff header; ``model_a`` / ``model_b`` are the models' provenance dicts."""
    diff_id = uuid.uuid4().hex
    with store.writing() as conn:
        conn.execute(
            schema.diffs.insert().values(
                diff_id=diff_id,
                job_id=job_id,
                model_a=model_a["model"],
                model_a_revision=model_a["revision"],
                model_b=model_b["model"],
                model_b_revision=model_b["revision"],
                source=json.dumps(source),
                params=json.dumps(params),
                provenance=json.dumps({"a": model_a, "b": model_b}),
                created_at=datetime.now(UTC),
            )
        )
    return diff_id


def save_diff_run(
    store: Store,
    diff_id: str,
    run: dict[str, Any],
    metrics: pa.Table,
    notes: pa.Table,
) -> None:
    """One run's diff rows and its ``diff_runs`` row, in one transaction.

    ``metrics`` has columns position, metric, value; ``notes`` position, reason.
    """
    n = metrics.num_rows
    keyed = metrics.append_column("diff_id", pa.array([diff_id] * n, pa.string()))
    keyed = keyed.append_column("run_id", pa.array([run["run_id"]] * n, pa.string()))
    m = notes.num_rows
    notes = notes.append_column("diff_id", pa.array([diff_id] * m, pa.string()))
    notes = notes.append_column("run_id", pa.array([run["run_id"]] * m, pa.string()))
    with store.writing() as conn:
        raw = conn.connection.dbapi_connection
        if keyed.num_rows:
            Store._append(raw, "diff_token_metrics", keyed)
        if notes.num_rows:
            Store._append(raw, "diff_token_notes", notes)
        conn.execute(schema.diff_runs.insert().values(diff_id=diff_id, **run))


def set_diff_summary(store: Store, diff_id: str, summary: dict[str, Any]) -> None:
    with store.writing() as conn:
        conn.execute(
            schema.diffs.update()
            .where(schema.diffs.c.diff_id == diff_id)
            .values(summary=json.dumps(summary))
        )


def diffed_items(store: Store, diff_id: str) -> set[int]:
    """Item indices of the runs already complete in this diff (for resuming)."""
    d = schema.diff_runs
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(d.c.item_index).where(d.c.diff_id == diff_id)).all()
    return {int(r[0]) for r in rows}


def get_diff_header(store: Store, diff_id: str) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(schema.diffs).where(schema.diffs.c.diff_id == diff_id)).first()
    if row is None:
        raise DiffNotFound(f"no diff with id {diff_id!r}")
    out = dict(row._mapping)
    for key in ("source", "params", "provenance", "summary"):
        out[key] = json.loads(out[key]) if out[key] else None
    out["created_at"] = out["created_at"].isoformat()
    return out


def diff_run_rows(
    store: Store, diff_id: str, *, limit: int, offset: int = 0
) -> list[dict[str, Any]]:
    d = schema.diff_runs
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(d)
            .where(d.c.diff_id == diff_id)
            .order_by(d.c.item_index)
            .limit(limit)
            .offset(offset)
        ).all()
    return [dict(r._mapping) for r in rows]


def _members(conn: sa.Connection, run_id: str) -> tuple[list[str], int]:
    """The runs holding ``run_id``'s token rows, and how many tokens it has.

    A turn an audit scored in its conversation's one pass stores only its response tokens; the
    rest are the rows below its length of the context run and of the conversation's other turns
    (disjoint positions, same values: the model is causal). See ``Store._tokens_json``.
    """
    r = schema.runs
    link = conn.execute(
        sa.select(r.c.context_run_id, r.c.n_tokens).where(r.c.run_id == run_id)
    ).first()
    if link is None or link[0] is None:
        return [run_id], 2**31 - 1
    ctx = link[0]
    others = conn.execute(
        sa.select(r.c.run_id).where(sa.or_(r.c.run_id == ctx, r.c.context_run_id == ctx))
    ).all()
    return [run_id, *(str(o[0]) for o in others if o[0] != run_id)], int(link[1])


_TOKENS = """
WITH m AS (
    SELECT position,
           max(value) FILTER (WHERE metric = 'kl') AS kl,
           max(value) FILTER (WHERE metric = 'kl_rev') AS kl_rev,
           max(value) FILTER (WHERE metric = 'js') AS js,
           max(value) FILTER (WHERE metric = 'delta_logprob') AS delta_logprob,
           max(value) FILTER (WHERE metric = 'top1_agree') AS top1_agree,
           max(value) FILTER (WHERE metric = 'rank_b') AS rank_b,
           max(value) FILTER (WHERE metric = 'logprob_b') AS logprob_b
    FROM diff_token_metrics WHERE diff_id = :did AND run_id = :rid GROUP BY position)
SELECT t.position, t.text, t.is_prompt OR t.run_id <> :rid AS is_prompt,
       t.logprob AS logprob_a, m.kl, m.kl_rev, m.js,
       m.delta_logprob, m.top1_agree, m.rank_b, m.logprob_b, n.reason
FROM tokens t
LEFT JOIN m ON m.position = t.position
LEFT JOIN diff_token_notes n
    ON n.diff_id = :did AND n.run_id = :rid AND n.position = t.position
WHERE t.run_id IN :members AND t.position < :n
ORDER BY t.position
"""


def diff_tokens(store: Store, diff_id: str, run_id: str) -> list[dict[str, Any]]:
    """A run's tokens with this diff's values (null where not compared, with the reason)."""
    query = sa.text(_TOKENS).bindparams(sa.bindparam("members", expanding=True))
    with store.engine.connect() as conn:
        members, n = _members(conn, run_id)
        params = {"did": diff_id, "rid": run_id, "members": members, "n": n}
        rows = conn.execute(query, params).all()
    return [dict(r._mapping) for r in rows]


def diff_values(store: Store, diff_id: str) -> dict[str, list[float]]:
    """Every response token's kl, js, delta_logprob and top1_agree of a diff (for summaries)."""
    query = """
        SELECT m.metric, m.value FROM diff_token_metrics m
        JOIN tokens t ON t.run_id = m.run_id AND t.position = m.position
        WHERE m.diff_id = :did AND NOT t.is_prompt
          AND m.metric IN ('kl', 'js', 'delta_logprob', 'top1_agree')
        ORDER BY m.run_id, m.position
    """
    out: dict[str, list[float]] = {"kl": [], "js": [], "delta_logprob": [], "top1_agree": []}
    with store.engine.connect() as conn:
        for metric, value in conn.execute(sa.text(query), {"did": diff_id}):
            out[metric].append(float("nan") if value is None else float(value))
    return out


def most_moved_tokens(store: Store, diff_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The response tokens of a diff with the largest KL, across all its runs."""
    query = """
        SELECT m.run_id, m.position, t.text, m.value AS kl, t.logprob AS logprob_a,
               b.value AS logprob_b, r.turn_index, r.upload_id
        FROM diff_token_metrics m
        JOIN tokens t ON t.run_id = m.run_id AND t.position = m.position
        JOIN runs r ON r.run_id = m.run_id
        LEFT JOIN diff_token_metrics b ON b.diff_id = m.diff_id AND b.run_id = m.run_id
            AND b.position = m.position AND b.metric = 'logprob_b'
        WHERE m.diff_id = :did AND m.metric = 'kl' AND NOT t.is_prompt AND isfinite(m.value)
        ORDER BY m.value DESC, m.run_id, m.position
        LIMIT :limit
    """
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text(query), {"did": diff_id, "limit": limit}).all()
    return [dict(r._mapping) for r in rows]


def upload_run_ids(store: Store, upload_id: str, model_name: str | None = None) -> list[str]:
    """Runs of an upload in item order (optionally only those scored by ``model_name``)."""
    r, m = schema.runs, schema.models
    query = (
        sa.select(r.c.run_id)
        .join(m, m.c.model_key == r.c.model_key)
        .where(r.c.upload_id == upload_id, r.c.kind != CONTEXT_KIND)
        .order_by(r.c.item_index, r.c.turn_index, r.c.run_id)
    )
    if model_name is not None:
        query = query.where(m.c.name == model_name)
    with store.engine.connect() as conn:
        return [str(row[0]) for row in conn.execute(query)]


def run_tokens(store: Store, run_id: str) -> dict[str, Any]:
    """A stored run's whole token sequence, context included: its model name and revision,
    text, token ids, token texts, offsets and prompt flags (what a diff or a lens reads).

    A turn an audit scored in its conversation's one pass holds only its response rows; the
    context comes from the conversation's other runs (:func:`_members`) and counts as prompt.
    """
    r, m, t = schema.runs, schema.models, schema.tokens
    with store.engine.connect() as conn:
        head = conn.execute(
            sa.select(r.c.text, m.c.name, m.c.revision)
            .join(m, m.c.model_key == r.c.model_key)
            .where(r.c.run_id == run_id)
        ).first()
        if head is None:
            raise UserError(f"no run with id {run_id!r}")
        members, n = _members(conn, run_id)
        rows = conn.execute(
            sa.select(
                t.c.token_id,
                t.c.char_start,
                t.c.char_end,
                sa.or_(t.c.is_prompt, t.c.run_id != run_id),
                t.c.text,
            )
            .where(t.c.run_id.in_(members), t.c.position < n)
            .order_by(t.c.position)
        ).all()
    return {
        "run_id": run_id,
        "text": head[0],
        "model": head[1],
        "revision": str(head[2]),
        "input_ids": [int(x[0]) for x in rows],
        "texts": [str(x[4]) for x in rows],
        "offsets": [(int(x[1]), int(x[2])) for x in rows],
        "is_prompt": [bool(x[3]) for x in rows],
    }


def set_diff_models(
    store: Store, diff_id: str, model_a: dict[str, Any], model_b: dict[str, Any]
) -> None:
    """Record the loaded models' exact provenance (a job fills it in when it starts)."""
    with store.writing() as conn:
        conn.execute(
            schema.diffs.update()
            .where(schema.diffs.c.diff_id == diff_id)
            .values(
                model_a=model_a["model"],
                model_a_revision=model_a["revision"],
                model_b=model_b["model"],
                model_b_revision=model_b["revision"],
                provenance=json.dumps({"a": model_a, "b": model_b}),
            )
        )


def set_diff_job(store: Store, diff_id: str, job_id: str) -> None:
    with store.writing() as conn:
        conn.execute(
            schema.diffs.update().where(schema.diffs.c.diff_id == diff_id).values(job_id=job_id)
        )


def delete_diff(store: Store, diff_id: str) -> None:
    """Remove a diff and its rows (a diff whose job could not be queued)."""
    with store.writing() as conn:
        for table in (
            schema.diff_token_metrics,
            schema.diff_token_notes,
            schema.diff_runs,
            schema.diffs,
        ):
            conn.execute(table.delete().where(table.c.diff_id == diff_id))

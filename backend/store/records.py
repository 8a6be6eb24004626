"""Job and upload rows of the token store."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

import tokenprism.backend.store.schema as schema
from tokenprism.backend.store.store import Store

TERMINAL = ("done", "failed", "cancelled")
UNFINISHED = ("queued", "running")


def _row(row: sa.Row[Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row._mapping)
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    return out


# ---- jobs ---------------------------------------------------------------------------------


def create_job(store: Store, kind: str, params: dict[str, Any], total: int) -> str:
    job_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    with store.writing() as conn:
        conn.execute(
            schema.jobs.insert().values(
                job_id=job_id,
                kind=kind,
                status="queued",
                params=json.dumps(params),
                done=0,
                total=total,
                created_at=now,
                updated_at=now,
            )
        )
    return job_id


def update_job(store: Store, job_id: str, **values: Any) -> None:
    values["updated_at"] = datetime.now(UTC)
    if "result" in values and not isinstance(values["result"], str | None):
        values["result"] = json.dumps(values["result"])
    with store.writing() as conn:
        conn.execute(schema.jobs.update().where(schema.jobs.c.job_id == job_id).values(**values))


def get_job(store: Store, job_id: str) -> dict[str, Any] | None:
    with store.engine.connect() as conn:
        job = _row(
            conn.execute(sa.select(schema.jobs).where(schema.jobs.c.job_id == job_id)).first()
        )
    if job is not None:
        from tokenprism.backend.store.text import repair_text

        # repair_text: a row written before the API refused lone surrogates still reads
        job["params"] = repair_text(json.loads(job["params"]))
        job["result"] = repair_text(json.loads(job["result"])) if job.get("result") else None
    return job


def list_jobs(store: Store, *, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(schema.jobs.c.job_id).order_by(schema.jobs.c.created_at.desc()).limit(limit)
    if status:
        query = query.where(schema.jobs.c.status == status)
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(query)]
    return [job for job in (get_job(store, i) for i in ids) if job is not None]


def repair_job_text(store: Store) -> int:
    """Replace lone surrogates (``\\ud800`` escapes stored before the API refused them) in
    job parameters, results and errors with U+FFFD; return how many jobs were repaired.

    Such a row made every read of the job answer 500 (its JSON cannot be encoded as UTF-8).
    Idempotent and cheap: only rows whose text holds a ``\\u`` escape of the surrogate range
    (or a raw surrogate) are decoded.
    """
    from tokenprism.backend.store.text import repair_text, unencodable

    j = schema.jobs
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(j.c.job_id, j.c.params, j.c.result, j.c.error).where(
                # json.dumps writes a lone surrogate as a lower-case \\udXXX escape
                sa.or_(j.c.params.like("%\\ud%"), j.c.result.like("%\\ud%"))
            )
        ).all()
    repaired = 0
    for job_id, params, result, error in rows:
        values: dict[str, Any] = {}
        for column, text in (("params", params), ("result", result)):
            if text:
                decoded = json.loads(text)
                if unencodable(decoded) is not None:
                    values[column] = json.dumps(repair_text(decoded))
        if error and unencodable(error) is not None:
            values["error"] = repair_text(error)
        if values:
            with store.writing() as conn:
                conn.execute(j.update().where(j.c.job_id == job_id).values(**values))
            repaired += 1
    return repaired


def interrupt_unfinished(store: Store) -> list[str]:
    """Mark jobs left queued or running by a previous process as ``interrupted``."""
    with store.writing() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                sa.select(schema.jobs.c.job_id).where(schema.jobs.c.status.in_(UNFINISHED))
            )
        ]
        if ids:
            conn.execute(
                schema.jobs.update()
                .where(schema.jobs.c.job_id.in_(ids))
                .values(
                    status="interrupted",
                    error="the server stopped while this job was unfinished; resume it",
                    updated_at=datetime.now(UTC),
                )
            )
    return ids


def finished_items(store: Store, job_id: str) -> set[int]:
    """Item indices of a job whose runs are already stored."""
    r = schema.runs
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.c.item_index).where(r.c.job_id == job_id, r.c.item_index.is_not(None))
        )
        return {int(x[0]) for x in rows}


# ---- uploads ------------------------------------------------------------------------------


def create_upload(store: Store, **values: Any) -> str:
    upload_id = uuid.uuid4().hex
    with store.writing() as conn:
        conn.execute(
            schema.uploads.insert().values(
                upload_id=upload_id, created_at=datetime.now(UTC), **values
            )
        )
    return upload_id


def set_upload_job(store: Store, upload_id: str, job_id: str) -> None:
    with store.writing() as conn:
        conn.execute(
            schema.uploads.update()
            .where(schema.uploads.c.upload_id == upload_id)
            .values(job_id=job_id)
        )


def get_upload(store: Store, upload_id: str, *, content: bool = False) -> dict[str, Any] | None:
    u = schema.uploads
    cols = [c for c in u.c if content or c.name != "content"]
    with store.engine.connect() as conn:
        return _row(conn.execute(sa.select(*cols).where(u.c.upload_id == upload_id)).first())


def find_upload(store: Store, sha256: str, model: str) -> dict[str, Any] | None:
    u = schema.uploads
    cols = [c for c in u.c if c.name != "content"]
    with store.engine.connect() as conn:
        return _row(
            conn.execute(
                sa.select(*cols)
                .where(u.c.sha256 == sha256, u.c.model == model)
                .order_by(u.c.created_at)
            ).first()
        )


def list_uploads(store: Store, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    u = schema.uploads
    cols = [c for c in u.c if c.name != "content"]
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(*cols)
            .where(u.c.format != "labelled-jsonl")  # probe training data is not a transcript
            .order_by(u.c.created_at.desc())
            .limit(limit)
            .offset(offset)
        )
        return [r for r in (_row(x) for x in rows) if r is not None]

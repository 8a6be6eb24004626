"""Accepting an upload that carries API logprobs: validate, store the upload, submit its audit.

Called by ``POST /api/v1/uploads`` (and mirrored by ``tokenprism audit --source``) before the
plain-transcript path: a file with logprobs is parsed here whatever ``source`` asks, since
``source=model`` re-scores the same turns with the local model.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tokenprism.backend.audit.logprob_jobs import NO_MODEL, items_of, pack
from tokenprism.backend.errors import UserError
from tokenprism.backend.store.records import create_upload, find_upload, set_upload_job


def submit_logprob_upload(
    svc: Any,
    *,
    name: str,
    data: bytes,
    text: str,
    source: str,
    batch_input: str | None = None,
    vocab_size: int | None = None,
    model: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of the upload: 202 with the new job, or 200 for a duplicate."""
    if vocab_size is not None and not 1 <= vocab_size <= 10_000_000:
        raise UserError("vocab_size must be between 1 and 10,000,000")
    content, fmt = pack(text, batch_input)
    items = items_of(content, fmt, name, max_items=svc.settings.upload_max_items)
    model_name = NO_MODEL if source == "logprobs" else svc.model_name(model)
    if source != "logprobs":
        svc.model(model_name)  # refused now on a --no-model server, not when the job runs
    digest = hashlib.sha256(
        content.encode("utf-8") + f"|{source}|{vocab_size}".encode()
    ).hexdigest()
    existing = find_upload(svc.store, digest, model_name)
    if existing is not None:
        return 200, {
            "upload_id": existing["upload_id"],
            "job_id": existing["job_id"],
            "duplicate": True,
            "n_items": existing["n_items"],
            "format": existing["format"],
            "source": source,
            "message": f"this file was already uploaded as {existing['upload_id']}; "
            "nothing was re-scored",
        }
    upload_id = create_upload(
        svc.store,
        filename=name,
        sha256=digest,
        format=fmt,
        size_bytes=len(data),
        n_items=len(items),
        content=content,
        model=model_name,
    )
    params = {"upload_id": upload_id, "model": model_name, "source": source}
    if vocab_size is not None:
        params["vocab_size"] = vocab_size
    job_id = svc.jobs.submit("audit", params, len(items))
    set_upload_job(svc.store, upload_id, job_id)
    k = max(it.k for it in items)
    return 202, {
        "upload_id": upload_id,
        "job_id": job_id,
        "duplicate": False,
        "n_items": len(items),
        "format": fmt,
        "source": source,
        "k": k,
    }

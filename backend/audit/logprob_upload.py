"""Accepting an upload that carries API logprobs: validate, store the upload, submit its audit.

Called by ``POST /api/v1/uploads`` (and mirrored by ``tokenprism audit --source``) before the
plain-transcript path: a file with logprobs is parsed here whatever ``source`` asks, since
``source=model`` re-scores the same turns with the local model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from tokenprism.backend.audit.duplicates import refuse_duplicate
from tokenprism.backend.audit.logprob_ccp import (
    check_ccp_alternatives,
    logprob_ccp_plan,
    logprob_extra_request,
)
from tokenprism.backend.audit.logprob_jobs import NO_MODEL, items_of, pack
from tokenprism.backend.audit.logprobs import LogprobItem
from tokenprism.backend.errors import UserError
from tokenprism.backend.store.records import create_upload, set_upload_job


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
    extras: tuple[str | None, str | None, str | None] = (None, None, None),
) -> tuple[int, dict[str, Any]]:
    """``(202, body)`` of the new upload and its job; a duplicate raises ``DuplicateUpload``.

    ``extras`` = ``(metrics, judge, ccp_preset)`` as the upload form gives them.
    """
    if vocab_size is not None and not 1 <= vocab_size <= 10_000_000:
        raise UserError("vocab_size must be between 1 and 10,000,000")
    content, fmt = pack(text, batch_input)
    items = items_of(content, fmt, name, max_items=svc.settings.upload_max_items)
    model_name = NO_MODEL if source == "logprobs" else svc.model_name(model)
    # a local model is refused now on a --no-model server, not when the job runs
    lm = svc.model(model_name) if source != "logprobs" else None
    request = _extras(svc, lm, items, source, extras)
    salt = f"|{source}|{vocab_size}" + (
        f"|{json.dumps(request, sort_keys=True)}" if request else ""
    )
    digest = hashlib.sha256(content.encode("utf-8") + salt.encode()).hexdigest()
    refuse_duplicate(svc.store, digest, model_name)  # 409 naming the earlier upload
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
    if request:
        params["extras"] = request
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


def _extras(
    svc: Any,
    lm: Any,
    items: Sequence[LogprobItem],
    source: str,
    extras: tuple[str | None, str | None, str | None],
) -> dict[str, Any] | None:
    """The job's ``extras`` (an ExtraRequest as a dict), checked now: a judge or probe that
    cannot be had is refused at upload time, with nothing stored.

    ``source=model`` takes every family, as any transcript; ``logprobs`` and ``both`` take CCP
    only, computed over the file's top-k with the judge alone (no language model).
    """
    from tokenprism.backend.scoring.extras import extra_request, parse_metrics, plan_extras

    metrics, judge, preset = extras
    if source == "model":
        names = parse_metrics(metrics)
        if not names:
            if judge:
                raise UserError("a CCP judge needs metrics=ccp")
            return None
        request = extra_request(names, judge=judge, ccp_preset=preset)
        plan_extras(lm, request, svc.settings)
        return request.as_dict()
    found = logprob_extra_request(metrics, judge=judge, ccp_preset=preset)
    if found is None:
        return None
    check_ccp_alternatives(items)
    logprob_ccp_plan(found, svc.settings)  # loads the judge now: a missing one is a 4xx
    return found.as_dict()

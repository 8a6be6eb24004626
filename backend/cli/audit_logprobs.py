"""``tokenprism audit FILE --source logprobs|model|both`` for files carrying API logprobs.

``audit`` hands a file here first; a file without logprobs (and no ``--source``) comes back
untouched to the plain-transcript path. ``--source logprobs`` loads no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenprism.backend.cli.common import err, load_model, load_settings, out
from tokenprism.backend.errors import UserError


def audit_logprobs(
    store: Any,
    file: Path,
    data: bytes,
    source: str | None,
    model: str | None,
    extra: tuple[Path | None, int | None, Path | None],
) -> bool:
    """Audit ``file`` from its logprobs; False when it has none and no source was asked.

    ``extra`` = ``(batch input file, vocabulary size, export file)``.
    """
    batch_input, vocab_size, export = extra
    import hashlib

    from tokenprism.backend.audit.ingest import decode_text, read_text_file
    from tokenprism.backend.audit.logprob_jobs import NO_MODEL, choose_source, items_of, pack
    from tokenprism.backend.store.records import create_job, create_upload, set_upload_job

    text = decode_text(data, str(file))
    chosen = choose_source(text, source)
    if chosen is None and batch_input is None:
        return False
    chosen = chosen or "logprobs"
    batch = read_text_file(batch_input) if batch_input is not None else None
    content, fmt = pack(text, batch)
    items = items_of(content, fmt, str(file))
    lm = load_model(model) if chosen != "logprobs" else None
    upload_id = create_upload(
        store,
        filename=file.name,
        sha256=hashlib.sha256(content.encode()).hexdigest(),
        format=fmt,
        size_bytes=len(data),
        n_items=len(items),
        content=content,
        model=lm.name if lm is not None else NO_MODEL,
    )
    params = {"upload_id": upload_id, "model": lm.name if lm else NO_MODEL, "source": chosen}
    job_id = create_job(store, "audit", params, len(items))
    set_upload_job(store, upload_id, job_id)
    result = _run(store, items, chosen, lm, upload_id, job_id, vocab_size, str(file))
    _print(store, upload_id, len(items))
    if export is not None:
        from tokenprism.backend.audit.upload import export_upload

        body, _, _ = export_upload(store, upload_id, export.suffix.lstrip("."))
        export.write_bytes(body)
        err.print(f"wrote {export} ({len(body):,} bytes)")
    err.print(f"upload {upload_id}, job {job_id}: {len(items)} turns stored ({result})")
    return True


def _run(
    store: Any,
    items: list[Any],
    source: str,
    lm: Any,
    upload_id: str,
    job_id: str,
    vocab_size: int | None,
    name: str,
) -> dict[str, Any]:
    from tokenprism.backend.audit.logprob_jobs import run_logprob_audit
    from tokenprism.backend.audit.upload import score_items
    from tokenprism.backend.store.records import update_job

    batch = load_settings().batch_tokens
    update_job(store, job_id, status="running")
    try:
        if source == "model":
            work = [it.work_item() for it in items]
            stored = score_items(
                lm, store, work, source=name, upload_id=upload_id, job_id=job_id,
                batch_tokens=batch,
            )  # fmt: skip
            result: dict[str, Any] = {"source": "model", "runs": len(stored)}
        else:
            result = run_logprob_audit(
                store, items, source=source, upload_id=upload_id, job_id=job_id,
                vocab_size=vocab_size,
                rescore=lambda work: score_items(
                    lm, store, work, source=name, job_id=job_id, batch_tokens=batch
                ),
            )  # fmt: skip
    except BaseException as e:
        update_job(store, job_id, status="failed", error=str(e) or type(e).__name__)
        raise
    update_job(store, job_id, status="done", done=len(items), result=result)
    return result


def _print(store: Any, upload_id: str, n: int) -> None:
    """One line per turn: likelihood aggregates and the entropy band."""
    for run in store.list_runs(upload_id=upload_id, limit=n + 1):
        seq = run["sequence"]
        band = ""
        if seq.get("mean_entropy_lower") is not None:
            band = (
                f" · mean entropy in [{seq['mean_entropy_lower']:.3f}, "
                f"{seq['mean_entropy_upper']:.3f}] nats"
            )
        out.print(
            f"turn {run['item_index']}: {int(seq.get('n_tokens') or 0)} tokens"
            f" · GM confidence {seq['geometric_mean_confidence']:.3f}"
            f" · perplexity {seq['perplexity']:.2f}{band}",
            markup=False,
        )
    if not n:
        raise UserError("nothing to audit")

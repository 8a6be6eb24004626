"""``tokenprism add-metrics``: CCP / probe / SAR / SelfCheck added to a stored upload's turns."""

from __future__ import annotations

import sys
from typing import Any

import typer

from tokenprism.backend.cli.common import (
    CcpPresetOpt,
    ProbeOpt,
    err,
    load_settings,
    open_store,
    out,
)
from tokenprism.backend.errors import UserError


def add_metrics(
    upload_id: str = typer.Argument(
        ..., help="the upload (see `tokenprism runs` or the Audit page)"
    ),
    metrics: str = typer.Option(
        ..., "--metrics", help="families to add, comma-separated: ccp, probe, sar, selfcheck"
    ),
    ccp_preset: str | None = CcpPresetOpt,
    probe: str | None = ProbeOpt,
) -> None:
    """Add metric families to an upload's stored turns without re-scoring them.

    Idempotent and resumable: turns that have a family already are skipped, so running the
    same command again after an interruption finishes the rest.
    """
    from tqdm import tqdm

    from tokenprism.backend.enrich.jobs import prepare, run_job
    from tokenprism.backend.models.loader import get_model
    from tokenprism.backend.scoring.extras import parse_metrics
    from tokenprism.backend.store.records import get_upload

    settings = load_settings()
    families = parse_metrics(metrics)
    with open_store() as store:
        upload = get_upload(store, upload_id)
        if upload is None:
            raise UserError(f"no upload with id {upload_id!r}")

        def model(name: str) -> Any:
            return get_model(name, settings)

        prepared = prepare(
            store, settings, upload, families, model, ccp_preset=ccp_preset, probe=probe
        )
        if not prepared.todo:
            out.print(f"every turn of upload {upload_id} has {', '.join(families)} already")
            return
        total = len(prepared.run_ids)
        with tqdm(total=total, desc="adding metrics", unit="turn", file=sys.stderr) as bar:
            result = run_job(
                model(upload["model"]),
                store,
                settings,
                prepared.params,
                job_id=None,
                on_progress=lambda done: bar.update(done - bar.n),
            )
    err.print(
        f"added {', '.join(families)} to {result['added']} turns "
        f"({result['already_present']} had them already)"
    )

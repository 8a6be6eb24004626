"""Single runs: ``prepare``, ``score``, ``runs``, ``show``, ``sql`` and ``metrics``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.table import Table

from tokenprism.backend.cli.common import (
    CcpPresetOpt,
    JudgeOpt,
    MetricsOpt,
    ModelOpt,
    ProbeOpt,
    SamplesOpt,
    emit_run,
    err,
    extras_plan,
    load_model,
    load_settings,
    open_store,
    out,
)
from tokenprism.backend.cli.layers import LayersOpt, scoring_params
from tokenprism.backend.errors import UserError


def prepare(model: str | None = ModelOpt) -> None:
    """Convert / load a model once so later commands start fast (the default GGUF is cached)."""
    began = time.perf_counter()
    lm = load_model(model)
    err.print(
        f"ready: {lm.label} on {lm.device} ({lm.provenance()['dtype']}, "
        f"autocast {lm.provenance()['autocast']}), "
        f"context {lm.context_length} tokens, revision {lm.revision[:23]} "
        f"[{time.perf_counter() - began:.1f}s]"
    )


def score(
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="user prompt"),
    response: str | None = typer.Option(None, "--response", "-r", help="response to score"),
    text: str | None = typer.Option(None, "--text", "-t", help="raw text, scored exactly as given"),
    file: Path | None = typer.Option(None, "--file", "-f", help="UTF-8 file of raw text to score"),
    model: str | None = ModelOpt,
    no_template: bool = typer.Option(
        False, "--no-template", help="do not apply the chat template to --prompt/--response"
    ),
    system: str | None = typer.Option(None, "--system", help="system prompt (chat template)"),
    as_json: bool = typer.Option(False, "--json", help="print the run as JSON"),
    metrics: str | None = MetricsOpt,
    judge: str | None = JudgeOpt,
    ccp_preset: str | None = CcpPresetOpt,
    probe: str | None = ProbeOpt,
    samples: int = SamplesOpt,
    layers: str = LayersOpt,
) -> None:
    """Score one text in a single forward pass, store it and show the per-token metrics.

    ``--metrics ccp,probe,sar,selfcheck`` adds the uncertainty / hallucination family.
    """
    from tokenprism.backend.audit.ingest import read_text_file
    from tokenprism.backend.scoring.encoding import encode_pair, encode_text
    from tokenprism.backend.scoring.runner import score_one

    given = [x is not None for x in (text, file)] + [prompt is not None or response is not None]
    if sum(given) != 1:
        raise UserError("give exactly one of --prompt/--response, --text or --file")
    if (prompt is None) != (response is None):
        raise UserError("--prompt and --response go together")
    store = open_store()  # before loading the model: a locked database fails fast
    lm = load_model(model)
    if text is not None or file is not None:
        raw = text if text is not None else read_text_file(file)  # type: ignore[arg-type]
        enc = encode_text(lm.tokenizer, raw, context_length=lm.context_length)
    else:
        assert prompt is not None and response is not None
        enc = encode_pair(
            lm.tokenizer,
            prompt,
            response,
            context_length=lm.context_length,
            template=not no_template,
            system_prompt=system,
        )
    plan = extras_plan(lm, metrics, judge, probe, samples, ccp_preset)
    scored = score_one(lm, enc, scoring_params(layers), extras=plan)
    with store:
        run_id = store.save_runs(lm, [scored])[0]
        run = store.get_run(run_id)
    emit_run(run, as_json)


def runs(
    limit: int = typer.Option(20, help="how many runs to list"),
    model: str | None = typer.Option(None, help="only runs of this model name"),
    search: str | None = typer.Option(None, help="only runs whose text contains this"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List stored runs, newest first."""
    with open_store() as store:
        rows = store.list_runs(limit=limit, model=model, search=search)
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, default=str) + "\n")
        return
    if not rows:
        out.print('no runs stored yet: try `tokenprism score --text "..."`')
        return
    table = Table(title=f"runs ({len(rows)} shown)")
    for col in ("run_id", "created", "model", "kind", "tokens", "GM conf.", "mean H", "response"):
        table.add_column(col)
    for r in rows:
        seq = r["sequence"]
        gm, mh = seq.get("geometric_mean_confidence"), seq.get("mean_entropy")
        table.add_row(
            r["run_id"],
            r["created_at"][:19],
            r["model"],
            r["kind"],
            str(r["n_response_tokens"]),
            f"{gm:.3f}" if gm is not None else "—",
            f"{mh:.3f}" if mh is not None else "—",
            (r["response"] or "")[:40].replace("\n", "↵"),
        )
    out.print(table)


def show(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one stored run."""
    with open_store() as store:
        run = store.get_run(run_id)
    emit_run(run, as_json)


def sql(
    query: str,
    max_rows: int = typer.Option(1000, help="print at most this many rows"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run one read-only SQL query (SELECT / EXPLAIN) over the token store."""
    from tokenprism.backend.store.store import SqlLimits, run_read_only_sql

    limits = SqlLimits.from_settings(load_settings())
    columns, rows, truncated = run_read_only_sql(
        load_settings().db_path, query, max_rows=max_rows, limits=limits
    )
    if as_json:
        payload = {"columns": columns, "rows": [list(r) for r in rows], "truncated": truncated}
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, default=str) + "\n")
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    out.print(table)
    if truncated:
        err.print(f"(showing the first {max_rows} rows)")


def metrics() -> None:
    """List every metric TokenPrism computes, with unit and direction."""
    from tokenprism.analysis.registry import list_metrics

    table = Table("name", "level", "unit", "higher means", "description")
    for spec in list_metrics():
        table.add_row(spec.name, spec.level, spec.unit, spec.higher_means, spec.description)
    out.print(table)

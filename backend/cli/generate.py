"""``tokenprism generate``: sample a response, score and store it; ``--stream`` shows it live."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from tokenprism.backend.cli.common import (
    ModelOpt,
    emit_run,
    err,
    load_model,
    load_settings,
    open_store,
    out,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.limits import check_context

# entropy (nats) bands for the live colours: confident, unsure, lost
_BANDS = ((1.0, "green"), (2.5, "yellow"), (float("inf"), "red"))
_MARKERS = {"stop": "[bold red]⏹[/]", "mark": "[bold magenta]⚑[/]", "branch": "[bold cyan]⑂[/]"}


def _colour(entropy: float) -> str:
    return next(c for limit, c in _BANDS if entropy < limit)


def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="the user prompt"),
    model: str | None = ModelOpt,
    system: str | None = typer.Option(None, "--system", help="system prompt"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, max=1024),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, max=5.0),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    seed: int | None = typer.Option(None, "--seed", min=0),
    stream: bool = typer.Option(False, "--stream", help="print tokens live, coloured by entropy"),
    stop_when: list[str] = typer.Option(
        [], "--stop-when", help="METRIC>X[:PATIENCE][:ACTION], e.g. entropy>3:3:stop (repeatable)"
    ),
    probe: str | None = typer.Option(None, "--probe", help="probe name or 'auto' (live probe)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON line per token, then the run"),
) -> None:
    """Sample one response token by token, store it scored on the sampled ids."""
    from tokenprism.analysis.stream_rules import parse_rule
    from tokenprism.backend.probes.storage import probe_for
    from tokenprism.backend.sampling.stream import StreamParams, TokenStream, encode_ids
    from tokenprism.backend.sampling.types import prompt_ids
    from tokenprism.backend.scoring.runner import score_batch

    if 0.0 < temperature < 0.01:
        raise UserError("temperature must be 0 (greedy) or at least 0.01")
    try:
        rules = [parse_rule(s) for s in stop_when]
    except ValueError as e:
        raise UserError(str(e)) from None
    lm = load_model(model)
    ids, chat = prompt_ids(lm, prompt, system)
    check_context(lm, len(ids), max_new_tokens)  # as the API: before the model sees the prompt
    wants_probe = probe is not None or any(r.metric == "probe" for r in rules)
    name = None if probe in (None, "auto") else probe
    params = StreamParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        rules=rules,
        probe=probe_for(lm, load_settings(), name) if wants_probe else None,
    )
    tokens = TokenStream(lm, ids, params)
    for event in tokens:
        _show(event, live=stream, as_json=as_json)
    result = tokens.result
    if stream and not as_json:
        out.print()
        err.print(f"[dim]stopped: {result.stop_reason}, {len(result.token_ids)} tokens[/]")
    if not result.token_ids:
        raise UserError("nothing was generated")
    (scored,) = score_batch(lm, [encode_ids(lm, result, chat=chat, prompt=prompt, system=system)])
    scored.provenance["stream"] = {
        "rules": [r.describe() for r in rules],
        "fired": result.fired,
        "marks": result.marks,
        "branches": result.branches,
        "stop_reason": result.stop_reason,
    }
    store = open_store()
    try:
        run_id = store.save_runs(lm, [scored])[0]
        run = store.get_run(run_id)
    finally:
        store.close()
    if stream and not as_json:
        err.print(f"[dim]run {run_id}[/]")
    else:
        emit_run(run, as_json)


def _show(event: dict[str, Any], *, live: bool, as_json: bool) -> None:
    if as_json and live:
        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    if not live:
        return
    from rich.markup import escape

    for fired in event.get("rules", []):
        out.print(_MARKERS[fired["action"]], end="")
    out.print(f"[{_colour(event['entropy'])}]{escape(event['text'])}[/]", end="")

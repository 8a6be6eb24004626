"""``tokenprism diff --text T | RUN_ID | --upload ID --model A --against B [--json]``."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import typer
from rich.table import Table

from tokenprism.backend.cli.common import load_model, load_settings, open_store, out
from tokenprism.backend.errors import UserError

TOKEN_KEYS = (
    "position",
    "text",
    "is_prompt",
    "kl",
    "kl_rev",
    "js",
    "delta_logprob",
    "top1_agree",
    "rank_b",
    "prob_a",
    "prob_b",
    "reason",
)


def _source(run_id: str | None, text: str | None, upload: str | None) -> dict[str, Any]:
    from tokenprism.backend.diff.service import check_source

    given = [x is not None for x in (run_id, text, upload)]
    if sum(given) != 1:
        raise UserError("give exactly one input: --text T, a RUN_ID or --upload ID")
    if text is not None:
        return check_source({"kind": "text", "text": text})
    if upload is not None:
        return check_source({"kind": "upload", "upload_id": upload})
    return check_source({"kind": "run", "run_id": run_id})


def diff(
    run_id: str | None = typer.Argument(None, help="a stored run to diff (A = its model)"),
    text: str | None = typer.Option(None, "--text", "-t", help="a text to score and diff"),
    upload: str | None = typer.Option(None, "--upload", help="every run of an audited upload"),
    model: str | None = typer.Option(None, "--model", "-m", help="model A (default: default)"),
    against: str = typer.Option(..., "--against", "-b", help="model B, e.g. default@int8"),
    as_json: bool = typer.Option(False, "--json", help="print the diff as JSON"),
    max_runs: int = typer.Option(50, "--max-runs", help="runs printed (all are stored)"),
) -> None:
    """Per-token divergence (KL, JS, delta log-prob, top-1 agreement) of model B from A."""
    from tqdm import tqdm

    from tokenprism.backend.diff.service import (
        diff_result,
        run_diff,
        source_model,
        start_diff,
    )
    from tokenprism.backend.groups.core import json_safe

    source = _source(run_id, text, upload)
    with open_store() as store:
        owner = source_model(store, source)
        if owner is not None and model is not None and model != owner:
            raise UserError(f"run {run_id} was scored by {owner!r}; --model must be that model")
        lm_a = load_model(owner or model or load_settings().default_model)
        lm_b = load_model(against)
        diff_id = start_diff(store, lm_a, lm_b, source)
        with tqdm(desc="diff", file=sys.stderr, disable=source["kind"] != "upload") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            run_diff(store, lm_a, lm_b, diff_id, source, progress=progress)
        result = diff_result(store, diff_id, max_runs=max_runs)
    if as_json:
        for run in result["runs"]:
            run["tokens"] = [{k: t.get(k) for k in TOKEN_KEYS} for t in run["tokens"]]
        print(json.dumps(json_safe(result), default=str))
        return
    _print(result)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _print(result: dict[str, Any]) -> None:
    s = result["summary"] or {}
    out.print(f"diff {result['diff_id']}: A={result['a']['id']}  B={result['b']['id']}")
    out.print(
        f"tokens {s.get('n_tokens')} (compared {s.get('n_compared')})  "
        f"KL mean {_fmt(s.get('kl_mean'))}  p90 {_fmt(s.get('kl_p90'))}  "
        f"p99 {_fmt(s.get('kl_p99'))}  max {_fmt(s.get('kl_max'))}  "
        f"top-1 agreement {_fmt(s.get('top1_agree'), 3)}"
    )
    table = Table("run", "pos", "token", "KL", "p_A", "p_B")
    for t in s.get("most_moved", []):
        p_b = None if t["logprob_b"] is None else math.exp(t["logprob_b"])
        p_a = None if t["logprob_a"] is None else math.exp(t["logprob_a"])
        table.add_row(
            t["run_id"][:8],
            str(t["position"]),
            repr(t["text"]),
            _fmt(t["kl"]),
            _fmt(p_a),
            _fmt(p_b),
        )
    out.print(table)

"""``tokenprism lens`` and ``tokenprism attribute``: where a run's tokens came from."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from tokenprism.backend.cli.common import load_settings, out


def _run_and_model(run_id: str) -> tuple[Any, Any, Any]:
    from tokenprism.backend.lens.service import run_tokens
    from tokenprism.backend.models.loader import get_model
    from tokenprism.backend.store import Store

    settings = load_settings()
    store = Store(settings.db_path)
    run = run_tokens(store, run_id)
    return store, run, get_model(run.model, settings)


def lens(
    run_id: str = typer.Argument(..., help="a stored run"),
    as_json: bool = typer.Option(False, "--json", help="the stored lens as JSON"),
) -> None:
    """Logit lens of a stored run: each layer's reading of every produced token."""
    from tokenprism.backend.lens.service import compute_lens, read_lens

    store, run, lm = _run_and_model(run_id)
    with store:
        compute_lens(lm, store, run)
        data = read_lens(store, run_id)
    assert data is not None
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("position", "token", "decided at layer", "final rank", "top-1 by layer")
    for pos in data["positions"]:
        if run.is_prompt[pos["position"]]:
            continue
        tops = " ".join(repr(c["top_k"][0]["text"]) for c in pos["cells"][::4])
        decided = "never" if pos["decided_layer"] is None else str(pos["decided_layer"])
        table.add_row(
            str(pos["position"]), repr(pos["text"]), decided, str(pos["cells"][-1]["rank"]), tops
        )
    out.print(table)
    kl = ", ".join(f"{r['layer']}:{r['lens_kl_final']:.2f}" for r in data["layer_kl"])
    out.print(f"lens_kl_final by layer (nats): {kl}")


def attribute(
    run_id: str = typer.Argument(..., help="a stored run"),
    position: int = typer.Option(..., "--position", "-p", help="target token position"),
    end: int | None = typer.Option(None, "--end", help="last position of a target span"),
    method: str = typer.Option("ig", "--method", help="ig, grad_x_input or contrastive"),
    foil: str | None = typer.Option(
        None, "--foil", help="contrastive foil token text (default: the top alternative)"
    ),
    steps: int = typer.Option(32, "--steps", help="integrated-gradients points"),
    baseline: str = typer.Option("pad", "--baseline", help="pad or zero"),
    rule: str = typer.Option(
        "adaptive", "--rule", help="IG points: adaptive (where needed) or even (equally spaced)"
    ),
    top: int = typer.Option(10, "--top", help="rows shown without --json"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Attribute a token (or span) of a run to the earlier tokens; store the result."""
    from tokenprism.backend.lens.service import AttributionRequest, compute_attribution

    req = AttributionRequest(position, end, method, foil, None, steps, baseline, rule=rule)
    store, run, lm = _run_and_model(run_id)
    with store:
        result = compute_attribution(lm, store, run, req)
    if as_json:
        out.print_json(json.dumps(result))
        return
    out.print(
        f"target {result['target_text']!r} (positions {result['target_position']}.."
        f"{result['target_end']}), {method}: f(x)={result['f_x']:.4f}"
        + (
            f", f(baseline)={result['f_baseline']:.4f}, sum={result['total']:.4f}, "
            f"completeness_error={result['completeness_error']:.4f}"
            if result["f_baseline"] is not None
            else ""
        )
    )
    table = Table("position", "token", "attribution")
    ranked = sorted(result["attributions"], key=lambda r: -abs(r["value"]))[:top]
    for row in ranked:
        table.add_row(str(row["position"]), repr(row["text"]), f"{row['value']:+.4f}")
    out.print(table)

"""Terminal views of runs (rich): tokens coloured by entropy, token and metric tables."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from tokenprism.backend.display import visible_whitespace

ENTROPY_SCALE_NATS = 4.0  # entropies at or above this get the full "uncertain" colour


def entropy_style(entropy: float | None) -> str:
    """Background colour from green (certain) through yellow to red (uncertain)."""
    if entropy is None or not math.isfinite(entropy):
        return "dim"
    x = min(max(entropy / ENTROPY_SCALE_NATS, 0.0), 1.0)
    red = int(255 * min(1.0, 2 * x))
    green = int(255 * min(1.0, 2 * (1 - x)))
    return f"black on rgb({red},{green},60)"


def coloured_tokens(run: dict[str, Any], *, include_prompt: bool = False) -> Text:
    """The run's response tokens inline, each with a background coloured by its entropy."""
    text = Text()
    for tok in run["tokens"]:
        if tok["is_prompt"] and not include_prompt:
            continue
        piece = tok["text"].replace("\n", "↵\n")
        text.append(piece, style="dim" if tok["is_prompt"] else entropy_style(tok["entropy"]))
    return text


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def token_table(run: dict[str, Any], *, limit: int | None = None) -> Table:
    table = Table(title="response tokens", show_lines=False)
    for col in ("pos", "token", "logprob", "prob", "rank", "entropy", "margin", "top alternatives"):
        table.add_column(
            col, justify="right" if col not in ("token", "top alternatives") else "left"
        )
    shown = [t for t in run["tokens"] if not t["is_prompt"]][:limit]
    for tok in shown:
        alts = ", ".join(
            f"{visible_whitespace(a['text'])!s}:{a['prob']:.2f}" for a in tok["top_k"][:3]
        )
        table.add_row(
            str(tok["position"]),
            Text(tok["display"], style=entropy_style(tok["entropy"])),
            _fmt(tok["logprob"]),
            _fmt(tok["prob"]),
            _fmt(tok["rank"]),
            _fmt(tok["entropy"]),
            _fmt(tok.get("margin")),
            Text(alts),
        )
    return table


def sequence_table(run: dict[str, Any]) -> Table:
    table = Table(title="sequence metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(run["sequence"].items()):
        table.add_row(name, _fmt(value, 4))
    return table


def layer_line(run: dict[str, Any]) -> Text:
    """Effective rank of the layers that have one (the default scores the final layer only)."""
    ranks = [
        f"{layer['layer']}:{layer['effective_rank']:.1f}"
        for layer in run["layers"]
        if layer.get("effective_rank") is not None
    ]
    return Text("effective rank by layer  " + "  ".join(ranks), style="cyan")


def print_run(console: Console, run: dict[str, Any], *, token_limit: int | None = 200) -> None:
    model = run["model"]
    console.print(
        f"[bold]run {run['run_id']}[/]  model {model['id']} ({model['revision'][:19]})  "
        f"kind {run['kind']}"
    )
    console.print(Group(coloured_tokens(run)))
    console.print(
        Text(
            f"colour = entropy: green certain → red uncertain (≥ {ENTROPY_SCALE_NATS:g} nats)",
            style="italic",
        )
    )
    console.print(token_table(run, limit=token_limit))
    console.print(sequence_table(run))
    if run["layers"]:
        console.print(layer_line(run))

"""Per-turn audit summaries (terminal)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console

from analysis.registry import get_metric
from backend.errors import UserError
from backend.ingest import TurnItem


def most_uncertain(run: dict[str, Any], metric: str, top: int) -> list[dict[str, Any]]:
    """The ``top`` response tokens that look most uncertain by ``metric``.

    The metric's registered direction decides the order: for "confident" metrics (prob,
    logprob, margin, ...) the smallest values come first.
    """
    try:
        spec = get_metric(metric)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    if spec.level != "token":
        raise UserError(f"{metric!r} is a {spec.level} metric; rank tokens by a token metric")
    sign = -1.0 if spec.higher_means == "confident" else 1.0
    candidates = [
        t
        for t in run["tokens"]
        if not t["is_prompt"]
        and isinstance(t.get(metric), int | float)
        and math.isfinite(t[metric])
    ]
    return sorted(candidates, key=lambda t: -sign * t[metric])[:top]


def summarise_turn(
    console: Console, item: TurnItem, run: dict[str, Any], *, rank_by: str, top: int
) -> None:
    seq = run["sequence"]
    prompt = item.messages[-2]["content"] if len(item.messages) > 1 else ""
    console.print(
        f"[bold]conversation {item.conversation}, turn {item.turn_index + 1}[/] (line {item.line})"
        f"  run {run['run_id'][:12]}"
    )
    console.print(f"  prompt:   {prompt[:90]!r}", markup=False)
    console.print(f"  response: {run['response'][:90]!r}", markup=False)
    console.print(
        f"  {int(seq.get('n_tokens') or 0)} tokens"
        f" · GM confidence {seq['geometric_mean_confidence']:.3f}"
        f" · mean prob {seq['mean_prob']:.3f} · perplexity {seq['perplexity']:.2f}"
        f" · mean entropy {seq['mean_entropy']:.3f} nats · top-10 share {seq['gltr_top10']:.0%}",
        markup=False,
    )
    tokens = most_uncertain(run, rank_by, top)
    listed = ", ".join(
        f"{t['display']!r}@{t['position']} ({rank_by} {t[rank_by]:.2f}, p={t['prob']:.2f})"
        for t in tokens
    )
    console.print(f"  most uncertain by {rank_by}: {listed}", markup=False)

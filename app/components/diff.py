"""Model-diff display pieces: a KL-coloured token strip, a KL-along-the-response figure and the
rows of the most-moved table. Pure functions of the ``GET /diffs/{id}`` JSON.

The strip is inert markup (no scripts, no event attributes); every string from the data goes
through ``html.escape(..., quote=True)``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import plotly.graph_objects as go

from tokenprism.backend.display import NO_VALUE_COLOUR, ramp_colour, text_colour

STRIP_CSS = (
    ".tp-diff { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;"
    " font-size: .9em; line-height: 1.95; overflow-wrap: anywhere; color: #000; }"
    " .tp-diff .tok { padding: .1em .12em; margin: 0 1px 0 0; border-radius: 3px; }"
    " .tp-diff .tok.nc { border: 1px dashed #999; }"
    " .tp-diff .tok.pr { color: #8a8a8a; }"
)
VARIANT_HELPERS = {
    "int8 (weight-only)": "@int8",
    "bfloat16": "@bf16",
    "float16": "@fp16",
    "early exit @layers=K": "@layers=",
    "steering @steer=VECTOR:BETA[:LAYER]": "@steer=",
    "LoRA adapter @adapter=PATH": "@adapter=",
    "another model": "",
}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def model_b_name(model_a: str, helper: str, argument: str) -> str:
    """Model B from a helper: a variant suffix of A (with its argument) or another model."""
    suffix = VARIANT_HELPERS[helper]
    if helper == "another model":
        return argument.strip()
    return f"{model_a}{suffix}{argument.strip() if suffix.endswith('=') else ''}"


def kl_colour(kl: float | None, top: float) -> str:
    """The app's one sequential scale (viridis, :func:`backend.display.ramp_colour`): KL 0 is
    light (the models agree), ``top`` or more dark (moved most); grey when not compared."""
    if kl is None:
        return NO_VALUE_COLOUR
    x = min(max(kl / top, 0.0), 1.0) if top > 0 else 0.0
    return ramp_colour(x)


def _fmt(value: Any, digits: int = 4) -> str:
    v = _num(value)
    return "–" if v is None else f"{v:.{digits}g}"


def tooltip(tok: dict[str, Any]) -> str:
    lines = [
        f"#{tok.get('position')} {tok.get('text')!r}",
        f"KL(A||B) {_fmt(tok.get('kl'))}  JS {_fmt(tok.get('js'))}",
        f"p_A {_fmt(tok.get('prob_a'))}  p_B {_fmt(tok.get('prob_b'))}",
        f"Δ log p {_fmt(tok.get('delta_logprob'))}  rank in B {_fmt(tok.get('rank_b'))}",
        f"top-1 agree {_fmt(tok.get('top1_agree'))}",
    ]
    if tok.get("reason"):
        lines.append(f"not compared: {tok['reason']}")
    return "\n".join(lines)


def strip_html(tokens: Iterable[dict[str, Any]], *, include_prompt: bool = False) -> str:
    """The run's tokens coloured by KL (scale top = the largest KL shown), tooltips escaped."""
    tokens = [t for t in tokens if include_prompt or not t.get("is_prompt")]
    kls = [v for v in (_num(t.get("kl")) for t in tokens) if v is not None]
    top = max(kls) if kls else 0.0
    parts = []
    for t in tokens:
        kl = _num(t.get("kl"))
        cls = "tok" + (" nc" if kl is None else "") + (" pr" if t.get("is_prompt") else "")
        title = html.escape(tooltip(t), quote=True)
        text = html.escape(str(t.get("text", "")), quote=True).replace("\n", "↵<br>")
        background = kl_colour(kl, top)
        style = f"background:{background};color:{text_colour(background)}"
        parts.append(f'<span class="{cls}" style="{style}" title="{title}">{text}</span>')
    body = "<wbr>".join(parts) if parts else "<span>no tokens</span>"
    return f'<div class="tp-diff"><style>{STRIP_CSS}</style>{body}</div>'


def kl_figure(tokens: Sequence[dict[str, Any]]) -> go.Figure:
    """KL(A||B) and |Δ log p| along the response (x = token position)."""
    resp = [t for t in tokens if not t.get("is_prompt")]
    x = [t.get("position") for t in resp]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[_num(t.get("kl")) for t in resp],
            mode="lines+markers",
            name="KL(A||B)",
            text=[repr(t.get("text")) for t in resp],
            hovertemplate="#%{x} %{text}<br>KL %{y:.4g}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[None if (d := _num(t.get("delta_logprob"))) is None else abs(d) for t in resp],
            mode="lines",
            name="|Δ log p|",
            line={"dash": "dot"},
        )
    )
    fig.update_layout(
        title="KL along the response",
        xaxis_title="token position",
        yaxis_title="nats",
        height=300,
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
    )
    return fig


def most_moved_rows(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows of the most-moved table with a link to the turn in Explore."""
    rows = []
    for m in (summary or {}).get("most_moved", []):
        la, lb = _num(m.get("logprob_a")), _num(m.get("logprob_b"))
        rows.append(
            {
                "token": repr(m.get("text")),
                "KL": _num(m.get("kl")),
                "p_A": None if la is None else math.exp(la),
                "p_B": None if lb is None else math.exp(lb),
                "position": m.get("position"),
                "turn": m.get("turn_index"),
                "run": f"/explore?run={m.get('run_id')}",
            }
        )
    return rows

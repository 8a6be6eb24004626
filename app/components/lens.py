"""The logit lens heatmap, a lens cell's top-5, prompt attribution and block contributions.

Pure functions of the API's JSON (``GET /runs/{id}/lens``, ``POST /runs/{id}/attributions``):
plotly figures and inert HTML. Token text is escaped everywhere: in the attribution markup with
``html.escape(..., quote=True)``, in plotly tick and hover labels (plotly reads a subset of
HTML there) likewise.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from tokenprism.backend.display import (
    diverging_colour,
    format_exact,
    number,
    prose_html,
    text_colour,
    visible_whitespace,
)

LENS_VALUES = ("rank", "prob")
LENS_VALUE_LABELS = {"rank": "rank of the produced token (log10)", "prob": "its probability"}
# the lens heatmap shows at most this many token columns (the newest ones are kept)
MAX_COLUMNS = 256
ATTRIBUTION_CSS = (
    ".tp-attr { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif;"
    " line-height: 1.9; overflow-wrap: anywhere; white-space: pre-wrap; }"
    " .tp-attr .tok { padding: .1em 0; border-radius: 2px; }"
    " .tp-attr .tp-target { outline: 2px solid #111; outline-offset: 1px; }"
    " .tp-attr .tp-after { color: #9a9a9a; }"
    " .tp-attr-legend { font-size: .9em; margin: .2em 0 .5em 0; }"
)


def _label(position: int, text: Any) -> str:
    """A column label: position and the token with whitespace drawn, escaped for plotly."""
    shown = visible_whitespace("" if text is None else str(text))
    return html.escape(f"{position}: {shown}", quote=True)


def lens_columns(lens: dict[str, Any], tokens: Sequence[dict[str, Any]], *, prompt: bool) -> list:
    """The lens positions to draw: response tokens (and prompt tokens when ``prompt``)."""
    is_prompt = {t["position"]: bool(t.get("is_prompt")) for t in tokens}
    chosen = [p for p in lens.get("positions", []) if prompt or not is_prompt.get(p["position"])]
    return chosen[-MAX_COLUMNS:]


def _cell_value(cell: dict[str, Any], value: str) -> float | None:
    if value == "rank":
        rank = number(cell.get("rank"))
        return None if rank is None else math.log10(max(rank, 1.0))
    return number(cell.get("prob"))


def lens_figure(columns: Sequence[dict[str, Any]], value: str = "rank") -> go.Figure:
    """Layer x token heatmap of the produced token's rank (log10) or probability.

    Drawn as square markers, not a ``go.Heatmap``, so a click selects a cell (Streamlit's
    ``on_select`` reports points, which heatmap traces never emit); each point's customdata is
    ``[position, layer]``.

    Args:
        columns: lens positions as :func:`lens_columns` returns them.
        value: ``rank`` (bright = rank 1) or ``prob`` (bright = probability 1).
    """
    if value not in LENS_VALUES:
        raise ValueError(f"value must be one of {LENS_VALUES}, not {value!r}")
    xs, ys, zs, custom, hover = [], [], [], [], []
    for col in columns:
        label = _label(col["position"], col.get("text"))
        for cell in col["cells"]:
            top = (cell.get("top_k") or [{}])[0]
            xs.append(label)
            ys.append(cell["layer"])
            zs.append(_cell_value(cell, value))
            custom.append([col["position"], cell["layer"]])
            hover.append(
                f"{label}<br>layer {cell['layer']}: rank {cell.get('rank')}, "
                f"p {format_exact(cell.get('prob'))}<br>layer's top-1: "
                f"{_label(0, top.get('text', ''))[3:]}"
            )
    n_layers = 1 + max(ys, default=0)
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            marker={
                "symbol": "square",
                "size": max(6, min(16, 420 // max(n_layers, 1))),
                "color": zs,
                "colorscale": "Viridis",
                "reversescale": value == "rank",  # rank 1 and probability 1 are both bright
                "cmin": 0.0,
                "cmax": 1.0 if value == "prob" else None,
                "colorbar": {"title": {"text": "log10 rank" if value == "rank" else "prob"}},
            },
            # a clicked cell keeps the others readable (plotly dims unselected points to 0.2)
            selected={"marker": {"opacity": 1.0}},
            unselected={"marker": {"opacity": 0.75}},
            customdata=custom,
            text=hover,
            hovertemplate="%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis={"type": "category", "tickangle": -60, "title": "token"},
        yaxis={"title": "layer (0 = embeddings)", "dtick": 5},
        height=220 + 12 * n_layers,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        clickmode="event+select",
    )
    return fig


def selected_cell(event: Any) -> tuple[int, int] | None:
    """``(position, layer)`` of the point a Streamlit plotly selection event picked, if any."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        data = point.get("customdata")
        if isinstance(data, list | tuple) and len(data) == 2:
            return int(data[0]), int(data[1])
    return None


def top_k_frame(lens: dict[str, Any], position: int, layer: int) -> pd.DataFrame:
    """The top-5 of one lens cell: rank, token (whitespace drawn), probability."""
    for col in lens.get("positions", []):
        if col["position"] != position:
            continue
        for cell in col["cells"]:
            if cell["layer"] == layer:
                rows = [
                    {
                        "rank": i + 1,
                        "token": visible_whitespace(str(alt.get("text", ""))),
                        "prob": number(alt.get("prob")),
                    }
                    for i, alt in enumerate(cell.get("top_k") or [])
                ]
                return pd.DataFrame(rows, columns=["rank", "token", "prob"])
    return pd.DataFrame(columns=["rank", "token", "prob"])


def attribution_html(result: dict[str, Any]) -> str:
    """The attributed tokens coloured by their attribution (diverging, centred on 0).

    The scale is symmetric, ``[-m, m]`` with ``m`` the largest absolute attribution, so white
    means 0 and equal magnitudes get equal depth; the target token is outlined after them.
    """
    rows = result.get("attributions") or []
    values = [number(r.get("value")) for r in rows]
    top = max((abs(v) for v in values if v is not None), default=0.0) or 1.0
    spans = []
    for row, value in zip(rows, values, strict=True):
        colour = "#d9d9d9" if value is None else diverging_colour(0.5 + 0.5 * value / top)
        title = html.escape(
            f"position {row['position']}: attribution {format_exact(value)}", quote=True
        )
        spans.append(
            f'<span class="tok" style="background:{colour};color:{text_colour(colour)}" '
            f'title="{title}">{prose_html(row.get("text"))}</span>'
        )
    target = html.escape(str(result.get("target_text", "")), quote=False)
    spans.append(f'<span class="tok tp-target" title="the explained token">{target}</span>')
    return f'<style>{ATTRIBUTION_CSS}</style><div class="tp-attr">{"".join(spans)}</div>'


def attribution_legend_html(result: dict[str, Any]) -> str:
    """Legend of :func:`attribution_html`: the palette's ends and what the score is."""
    values = [v for v in (number(r.get("value")) for r in result.get("attributions") or []) if v]
    top = max((abs(v) for v in values), default=0.0)
    ramp = ", ".join(diverging_colour(i / 8) for i in range(9))
    score = (
        "log p(target) − log p(foil)"
        if result.get("score") == "logprob_diff"
        else "log-probability of the token"
    )
    return (
        f'<p class="tp-attr-legend">Colour = attribution to the {html.escape(score)}: '
        "blue = lowers it, white = 0, red = raises it; domain "
        f"[{-top:.3g}, {top:.3g}] "
        '<span style="display:inline-block;width:8em;height:.9em;vertical-align:middle;'
        f'background:linear-gradient(to right, {ramp})"></span></p>'
    )


def ranked_attributions(result: dict[str, Any], top: int = 10) -> pd.DataFrame:
    """The ``top`` tokens by absolute attribution: position, token, prompt flag, value."""
    rows = sorted(
        result.get("attributions") or [], key=lambda r: -abs(number(r.get("value")) or 0.0)
    )[:top]
    return pd.DataFrame(
        [
            {
                "position": r["position"],
                "token": visible_whitespace(str(r.get("text", ""))),
                "prompt": bool(r.get("is_prompt")),
                "attribution": number(r.get("value")),
            }
            for r in rows
        ],
        columns=["position", "token", "prompt", "attribution"],
    )


def blocks_figure(rows: Iterable[dict[str, Any]]) -> go.Figure:
    """Direct logit attribution as bars: the embedding, then attention and MLP per layer.

    The ``logit`` row (their sum with the norm frozen) goes into the title, not a bar.
    """
    blocks = list(rows)
    parts = [b for b in blocks if b.get("block") != "total"]
    total = next((b["value"] for b in blocks if b.get("block") == "total"), None)
    colours = {"embed": "#7f7f7f", "attn": "#1f77b4", "mlp": "#ff7f0e", "bias": "#8c564b"}
    fig = go.Figure()
    for kind, colour in colours.items():
        chosen = [b for b in parts if b.get("block") == kind]
        if not chosen:
            continue
        fig.add_bar(
            x=[html.escape(str(b["component"])) for b in chosen],
            y=[number(b.get("value")) for b in chosen],
            name=kind,
            marker_color=colour,
            hovertemplate="%{x}: %{y:.4g}<extra></extra>",
        )
    order = [html.escape(str(b["component"])) for b in parts]
    title = "direct logit attribution per block"
    if number(total) is not None:
        title += f" (they sum to the logit {number(total):.3f})"
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        xaxis={"type": "category", "categoryorder": "array", "categoryarray": order},
        yaxis_title="push on the token's logit",
        barmode="overlay",
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig

"""Plotly figures of a run's token metrics, layer geometry, GLTR buckets and SQL results.

Every function is pure: it takes API JSON and returns a ``go.Figure`` (or None). Text from the
data that plotly renders (hover labels, tick labels) is HTML-escaped, since plotly reads a
subset of HTML in them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tokenprism.backend.display import (
    metric_label,
    number,
    response_tokens,
    shown_number,
    visible_whitespace,
)

GLTR_LABELS = ("top 10", "top 100", "top 1000", "rest")
# GLTR's own palette: green, yellow, red, purple.
GLTR_COLOURS = ("#6fcf6f", "#f2d74e", "#f28b82", "#b39ddb")
SQL_BAR_ROWS = 200
LINE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
MAX_TOKEN_TICKS = 48  # token labels on the x-axis before they are thinned out
TICK_CHARS = 10


def _fmt(value: Any) -> str:
    finite = number(value)
    if finite is None:
        return "—"
    return str(int(finite)) if isinstance(value, int) else f"{finite:.6g}"


def _hover_text(text: Any) -> str:
    return html.escape(visible_whitespace("" if text is None else str(text)), quote=True)


def token_ticks(shown: Sequence[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """x-axis ticks naming the tokens: values 1..n and the token texts, at most ~48 of them.

    Args:
        shown: the response tokens drawn, in order (x = 1 for the first).

    Returns:
        ``(tickvals, ticktext)``: every token when there are few, else every k-th; texts have
        whitespace drawn visibly, are cut to 10 characters and HTML-escaped.
    """
    step = max(1, -(-len(shown) // MAX_TOKEN_TICKS))
    values = list(range(1, len(shown) + 1, step))
    texts = []
    for x in values:
        text = visible_whitespace(str(shown[x - 1].get("text") or ""))
        text = text if len(text) <= TICK_CHARS else text[: TICK_CHARS - 1] + "…"
        texts.append(html.escape(text, quote=True))
    return values, texts


def metric_lines_figure(tokens: Iterable[dict[str, Any]], metrics: Sequence[str]) -> go.Figure:
    """One line per metric along the response, the token texts on the x-axis.

    Args:
        tokens: a run's tokens (prompt tokens are skipped).
        metrics: token metrics to draw; with exactly two, the second gets its own y-axis on
            the right, otherwise all share one axis.

    Returns:
        The figure with a title; x is the response token's number (1 = first response
        token) labelled with the token's text, missing values leave gaps, and the hover shows
        the token's number in the run, its text (whitespace visible) and every drawn value.
    """
    shown = response_tokens(tokens)
    metrics = list(metrics)
    positions = list(range(1, len(shown) + 1))
    # customdata columns: token text, then every metric formatted (so None shows as "—").
    custom = [
        [_hover_text(t.get("text"))]
        + [_fmt(t.get(m)) for m in metrics]
        + [str(shown_number(t.get("position")) or "")]
        for t in shown
    ]
    values = "".join(
        f"<br>{html.escape(m, quote=True)} %{{customdata[{i}]}}"
        for i, m in enumerate(metrics, start=1)
    )
    number_at = len(metrics) + 1
    template = (
        f"token <b>%{{customdata[0]}}</b> (#%{{customdata[{number_at}]}} in the run)"
        f"{values}<extra></extra>"
    )
    dual = len(metrics) == 2
    fig = make_subplots(specs=[[{"secondary_y": True}]]) if dual else go.Figure()
    for i, metric in enumerate(metrics):
        trace = go.Scatter(
            x=positions,
            y=[number(t.get(metric)) for t in shown],
            customdata=custom,
            hovertemplate=template,
            mode="lines+markers",
            marker={"size": 4},
            line={"width": 1.5, "color": LINE_COLOURS[i % len(LINE_COLOURS)]},
            name=metric,
            connectgaps=False,
        )
        if dual:
            fig.add_trace(trace, secondary_y=i == 1)
        else:
            fig.add_trace(trace)
    if dual:
        fig.update_yaxes(title_text=metric_label(metrics[0]), secondary_y=False)
        fig.update_yaxes(title_text=metric_label(metrics[1]), secondary_y=True, showgrid=False)
    elif len(metrics) == 1:
        fig.update_yaxes(title_text=metric_label(metrics[0]))
    tickvals, ticktext = token_ticks(shown)
    names = ", ".join(html.escape(metric_label(m), quote=True) for m in metrics)
    fig.update_xaxes(tickmode="array", tickvals=tickvals, ticktext=ticktext, tickangle=-45)
    fig.update_layout(
        title={"text": f"{names} along the response", "x": 0, "font": {"size": 15}},
        xaxis_title="response token",
        hovermode="closest",
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return fig


def layer_rank_figure(layers: Iterable[dict[str, Any]] | None) -> go.Figure:
    """Effective rank of the response hidden states at every layer.

    Args:
        layers: ``[{"layer": int, "effective_rank": float}, ...]``; layer 0 is the embeddings.

    Returns:
        A line over the layers, sorted by layer; missing ranks leave gaps.
    """
    rows = sorted(
        (row for row in layers or [] if number(row.get("layer")) is not None),
        key=lambda row: row["layer"],
    )
    fig = go.Figure(
        go.Scatter(
            x=[row["layer"] for row in rows],
            y=[number(row.get("effective_rank")) for row in rows],
            mode="lines+markers",
            name="effective rank",
            hovertemplate="layer %{x}<br>effective rank %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title={
            "text": "Effective rank by layer",
            "x": 0,
            "font": {"size": 15},
        },
        xaxis_title="layer (0 = embeddings)",
        yaxis_title="effective rank",
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return fig


def gltr_counts(tokens: Iterable[dict[str, Any]] | None) -> list[int]:
    """How many response tokens fall in each GLTR bucket.

    Args:
        tokens: a run's tokens; prompt tokens and tokens without a bucket are skipped.

    Returns:
        Counts of buckets 0..3 (top 10, top 100, top 1000, rest).
    """
    counts = [0] * len(GLTR_LABELS)
    for tok in response_tokens(tokens):
        bucket = number(tok.get("gltr_bucket"))
        if bucket is not None and 0 <= int(bucket) < len(counts):
            counts[int(bucket)] += 1
    return counts


def gltr_figure(tokens: Iterable[dict[str, Any]] | None) -> go.Figure:
    """Bar chart of the response tokens' GLTR buckets (top-10 / 100 / 1000 / rest).

    Args:
        tokens: a run's tokens.

    Returns:
        One bar trace with x = the bucket labels and y = the counts; the hover gives shares.
    """
    counts = gltr_counts(tokens)
    total = sum(counts)
    shares = [f"{c / total:.1%}" if total else "—" for c in counts]
    fig = go.Figure(
        go.Bar(
            x=list(GLTR_LABELS),
            y=counts,
            marker_color=list(GLTR_COLOURS),
            customdata=shares,
            text=counts,
            textposition="auto",
            hovertemplate="%{x}: %{y} tokens (%{customdata})<extra></extra>",
            name="GLTR",
        )
    )
    fig.update_layout(
        title={
            "text": "GLTR rank buckets",
            "x": 0,
            "font": {"size": 15},
        },
        xaxis_title="rank bucket of the actual token",
        yaxis_title="tokens",
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return fig


def _numeric_columns(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[int]:
    """Indexes of columns whose non-null values are all numbers, with at least one value."""
    numeric = []
    for i in range(len(columns)):
        seen = False
        for row in rows:
            value = row[i] if i < len(row) else None
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                break
            seen = True
        else:
            if seen:
                numeric.append(i)
    return numeric


def _cell(row: Sequence[Any], i: int) -> Any:
    return row[i] if i < len(row) else None


def sql_chart(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> go.Figure | None:
    """A quick chart of a SQL result, or None when there is nothing numeric to draw.

    Args:
        columns: the result's column names.
        rows: the result rows (sequences in column order).

    Returns:
        None without rows or without a numeric column. A category and a number (the first
        column not numeric): bars of the first numeric column by the first column (first 200
        rows). One numeric column: its histogram. Two or more: a scatter of each other numeric
        column against the first.
    """
    if not columns or not rows:
        return None
    numeric = _numeric_columns(columns, rows)
    if not numeric:
        return None
    names = [html.escape(str(c), quote=True) for c in columns]
    fig = go.Figure()
    if numeric[0] != 0:
        y_col = numeric[0]
        shown = rows[:SQL_BAR_ROWS]
        fig.add_trace(
            go.Bar(
                x=[html.escape(str(_cell(r, 0)), quote=True) for r in shown],
                y=[number(_cell(r, y_col)) for r in shown],
                name=names[y_col],
            )
        )
        fig.update_layout(xaxis_title=names[0], yaxis_title=names[y_col])
    elif len(numeric) == 1:
        # one number per row: its distribution is what can be read (a sum would mean nothing)
        fig.add_trace(go.Histogram(x=[number(_cell(r, 0)) for r in rows], name=names[0]))
        fig.update_layout(xaxis_title=names[0], yaxis_title="rows", title=f"{names[0]}: histogram")
    else:
        x = [number(_cell(r, 0)) for r in rows]
        for y_col in numeric[1:]:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[number(_cell(r, y_col)) for r in rows],
                    mode="markers",
                    name=names[y_col],
                )
            )
        shown = ", ".join(names[c] for c in numeric[1:])
        fig.update_layout(xaxis_title=names[0], title=f"{shown} against {names[0]}")
    fig.update_layout(margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig

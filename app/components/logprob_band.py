"""Runs audited from API logprobs: their source and the entropy band the top-k allows."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from tokenprism.backend.display import visible_whitespace


def is_logprob_run(run: dict[str, Any]) -> bool:
    prov = run.get("provenance") or {}
    return isinstance(prov, dict) and prov.get("source") == "logprobs"


def source_caption(run: dict[str, Any]) -> str:
    """One line: where the run's numbers come from."""
    prov = run.get("provenance") or {}
    if not is_logprob_run(run):
        return "source: local model re-score"
    return (
        f"source: API logprobs ({prov.get('format')}) · model {prov.get('model') or 'unknown'}"
        f" · top-k = {prov.get('k')} · entropy upper bound assumes V = {prov.get('vocab_size')}"
        f" ({prov.get('vocab_size_from')}) · no hidden-state metrics"
    )


def entropy_band_figure(tokens: list[dict[str, Any]]) -> go.Figure:
    """Entropy bounds as a filled band, the renormalised top-k entropy as a line, per token."""
    rows = [t for t in tokens if not t.get("is_prompt") and t.get("entropy_lower") is not None]
    x = [t["position"] for t in rows]
    hover = [
        f"{visible_whitespace(str(t.get('text', '')))!r}<br>p = {t.get('prob', 0):.4f}"
        f"<br>entropy in [{t['entropy_lower']:.3f}, {t['entropy_upper']:.3f}] nats"
        for t in rows
    ]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=x, y=[t["entropy_lower"] for t in rows], mode="lines",
                   line={"width": 0.5, "color": "rgba(31,119,180,0.6)"}, name="entropy_lower",
                   hoverinfo="skip")
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=x, y=[t["entropy_upper"] for t in rows], mode="lines", fill="tonexty",
                   fillcolor="rgba(31,119,180,0.25)", line={"width": 0.5,
                   "color": "rgba(31,119,180,0.6)"}, name="entropy_upper", text=hover,
                   hovertemplate="%{text}<extra></extra>")
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=x, y=[t.get("entropy") for t in rows], mode="lines+markers",
                   line={"color": "#d62728", "width": 1}, marker={"size": 4},
                   name="entropy (top-k renormalised)", hoverinfo="skip")
    )  # fmt: skip
    fig.update_layout(
        height=300, margin={"l": 40, "r": 10, "t": 30, "b": 30},
        title="True entropy lies in the band (nats)", xaxis_title="token position",
        yaxis_title="nats", legend={"orientation": "h"},
    )  # fmt: skip
    return fig


def render_logprob_source(run: dict[str, Any], *, key: str) -> None:
    """The run's source and, for a logprobs run, its entropy band."""
    import streamlit as st  # the component module stays free of UI libraries on import

    st.caption(source_caption(run))
    if is_logprob_run(run):
        st.plotly_chart(entropy_band_figure(run["tokens"]), key=f"{key}.band")

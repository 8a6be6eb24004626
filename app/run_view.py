"""One run on screen: coloured tokens, token details, charts and sequence cards.

Used by the Explore page, the Audit drill-down and the Runs page, so a run looks the same
everywhere.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from tokenprism.app.components.charts import gltr_figure, layer_rank_figure, metric_lines_figure
from tokenprism.app.components.claims import claims_frame, judge_caption
from tokenprism.app.components.token_canvas import token_canvas_html
from tokenprism.app.components.token_view import available_token_metrics, legend_html, token_html
from tokenprism.app.ui import backend_errors, cached_run, client, sequence_cards
from tokenprism.backend.display import SCALE_MODE_LABELS

DEFAULT_METRIC = "entropy"


def render_run(run: dict[str, Any], *, key: str, default_metric: str | None = None) -> None:
    """Draw ``run``; ``key`` keeps widget keys unique when several runs are on one page.

    ``default_metric`` is the first choice of "Colour tokens by" when the run has it (else
    entropy); like any keyed widget, the selectbox then keeps what the user picked.
    """
    tokens = run["tokens"]
    response = [t for t in tokens if not t["is_prompt"]]
    model = run.get("model", {})
    st.caption(
        f"run `{run['run_id']}` · model `{model.get('id')}` · {len(response)} response tokens"
        f" · {run.get('created_at', '')[:19]}"
    )
    sequence_cards(run.get("sequence", {}))
    metrics = available_token_metrics(tokens)
    if not metrics:
        st.info("This run has no scored response tokens.")
        return
    left, right = st.columns([3, 1])
    preferred = default_metric if default_metric in metrics else DEFAULT_METRIC
    metric = left.selectbox(
        "Colour tokens by",
        metrics,
        index=metrics.index(preferred) if preferred in metrics else 0,
        key=f"{key}.metric",
    )
    with_prompt = right.toggle("show prompt tokens", key=f"{key}.show_prompt")
    mode_col, ws_col, instant_col = st.columns([3, 1, 1])
    instant = instant_col.toggle(
        "instant view",
        key=f"{key}.instant",
        help="Colour, scale, prompt tokens and the token pop-over change in the browser, "
        "without a round trip to the server.",
    )
    if instant:
        components.html(token_canvas_html(tokens, metrics, metric), height=520, scrolling=True)
    else:
        mode = mode_col.radio(
            "Colour scale",
            ["fixed", "run"],
            format_func=SCALE_MODE_LABELS.get,
            horizontal=True,
            key=f"{key}.scale",
        )
        whitespace = ws_col.toggle("show whitespace", key=f"{key}.whitespace")
        st.html(legend_html(metric, tokens, mode))
        st.html(
            token_html(tokens, metric, include_prompt=with_prompt, mode=mode, whitespace=whitespace)
        )
    caption = judge_caption(run)
    if caption:
        st.caption(caption)
    render_claims(run, key=key)

    positions = [t["position"] for t in response]
    picked = st.selectbox(
        "Token details",
        positions,
        format_func=lambda p: f"{p}: {tokens[p]['display']!r}",
        key=f"{key}.token",
    )
    if picked is not None:
        tok = tokens[picked]
        values = {m: tok.get(m) for m in ("token_id", *metrics)}
        cols = st.columns(2)
        cols[0].dataframe(pd.DataFrame([values]).T.rename(columns={0: "value"}))
        cols[1].dataframe(pd.DataFrame(tok["top_k"]), hide_index=True)

    chosen = st.multiselect(
        "Metrics along the response",
        metrics,
        default=[m for m in ("entropy", "surprisal_bits") if m in metrics],
        key=f"{key}.lines",
    )
    if chosen:
        st.plotly_chart(metric_lines_figure(tokens, chosen), key=f"{key}.lines_fig")
    charts = st.columns(2)
    if run.get("layers"):
        charts[0].plotly_chart(layer_rank_figure(run["layers"]), key=f"{key}.layers_fig")
    charts[1].plotly_chart(gltr_figure(tokens), key=f"{key}.gltr_fig")
    with st.expander("Provenance"):
        st.json(run.get("provenance", {}), expanded=False)


def render_claims(run: dict[str, Any], *, key: str) -> None:
    """The response's claims, worst first, and a button to add probe scores to the run."""
    frame = claims_frame(run)
    if frame.empty:
        return
    st.markdown("**Claims** (sentences, worst first)")
    st.dataframe(frame, hide_index=True, key=f"{key}.claims")
    has_probe = any(t.get("probe") is not None for t in run["tokens"])
    if has_probe:
        return
    with st.expander("Score this run with a hallucination probe"):
        with backend_errors():
            probes = [
                p for p in client().probes() if p["model_revision"] == run["model"]["revision"]
            ]
        if not probes:
            st.caption("No probe is trained for this model yet (see the Probes page).")
            return
        name = st.selectbox("Probe", [p["name"] for p in probes], key=f"{key}.probe_pick")
        if st.button("Apply probe", key=f"{key}.probe_apply"):
            with backend_errors(), st.spinner("Running the probe…"):
                fresh = client().apply_probe(run["run_id"], name)["run"]
            cached_run.clear()  # the stored run changed
            for state in ("explore.run",):
                if st.session_state.get(state, {}).get("run_id") == run["run_id"]:
                    st.session_state[state] = fresh
            st.rerun()

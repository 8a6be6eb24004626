"""One run on screen: coloured tokens, charts, sequence cards and claims.

Used by the Explore page, the Audit drill-down, the Runs page and the lab, so a run looks the
same everywhere. The token view is the in-browser canvas (app/components/token_canvas.py):
colour metric, scale, prompt tokens, whitespace markers and the token pop-over change there
without a round trip; the server only redraws when the run or the charted metrics change.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from tokenprism.app.components.charts import gltr_figure, layer_rank_figure, metric_lines_figure
from tokenprism.app.components.claims import claims_frame, judge_caption
from tokenprism.app.components.tables import run_tokens_frame
from tokenprism.app.components.token_canvas import token_canvas_html
from tokenprism.app.components.token_view import available_token_metrics
from tokenprism.app.ui import (
    backend_errors,
    cached_run,
    client,
    plain_markdown,
    sequence_cards,
    upload_domains,
)
from tokenprism.backend.display import metric_help, metric_label, shown_number

DEFAULT_METRIC = "entropy"


def _run_caption(run: dict[str, Any], n_response: int) -> str:
    model = run.get("model", {})
    source = ""
    if run.get("upload_id"):
        turn = shown_number(run.get("turn_index"))
        source = f" · upload `{str(run['upload_id'])[:8]}`" + (f" turn {turn}" if turn else "")
    return (
        f"run `{str(run['run_id'])[:8]}` · model `{model.get('id')}` · {n_response} response "
        f"tokens{source} · {run.get('created_at', '')[:19].replace('T', ' ')}"
    )


def render_tokens(run: dict[str, Any], metrics: list[str], metric: str) -> None:
    """The run's tokens as the in-browser canvas (scale across the upload when it has one)."""
    domains: dict[str, tuple[float, float]] = {}
    if run.get("upload_id"):
        every = upload_domains(str(run["upload_id"]), client().base_url)
        domains = {m: every[m] for m in metrics if m in every}
    st.iframe(
        token_canvas_html(run["tokens"], metrics, metric, upload_domains=domains),
        height="content",
        alt="the run's tokens coloured by a metric",
    )


def render_run(run: dict[str, Any], *, key: str, default_metric: str | None = None) -> None:
    """Draw ``run``; ``key`` keeps widget keys unique when several runs are on one page.

    ``default_metric`` is the first colour of the token view when the run has it (else
    entropy); the view's own menu changes it in the browser.
    """
    tokens = run["tokens"]
    response = [t for t in tokens if not t["is_prompt"]]
    st.caption(_run_caption(run, len(response)))
    sequence_cards(run.get("sequence", {}))
    metrics = available_token_metrics(tokens)
    if not metrics:
        st.info("This run has no scored response tokens.")
        return
    preferred = next(m for m in (default_metric, DEFAULT_METRIC, metrics[0]) if m in metrics)
    render_tokens(run, metrics, preferred)
    caption = judge_caption(run)
    if caption:
        st.caption(caption)
    render_claims(run, key=key)
    render_charts(run, metrics, key=key)
    with st.expander("Every token as a table"):
        st.dataframe(run_tokens_frame(tokens, metrics), hide_index=True, key=f"{key}.token_table")
    with st.expander("Provenance"):
        st.json(run.get("provenance", {}), expanded=False)


def render_charts(run: dict[str, Any], metrics: list[str], *, key: str) -> None:
    """Metric lines along the response (token text on the x-axis), layer ranks and GLTR."""
    tokens = run["tokens"]
    chosen = st.multiselect(
        "Metrics along the response",
        metrics,
        default=[m for m in ("entropy", "surprisal_bits") if m in metrics],
        format_func=metric_label,
        key=f"{key}.lines",
    )
    if chosen:
        st.plotly_chart(metric_lines_figure(tokens, chosen), key=f"{key}.lines_fig")
        st.caption(
            " · ".join(
                f"**{plain_markdown(metric_label(m))}**: {plain_markdown(metric_help(m))}"
                for m in chosen
            )
        )
    charts = st.columns(2)
    if run.get("layers"):
        charts[0].plotly_chart(layer_rank_figure(run["layers"]), key=f"{key}.layers_fig")
    charts[1].plotly_chart(gltr_figure(tokens), key=f"{key}.gltr_fig")


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

"""Where a run's tokens came from, in the run view: the logit lens and "explain this token".

The lens heatmap (layer x token, the produced token's rank or probability) comes from
``GET /runs/{id}/lens``, computed on demand; clicking a cell (or choosing it below the chart)
shows that layer's top-5 and, for a response token, explains it. "Explain this token"
attributes a response token to the earlier tokens (``POST /runs/{id}/attributions``) and shows
the prompt coloured by attribution and the block contributions as bars. Long runs and
expensive attributions come back as jobs, polled here until they finish.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from tokenprism.app.components.lens import (
    LENS_VALUE_LABELS,
    LENS_VALUES,
    attribution_html,
    attribution_legend_html,
    blocks_figure,
    lens_columns,
    lens_figure,
    ranked_attributions,
    selected_cell,
    top_k_frame,
)
from tokenprism.app.ui import backend_errors, client, poll_job

METHODS: dict[str, str] = {
    "ig": "Integrated Gradients",
    "grad_x_input": "gradient x input",
    "contrastive": "contrastive IG (vs the top alternative)",
}


@st.fragment(run_every=1.0)
def _job_progress(state_key: str) -> None:
    poll_job(state_key, "lens / attribution")


def _pending(state_key: str) -> bool:
    """Show a running job's progress (or its failure); True while it runs."""
    failed = st.session_state.pop(f"{state_key}.failed", None)
    if failed:
        st.error(failed)
    if st.session_state.get(state_key):
        _job_progress(state_key)
        return True
    return False


def render_lens(run: dict[str, Any], *, key: str) -> None:
    """The lens heatmap and "explain this token" for ``run`` (widget keys under ``key``)."""
    st.subheader("Where the tokens came from")
    run_id = run["run_id"]
    job_key = f"{key}.lens_job"
    if _pending(job_key):
        return
    with backend_errors():
        lens = client().lens(run_id)
    if lens is None:
        st.caption(
            "The logit lens reads every layer's residual stream through the final norm and head."
        )
        if st.button("Compute the logit lens", key=f"{key}.lens_compute"):
            with backend_errors(), st.spinner("Running the lens…"):
                reply = client().compute_lens(run_id)
            if "job_id" in reply:
                st.session_state[job_key] = {"job_id": reply["job_id"]}
            st.rerun()
    else:
        _lens_heatmap(run, lens, key=key)
    _explain(run, key=key)


def _lens_heatmap(run: dict[str, Any], lens: dict[str, Any], *, key: str) -> None:
    left, right = st.columns([3, 1])
    value = left.radio(
        "Lens colour",
        LENS_VALUES,
        format_func=LENS_VALUE_LABELS.get,
        horizontal=True,
        key=f"{key}.lens_value",
    )
    prompt = right.toggle("lens: prompt tokens too", key=f"{key}.lens_prompt")
    columns = lens_columns(lens, run["tokens"], prompt=prompt)
    if not columns:
        st.info("No lens positions to show.")
        return
    event = st.plotly_chart(
        lens_figure(columns, value),
        key=f"{key}.lens_fig",
        on_select="rerun",
        selection_mode="points",
    )
    positions = [c["position"] for c in columns]
    texts = {c["position"]: c["text"] for c in columns}
    pos_key, layer_key, click_key = f"{key}.lens_pos", f"{key}.lens_layer", f"{key}.lens_click"
    picked = selected_cell(event)
    # a new click sets the two choosers below (once: the chart keeps its selection on reruns)
    if picked is not None and picked[0] in texts and picked != st.session_state.get(click_key):
        st.session_state[click_key] = picked
        st.session_state[pos_key], st.session_state[layer_key] = picked
        if not run["tokens"][picked[0]]["is_prompt"]:
            # clicking a response token also explains it (once per token and method: a
            # stored attribution is shown, not recomputed)
            st.session_state[f"{key}.explain_pos"] = picked[0]
            st.session_state[f"{key}.explain_auto"] = True
    if st.session_state.get(pos_key) not in texts:
        st.session_state[pos_key] = positions[-1]
    st.session_state.setdefault(layer_key, lens["layers"] - 1)
    cols = st.columns([2, 1, 3])
    position = cols[0].selectbox(
        "Lens token", positions, format_func=lambda p: f"{p}: {texts[p]!r}", key=pos_key
    )
    layer = cols[1].selectbox("Lens layer", list(range(lens["layers"])), key=layer_key)
    decided = next(c["decided_layer"] for c in columns if c["position"] == position)
    cols[2].markdown(
        f"**Top-5 at layer {layer}** for {texts[position]!r} "
        f"({'decided at layer ' + str(decided) if decided is not None else 'never decided'})"
    )
    cols[2].dataframe(top_k_frame(lens, position, layer), hide_index=True)


def _explain(run: dict[str, Any], *, key: str) -> None:
    tokens = run["tokens"]
    response = [t["position"] for t in tokens if not t["is_prompt"] and t["position"] >= 1]
    if not response:
        return
    job_key = f"{key}.attr_job"
    cols = st.columns([2, 2, 1])
    position = cols[0].selectbox(
        "Explain this token",
        response,
        format_func=lambda p: f"{p}: {tokens[p]['text']!r}",
        key=f"{key}.explain_pos",
    )
    method = cols[1].selectbox(
        "Attribution method",
        list(METHODS),
        format_func=lambda m: METHODS[m],
        key=f"{key}.explain_method",
    )
    steps = cols[2].number_input(
        "IG steps", min_value=2, max_value=256, value=32, key=f"{key}.explain_steps"
    )
    go = st.button("Explain", key=f"{key}.explain_go", type="primary")
    auto = st.session_state.pop(f"{key}.explain_auto", False)
    if _pending(job_key):
        return
    with backend_errors():
        stored = client().attributions(run["run_id"], int(position))
    chosen = [a for a in stored if a["method"] == method]
    if go or (auto and not chosen):
        with backend_errors(), st.spinner("Attributing…"):
            reply = client().attribute(run["run_id"], int(position), method=method, steps=steps)
        if "job_id" in reply:
            st.session_state[job_key] = {"job_id": reply["job_id"]}
            st.rerun()
        with backend_errors():
            stored = client().attributions(run["run_id"], int(position))
        chosen = [a for a in stored if a["method"] == method]
    if chosen:
        _show_attribution(chosen[0], key=key)


def _show_attribution(result: dict[str, Any], *, key: str) -> None:
    err = result.get("completeness_error")
    facts = f"{METHODS.get(result['method'], result['method'])}: f(x) = {result['f_x']:.4f}"
    if result.get("f_baseline") is not None:
        facts += (
            f", f(baseline) = {result['f_baseline']:.4f}, sum of attributions = "
            f"{result['total']:.4f}, completeness error = {err:.3g} ({result['steps']} steps)"
        )
    st.caption(facts)
    st.html(attribution_legend_html(result) + attribution_html(result))
    left, right = st.columns([1, 2])
    left.dataframe(ranked_attributions(result), hide_index=True)
    if result.get("blocks"):
        right.plotly_chart(blocks_figure(result["blocks"]), key=f"{key}.blocks_fig")

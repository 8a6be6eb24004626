"""Explore: type a prompt, generate or score a response, see every token coloured by a metric."""

from __future__ import annotations

from typing import Any

import streamlit as st

from tokenprism.app.components.add_metrics import add_metrics_panel
from tokenprism.app.run_view import render_run
from tokenprism.app.ui import (
    CCP_PRESET_HELP,
    CCP_PRESETS,
    EXTRA_METRICS,
    backend_errors,
    client,
    fetch_run,
)

st.title("Explore")
st.caption(
    "Generate a response (or paste one to score) and see which tokens the model was unsure of. "
    "Every response is scored in one teacher-forced pass."
)

# Input on the left, the result on the right: a run's tokens are in view without scrolling.
inputs, result = st.columns([2, 5], gap="medium")
with inputs, st.form("explore.form", border=False):
    prompt = st.text_area(
        "Prompt", key="explore.prompt", height=110, placeholder="What is the capital of Australia?"
    )
    response = st.text_area(
        "Response to score (leave empty to generate one)", key="explore.response", height=90
    )
    model = st.text_input("Model", key="explore.model", placeholder="server default")
    with st.expander("Sampling"):
        cols = st.columns(2)
        temperature = cols[0].number_input("Temperature", 0.0, 5.0, 0.7, 0.1, key="explore.temp")
        top_p = cols[1].number_input("Top-p", 0.05, 1.0, 0.95, 0.05, key="explore.top_p")
        max_new = cols[0].number_input("Max new tokens", 1, 1024, 64, 8, key="explore.max_new")
        seed = cols[1].number_input("Seed", 0, 2**31 - 1, 0, 1, key="explore.seed")
    template = st.checkbox("Use the model's chat template", value=True, key="explore.template")
    extras = st.multiselect(
        "Uncertainty & hallucination metrics",
        EXTRA_METRICS,
        key="explore.extras",
        help="CCP (NLI judge over alternatives), probe (hallucination probe), SAR "
        "(relevance-weighted surprisal), selfcheck (samples the model 5 more times).",
    )
    ccp_preset = st.selectbox(
        "CCP preset", CCP_PRESETS, key="explore.ccp_preset", help=CCP_PRESET_HELP
    )
    submitted = st.form_submit_button("Run", type="primary", width="stretch")

if submitted:
    if not prompt.strip() and not response.strip():
        inputs.warning("Type a prompt (and optionally a response).")
    else:
        with (
            inputs,
            backend_errors(),
            st.spinner("Scoring…" if response.strip() else "Generating…"),
        ):
            if response.strip():
                fresh = client().score(
                    prompt=prompt,
                    response=response,
                    model=model or None,
                    template=template,
                    metrics=extras,
                    ccp_preset=ccp_preset,
                )
            else:
                fresh = client().generate(
                    prompt,
                    model=model or None,
                    n=1,
                    max_new_tokens=int(max_new),
                    temperature=temperature,
                    top_p=top_p,
                    seed=int(seed),
                    metrics=extras,
                    ccp_preset=ccp_preset,
                )[0]
        st.session_state["explore.run"] = fresh
        st.query_params["run"] = fresh["run_id"]

run: dict[str, Any] | None = st.session_state.get("explore.run")
wanted = st.query_params.get("run")
if wanted and (run is None or run["run_id"] != wanted):
    with result, backend_errors():
        run = fetch_run(wanted)
    st.session_state["explore.run"] = run

with result:
    if run is None:
        st.info(
            "No run yet: type a prompt on the left and press Run, or open a run from the Runs page."
        )
    else:
        if run.get("upload_id"):  # a stored turn: read through the cache an add-metrics job clears
            with backend_errors():
                run = fetch_run(run["run_id"])
            st.session_state["explore.run"] = run
        render_run(run, key="explore")
        if run.get("upload_id"):
            with st.expander("Add metrics to this stored turn"):
                add_metrics_panel(run["upload_id"], key="explore", run_ids=[run["run_id"]])

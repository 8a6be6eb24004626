"""Diff: what a fine-tune, a quantisation or a steering vector changed, token by token."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from tokenprism.app.components.diff import (
    VARIANT_HELPERS,
    kl_figure,
    model_b_name,
    most_moved_rows,
    strip_html,
)
from tokenprism.app.ui import JOB_TERMINAL, backend_errors, client

st.title("Diff")
st.caption(
    "Score the same text under model A and model B and see where B's next-token distribution "
    "moved: KL(A‖B) per token, JS, Δ log-probability and top-1 agreement."
)

with backend_errors():
    default_model = client().health()["default_model"]

with st.form("diff.form"):
    cols = st.columns([2, 2, 2])
    model_a = cols[0].text_input("Model A", key="diff.model_a", placeholder=default_model)
    helper = cols[1].selectbox("Model B", list(VARIANT_HELPERS), key="diff.helper")
    argument = cols[2].text_input(
        "Argument / other model",
        key="diff.arg",
        help="K for @layers=K, VECTOR:BETA[:LAYER] for @steer=, a path for @adapter=, "
        "or a model name when B is another model",
    )
    kind = st.radio("Input", ["Text", "Run", "Upload"], horizontal=True, key="diff.kind")
    text = st.text_area("Text", key="diff.text", height=100)
    ref = st.text_input("Run id or upload id", key="diff.ref")
    submitted = st.form_submit_button("Run diff", type="primary")

if submitted:
    a_name = model_a.strip() or default_model
    b_name = model_b_name(a_name, helper, argument)
    body: dict[str, Any] = {"against": b_name}
    if kind == "Text":
        body["text"] = text
        body["model"] = a_name
    elif kind == "Run":
        body["run_id"] = ref.strip()
    else:
        body["upload_id"] = ref.strip()
        body["model"] = a_name
    if not b_name or (kind == "Text" and not text.strip()) or (kind != "Text" and not ref.strip()):
        st.warning("Give model B and the input (a text, or a run / upload id).")
    else:
        with backend_errors():
            created = client().create_diff(**body)
        st.session_state["diff.pending"] = created
        st.query_params["diff"] = created["diff_id"]


@st.fragment(run_every=1.0)
def wait_for(diff_id: str, job_id: str) -> None:
    with backend_errors():
        job = client().job(job_id)
    if job["status"] in JOB_TERMINAL:
        st.session_state.pop("diff.pending", None)
        if job["status"] != "done":
            st.session_state["diff.failed"] = f"Diff {job['status']}: {job.get('error') or ''}"
        st.rerun()
    total = max(job["total"], 1)
    st.progress(job["done"] / total, text=f"diff {diff_id[:8]}: {job['status']}")


pending = st.session_state.get("diff.pending")
if pending:
    wait_for(pending["diff_id"], pending["job_id"])
    st.stop()
if failed := st.session_state.pop("diff.failed", None):
    st.error(failed)

diff_id = st.query_params.get("diff")
if not diff_id:
    st.info("No diff yet: pick models A and B and an input above, then press Run diff.")
    st.stop()

with backend_errors():
    diff = client().diff(diff_id)
summary = diff.get("summary") or {}
st.subheader(f"{diff['a']['id']}  →  {diff['b']['id']}")
cards = [
    ("mean KL", summary.get("kl_mean")),
    ("p90 KL", summary.get("kl_p90")),
    ("p99 KL", summary.get("kl_p99")),
    ("max KL", summary.get("kl_max")),
    ("top-1 agreement", summary.get("top1_agree")),
]
for col, (label, value) in zip(st.columns(len(cards)), cards, strict=True):
    col.metric(label, "–" if value is None else f"{value:.4g}")
st.caption(
    f"{summary.get('n_compared', 0)} of {summary.get('n_tokens', 0)} response tokens compared · "
    f"B revision `{diff['b']['revision']}`"
)

runs = diff.get("runs") or []
if runs:
    labels = [f"{i}: run {r['run_id'][:8]} ({r['n_tokens']} tokens)" for i, r in enumerate(runs)]
    pick = st.selectbox("Run", range(len(runs)), format_func=lambda i: labels[i], key="diff.run")
    run = runs[pick]
    st.markdown("**Tokens coloured by KL(A‖B)** (hover: A/B probabilities; dashed: not compared)")
    st.html(strip_html(run["tokens"]))
    st.plotly_chart(kl_figure(run["tokens"]), key="diff.kl")
    notes = [t for t in run["tokens"] if t.get("reason") and not t.get("is_prompt")]
    if notes and not run.get("same_tokens", True):
        with st.expander(f"{len(notes)} tokens without KL, and why"):
            st.dataframe(
                pd.DataFrame(
                    [
                        {"position": t["position"], "token": repr(t["text"]), "reason": t["reason"]}
                        for t in notes
                    ]
                ),
                hide_index=True,
            )

st.markdown("**Most-moved tokens**")
rows = most_moved_rows(summary)
if rows:
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={"run": st.column_config.LinkColumn("run", display_text="open turn")},
        key="diff.moved",
    )

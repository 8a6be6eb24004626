"""Runs: browse, search and filter stored runs; compare two token by token; delete."""

from __future__ import annotations

import streamlit as st

from tokenprism.app.components.compare import align_runs, compare_frame, compare_html
from tokenprism.app.components.tables import runs_frame
from tokenprism.app.components.token_view import available_token_metrics
from tokenprism.app.run_view import render_run
from tokenprism.app.ui import backend_errors, client, fetch_run

PAGE = 50

st.title("Runs")
cols = st.columns([3, 1, 2, 1])
q = cols[0].text_input("Search text", key="runs.q")
kind = cols[1].selectbox(
    "Kind", ["", "chat", "pair", "text"], format_func=lambda k: k or "any", key="runs.kind"
)
model = cols[2].text_input("Model", key="runs.model")
page = cols[3].number_input("Page", 1, 10_000, 1, key="runs.page")
with backend_errors():
    listing = client().runs(
        q=q or None,
        kind=kind or None,
        model=model or None,
        limit=PAGE,
        offset=(int(page) - 1) * PAGE,
    )
if not listing["runs"]:
    st.info("No runs match. Score something on the Explore page or upload a transcript.")
    st.stop()
st.caption(
    f"{listing['total']} runs · page {page} of {(listing['total'] - 1) // PAGE + 1}. "
    "Select one run to open it, two to compare them."
)
frame = runs_frame(listing["runs"])
picked = st.dataframe(
    frame,
    hide_index=True,
    on_select="rerun",
    selection_mode="multi-row",
    key="runs.table",
    column_config={
        "id": st.column_config.TextColumn("id", help="the run id's first 8 characters"),
        "prompt": st.column_config.TextColumn("prompt", width="medium"),
        "response": st.column_config.TextColumn("response", width="medium"),
        "GM confidence": st.column_config.NumberColumn("GM confidence", format="%.3f"),
        "mean entropy": st.column_config.NumberColumn("mean entropy", format="%.3f"),
        "perplexity": st.column_config.NumberColumn("perplexity", format="%.2f"),
    },
)
rows = picked.selection.rows if picked is not None else []
selected = [frame.iloc[r]["run_id"] for r in rows]

if len(selected) == 1:
    with backend_errors():
        run = fetch_run(selected[0])
    render_run(run, key="runs.one")
elif len(selected) == 2:
    with backend_errors():
        first, second = fetch_run(selected[0]), fetch_run(selected[1])
    shared = [
        m
        for m in available_token_metrics(first["tokens"])
        if m in available_token_metrics(second["tokens"])
    ]
    metric = st.selectbox("Compare by", shared or ["entropy"], key="runs.compare_metric")
    threshold = st.slider("Highlight differences above", 0.0, 5.0, 0.5, 0.1, key="runs.thresh")
    aligned = align_runs(first["tokens"], second["tokens"])
    st.caption(
        f"A = `{first['run_id']}` ({first['model']['id']}), "
        f"B = `{second['run_id']}` ({second['model']['id']})"
    )
    st.html(compare_html(aligned, metric, threshold=threshold))
    st.dataframe(compare_frame(aligned, metric), hide_index=True)
elif len(selected) > 2:
    st.warning("Select one run to open it or two to compare them.")

if selected:
    with st.expander(f"Delete {len(selected)} selected run(s)"):
        sure = st.checkbox("Yes, delete them and all their rows", key="runs.sure")
        if st.button("Delete", disabled=not sure, key="runs.delete"):
            with backend_errors():
                for run_id in selected:
                    client().delete_run(run_id)
            st.success(f"Deleted {len(selected)} run(s).")
            st.rerun()

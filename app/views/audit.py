"""Audit: upload transcripts, watch the job, rank turns by risk, drill in, download reports."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from tokenprism.app.client import BackendError
from tokenprism.app.components.add_metrics import add_metrics_panel
from tokenprism.app.components.logprob_band import render_logprob_source
from tokenprism.app.components.tables import turns_frame, uncertain_tokens_frame
from tokenprism.app.run_view import render_run
from tokenprism.app.ui import (
    CCP_PRESET_HELP,
    CCP_PRESETS,
    EXTRA_METRICS,
    backend_errors,
    client,
    fetch_run,
    plain_markdown,
)
from tokenprism.backend.display import metric_help, metric_label

TURN_METRICS = [
    "mean_entropy",
    "perplexity",
    "geometric_mean_confidence",
    "mean_prob",
    "gltr_rest",
    "mean_step_first_surprisal",
    "mean_kurtosis",
    "probe_max",
    "ccp_mean_log",
    "claim_ccp_mean",
    "claim_ccp_min",
    "ccp_uncertainty",
    "token_sar",
]
TOKEN_METRICS = [
    "entropy",
    "entropy_upper",
    "surprisal_bits",
    "prob",
    "margin",
    "window_entropy",
    "rank",
    "probe",
    "ccp",
    "sar",
]
TERMINAL = ("done", "failed", "cancelled", "interrupted")

st.title("Audit")
st.caption(
    "Upload a transcript: a JSON array export or JSONL of chats (ShareGPT, OpenAI messages, "
    "LMSYS/WildChat, Alpaca), CSV with prompt and response columns, or plain text. Every "
    "non-empty assistant turn is re-scored in its context; history too long for the model is "
    "cut from the left."
)


def send(upload: Any, *, skip_invalid: bool = False) -> str | None:
    """Upload the file; a validation failure with valid conversations left is kept in the
    session so the page can offer to audit those."""
    with backend_errors():
        try:
            reply = client().upload(
                upload.name,
                upload.getvalue(),
                model=st.session_state.get("audit.model") or None,
                metrics=st.session_state.get("audit.extras") or [],
                engine=st.session_state.get("audit.engine") or "local",
                skip_invalid=skip_invalid,
                ccp_preset=st.session_state.get("audit.ccp_preset"),
            )
        except BackendError as err:
            if err.code == "duplicate_upload":  # the earlier upload is shown instead
                st.info(err.message)
                st.session_state["audit.upload_id"] = err.details["upload_id"]
                return str(err.details["upload_id"])
            if err.code != "invalid_transcript" or not err.details.get("conversations_valid"):
                raise
            st.session_state["audit.invalid"] = {
                "name": upload.name,
                "message": err.message,
                "problems": err.problems,
                "valid": err.details["conversations_valid"],
                "invalid": err.details.get("conversations_invalid", len(err.problems)),
            }
            return None
    st.session_state.pop("audit.invalid", None)
    st.session_state["audit.upload_id"] = reply["upload_id"]
    return str(reply["upload_id"])


def show_ingest(ingest: dict[str, Any]) -> None:
    """What the upload held and what became of it, above the ranked turns."""
    cols = st.columns(5)
    cols[0].metric("Conversations", ingest["conversations"])
    cols[1].metric("Assistant turns found", ingest["assistant_turns"])
    cols[2].metric("Scored", ingest["scored"])
    cols[3].metric("Skipped", ingest["skipped_count"])
    cols[4].metric("Truncated", ingest["truncated"])
    rendering = ", ".join(f"{n} {how}" for how, n in sorted(ingest["rendering"].items()))
    st.caption(
        f"Rendered: {rendering or 'none yet'} · {ingest['truncated_tokens']} tokens of history "
        f"dropped to fit the context · {ingest['empty_messages']} empty messages skipped · "
        f"{ingest['conversations_invalid']} invalid conversations skipped"
    )
    if ingest["skipped"]:
        with st.expander(f"Skipped ({ingest['skipped_count']})"):
            st.table(pd.DataFrame(ingest["skipped"][:200]))


with st.form("audit.form", clear_on_submit=False):
    upload = st.file_uploader("Transcript", type=["jsonl", "json", "csv", "txt"], key="audit.file")
    form_cols = st.columns([2, 4, 1])
    model = form_cols[0].text_input("Model", key="audit.model", placeholder="server default")
    extras = form_cols[1].multiselect(
        "Uncertainty & hallucination metrics", EXTRA_METRICS, key="audit.extras"
    )
    form_cols[1].selectbox("CCP preset", CCP_PRESETS, key="audit.ccp_preset", help=CCP_PRESET_HELP)
    engine = form_cols[2].selectbox(
        "Engine",
        ["local", "ray"],
        key="audit.engine",
        help="local: the server's model. ray: shards scored by a pool of workers on the Ray "
        "cluster the server is configured with (TOKENPRISM_RAY_ADDRESS, or a local one); "
        "the same metrics, resumable shard by shard.",
    )
    sent = st.form_submit_button("Upload and audit", type="primary")
fresh_upload: str | None = None
if sent:
    st.session_state.pop("audit.invalid", None)
    if upload is None:
        st.warning("Choose a file first.")
    else:
        fresh_upload = send(upload)
failed = st.session_state.get("audit.invalid")
if failed and upload is not None and upload.name == failed["name"]:
    st.error(failed["message"])
    st.dataframe(pd.DataFrame(failed["problems"]), hide_index=True)
    st.warning(
        f"{failed['valid']} conversations fine, {failed['invalid']} with problems: audit the "
        f"{failed['valid']}? The skipped ones are listed with their line in the upload's summary."
    )
    agreed = st.checkbox(
        f"Skip the {failed['invalid']} conversations with problems", key="audit.skip_invalid"
    )
    if st.button(f"Audit the {failed['valid']}", key="audit.lenient", disabled=not agreed):
        fresh_upload = send(upload, skip_invalid=True)

with backend_errors():
    uploads = client().uploads()
if not uploads:
    st.info("No uploads yet. Try data/samples/chats.jsonl from the repository.")
    st.stop()
ids = [u["upload_id"] for u in uploads]
if fresh_upload in ids:
    # A keyed selectbox keeps its value across reruns whatever its index says, so the upload
    # just sent is shown by setting the widget's state before the widget is created.
    st.session_state["audit.choice"] = fresh_upload
chosen = st.selectbox(
    "Upload",
    ids,
    format_func=lambda i: next(
        f"{u['filename']} · {u['n_items']} turns · {u['created_at'][:19]}"
        for u in uploads
        if u["upload_id"] == i
    ),
    key="audit.choice",
)
upload_row = next(u for u in uploads if u["upload_id"] == chosen)


@st.fragment(run_every=1.0)
def job_progress(job_id: str) -> None:
    with backend_errors():
        job = client().job(job_id)
    total = max(job["total"], 1)
    if job["status"] in TERMINAL:
        if st.session_state.get("audit.watching") == job_id:
            st.session_state.pop("audit.watching")
            st.rerun()  # the whole page: the summary below needs the finished job
        if job["status"] != "done":
            st.error(f"Job {job['status']}: {job.get('error') or ''}")
            if st.button("Resume job", key="audit.resume"):
                with backend_errors():
                    client().resume_job(job_id)
                st.session_state["audit.watching"] = job_id
        return
    st.session_state["audit.watching"] = job_id
    eta = f", about {job['eta_seconds']:.0f} s left" if job.get("eta_seconds") else ""
    st.progress(
        job["done"] / total, text=f"{job['status']}: {job['done']}/{job['total']} turns scored{eta}"
    )


if upload_row.get("job_id"):
    job_progress(upload_row["job_id"])

cols = st.columns(2)
metric = cols[0].selectbox(
    "Rank turns by", TURN_METRICS, format_func=metric_label, key="audit.metric"
)
cols[0].caption(plain_markdown(metric_help(metric)))
token_metric = cols[1].selectbox(
    "Rank tokens by", TOKEN_METRICS, format_func=metric_label, key="audit.token_metric"
)
cols[1].caption(plain_markdown(metric_help(token_metric)))
with backend_errors():
    summary = client().upload_summary(chosen, metric=metric, token_metric=token_metric)
if summary.get("ingest"):
    show_ingest(summary["ingest"])
if not summary["turns"]:
    st.info("No turn of this upload is scored yet.")
    st.stop()

with st.expander("Add metrics to this upload", expanded=bool(summary.get("metric_hint"))):
    add_metrics_panel(chosen, key="audit", suggest=summary.get("metric_family"))
direction = "highest" if summary["higher_means"] != "confident" else "lowest"
frame = turns_frame(summary)
if summary.get("metric_hint"):
    st.warning(summary["metric_hint"])
if summary.get("n_with_metric") == 0:  # nothing to rank by: no column of empty values
    st.subheader(f"Turns (none has {metric} yet)")
    frame = frame.drop(columns=["risk"])
else:
    st.subheader(f"Turns by risk ({metric}, {direction} first)")
picked = st.dataframe(
    frame,
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    key="audit.turns",
    column_config={
        "prompt": st.column_config.TextColumn("prompt", width="medium"),
        "response": st.column_config.TextColumn("response", width="large"),
        "risk": st.column_config.NumberColumn(metric, format="%.3g", help=metric_help(metric)),
        "geometric_mean_confidence": st.column_config.NumberColumn("GM confidence", format="%.3f"),
        "mean_entropy": st.column_config.NumberColumn("mean entropy", format="%.3f"),
        "perplexity": st.column_config.NumberColumn("perplexity", format="%.2f"),
    },
)
st.caption(
    "Select a turn to see its tokens. Prompt and response hold their first 200 characters: "
    "hover a cell to read it whole (the grid does not wrap lines)."
)
st.subheader(f"Most uncertain tokens ({metric_label(token_metric)})")
with backend_errors():
    contexts = {
        run_id: fetch_run(run_id)["tokens"]
        for run_id in dict.fromkeys(str(t["run_id"]) for t in summary["tokens"])
    }
uncertain = uncertain_tokens_frame(summary, contexts)
if not summary["tokens"] and summary.get("token_metric_family"):
    st.warning(
        f"No token of this upload has {token_metric}: it comes from the "
        f"{summary['token_metric_family']} family; add it with Add metrics above."
    )
st.dataframe(
    uncertain,
    hide_index=True,
    key="audit.tokens",
    # the ranking value already is the entropy / prob column when ranking by one of them
    column_order=[c for c in uncertain.columns if c != token_metric],
    column_config={
        "value": st.column_config.NumberColumn(token_metric, format="%.4g"),
        "prob": st.column_config.NumberColumn("prob", format="%.3f"),
        "entropy": st.column_config.NumberColumn("entropy", format="%.3f"),
        "context": st.column_config.TextColumn("in its sentence (token in « »)", width="large"),
    },
)

st.subheader("Downloads")
if st.button("Prepare CSV, Parquet and HTML report", key="audit.prepare"):
    with backend_errors(), st.spinner("Building exports…"):
        st.session_state["audit.exports"] = {
            fmt: client().export(chosen, fmt, metric=metric, token_metric=token_metric)
            for fmt in ("csv", "parquet", "html")
        }
        st.session_state["audit.exports_for"] = chosen
exports = st.session_state.get("audit.exports")
if exports and st.session_state.get("audit.exports_for") == chosen:
    mime = {"csv": "text/csv", "parquet": "application/octet-stream", "html": "text/html"}
    for col, fmt in zip(st.columns(3), ("csv", "parquet", "html"), strict=True):
        col.download_button(
            f"Download {fmt.upper()}",
            exports[fmt],
            mime=mime[fmt],
            file_name=f"tokenprism-{chosen[:12]}.{fmt}",
            key=f"audit.dl.{fmt}",
        )

rows = picked.selection.rows if picked is not None else []
if rows:
    run_id = frame.iloc[rows[0]]["run_id"]
    started = time.perf_counter()
    with backend_errors():
        run = fetch_run(run_id)
    st.subheader("Turn detail")
    render_logprob_source(run, key="audit.detail")  # source, and the entropy band of API runs
    render_run(run, key="audit.detail")
    st.caption(f"loaded in {time.perf_counter() - started:.2f} s")
else:
    st.caption("Select a turn in the turns table to see its tokens.")

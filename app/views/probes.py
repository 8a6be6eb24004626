"""Probes: hallucination probes with their held-out evaluation, and training new ones."""

from __future__ import annotations

import streamlit as st

from tokenprism.app.components.claims import report_frame, roc_figure
from tokenprism.app.ui import backend_errors, client

TERMINAL = ("done", "failed", "cancelled", "interrupted")

st.title("Hallucination probes")
st.caption(
    "A probe is a linear classifier on one layer's hidden states that gives every token a "
    "hallucination probability. Each is evaluated on a held-out split next to entropy, "
    "1 - p(token) and CCP. Apply one to any run of the same model from the run's claims panel, "
    "or pick `probe` in the metrics of Explore and Audit."
)

with backend_errors():
    probes = client().probes()

if probes:
    names = [p["name"] for p in probes]
    # A keyed selectbox keeps its value across reruns whatever its index says, so a newly
    # trained probe is shown by setting the widget's state before the widget is created.
    if (trained := st.session_state.pop("probes.trained", None)) in names:
        st.session_state["probes.choice"] = trained
    chosen = st.selectbox(
        "Probe",
        names,
        format_func=lambda n: next(
            f"{p['name']} · {p['model']} · layer {p['layer']}"
            + (" · shipped" if p["shipped"] else "")
            for p in probes
            if p["name"] == n
        ),
        key="probes.choice",
    )
    with backend_errors():
        detail = client().probe(chosen)
    report = detail.get("report")
    if report:
        held = report["held_out"]
        st.markdown(
            f"Held-out split: **{held['n_examples']}** examples, {held['n_tokens']} tokens "
            f"({held['n_positive_tokens']} hallucinated), {held['n_spans']} labelled spans "
            f"({held['n_positive_spans']} hallucinated). Trained on "
            f"{report['train']['n_examples']} examples; CCP judge: "
            f"`{report.get('ccp_judge') or 'not evaluated'}`."
        )
        cols = st.columns([2, 3])
        cols[0].dataframe(report_frame(report), hide_index=True)
        cols[1].plotly_chart(roc_figure(report), key="probes.roc")
    else:
        st.info("This probe has no evaluation report.")
    with st.expander("Configuration"):
        st.json(detail.get("config", {}), expanded=False)
else:
    st.info("No probe yet: train one below.")

st.subheader("Train a probe")
st.caption(
    "Upload span-labelled JSONL: one object per line with `prompt` + `response` (or `text`) and "
    '`spans`: `[{"start": 12, "end": 18, "label": 1}]` (offsets into the response; 1 = '
    "hallucinated, 0 = supported). An optional `split` (`train` / `test`) fixes the held-out "
    "set. data/facts/answers-smollm2-135m-instruct.jsonl is an example."
)
with st.form("probes.form"):
    upload = st.file_uploader("Labelled data", type=["jsonl", "json"], key="probes.file")
    fields = st.columns(4)
    name = fields[0].text_input("Name", key="probes.name", placeholder="my-probe")
    model = fields[1].text_input("Model", key="probes.model", placeholder="server default")
    layer = fields[2].text_input("Layer", key="probes.layer", placeholder="n-2, or auto")
    epochs = fields[3].number_input("Epochs", 1, 500, 20, 1, key="probes.epochs")
    ccp = st.checkbox("Evaluate CCP as a baseline (slower)", value=True, key="probes.ccp")
    sent = st.form_submit_button("Train", type="primary")
if sent:
    if upload is None or not name.strip():
        st.warning("Choose a file and a name.")
    else:
        with backend_errors():
            reply = client().train_probe(
                upload.name,
                upload.getvalue(),
                name=name.strip(),
                model=model or None,
                layer=layer.strip() or None,
                epochs=int(epochs),
                ccp=ccp,
            )
        st.session_state["probes.job"] = reply["job_id"]
        st.session_state["probes.pending"] = name.strip()


@st.fragment(run_every=1.0)
def training_progress(job_id: str) -> None:
    with backend_errors():
        job = client().job(job_id)
    if job["status"] in TERMINAL:
        st.session_state.pop("probes.job", None)
        if job["status"] == "done":
            st.session_state["probes.trained"] = st.session_state.pop("probes.pending", None)
            st.rerun()  # the whole page, so the new probe's report shows above
        st.error(f"Training {job['status']}: {job.get('error') or ''}")
        return
    st.progress(job["done"] / max(job["total"], 1), text=f"training: {job['status']}")


if st.session_state.get("probes.job"):
    training_progress(st.session_state["probes.job"])

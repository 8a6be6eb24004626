"""The "Add metrics" control: CCP / probe / SAR / SelfCheck added to stored turns (a job).

A Streamlit widget, so it lives in app/ rather than the pure app/components.

Used by Audit (every turn of the chosen upload) and Explore (the run shown, when it belongs to
an upload). The backend adds only the families' rows; the base metrics are not re-scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from tokenprism.app.ui import (
    CCP_PRESET_HELP,
    CCP_PRESETS,
    EXTRA_METRICS,
    backend_errors,
    client,
    poll_job,
)


@st.fragment(run_every=1.0)
def _progress(state_key: str) -> None:
    poll_job(state_key, "adding metrics", progress_label="Adding metrics")


def add_metrics_panel(
    upload_id: str,
    *,
    key: str,
    run_ids: Sequence[str] | None = None,
    suggest: str | None = None,
) -> None:
    """Families picker and button; the job's progress while it runs, its outcome after.

    Args:
        upload_id: the upload whose stored turns get the families.
        key: widget key prefix (one panel per page).
        run_ids: only these turns (default: all of the upload's).
        suggest: a family to preselect (the one a missing ranking metric comes from).
    """
    state = f"{key}.add_job"
    picked = f"{key}.add_families"
    if suggest in EXTRA_METRICS and st.session_state.get(f"{key}.add_suggested") != suggest:
        # a newly missing family is preselected once; the user's own choice is kept after
        st.session_state[picked] = [suggest]
    st.session_state[f"{key}.add_suggested"] = suggest
    cols = st.columns([3, 2, 1])
    families = cols[0].multiselect(
        "Families to add",
        EXTRA_METRICS,
        key=picked,
        help="Computed on the stored tokens; the base metrics stay as they are. CCP and SAR "
        "need no model pass, a probe one pass per conversation, selfcheck samples the model.",
    )
    preset = cols[1].selectbox(
        "CCP preset", CCP_PRESETS, key=f"{key}.add_preset", help=CCP_PRESET_HELP
    )
    cols[2].write("")  # aligns the button with the inputs
    clicked = cols[2].button(
        "Add metrics", key=f"{key}.add", disabled=not families or bool(st.session_state.get(state))
    )
    if clicked:
        with backend_errors():
            reply = client().add_metrics(
                upload_id,
                families,
                ccp_preset=preset if "ccp" in families else None,
                run_ids=list(run_ids) if run_ids is not None else None,
            )
        st.session_state.pop(f"{state}.failed", None)
        if reply.get("message"):
            st.session_state[f"{key}.add_note"] = reply["message"]
        if reply.get("job_id"):
            st.session_state[state] = {"job_id": reply["job_id"]}
    note = st.session_state.get(f"{key}.add_note")
    if note and not st.session_state.get(state):
        st.info(note)
    failed = st.session_state.get(f"{state}.failed")
    if failed:
        st.error(failed)
    if st.session_state.get(state):
        _progress(state)

"""TokenPrism's browser UI: the router. Pages live in app/views/ and read data over HTTP."""

from __future__ import annotations

import streamlit as st

from tokenprism.app.client import BackendError, BackendUnavailable
from tokenprism.app.ui import client

st.set_page_config(page_title="TokenPrism", page_icon=":material/biotech:", layout="wide")

pages = {
    "Analyse": [
        st.Page("views/explore.py", title="Explore", icon=":material/search:", default=True),
        st.Page("views/audit.py", title="Audit", icon=":material/fact_check:"),
        st.Page("views/runs.py", title="Runs", icon=":material/table_rows:"),
        st.Page("views/probes.py", title="Probes", icon=":material/troubleshoot:"),
        st.Page("views/diff.py", title="Diff", icon=":material/difference:"),
        st.Page("views/sql.py", title="SQL", icon=":material/terminal:"),
    ],
    "Experiment": [
        st.Page("views/groups.py", title="Groups", icon=":material/account_tree:"),
        st.Page("views/lab.py", title="Steering & decoding lab", icon=":material/tune:"),
    ],
}

with st.sidebar:
    st.markdown("### TokenPrism")
    try:
        health = client().health()
        st.caption(
            f"backend {client().base_url} · v{health['version']} · {health['device']}  \n"
            f"model `{health['default_model']}` · queue {health['queue_length']}"
        )
    except (BackendUnavailable, BackendError) as err:
        st.error(f"Backend unavailable: {err}")

st.navigation(pages).run()

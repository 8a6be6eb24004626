"""Shared Streamlit helpers: the cached client and turning backend failures into messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import streamlit as st

from tokenprism.app.client import BackendError, BackendUnavailable, TokenPrismClient

JOB_TERMINAL = ("done", "failed", "cancelled", "interrupted")

# The extra metric families a scoring request can ask for (backend.uncertainty.EXTRA_METRICS,
# repeated so the UI does not import the backend's model code).
EXTRA_METRICS = ["ccp", "probe", "sar", "selfcheck"]
# CCP's conventions (analysis.ccp.CCP_PRESETS), the default first
CCP_PRESETS = ["lm-polygraph", "tokenprism"]
CCP_PRESET_HELP = (
    "CCP conventions. lm-polygraph (default): as LM-Polygraph, every alternative judged, no "
    "stopword rule, NaN propagates, an empty claim is 1. tokenprism: our shortcuts (stopwords "
    "and punctuation get CCP 1, the same word is entailment unjudged, NaN tokens skipped)."
)

SEQUENCE_CARDS = (
    ("geometric_mean_confidence", "GM confidence", "{:.3f}"),
    ("mean_prob", "mean prob", "{:.3f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("mean_entropy", "mean entropy (nats)", "{:.3f}"),
    ("gltr_top10", "top-10 share", "{:.0%}"),
    ("n_tokens", "tokens", "{:.0f}"),
)


@st.cache_resource
def client() -> TokenPrismClient:
    return TokenPrismClient()


@st.cache_data(max_entries=64, ttl=600, show_spinner=False)
def cached_run(run_id: str, base_url: str) -> dict[str, Any]:  # noqa: ARG001 - cache key
    """A stored run, fetched once per run id (reruns of a page reuse it).

    ``base_url`` is part of the key so two backends never share entries; call
    ``cached_run.clear()`` after changing a run (probe applied, metrics added).
    """
    return client().run(run_id)


def fetch_run(run_id: str) -> dict[str, Any]:
    """:func:`cached_run` for the configured backend."""
    return cached_run(run_id, client().base_url)


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+!|~$-])")


def plain_markdown(text: str) -> str:
    """``text`` as literal markdown: names like entropy_lower must not turn italic."""
    return _MARKDOWN.sub(r"\\\1", text)


_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Every response token value of an upload, core columns and the long table alike, so one
# query gives each metric's 1st and 99th percentile (the "across the upload" colour scale).
_UPLOAD_DOMAINS_SQL = """
WITH mine AS (SELECT run_id FROM runs WHERE upload_id = '{upload_id}'),
v AS (
  SELECT 'logprob' AS metric, t.logprob AS value FROM tokens t JOIN mine USING (run_id)
    WHERE NOT t.is_prompt
  UNION ALL SELECT 'prob', t.prob FROM tokens t JOIN mine USING (run_id) WHERE NOT t.is_prompt
  UNION ALL SELECT 'rank', CAST(t.rank AS DOUBLE) FROM tokens t JOIN mine USING (run_id)
    WHERE NOT t.is_prompt
  UNION ALL SELECT 'entropy', t.entropy FROM tokens t JOIN mine USING (run_id)
    WHERE NOT t.is_prompt
  UNION ALL SELECT m.metric, m.value FROM token_metrics m JOIN mine USING (run_id)
    JOIN tokens t ON t.run_id = m.run_id AND t.position = m.position WHERE NOT t.is_prompt
)
SELECT metric, quantile_cont(value, 0.01) AS lo, quantile_cont(value, 0.99) AS hi
FROM v WHERE value IS NOT NULL AND isfinite(value) GROUP BY metric
"""


@st.cache_data(max_entries=32, ttl=600, show_spinner=False)
def upload_domains(upload_id: str, base_url: str) -> dict[str, tuple[float, float]]:  # noqa: ARG001 - cache key
    """Per token metric, the 1st and 99th percentile over an upload's response tokens.

    Empty when the id is not a plain id or the query fails (the view then offers no
    "across the upload" scale rather than failing the page).
    """
    if not _SAFE_ID.match(upload_id):
        return {}
    try:
        result = client().sql(_UPLOAD_DOMAINS_SQL.format(upload_id=upload_id), max_rows=500)
    except (BackendError, BackendUnavailable):
        return {}
    return {
        str(row[0]): (float(row[1]), float(row[2]))
        for row in result.get("rows") or []
        if row[1] is not None and row[2] is not None
    }


@contextmanager
def backend_errors() -> Iterator[None]:
    """Show backend failures as messages (never tracebacks) and stop the page."""
    try:
        yield
    except BackendUnavailable as err:
        st.error(
            f"The TokenPrism backend is down or restarting ({err}). `tokenprism up` restarts "
            "a crashed backend by itself: wait a few seconds and reload; otherwise start it "
            "with `tokenprism serve` (or `make run`)."
        )
        st.stop()
    except BackendError as err:
        st.error(err.message)
        if err.problems:
            st.dataframe(pd.DataFrame(err.problems), hide_index=True)
        st.stop()


def sequence_cards(sequence: dict[str, float | None]) -> None:
    shown = [
        (key, label, fmt) for key, label, fmt in SEQUENCE_CARDS if sequence.get(key) is not None
    ]
    if not shown:
        return
    for col, (key, label, fmt) in zip(st.columns(len(shown)), shown, strict=True):
        col.metric(label, fmt.format(sequence[key]))


def poll_job(
    state_key: str,
    label: str,
    *,
    created_key: str | None = None,
    result_field: str | None = None,
    progress_label: str | None = None,
) -> None:
    """One poll of the job in ``st.session_state[state_key]`` (call it from a fragment).

    While it runs: a progress bar. When it ends: the job is forgotten, a failure is kept under
    ``<state_key>.failed`` for the page to show, a success stores ``result[result_field]``
    under ``created_key`` (the page selects it), and the whole page reruns.
    """
    pending = st.session_state.get(state_key)
    if not pending:
        return
    title = label[:1].upper() + label[1:]
    try:
        job = client().job(pending["job_id"])
    except BackendUnavailable as err:  # maybe a restart: keep the job and poll again
        st.error(f"{err}; still waiting for the {label} job.")
        return
    except BackendError as err:  # e.g. the job is gone: stop polling, say why
        st.session_state.pop(state_key, None)
        st.session_state[f"{state_key}.failed"] = f"{title}: {err.message}"
        st.rerun()
    if job["status"] in JOB_TERMINAL:
        st.session_state.pop(state_key, None)
        # a finished job may have added metrics to stored runs (rollouts, contrastive models,
        # probes): cached runs must not hide them
        cached_run.clear()
        if job["status"] == "done":
            if created_key and result_field:
                st.session_state[created_key] = (job.get("result") or {}).get(result_field)
        else:
            st.session_state[f"{state_key}.failed"] = (
                f"{title} {job['status']}: {job.get('error') or 'no details'}"
            )
        st.rerun()  # the whole page, so the new results show
    total = max(job.get("total") or 0, 1)
    done = min(job.get("done") or 0, total)
    shown = progress_label or label
    st.progress(done / total, text=f"{shown}: {job['status']} ({done / total:.0%})")

"""Shared Streamlit helpers: the cached client and turning backend failures into messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import streamlit as st

from app.client import BackendError, BackendUnavailable, TokenPrismClient

# The extra metric families a scoring request can ask for (backend.uncertainty.EXTRA_METRICS,
# repeated so the UI does not import the backend's model code).
EXTRA_METRICS = ["ccp", "probe", "sar", "selfcheck"]

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


@contextmanager
def backend_errors() -> Iterator[None]:
    """Show backend failures as messages (never tracebacks) and stop the page."""
    try:
        yield
    except BackendUnavailable as err:
        st.error(f"{err}. Start it with `tokenprism serve` (or `make run`), then reload.")
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

"""The Diff page through AppTest against a real backend (tiny model) on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO

APP = str(REPO / "app" / "streamlit_app.py")


@pytest.fixture
def backend(live_backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TOKENPRISM_API_URL", live_backend)
    monkeypatch.delenv("TOKENPRISM_API_TOKEN", raising=False)
    st.cache_resource.clear()
    yield live_backend
    st.cache_resource.clear()


def _page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/diff.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_diff_page_runs_a_diff_and_shows_it(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _page()
    assert any("No diff yet" in i.value for i in at.info)
    at.selectbox(key="diff.helper").set_value("early exit @layers=K")
    at.text_input(key="diff.arg").set_value("1")
    at.text_area(key="diff.text").set_value("The capital of France is <b>Paris</b>.")
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    for _ in range(240):  # the fragment polls the job; rerun until the diff shows
        if "diff.pending" not in at.session_state:
            break
        time.sleep(0.25)
        at.run()
    assert at.query_params.get("diff")
    assert not at.exception, [e.value for e in at.exception]
    labels = [m.label for m in at.metric]
    assert "mean KL" in labels and "top-1 agreement" in labels
    body = "\n".join(str(el.proto) for el in at.get("html"))
    assert "&lt;" in body and "<b>" not in body  # token text escaped
    assert "p_A" in body and "KL(A||B)" in body
    figures = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert any(f["layout"]["title"]["text"] == "KL along the response" for f in figures)
    moved = [df.value for df in at.dataframe]
    assert (
        moved
        and "KL" in moved[-1].columns
        and moved[-1]["run"].str.startswith("/explore?run=").all()
    )


def test_diff_page_bad_variant_is_a_message(backend: str) -> None:  # noqa: ARG001
    at = _page()
    at.selectbox(key="diff.helper").set_value("another model")
    at.text_input(key="diff.arg").set_value("x@int9")
    at.text_area(key="diff.text").set_value("hello")
    at.button[0].click().run()
    assert not at.exception
    assert any("unknown model variant" in e.value for e in at.error)

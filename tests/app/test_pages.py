"""Every page through streamlit.testing.v1.AppTest, against a real backend on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO

APP = str(REPO / "app" / "streamlit_app.py")


@pytest.fixture
def backend(live_backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of the live backend, with the app pointed at it."""
    monkeypatch.setenv("TOKENPRISM_API_URL", live_backend)
    monkeypatch.delenv("TOKENPRISM_API_TOKEN", raising=False)
    st.cache_resource.clear()  # the client is cached and reads the URL when built
    yield live_backend
    st.cache_resource.clear()


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _html(at: AppTest) -> str:
    return "\n".join(str(getattr(el, "proto", "")) for el in at.get("html"))


def _wait_for_job(url: str, job_id: str) -> None:
    for _ in range(600):
        if httpx.get(f"{url}/api/v1/jobs/{job_id}").json()["status"] == "done":
            return
        time.sleep(0.1)
    raise AssertionError("job did not finish")


def test_explore_empty_state_then_scoring(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app()
    assert any("No run yet" in i.value for i in at.info)
    at.text_area(key="explore.prompt").set_value("What is the capital of France?")
    at.text_area(key="explore.response").set_value("The capital of France is <b>Paris</b>.")
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    run = at.session_state["explore.run"]
    assert run["response"] == "The capital of France is <b>Paris</b>."
    html = _html(at)
    # the tiny tokenizer splits "<b>" into pieces: each "<" must arrive escaped
    assert "tp-tokens" in html and "&lt;" in html and "<b>" not in html
    labels = [m.label for m in at.metric]
    assert "GM confidence" in labels and "mean entropy (nats)" in labels
    # colour by another metric re-renders the token strip
    at.selectbox(key="explore.metric").set_value("prob").run()
    assert not at.exception


def test_explore_generates_when_no_response(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app()
    at.text_area(key="explore.prompt").set_value("Tell me about Paris.")
    at.number_input(key="explore.max_new").set_value(8)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    run = at.session_state["explore.run"]
    assert run["kind"] == "chat" and run["prompt"] == "Tell me about Paris."


def test_audit_upload_summary_and_exports(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app("audit")
    data = (REPO / "data" / "samples" / "chats.jsonl").read_bytes()
    at.get("file_uploader")[0].set_value(("chats.jsonl", data, "application/jsonl"))
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    upload_id = at.session_state["audit.upload_id"]
    summary = httpx.get(f"{backend}/api/v1/uploads/{upload_id}").json()
    _wait_for_job(backend, summary["job"]["job_id"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    frames = at.dataframe
    assert len(frames) >= 2 and len(frames[0].value) == 8  # 8 turns ranked
    at.button(key="audit.prepare").click().run()
    assert not at.exception
    assert set(at.session_state["audit.exports"]) == {"csv", "parquet", "html"}


def test_audit_shows_validation_errors(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app("audit")
    bad = (
        b'{"messages": [{"role": "user", "content": "hi"}, '
        b'{"role": "assistant", "content": "yo"}]}\n{oops\n'
    )
    at.get("file_uploader")[0].set_value(("bad.jsonl", bad, "application/jsonl"))
    at.button[0].click().run()
    errors = " ".join(e.value for e in at.error)
    assert "line 2" in errors and "invalid JSON" in errors
    assert not at.exception


def test_runs_page_lists_and_filters(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    httpx.post(f"{backend}/api/v1/runs", json={"text": "A unique zebra sentence."})
    at = _app("runs")
    assert at.dataframe and len(at.dataframe[0].value) >= 1
    at.text_input(key="runs.q").set_value("zebra").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 1 and "zebra" in table.iloc[0].tolist()[-2]


def test_sql_page_runs_queries_and_refuses_writes(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    httpx.post(f"{backend}/api/v1/runs", json={"text": "Counting rows."})
    at = _app("sql")
    at.button(key="sql.run").click().run()
    assert not at.exception
    assert len(at.dataframe[0].value) >= 1
    at.text_area(key=f"sql.query.{at.selectbox(key='sql.example').value}").set_value(
        "DELETE FROM runs"
    )
    at.button(key="sql.run").click().run()
    assert any("read-only" in e.value for e in at.error)


def test_backend_down_is_a_message_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TOKENPRISM_API_URL", f"http://127.0.0.1:{port}")
    st.cache_resource.clear()
    for page in (None, "audit", "runs", "sql"):
        at = AppTest.from_file(APP, default_timeout=60).run()
        if page:
            at.switch_page(f"views/{page}.py").run()
        assert not at.exception
        if page in ("audit", "runs"):
            assert any("not reachable" in e.value for e in at.error)
    st.cache_resource.clear()

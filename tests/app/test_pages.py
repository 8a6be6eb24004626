"""Every page through streamlit.testing.v1.AppTest, against a real backend on loopback."""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.backend.api_helpers import wait_job
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


CANVAS_DATA = re.compile(r"<script type='application/json' id='tp-data'>(.*?)</script>", re.S)


def _canvas_docs(at: AppTest) -> list[str]:
    """The HTML documents of the in-browser token views on the page."""
    return [str(el.proto.srcdoc) for el in at.get("iframe") if "tp-data" in el.proto.srcdoc]


def _canvases(at: AppTest) -> list[dict[str, Any]]:
    """The data each token view embeds (tokens, metrics, first metric, scale modes)."""
    found = []
    for doc in _canvas_docs(at):
        match = CANVAS_DATA.search(doc)
        assert match is not None
        found.append(json.loads(match.group(1)))
    return found


def test_explore_empty_state_then_scoring(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app()
    assert any("No run yet" in i.value for i in at.info)
    at.text_area(key="explore.prompt").set_value("What is the capital of France?")
    at.text_area(key="explore.response").set_value("The capital of France is <b>Paris</b>.")
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    run = at.session_state["explore.run"]
    assert run["response"] == "The capital of France is <b>Paris</b>."
    (doc,) = _canvas_docs(at)
    (canvas,) = _canvases(at)
    # the tiny tokenizer splits "<b>" into pieces: they reach the page only inside the JSON,
    # with every "<" written as \u003c (the script sets them as text)
    assert "<b>" not in doc and "\\u003c" in doc
    assert "<b>Paris</b>." in "".join(t["text"] for t in canvas["tokens"] if not t["is_prompt"])
    assert canvas["metric"] == "entropy" and "prob" in canvas["metrics"]
    assert canvas["specs"]["entropy"]["label"] == "entropy (nats)"
    labels = [m.label for m in at.metric]
    assert "GM confidence" in labels and "mean entropy (nats)" in labels
    assert list(canvas["modes"]) == ["fixed", "run"]  # not from an upload
    # a rerun reuses the run and draws the same view (no server-side colour controls left)
    assert "explore.metric" not in [s.key for s in at.selectbox]
    at.multiselect(key="explore.lines").set_value(["prob"]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert _canvases(at) == [canvas]


def test_explore_generates_when_no_response(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app()
    at.text_area(key="explore.prompt").set_value("Tell me about Paris.")
    at.number_input(key="explore.max_new").set_value(8)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    run = at.session_state["explore.run"]
    assert run["kind"] == "chat" and run["prompt"] == "Tell me about Paris."


def test_explore_live_checks_rules_then_hands_over_to_the_browser(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app()
    at.text_area(key="explore.prompt").set_value("Tell me about Paris.")
    at.checkbox(key="explore.live").check()
    at.text_input(key="explore.rules").set_value("entropy>>3")
    at.button[0].click().run()
    assert any("METRIC>X" in e.value for e in at.error)
    at.text_input(key="explore.rules").set_value("entropy>3:2:stop")
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    # the page streams in the browser: Python generated nothing and stored no run
    assert "explore.run" not in at.session_state and at.session_state["explore.live_n"] == 1


def test_audit_upload_summary_and_exports(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app("audit")
    data = (REPO / "data" / "samples" / "chats.jsonl").read_bytes()
    at.get("file_uploader")[0].set_value(("chats.jsonl", data, "application/jsonl"))
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    upload_id = at.session_state["audit.upload_id"]
    summary = httpx.get(f"{backend}/api/v1/uploads/{upload_id}").json()
    _job_done(backend, summary["job"]["job_id"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    frames = at.dataframe
    assert len(frames) >= 2 and len(frames[0].value) == 8  # 8 turns ranked
    turns = frames[0].value
    assert {"prompt", "response"} <= set(turns.columns) and turns["turn"].min() == 1
    assert turns["response"].str.len().max() > 80  # not cut to a one-line excerpt
    (tokens,) = _frame_with(at, "context")
    assert len(tokens) > 0 and tokens["position"].min() >= 1
    assert all(f"«{t}»" in c for t, c in zip(tokens["token"], tokens["context"], strict=True))
    # a turn of the upload opens with the "across the upload" scale, its 1st-99th percentile
    runs = httpx.get(f"{backend}/api/v1/runs", params={"upload_id": upload_id}).json()["runs"]
    entropies = [
        t["entropy"]
        for r in runs
        for t in httpx.get(f"{backend}/api/v1/runs/{r['run_id']}").json()["tokens"]
        if not t["is_prompt"] and t["entropy"] is not None
    ]
    (canvas,) = _canvases(_explore_run(runs[0]["run_id"]))
    assert "upload" in canvas["modes"]
    low, high = canvas["upload"]["entropy"]
    assert low == pytest.approx(np.percentile(entropies, 1))
    assert high == pytest.approx(np.percentile(entropies, 99))
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


def test_audit_offers_to_skip_invalid_conversations(backend: str) -> None:
    tag = uuid.uuid4().hex[:8]
    good = {"prompt": f"Question {tag}?", "response": "Hello there! How can I help you today?"}
    lines = [json.dumps(good), '{"messages": [{"role": "wizard", "content": "x"}]}']
    lines += [json.dumps({"conversations": [{"from": "gpt", "value": f"Mid-chat {tag}."}]})]
    at = _app("audit")
    at.get("file_uploader")[0].set_value((f"mixed-{tag}.jsonl", "\n".join(lines).encode(), ""))
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("line 2" in e.value and "wizard" in e.value for e in at.error)
    assert any("2 conversations fine, 1 with problems" in w.value for w in at.warning)
    assert at.button(key="audit.lenient").disabled
    at.checkbox(key="audit.skip_invalid").check().run()
    at.button(key="audit.lenient").click().run()
    assert not at.exception, [e.value for e in at.exception]
    upload_id = at.session_state["audit.upload_id"]
    summary = httpx.get(f"{backend}/api/v1/uploads/{upload_id}").json()
    _job_done(backend, summary["job"]["job_id"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}
    assert shown["Conversations"] == "3" and shown["Scored"] == "2" and shown["Skipped"] == "1"
    assert any("wizard" in str(t.value) for t in at.table)
    assert len(at.dataframe[-2].value) == 2  # the ranked turns


def test_runs_page_lists_and_filters(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    httpx.post(f"{backend}/api/v1/runs", json={"text": "A unique zebra sentence."})
    at = _app("runs")
    assert at.dataframe and len(at.dataframe[0].value) >= 1
    at.text_input(key="runs.q").set_value("zebra").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 1 and any("zebra" in str(v) for v in table.iloc[0].tolist())


def test_sql_page_runs_queries_and_refuses_writes(backend: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    httpx.post(f"{backend}/api/v1/runs", json={"text": "Counting rows."})
    at = _app("sql")
    assert not at.exception, [e.value for e in at.exception]
    assert "runs" in [e.label for e in at.sidebar.expander]  # the schema sidebar
    at.button(key="sql.run").click().run()
    assert not at.exception
    assert len(at.main.dataframe[0].value) >= 1
    at.text_area(key="sql.query").set_value("DELETE FROM runs")
    # another example does not overwrite the edited query
    at.selectbox(key="sql.example").set_value(list(at.selectbox(key="sql.example").options)[1])
    at.run()
    assert at.text_area(key="sql.query").value == "DELETE FROM runs"
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


# ---- uncertainty & hallucination metrics: claims, probes -------------------------------------

PROBE_CITIES = ("Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna", "Oslo", "Prague")
EXTRA_OPTIONS = ["ccp", "probe", "sar", "selfcheck"]


def _labelled_jsonl(n: int = 30) -> bytes:
    """Span-labelled answers: the city of every answer is one span, every third one false."""
    lines = []
    for i in range(n):
        city = PROBE_CITIES[i % len(PROBE_CITIES)]
        response = f"The answer is {city}."
        spans = [{"start": 14, "end": 14 + len(city), "label": int(i % 3 == 0)}]
        lines.append(json.dumps({"prompt": f"Question {i}?", "response": response, "spans": spans}))
    return ("\n".join(lines) + "\n").encode()


def _job_done(url: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Wait for the job on the live backend at ``url``; it must end ``done``."""
    job = wait_job(url, job_id, timeout=timeout, poll=0.1)
    assert job["status"] == "done", job
    return job


@pytest.fixture(scope="module")
def trained_probe(live_backend: str) -> str:
    """A probe for the tiny model, trained through the API (the tiny model ships none)."""
    name = f"ui-probe-{uuid.uuid4().hex[:8]}"
    reply = httpx.post(
        f"{live_backend}/api/v1/probes",
        files={"file": ("labelled.jsonl", _labelled_jsonl())},
        data={"name": name, "epochs": "3", "ccp": "false", "layer": "0"},
        timeout=120,
    )
    assert reply.status_code == 202, reply.text
    _job_done(live_backend, reply.json()["job_id"])
    return name


def _scored_run(url: str, metrics: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": "What is the capital of France?",
        "response": "The capital of France is Paris. It lies on the Seine.",
    }
    if metrics:
        body["metrics"] = metrics
    reply = httpx.post(f"{url}/api/v1/runs", json=body, timeout=300)
    assert reply.status_code < 300, reply.text
    run: dict[str, Any] = reply.json()
    return run


def _explore_run(run_id: str) -> AppTest:
    """The Explore page opened on a stored run, as a `?run=` link does."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["explore.run"]["run_id"] == run_id
    return at


def _claims_table(at: AppTest) -> pd.DataFrame:
    tables = [d.value for d in at.dataframe if "claim" in d.value.columns]
    assert len(tables) == 1, "no claims table on the page"
    return tables[0]


def _html_bodies(at: AppTest) -> str:
    return "\n".join(str(getattr(el.proto, "body", "")) for el in at.get("html"))


def _plotly_specs(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_probes_page_shows_auc_table_and_roc_chart(backend: str, trained_probe: str) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _app("probes")
    choice = at.selectbox(key="probes.choice")
    choice.set_value(trained_probe).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="probes.choice").value == trained_probe
    assert any("Held-out split" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert table.columns.tolist() == ["score", "token AUC", "span-max AUC"]
    assert {"probe", "entropy", "one_minus_prob"} <= set(table["score"])
    assert table["token AUC"].between(0, 1).all()
    specs = _plotly_specs(at)
    assert len(specs) == 1
    names = [trace.get("name") for trace in specs[0]["data"]]
    assert names[0] == "chance"
    assert any(str(n).startswith("probe (AUC ") for n in names), names


def test_probes_page_trains_a_probe_from_an_upload(backend: str) -> None:
    at = _app("probes")
    name = f"ui-form-{uuid.uuid4().hex[:8]}"
    at.get("file_uploader")[0].set_value(
        ("labelled.jsonl", _labelled_jsonl(24), "application/jsonl")
    )
    at.text_input(key="probes.name").set_value(name)
    at.text_input(key="probes.layer").set_value("0")
    at.number_input(key="probes.epochs").set_value(2)
    at.checkbox(key="probes.ccp").uncheck()
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    job_id = at.session_state["probes.job"]
    assert at.get("progress")  # the training job's progress bar
    _job_done(backend, job_id)
    at.run()  # the progress fragment sees the finished job and reloads the page
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="probes.choice").value == name  # the new probe's report is shown
    assert len(_plotly_specs(at)) == 1
    assert name in [p["name"] for p in httpx.get(f"{backend}/api/v1/probes").json()]


def test_metric_multiselects_offer_and_send_the_extra_families(backend: str) -> None:
    at = _app()
    assert at.multiselect(key="explore.extras").options == EXTRA_OPTIONS
    at.text_area(key="explore.prompt").set_value("What is the capital of Italy?")
    at.text_area(key="explore.response").set_value("The capital of Italy is Rome.")
    at.multiselect(key="explore.extras").set_value(["ccp"])
    assert at.selectbox(key="explore.ccp_preset").options == ["lm-polygraph", "tokenprism"]
    assert at.selectbox(key="explore.ccp_preset").value == "lm-polygraph"
    at.selectbox(key="explore.ccp_preset").set_value("tokenprism")
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    run = at.session_state["explore.run"]
    assert run["provenance"]["extras"]["request"]["metrics"] == ["ccp"]
    assert run["provenance"]["extras"]["ccp"]["preset"] == "tokenprism"
    assert any(t.get("ccp") is not None for t in run["tokens"] if not t["is_prompt"])
    at = _app("audit")
    assert at.multiselect(key="audit.extras").options == EXTRA_OPTIONS
    chat = {
        "messages": [
            {"role": "user", "content": f"Name a river ({uuid.uuid4().hex[:6]})."},
            {"role": "assistant", "content": "The Danube flows through Vienna."},
        ]
    }
    transcript = (json.dumps(chat) + "\n").encode()
    at.get("file_uploader")[0].set_value(("river.jsonl", transcript, "application/jsonl"))
    at.multiselect(key="audit.extras").set_value(["ccp"])
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    upload_id = at.session_state["audit.upload_id"]
    summary = httpx.get(f"{backend}/api/v1/uploads/{upload_id}").json()
    _job_done(backend, summary["job"]["job_id"])
    runs = httpx.get(f"{backend}/api/v1/runs", params={"upload_id": upload_id}).json()["runs"]
    assert len(runs) == 1
    turn = httpx.get(f"{backend}/api/v1/runs/{runs[0]['run_id']}").json()
    assert any(t.get("ccp") is not None for t in turn["tokens"] if not t["is_prompt"])
    assert turn["provenance"]["extras"]["ccp"]["preset"] == "lm-polygraph"  # the default


def test_ccp_run_shows_claims_and_the_fallback_judge(backend: str) -> None:
    run = _scored_run(backend, ["ccp"])
    at = _explore_run(run["run_id"])
    (canvas,) = _canvases(at)
    assert "ccp" in canvas["metrics"]
    claims = _claims_table(at)
    assert len(claims) == len(run["claims"]) == 2
    assert "CCP" in claims.columns and claims["CCP"].notna().all()
    assert claims["CCP"].is_monotonic_increasing  # no probe: lowest CCP (worst) first
    assert set(claims["claim"]) == {c["text"] for c in run["claims"]}
    judge = [c.value for c in at.caption if c.value.startswith("CCP judge:")]
    assert judge and "fallback" in judge[0]
    assert "CCP preset: lm-polygraph" in judge[0]  # read from the run over HTTP
    # the pop-over gives each token's CCP: the view carries the values
    values = [t["v"]["ccp"] for t in canvas["tokens"] if not t["is_prompt"]]
    assert sum(v is not None for v in values) >= 3


def test_apply_probe_from_the_run_view(backend: str, trained_probe: str) -> None:
    run = _scored_run(backend)
    run_id = run["run_id"]
    assert all(t.get("probe") is None for t in run["tokens"])
    at = _explore_run(run_id)
    assert _claims_table(at).shape[0] >= 1
    assert any(e.label.startswith("Score this run") for e in at.expander)
    pick = at.selectbox(key="explore.probe_pick")
    assert trained_probe in pick.options
    pick.set_value(trained_probe)
    at.button(key="explore.probe_apply").click().run()
    assert not at.exception, [e.value for e in at.exception]
    stored = httpx.get(f"{backend}/api/v1/runs/{run_id}").json()
    probe = [t.get("probe") for t in stored["tokens"] if not t["is_prompt"]]
    assert sum(v is not None for v in probe) >= len(probe) - 1  # position 0 has no value
    assert stored["provenance"]["extras"]["probe"]["probe"] == trained_probe
    # the page shows the probed run: probe colours and column, no offer to apply one again
    assert at.session_state["explore.run"]["provenance"]["extras"]["probe"]["probe"] == (
        trained_probe
    )
    assert "probe" in _canvases(at)[0]["metrics"]
    assert "probe (max)" in _claims_table(at).columns
    assert "explore.probe_pick" not in [s.key for s in at.selectbox]
    assert any(f"probe: {trained_probe} (layer 0)" in c.value for c in at.caption)


def test_audit_shows_a_new_upload_when_older_ones_exist(backend: str) -> None:
    def chat(tag: str) -> bytes:
        messages = [
            {"role": "user", "content": f"Say something about {tag}."},
            {"role": "assistant", "content": f"Here is something about {tag}."},
        ]
        return (json.dumps({"messages": messages}) + "\n").encode()

    at = _app("audit")
    uploaded = []
    for tag in (f"first-{uuid.uuid4().hex[:6]}", f"second-{uuid.uuid4().hex[:6]}"):
        at.get("file_uploader")[0].set_value((f"{tag}.jsonl", chat(tag), "application/jsonl"))
        at.button[0].click().run()
        assert not at.exception, [e.value for e in at.exception]
        uploaded.append(at.session_state["audit.upload_id"])
        summary = httpx.get(f"{backend}/api/v1/uploads/{uploaded[-1]}").json()
        _job_done(backend, summary["job"]["job_id"])
        # the upload just sent is the one on screen, even with older uploads in the list
        assert at.selectbox(key="audit.choice").value == uploaded[-1]
    at.run()
    assert at.selectbox(key="audit.choice").value == uploaded[-1]
    # and the user can still switch to another upload
    at.selectbox(key="audit.choice").set_value(uploaded[0]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="audit.choice").value == uploaded[0]


def test_audit_adds_a_missing_family_with_the_button(backend: str) -> None:
    tag = uuid.uuid4().hex[:8]
    pair = {"prompt": f"Tell me about {tag}.", "response": "It is a tag. Nothing more."}
    reply = httpx.post(
        f"{backend}/api/v1/uploads",
        files={"file": (f"enrich-{tag}.jsonl", json.dumps(pair).encode())},
        timeout=60,
    )
    assert reply.status_code == 202, reply.text
    upload_id = reply.json()["upload_id"]
    _job_done(backend, reply.json()["job_id"])
    at = _app("audit")
    at.selectbox(key="audit.choice").set_value(upload_id).run()
    at.selectbox(key="audit.metric").set_value("ccp_mean_log").run()
    assert not at.exception, [e.value for e in at.exception]
    # ranked by a metric the upload lacks: a hint naming the family, no column of empty values
    assert any("ccp family" in w.value and "Add metrics" in w.value for w in at.warning)
    assert "risk" not in at.dataframe[0].value.columns
    assert at.multiselect(key="audit.add_families").value == ["ccp"]  # preselected
    at.button(key="audit.add").click().run()
    assert not at.exception, [e.value for e in at.exception]
    _job_done(backend, at.session_state["audit.add_job"]["job_id"])
    at.run()  # the progress poll sees the finished job and reloads the page
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any("ccp family" in w.value for w in at.warning)
    turns = at.dataframe[0].value
    assert turns["risk"].notna().all() and len(turns) == 1


def test_explore_adds_a_family_to_the_stored_turn_shown(backend: str) -> None:
    tag = uuid.uuid4().hex[:8]
    pair = {"prompt": f"Explain {tag}.", "response": "It is a word. That is all."}
    reply = httpx.post(
        f"{backend}/api/v1/uploads",
        files={"file": (f"explore-{tag}.jsonl", json.dumps(pair).encode())},
        timeout=60,
    )
    assert reply.status_code == 202, reply.text
    upload_id = reply.json()["upload_id"]
    _job_done(backend, reply.json()["job_id"])
    runs = httpx.get(f"{backend}/api/v1/runs", params={"upload_id": upload_id}).json()["runs"]
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = runs[0]["run_id"]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.button(key="explore.add").disabled  # no family chosen yet
    at.multiselect(key="explore.add_families").set_value(["sar"]).run()
    at.button(key="explore.add").click().run()
    assert not at.exception, [e.value for e in at.exception]
    _job_done(backend, at.session_state["explore.add_job"]["job_id"])
    at.run()  # the progress poll sees the finished job, forgets cached runs and reloads
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    tokens = at.session_state["explore.run"]["tokens"]
    assert any(t.get("sar") is not None for t in tokens if not t["is_prompt"])


# ---- groups --------------------------------------------------------------------------------

GROUP_PROMPT = "What is 2 + 2? Give the final number."


def _make_group(url: str, verifier: str, n: int = 3, max_new_tokens: int = 12) -> dict[str, Any]:
    """A group sampled through the API (the tiny model: seed 0 makes it reproducible)."""
    body = {"prompt": GROUP_PROMPT, "verifier": verifier, "n": n, "max_new_tokens": max_new_tokens}
    reply = httpx.post(f"{url}/api/v1/groups", json=body, timeout=60)
    assert reply.status_code == 202, reply.text
    group_id = _job_done(url, reply.json()["job_id"])["result"]["group_id"]
    group: dict[str, Any] = httpx.get(f"{url}/api/v1/groups/{group_id}", timeout=60).json()
    return group


@pytest.fixture(scope="module")
def wrong_group(live_backend: str) -> dict[str, Any]:
    """Every response wrong: THR has no correct anchor, every response can be rolled out."""
    group = _make_group(live_backend, "exact:zzzz")
    assert group["summary"]["n_correct"] == 0
    return group


@pytest.fixture(scope="module")
def mixed_group(live_backend: str) -> dict[str, Any]:
    """One response right, the others wrong: a random model needs a verifier made to measure.

    The same prompt, seed and sampling parameters give the same responses, so a first group
    shows the texts and the second group's verifier accepts exactly the first one of them.
    """
    texts = [r["text"] for r in _make_group(live_backend, "regex:.")["responses"]]
    if len(set(texts)) == 1:
        pytest.skip("the tiny model sampled the same response three times")
    group = _make_group(live_backend, r"regex:\A" + re.escape(texts[0]) + r"\z")
    assert [r["reward"] for r in group["responses"]] == [float(t == texts[0]) for t in texts]
    return group


def _groups_page(group_id: str | None = None) -> AppTest:
    at = _app("groups")
    if group_id is not None:
        at.selectbox(key="groups.choice").set_value(group_id).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def _icicles(at: AppTest) -> list[dict[str, Any]]:
    return [t for spec in _plotly_specs(at) for t in spec["data"] if t["type"] == "icicle"]


def _frame_with(at: AppTest, column: str) -> list[pd.DataFrame]:
    """The page's tables that have ``column``."""
    return [d.value for d in at.dataframe if column in d.value.columns]


def _colour_by(at: AppTest) -> dict[str, Any]:
    """The token view of the response on screen: its first colour and its metric menu."""
    (canvas,) = _canvases(at)
    return canvas


def _trace_names(at: AppTest) -> set[str]:
    return {str(t.get("name")) for spec in _plotly_specs(at) for t in spec["data"]}


def test_groups_page_launches_a_group_from_a_shipped_prompt(
    backend: str, wrong_group: dict[str, Any]
) -> None:
    shipped = httpx.get(f"{backend}/api/v1/groups/prompts").json()
    at = _groups_page(wrong_group["group_id"])  # an older group is on screen
    assert "no correct response" in " ".join(w.value for w in at.warning)
    assert _colour_by(at)["metric"] == "entropy"  # no THR there
    pick = at.selectbox(key="groups.shipped")
    assert len(shipped) >= 2
    assert pick.options == [f"{p['id']} · {p['kind']} · {p['verifier']}" for p in shipped]
    # the first shipped prompt fills the fields; choosing another one refills them
    assert at.text_area(key="groups.prompt").value == shipped[0]["prompt"]
    assert at.text_input(key="groups.verifier").value == shipped[0]["verifier"]
    pick.set_value(shipped[1]["id"]).run()
    assert at.text_area(key="groups.prompt").value == shipped[1]["prompt"]
    assert at.text_input(key="groups.verifier").value == shipped[1]["verifier"]
    # every response of the random model is "correct" for regex:., so THR has its anchors
    at.text_input(key="groups.verifier").set_value("regex:.")
    at.number_input(key="groups.n").set_value(3)
    at.number_input(key="groups.max_new").set_value(12)
    at.button(key="groups.sample").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state["groups.job"]
    assert at.get("progress")  # the sampling job's progress bar
    group_id = _job_done(backend, job["job_id"])["result"]["group_id"]
    at.run()  # the progress fragment sees the finished job and reloads the page
    assert not at.exception, [e.value for e in at.exception]
    # the new group replaces the one on screen
    assert group_id != wrong_group["group_id"]
    assert at.selectbox(key="groups.choice").value == group_id
    (responses,) = _frame_with(at, "extracted answer")
    assert len(responses) == 3 and responses["reward"].tolist() == [1.0, 1.0, 1.0]
    assert any("τ =" in s.value for s in at.success)
    thr_tables = _frame_with(at, "THR")
    assert thr_tables and len(thr_tables[0]) >= 1  # the top positive THR tokens
    (icicle,) = _icicles(at)
    assert icicle["ids"][0] == "0" and icicle["values"][0] == 3
    assert icicle["labels"][0] == "all 3 responses"
    at.selectbox(key="groups.tree_colour").set_value("entropy").run()
    assert not at.exception, [e.value for e in at.exception]
    assert _icicles(at)[0]["marker"]["colorbar"]["title"]["text"] == "entropy (nats)"
    # a response's tokens: coloured by THR first, with the group signals in the menu
    at.selectbox(key="groups.response").set_value(1).run()
    assert not at.exception, [e.value for e in at.exception]
    canvas = _colour_by(at)
    assert canvas["metric"] == "thr" and canvas["specs"]["thr"]["signed"] is True
    assert {"thr", "thr_advantage", "tempo_td", "tempo_advantage", "latr_branch"} <= set(
        canvas["metrics"]
    )
    assert {"entropy", "LATR branch", "CURE candidate"} <= _trace_names(at)
    # a correct response has no critical token to look for
    assert "groups.rollouts" not in [b.key for b in at.button]


def test_groups_page_all_wrong_group_and_rollouts(
    backend: str, wrong_group: dict[str, Any]
) -> None:
    at = _groups_page(wrong_group["group_id"])
    warnings = " ".join(w.value for w in at.warning)
    assert "THR is not available" in warnings and "no correct response" in warnings
    assert len(_frame_with(at, "extracted answer")[0]) == 3
    assert not _frame_with(at, "THR")  # no THR tables without THR
    assert _icicles(at)
    assert at.button(key="groups.cdpo").disabled  # cDPO needs correct responses too
    # rollouts of response 0 through the page's button
    assert at.selectbox(key="groups.response").value == 0
    assert "thr" not in _colour_by(at)["metrics"]
    for key, value in (
        ("groups.k", 2),
        ("groups.budget", 2),
        ("groups.refine", 0),
        ("groups.counterfactuals", 1),
        ("groups.roll_new", 8),
    ):
        at.number_input(key=key).set_value(value)
    at.button(key="groups.rollouts").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state["groups.rollout_job"]
    run_id = wrong_group["responses"][0]["run_id"]
    assert job["run_id"] == run_id
    _job_done(backend, job["job_id"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    stored = httpx.get(f"{backend}/api/v1/groups/{wrong_group['group_id']}").json()
    rollout = stored["rollouts"][run_id]
    assert rollout["params"]["k"] == 2 and rollout["params"]["budget"] == 2
    assert {"c(t)", "baseline"} <= _trace_names(at)
    curve = next(t for spec in _plotly_specs(at) for t in spec["data"] if t.get("name") == "c(t)")
    assert curve["x"] == rollout["positions"] and curve["y"] == rollout["correct_rate"]
    if rollout["critical_position"] is not None:
        assert "critical token" in _trace_names(at)
        assert any("Critical token at position" in m.value for m in at.markdown)
    assert "rollout_correct" in _colour_by(at)["metrics"]


def test_groups_page_trains_contrastive_adapters(backend: str, mixed_group: dict[str, Any]) -> None:
    at = _groups_page(mixed_group["group_id"])
    assert any("τ =" in s.value for s in at.success)
    cdpo = at.button(key="groups.cdpo")
    assert not cdpo.disabled
    assert "ce_score" not in _colour_by(at)["metrics"]
    at.number_input(key="groups.cdpo_steps").set_value(2)
    cdpo.click().run()
    assert not at.exception, [e.value for e in at.exception]
    _job_done(backend, at.session_state["groups.cdpo_job"]["job_id"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Adapters trained" in s.value for s in at.success)
    assert "ce_score" in _colour_by(at)["metrics"]


def test_groups_page_survives_a_job_that_is_gone(backend: str, wrong_group: dict[str, Any]) -> None:  # noqa: ARG001 - fixture points the app at the backend
    at = _groups_page(wrong_group["group_id"])
    at.session_state["groups.job"] = {"job_id": uuid.uuid4().hex}  # e.g. another database
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(e.value.startswith("Sampling:") for e in at.error)
    assert "groups.job" not in at.session_state  # no endless polling
    assert _icicles(at)  # the rest of the page still draws


# ---- steering & decoding lab -----------------------------------------------------------------

LAB_PROMPTS = ("How do I bake bread?", "Tell me how to break into a house.")


def _lab_launch(at: AppTest, backend: str) -> dict[str, Any]:
    """Press Run experiment, wait for the job, let the page reload; the stored experiment."""
    at.button(key="lab.run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning, [w.value for w in at.warning]
    job = at.session_state["lab.job"]
    assert at.get("progress")  # the experiment job's progress bar
    experiment_id = _job_done(backend, job["job_id"])["result"]["experiment_id"]
    at.run()  # the progress fragment sees the finished job and reloads the page
    assert not at.exception, [e.value for e in at.exception]
    assert "lab.job" not in at.session_state
    assert at.selectbox(key="lab.choice").value == experiment_id  # the new one is on screen
    experiment: dict[str, Any] = httpx.get(
        f"{backend}/api/v1/experiments/{experiment_id}", timeout=60
    ).json()
    return experiment


def _lab_figure(at: AppTest, title_start: str) -> dict[str, Any]:
    found = [
        s
        for s in _plotly_specs(at)
        if str(s["layout"].get("title", {}).get("text", "")).startswith(title_start)
    ]
    assert len(found) == 1, [s["layout"].get("title") for s in _plotly_specs(at)]
    return found[0]


def _traces(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in spec["data"]}


def _lab_reloaded(experiment_id: str, title_start: str) -> dict[str, Any]:
    """A fresh session of the lab page with the experiment picked again: its figure."""
    at = _app("lab")
    at.selectbox(key="lab.choice").set_value(experiment_id).run()
    assert not at.exception, [e.value for e in at.exception]
    return _lab_figure(at, title_start)


def test_lab_refusal_sweep_shows_the_curve_and_the_outputs(backend: str) -> None:
    at = _app("lab")
    assert at.title[0].value == "Steering & decoding lab"
    assert at.selectbox(key="lab.kind").value == "refusal-sweep"
    assert at.text_input(key="lab.refusal.values").value == "-4, 0, 4, 8"
    at.text_area(key="lab.prompts").set_value(f"{LAB_PROMPTS[0]}\n! {LAB_PROMPTS[1]}\n")
    at.text_input(key="lab.refusal.values").set_value("0, 8")
    at.number_input(key="lab.refusal.max_new").set_value(6)
    experiment = _lab_launch(at, backend)
    params, summary = experiment["params"], experiment["summary"]
    assert params["prompts"] == [
        {"prompt": LAB_PROMPTS[0], "should_refuse": False},
        {"prompt": LAB_PROMPTS[1], "should_refuse": True},
    ]
    assert params["values"] == [0.0, 8.0] and params["max_new_tokens"] == 6
    # the refusal curve: overall, by group, and P(refusal) on a second axis
    spec = _lab_figure(at, "Refusal vs bias")
    traces = _traces(spec)
    assert list(traces) == ["refusal rate (all)", "benign", "should refuse", "mean P(refusal)"]
    assert traces["refusal rate (all)"]["x"] == [0, 8]
    assert traces["refusal rate (all)"]["y"] == summary["curves"]["refusal_rate"]
    assert traces["should refuse"]["y"] == summary["refusal_rate_by_group"]["should_refuse"]
    p_refusal = traces["mean P(refusal)"]
    assert p_refusal["yaxis"] == "y2" and p_refusal["y"] == summary["curves"]["p_refusal"]
    assert p_refusal["y"][1] > p_refusal["y"][0]  # a +8 bias raises P(refusal marker)
    assert spec["layout"]["yaxis"]["title"]["text"] == "refusal rate"
    assert "P(refusal marker)" in spec["layout"]["yaxis2"]["title"]["text"]
    # the outputs table: bias x prompt, with the responses and run ids
    (table,) = _frame_with(at, "run id")
    assert table["bias"].tolist() == [0.0, 0.0, 8.0, 8.0]
    assert table["prompt"].tolist() == [*LAB_PROMPTS, *LAB_PROMPTS]
    assert table["should refuse"].tolist() == [False, True, False, True]
    assert table["run id"].tolist() == [o["run_id"] for o in experiment["outputs"]]
    assert table["response"].tolist() == [o["response"] for o in experiment["outputs"]]
    # side by side: the first prompt at bias 0 and at bias 8, tokens coloured and aligned
    experiment_id = experiment["experiment_id"]
    assert at.selectbox(key=f"lab.a.{experiment_id}").value == 0
    assert at.selectbox(key=f"lab.b.{experiment_id}").value == 2
    bodies = _html_bodies(at)
    assert bodies.count('class="tp-tokens"') >= 2 and "tp-compare" in bodies
    at.selectbox(key=f"lab.b.{experiment_id}").set_value(3).run()
    assert not at.exception, [e.value for e in at.exception]
    # reloading the page and picking the experiment again draws the same curve
    again = _lab_reloaded(experiment_id, "Refusal vs bias")
    assert again["data"] == spec["data"]


def test_lab_east_sweep_shows_the_entropy_curve(backend: str) -> None:
    at = _app("lab")
    at.selectbox(key="lab.kind").set_value("east-sweep").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_input(key="lab.east.betas").value == "-8, 0, 8"
    assert at.number_input(key="lab.east.layer").value is None  # the middle layer
    at.text_area(key="lab.prompts").set_value("\n".join(LAB_PROMPTS))
    at.text_input(key="lab.east.betas").set_value("0 4")
    at.number_input(key="lab.east.max_new").set_value(6)
    experiment = _lab_launch(at, backend)
    params, summary = experiment["params"], experiment["summary"]
    assert params["prompts"] == list(LAB_PROMPTS) and params["betas"] == [0.0, 4.0]
    assert params["layer"] is None and params["max_new_tokens"] == 6
    spec = _lab_figure(at, "Entropy vs β")
    traces = _traces(spec)
    assert list(traces) == ["mean next-token entropy", "mean output entropy"]
    assert traces["mean next-token entropy"]["x"] == [0, 4]
    assert traces["mean next-token entropy"]["y"] == summary["curves"]["next_token_entropy"]
    assert traces["mean output entropy"]["y"] == summary["curves"]["output_entropy"]
    assert all(y > 0 for y in traces["mean output entropy"]["y"])
    assert spec["layout"]["yaxis"]["title"]["text"] == "entropy (nats)"
    assert f"layer {summary['layer']}" in spec["layout"]["title"]["text"]
    (table,) = _frame_with(at, "run id")
    assert table["beta"].tolist() == [0.0, 0.0, 4.0, 4.0]
    assert table["prompt #"].tolist() == [1, 2, 1, 2]  # counted from 1
    assert table["prompt"].tolist() == [*LAB_PROMPTS, *LAB_PROMPTS]
    experiment_id = experiment["experiment_id"]
    assert (
        at.selectbox(key=f"lab.a.{experiment_id}").value,
        at.selectbox(key=f"lab.b.{experiment_id}").value,
    ) == (0, 2)
    again = _lab_reloaded(experiment_id, "Entropy vs β")
    assert again["data"] == spec["data"]


def test_lab_grains_sweep_shows_the_margin_curve_and_stores_the_outputs(backend: str) -> None:
    at = _app("lab")
    at.selectbox(key="lab.kind").set_value("grains-sweep").run()
    assert not at.exception, [e.value for e in at.exception]
    # the shipped examples parse, and a bad line is a warning, not a launch
    assert len(at.text_area(key="lab.grains.examples").value.splitlines()) == 2
    at.text_area(key="lab.grains.examples").set_value("{not json").run()
    assert any("examples" in w.value for w in at.warning)
    examples = [
        {"prompt": "Is the sky blue today?", "preferred": " Yes, it is.", "dispreferred": " No."},
        {
            "prompt": "Tell me about cats please",
            "preferred": " Cats purr.",
            "dispreferred": " Dogs.",
        },
    ]
    at.text_area(key="lab.grains.examples").set_value("\n".join(json.dumps(e) for e in examples))
    at.text_area(key="lab.prompts").set_value(LAB_PROMPTS[0])
    at.text_input(key="lab.grains.betas").set_value("0 4")
    at.number_input(key="lab.grains.layer").set_value(1)
    at.number_input(key="lab.grains.top_k").set_value(2)
    at.number_input(key="lab.grains.steps").set_value(8)
    at.number_input(key="lab.grains.max_new").set_value(4)
    experiment = _lab_launch(at, backend)
    params, summary = experiment["params"], experiment["summary"]
    assert params["examples"] == examples and params["prompts"] == [LAB_PROMPTS[0]]
    assert params["betas"] == [0.0, 4.0] and params["layer"] == 1 and params["steps"] == 8
    spec = _lab_figure(at, "Preference margin vs β")
    traces = _traces(spec)
    assert list(traces) == ["mean preference margin", "mean output entropy"]
    assert traces["mean preference margin"]["y"] == summary["curves"]["preference_margin"]
    assert traces["mean output entropy"]["yaxis"] == "y2"
    # every output is a stored run, listed with its beta and the prompt it came from
    (table,) = _frame_with(at, "run id")
    assert table["beta"].tolist() == [0.0, 4.0]
    assert table["prompt"].tolist() == [LAB_PROMPTS[0]] * 2
    for run_id in table["run id"]:
        assert httpx.get(f"{backend}/api/v1/runs/{run_id}", timeout=60).status_code == 200


def test_lab_decode_rule_and_bad_input(backend: str) -> None:
    at = _app("lab")
    # a bad bias value is a warning next to the field, and nothing is launched
    at.text_input(key="lab.refusal.values").set_value("0, eight").run()
    assert any("'eight' is not a number" in w.value for w in at.warning)
    at.button(key="lab.run").click().run()
    assert "lab.job" not in at.session_state
    # a centred EAST vector from one prompt is refused before anything is launched
    at.selectbox(key="lab.kind").set_value("east-sweep").run()
    at.text_area(key="lab.prompts").set_value("Only one prompt")
    at.button(key="lab.run").click().run()
    assert any("at least two prompts" in w.value for w in at.warning)
    assert "lab.job" not in at.session_state
    # an EAD decode of the two prompts shows the per-prompt temperatures
    at.selectbox(key="lab.kind").set_value("decode").run()
    assert at.selectbox(key="lab.decode.rule").value == "ead"
    assert at.number_input(key="lab.decode.ead.tau_max").value == 1.2
    # (the tiny model's EAD output for "Tell me" re-encodes to the same token ids, so its
    # signals are token metrics; for the other prompt they are sequence means only)
    at.text_area(key="lab.prompts").set_value("Tell me\nHow do I bake bread?")
    at.number_input(key="lab.decode.max_new").set_value(6)
    at.number_input(key="lab.decode.ead.tau_max").set_value(0.05)  # close to greedy
    at.number_input(key="lab.decode.ead.tau_min").set_value(0.01)
    experiment = _lab_launch(at, backend)
    assert experiment["params"]["params"] == {
        "max_new_tokens": 6,
        "tau_max": 0.05,
        "tau_min": 0.01,
        "d": 200.0,
        "warmup": 10,
        "top_p": 1.0,
    }
    spec = _lab_figure(at, "EAD")
    traces = _traces(spec)
    per_prompt = experiment["summary"]["per_prompt"]
    assert traces["mean temperature τ"]["y"] == [p["mean_temperature"] for p in per_prompt]
    assert traces["all tokens"]["y"][0] == experiment["summary"]["mean_temperature"]
    assert any(m.label == "mean τ" for m in at.metric)
    experiment_id = experiment["experiment_id"]
    # the outputs are coloured by the rule's own signal first, where it is a token metric
    aligned = [o["signal_alignment"] == "token" for o in experiment["outputs"][:2]]
    metric = at.selectbox(key=f"lab.metric.{experiment_id}")
    assert ("ead_temperature" in metric.options) == any(aligned)
    assert metric.value == ("ead_temperature" if any(aligned) else "entropy")


def test_lab_saves_a_steering_vector_for_the_east_sweep(backend: str) -> None:
    name = f"lab-{uuid.uuid4().hex[:8]}"
    at = _app("lab")
    at.text_input(key="lab.vec.name").set_value(name)
    at.text_area(key="lab.vec.prompts").set_value("\n".join(LAB_PROMPTS))
    next(b for b in at.button if b.label == "Compute and save").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(name in s.value for s in at.success)
    saved = {v["name"]: v for v in httpx.get(f"{backend}/api/v1/vectors").json()}
    assert saved[name]["kind"] == "east" and saved[name]["n_prompts"] == 2
    (vectors,) = _frame_with(at, "n_prompts")
    assert name in vectors["name"].tolist()
    at.selectbox(key="lab.kind").set_value("east-sweep").run()
    pick = at.selectbox(key="lab.east.vector")
    layer = saved[name]["layer"]
    assert f"{name} · east · layer {layer}" in pick.options
    assert pick.value == ""  # by default the vector is computed from the prompts
    pick.set_value(name).run()
    assert at.number_input(key="lab.east.layer").disabled  # the vector brings its own layer
    at.text_area(key="lab.prompts").set_value(LAB_PROMPTS[0])
    at.text_input(key="lab.east.betas").set_value("0, 2")
    at.number_input(key="lab.east.max_new").set_value(4)
    experiment = _lab_launch(at, backend)
    assert experiment["params"]["vector"] == name and experiment["params"]["layer"] is None
    assert experiment["params"]["resolved_layer"] == layer
    assert experiment["summary"]["vector"]["name"] == name
    title = _lab_figure(at, "Entropy vs β")["layout"]["title"]["text"]
    assert f"vector “{name}” at layer {layer}" in title


def test_lab_with_the_backend_down_is_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TOKENPRISM_API_URL", f"http://127.0.0.1:{port}")
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
        at.switch_page("views/lab.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("not reachable" in e.value for e in at.error)
    finally:
        st.cache_resource.clear()


def test_run_view_lens_heatmap_and_explain_a_token(backend: str) -> None:
    body = {"prompt": "Capital of <b>Australia</b>?", "response": "It is Canberra."}
    run = httpx.post(f"{backend}/api/v1/runs", json=body, timeout=300).json()
    at = _explore_run(run["run_id"])
    at.button(key="explore.lens_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    specs = [s for s in _plotly_specs(at) if s["layout"].get("clickmode") == "event+select"]
    assert len(specs) == 1  # the lens heatmap: one square per (token, layer)
    lens = httpx.get(f"{backend}/api/v1/runs/{run['run_id']}/lens").json()
    response = [t["position"] for t in run["tokens"] if not t["is_prompt"]]
    assert len(specs[0]["data"][0]["x"]) == len(response) * lens["layers"]
    # choosing a cell shows that layer's top-5, as the stored lens has them
    pos, layer = response[1], 1
    at.selectbox(key="explore.lens_pos").set_value(pos).run()
    at.selectbox(key="explore.lens_layer").set_value(layer).run()
    top5 = next(d.value for d in at.dataframe if list(d.value.columns) == ["rank", "token", "prob"])
    cell = next(p for p in lens["positions"] if p["position"] == pos)["cells"][layer]
    assert top5["prob"].tolist() == pytest.approx([a["prob"] for a in cell["top_k"]])
    # explain: the prompt coloured by attribution, escaped, and the block bars
    at.selectbox(key="explore.explain_pos").set_value(response[-2])
    at.button(key="explore.explain_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    html = _html_bodies(at)
    assert "tp-attr" in html and "&lt;" in html and "<b>Australia" not in html
    assert "completeness error" in " ".join(c.value for c in at.caption)
    titles = [s["layout"].get("title", {}).get("text", "") for s in _plotly_specs(at)]
    assert any(t.startswith("direct logit attribution") for t in titles)

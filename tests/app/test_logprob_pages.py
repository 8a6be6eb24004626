"""Audit page with a Chat Completions logprobs file; the entropy band component."""

from __future__ import annotations

import json

import httpx
from streamlit.testing.v1 import AppTest

from tests.app.test_pages import _app, _job_done, backend
from tests.unit.test_logprobs_formats import chat_completion

__all__ = ["backend"]  # the fixture, re-exported for pytest


def test_audit_page_uploads_a_logprobs_file(backend: str) -> None:
    at = _app("audit")
    data = json.dumps(chat_completion()).encode()
    at.get("file_uploader")[0].set_value(("resp.json", data, "application/json"))  # type: ignore[union-attr]
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    upload_id = at.session_state["audit.upload_id"]
    summary = httpx.get(f"{backend}/api/v1/uploads/{upload_id}").json()
    _job_done(backend, summary["job"]["job_id"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.dataframe[0].value) == 1  # the one turn, ranked
    run_id = at.dataframe[0].value.iloc[0]["run_id"]
    run = httpx.get(f"{backend}/api/v1/runs/{run_id}").json()
    assert run["provenance"]["source"] == "logprobs"

    def page(run: dict) -> None:  # type: ignore[type-arg]  # AppTest runs the bare source
        from tokenprism.app.components.logprob_band import render_logprob_source

        render_logprob_source(run, key="t")

    band = AppTest.from_function(page, args=(run,)).run()
    assert not band.exception, [e.value for e in band.exception]
    assert "source: API logprobs (chat) · model gpt-4o-mini · top-k = 2" in band.caption[0].value
    chart = json.loads(band.get("plotly_chart")[0].proto.spec)
    names = [trace["name"] for trace in chart["data"]]
    assert names == ["entropy_lower", "entropy_upper", "entropy (top-k renormalised)"]
    lower, upper = chart["data"][0]["y"], chart["data"][1]["y"]
    assert len(lower) == 4 and all(lo <= up for lo, up in zip(lower, upper, strict=True))

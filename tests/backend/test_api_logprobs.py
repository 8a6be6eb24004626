"""Uploads with API logprobs: audited on a --no-model server, source=model/both, hostile files."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.backend.api_helpers import strict_json, url, wait_job
from tests.backend.test_api import ClientFactory, assert_error, counts, make_client, upload
from tests.unit.test_logprobs_formats import chat_completion
from tokenprism.backend.audit.logprob_render import render_turn

__all__ = ["make_client"]  # the fixture, re-exported for pytest


def _run_of(client: TestClient, upload_id: str) -> dict[str, Any]:
    runs = client.get(url("/runs"), params={"upload_id": upload_id}).json()["runs"]
    assert len(runs) == 1
    resp = client.get(url(f"/runs/{runs[0]['run_id']}"))
    assert resp.status_code == 200, resp.text
    run: dict[str, Any] = strict_json(resp.text)
    return run


def test_no_model_server_audits_a_chat_completion(make_client: ClientFactory) -> None:
    client = make_client(no_model=True)
    data = json.dumps(chat_completion(), indent=2).encode()
    resp = upload(client, "resp.json", data)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["source"] == "logprobs" and body["k"] == 2
    job = wait_job(client, body["job_id"])
    assert job["status"] == "done", job
    run = _run_of(client, body["upload_id"])
    prov = run["provenance"]
    assert prov["source"] == "logprobs" and prov["k"] == 2 and prov["vocab_size"] == 200_019
    tokens = run["tokens"]
    assert [t["prob"] for t in tokens] == pytest.approx([0.9, 0.6, 0.99, 0.02])
    assert tokens[3]["rank"] is None and tokens[3]["rank_gt"] == 2
    assert all(t["entropy_lower"] <= t["entropy_upper"] for t in tokens)
    summary = client.get(url(f"/uploads/{body['upload_id']}")).json()
    assert summary["n_scored"] == 1
    # a local re-score needs a model: refused up front, nothing stored
    before = counts(client)
    assert_error(upload(client, "other.json", data, source="model"), 409, "no_model")
    assert counts(client) == before


HOSTILE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "positive logprob": lambda r: r["choices"][0]["logprobs"]["content"][0].update(logprob=0.3),
    "rebuild": lambda r: r["choices"][0]["message"].update(content="Tea!"),
    "above 1": lambda r: r["choices"][0]["logprobs"]["content"][3]["top_logprobs"][0].update(
        logprob=math.log(0.99)
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_logprob_files_refused_nothing_stored(
    make_client: ClientFactory, name: str
) -> None:
    client = make_client(no_model=True)
    good, bad = chat_completion(), chat_completion()
    HOSTILE[name](bad)
    data = (json.dumps(good) + "\n" + json.dumps(bad)).encode()
    before = counts(client)
    err = assert_error(upload(client, "bad.jsonl", data), 422, "invalid_transcript")
    assert "line 2" in err["message"]
    assert counts(client) == before


def test_batch_output_with_missing_custom_id_refused(make_client: ClientFactory) -> None:
    client = make_client(no_model=True)
    out = {"custom_id": "a", "response": {"status_code": 200, "body": chat_completion()}}
    inp = {"custom_id": "b", "body": {"messages": [{"role": "user", "content": "Q"}]}}
    before = counts(client)
    resp = client.post(
        url("/uploads"),
        files={
            "file": ("out.jsonl", json.dumps(out)),
            "batch_input": ("in.jsonl", json.dumps(inp)),
        },
    )
    err = assert_error(resp, 422, "invalid_transcript")
    assert "line 1" in err["message"] and "custom_id 'a'" in err["message"]
    assert counts(client) == before


def test_source_both_stores_disagreement(make_client: ClientFactory, tiny_lm: Any) -> None:
    client = make_client()
    chat = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ]
    rendered = render_turn(tiny_lm, chat, 5, model_name="tiny")
    data = json.dumps({"request": {"messages": chat[:1]}, "response": rendered.response}).encode()
    resp = upload(client, "pair.jsonl", data, source="both")
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "done", job
    run = _run_of(client, resp.json()["upload_id"])
    assert run["provenance"]["local_run_id"]
    # the same model wrote and re-scored the text with the same tokenizer: no disagreement
    diffs = [t["logprob_disagreement"] for t in run["tokens"]]
    assert all(d is not None and abs(d) < 1e-3 for d in diffs)

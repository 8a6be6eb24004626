"""The HTTP API on the tiny random Llama: every route of ``create_app`` and its error cases."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.backend.api_helpers import url, wait_job
from tokenprism.backend.api.app import API, create_app
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "chats.jsonl"
TERMINAL = ("done", "failed", "cancelled", "interrupted")
TOKEN = "s3cret-0123456789abcdef"

ClientFactory = Callable[..., TestClient]
Response = Any  # the TestClient's response class (httpx or httpx2, by Starlette version)


# ---- helpers ------------------------------------------------------------------------------


def _settings(tiny_model_dir: Path, home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "default_model": str(tiny_model_dir),
        "device": "cpu",
        "allowed_model_dirs": [tiny_model_dir.parent],
        "batch_tokens": 4096,
        **overrides,
    }
    return Settings(**values)


def sql(client: TestClient, query: str, **extra: Any) -> list[list[Any]]:
    resp = client.post(url("/sql"), json={"query": query, **extra})
    assert resp.status_code == 200, resp.text
    rows: list[list[Any]] = resp.json()["rows"]
    return rows


def counts(client: TestClient) -> tuple[int, int, int, int]:
    """(uploads, turn runs, tokens, jobs) row counts.

    A multi-turn conversation's shared context is stored once, as a run of kind ``context``
    (not a turn): it is not counted among the runs.
    """
    row = sql(
        client,
        "SELECT (SELECT count(*) FROM uploads), "
        "(SELECT count(*) FROM runs WHERE kind <> 'context'), "
        "(SELECT count(*) FROM tokens), (SELECT count(*) FROM jobs)",
    )[0]
    return (row[0], row[1], row[2], row[3])


def upload(client: TestClient, name: str, data: bytes, **form: str) -> Response:
    return client.post(url("/uploads"), files={"file": (name, data)}, data=form or None)


def upload_and_wait(
    client: TestClient, name: str, data: bytes
) -> tuple[dict[str, Any], dict[str, Any]]:
    resp = upload(client, name, data)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    job = wait_job(client, body["job_id"])
    assert job["status"] == "done", job
    return body, job


def assert_error(resp: Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    return err


def upload_runs(client: TestClient, upload_id: str) -> list[dict[str, Any]]:
    resp = client.get(url("/runs"), params={"upload_id": upload_id, "limit": 1000})
    assert resp.status_code == 200
    runs: list[dict[str, Any]] = resp.json()["runs"]
    return runs


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app shared by the tests that only add their own rows and compare before/after."""
    home = tmp_path_factory.mktemp("api-home")
    app = create_app(_settings(tiny_model_dir, home / "home"))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def sample(client: TestClient) -> dict[str, Any]:
    """The sample transcript uploaded and scored once."""
    body, job = upload_and_wait(client, "chats.jsonl", SAMPLE.read_bytes())
    return {**body, "job": job}


@pytest.fixture
def make_client(tiny_model_dir: Path, tmp_path: Path) -> Iterator[ClientFactory]:
    """A fresh app in this test's home, with settings overridden; closed at teardown."""
    opened: list[TestClient] = []

    def make(*, raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
        home = tmp_path / f"home{len(opened)}"
        app = create_app(_settings(tiny_model_dir, home, **overrides))
        c = TestClient(
            app, raise_server_exceptions=raise_server_exceptions, base_url="http://127.0.0.1"
        )
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in reversed(opened):
        c.__exit__(None, None, None)


# ---- health, auth, metrics, generic errors -------------------------------------------------


def test_health_needs_no_token(make_client: ClientFactory, tiny_model_dir: Path) -> None:
    c = make_client(api_token=TOKEN)
    resp = c.get(url("/health"))
    assert resp.status_code == 200
    # without the token: status and version only, nothing about paths or models
    assert resp.json() == {"status": "ok", "version": resp.json()["version"], "auth": True}
    body = c.get(url("/health"), headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert body["status"] == "ok"
    assert body["auth"] is True
    assert body["default_model"] == str(tiny_model_dir)
    assert body["queue_length"] == 0
    assert body["db"].endswith("tokenprism.duckdb")


def _all_routes(c: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) of the API, from the app's OpenAPI schema, ids filled in."""
    routes = []
    for path, operations in c.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        assert path.startswith(API)
        path = path.replace("{run_id}", "r").replace("{upload_id}", "u")
        path = path.replace("{job_id}", "j").replace("{name}", "p")
        path = path.replace("{group_id}", "g").replace("{experiment_id}", "e")
        path = path.replace("{diff_id}", "d").replace("{stream_id}", "s")
        routes += [(method.upper(), path) for method in operations]
    return routes


def test_every_route_but_health_needs_the_token(make_client: ClientFactory) -> None:
    c = make_client(api_token=TOKEN)
    routes = _all_routes(c)
    expected = {
        ("GET", url("/health")),
        ("GET", url("/metrics")),
        ("POST", url("/runs")),
        ("GET", url("/runs")),
        ("GET", url("/runs/r")),
        ("GET", url("/runs/r/tokens")),
        ("DELETE", url("/runs/r")),
        ("POST", url("/generate")),
        ("POST", url("/uploads")),
        ("GET", url("/uploads")),
        ("GET", url("/uploads/u")),
        ("GET", url("/uploads/u/export")),
        ("POST", url("/uploads/u/metrics")),
        ("GET", url("/jobs")),
        ("GET", url("/jobs/j")),
        ("POST", url("/jobs/j/cancel")),
        ("POST", url("/jobs/j/resume")),
        ("GET", url("/jobs/j/events")),
        ("POST", url("/sql")),
        ("GET", url("/probes")),
        ("GET", url("/probes/p")),
        ("POST", url("/probes")),
        ("POST", url("/runs/r/probe")),
        ("GET", url("/groups/prompts")),
        ("POST", url("/groups")),
        ("GET", url("/groups")),
        ("GET", url("/groups/g")),
        ("POST", url("/groups/g/rollouts")),
        ("POST", url("/groups/g/contrastive")),
        ("GET", url("/experiments/prompts")),
        ("POST", url("/experiments")),
        ("GET", url("/experiments")),
        ("GET", url("/experiments/e")),
        ("GET", url("/vectors")),
        ("POST", url("/vectors")),
        ("POST", url("/diffs")),
        ("GET", url("/diffs/d")),
        ("GET", url("/runs/r/lens")),
        ("POST", url("/runs/r/lens")),
        ("POST", url("/runs/r/attributions")),
        ("GET", url("/runs/r/attributions")),
        ("POST", url("/generate/stream")),
        ("POST", url("/generate/stream/s/cancel")),
    }
    assert set(routes) == expected  # a new route must be added to this test
    for method, path in routes:
        if path == url("/health"):
            continue
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
        ):
            resp = c.request(method, path, headers=headers)
            err = assert_error(resp, 401, "unauthorized")
            assert TOKEN not in err["message"]
        resp = c.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code != 401, (method, path)

    good = {"Authorization": f"Bearer {TOKEN}"}
    resp = c.get(url("/runs"), headers=good)
    assert resp.status_code == 200 and resp.json()["total"] == 0
    resp = c.post(url("/runs"), json={"text": "The capital of France is Paris."}, headers=good)
    assert resp.status_code == 201
    assert c.post(url("/runs"), json={"text": "x y"}).status_code == 401
    resp = c.post(url("/sql"), json={"query": "SELECT count(*) FROM runs"}, headers=good)
    assert resp.json()["rows"] == [[1]]


def test_no_token_configured_means_open(client: TestClient) -> None:
    assert client.get(url("/health")).json()["auth"] is False
    assert client.get(url("/jobs")).status_code == 200


def test_metrics_lists_directions(client: TestClient) -> None:
    resp = client.get(url("/metrics"))
    assert resp.status_code == 200
    specs = {m["name"]: m for m in resp.json()}
    assert specs["entropy"]["higher_means"] == "uncertain"
    assert specs["entropy"]["level"] == "token"
    assert specs["geometric_mean_confidence"]["higher_means"] == "confident"
    assert specs["mean_entropy"]["level"] == "sequence"
    assert {"margin", "kurtosis", "logprob", "prob", "rank"} <= set(specs)
    for spec in specs.values():
        assert set(spec) == {"name", "level", "unit", "higher_means", "description"}


def test_unknown_route_is_json_404(client: TestClient) -> None:
    assert_error(client.get(url("/nope")), 404, "not_found")
    assert_error(client.get("/"), 404, "not_found")
    err = assert_error(client.put(url("/runs")), 405, "method_not_allowed")
    assert "Traceback" not in err["message"]


def test_json_body_over_limit_is_413(make_client: ClientFactory) -> None:
    c = make_client(max_body_bytes=1024)
    before = counts(c)
    resp = c.post(url("/runs"), json={"text": "The capital of France is Paris. " * 100})
    err = assert_error(resp, 413, "too_large")
    assert "1024" in err["message"]
    assert counts(c) == before
    assert c.post(url("/runs"), json={"text": "The capital of France."}).status_code == 201


def test_internal_error_is_500_without_details(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = make_client(raise_server_exceptions=False)

    def boom(*_: Any, **__: Any) -> list[dict[str, Any]]:
        raise RuntimeError("secret internal detail 0xdeadbeef")

    monkeypatch.setattr(Store, "list_runs", boom)
    resp = c.get(url("/runs"))
    assert resp.status_code == 500
    assert resp.json() == {
        "error": {"code": "internal", "message": "internal error; see the server log"}
    }
    assert "Traceback" not in resp.text
    assert "secret internal detail" not in resp.text
    assert "RuntimeError" not in resp.text
    assert c.get(url("/health")).status_code == 200  # the server is still fine


# ---- POST /runs ---------------------------------------------------------------------------


def test_create_run_raw_text(client: TestClient, tiny_model_dir: Path) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    resp = client.post(url("/runs"), json={"text": text})
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert {"run_id", "model", "tokens", "sequence", "layers"} <= set(run)
    assert run["model"]["id"] == str(tiny_model_dir)
    assert run["model"]["revision"].startswith("sha256:")
    assert run["kind"] == "text" and run["text"] == text and run["response"] == text
    tokens = run["tokens"]
    assert "".join(t["text"] for t in tokens) == text
    assert [t["position"] for t in tokens] == list(range(len(tokens)))
    assert not any(t["is_prompt"] for t in tokens)
    first, rest = tokens[0], tokens[1:]
    assert first["logprob"] is None and first["entropy"] is None and first["top_k"] == []
    for tok in rest:
        assert isinstance(tok["logprob"], float) and tok["logprob"] <= 0.0
        assert isinstance(tok["entropy"], float) and tok["entropy"] >= 0.0
        assert 0.0 < tok["prob"] <= 1.0
        assert len(tok["top_k"]) == 10
    seq = run["sequence"]
    assert 0.0 < seq["geometric_mean_confidence"] < 1.0
    assert seq["perplexity"] > 1.0
    assert [layer["layer"] for layer in run["layers"]] == list(range(len(run["layers"])))
    assert len(run["layers"]) >= 2
    # stored: GET gives the same document
    again = client.get(url(f"/runs/{run['run_id']}"))
    assert again.status_code == 200
    assert again.json() == run


def test_create_run_chat_template(client: TestClient) -> None:
    prompt, response = "What is the capital of France?", "The capital of France is Paris."
    resp = client.post(url("/runs"), json={"prompt": prompt, "response": response})
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert run["kind"] == "chat" and run["prompt"] == prompt and run["response"] == response
    answer = [t for t in run["tokens"] if not t["is_prompt"]]
    assert "".join(t["text"] for t in answer) == response + "<|im_end|>"
    assert run["text"].startswith("<|im_start|>system\nYou are a tiny test model.")
    assert all(isinstance(t["logprob"], float) for t in answer)


def test_create_run_without_template_and_with_system(client: TestClient) -> None:
    prompt, response = "Q: capital of Italy?\nA:", " Rome."
    resp = client.post(
        url("/runs"), json={"prompt": prompt, "response": response, "template": False}
    )
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert run["kind"] == "pair" and run["text"] == prompt + response
    assert "<|im_start|>" not in run["text"]
    answer = "".join(t["text"] for t in run["tokens"] if not t["is_prompt"])
    assert answer.strip() == "Rome."

    system = "You are a geography teacher."
    resp = client.post(
        url("/runs"),
        json={"prompt": "Capital of Italy?", "response": "Rome.", "system": system},
    )
    assert resp.status_code == 201
    run = resp.json()
    assert run["text"].startswith(f"<|im_start|>system\n{system}<|im_end|>")
    assert "tiny test model" not in run["text"]


@pytest.mark.parametrize(
    "body",
    [
        {"text": "hello", "prompt": "p", "response": "r"},
        {"text": "hello", "response": "r"},
        {},
        {"prompt": "only a prompt"},
        {"response": "no prompt"},
        {"text": "hello", "colour": "red"},
        {"text": 42},
        {"prompt": "p", "response": "r", "template": "maybe"},
    ],
)
def test_create_run_invalid_bodies(client: TestClient, body: dict[str, Any]) -> None:
    before = counts(client)
    err = assert_error(client.post(url("/runs"), json=body), 422, "invalid_request")
    assert err["problems"] and all("location" in p for p in err["problems"])
    assert counts(client) == before


def test_create_run_unknown_field_is_named(client: TestClient) -> None:
    err = assert_error(
        client.post(url("/runs"), json={"text": "hello", "colour": "red"}), 422, "invalid_request"
    )
    assert "colour" in err["message"]


def test_create_run_bad_json_is_422(client: TestClient) -> None:
    resp = client.post(url("/runs"), content=b"{bad", headers={"content-type": "application/json"})
    assert_error(resp, 422, "invalid_request")


@pytest.mark.parametrize(
    "body", [{"text": ""}, {"text": "   \n"}, {"prompt": "hi", "response": "  "}]
)
def test_create_run_empty_text_is_400(client: TestClient, body: dict[str, Any]) -> None:
    before = counts(client)
    err = assert_error(client.post(url("/runs"), json=body), 400, "bad_request")
    assert "empty" in err["message"]
    assert counts(client) == before


def test_create_run_too_long(client: TestClient) -> None:
    before = counts(client)
    err = assert_error(
        client.post(url("/runs"), json={"text": "The capital of France is Paris. " * 60}),
        422,
        "input_too_long",
    )
    assert "256" in err["message"]
    err = assert_error(
        client.post(url("/runs"), json={"prompt": "Hi", "response": "Paris is nice. " * 60}),
        422,
        "input_too_long",
    )
    assert "256" in err["message"]
    assert counts(client) == before


# ---- model access -------------------------------------------------------------------------


def test_model_outside_allowed_dirs_is_403(client: TestClient, tmp_path: Path) -> None:
    before = counts(client)
    outside = REPO / "tests"  # exists, and is not under the pytest base temp directory
    for model in (str(outside), "/", "../..", "~"):
        resp = client.post(url("/runs"), json={"text": "hello there", "model": model})
        assert_error(resp, 403, "model_not_allowed")
    resp = upload(client, "t.txt", b"hello there", model=str(outside))
    assert_error(resp, 403, "model_not_allowed")
    resp = client.post(url("/generate"), json={"prompt": "hi", "model": str(outside)})
    assert_error(resp, 403, "model_not_allowed")
    assert counts(client) == before
    assert tmp_path.exists()


def test_hub_model_is_403(client: TestClient) -> None:
    before = counts(client)
    resp = client.post(url("/runs"), json={"text": "hello", "model": "someorg/somemodel"})
    err = assert_error(resp, 403, "model_not_allowed")
    assert "someorg/somemodel" in err["message"]
    assert counts(client) == before


def test_pickle_only_weights_are_refused(client: TestClient, tmp_path: Path) -> None:
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    (model_dir / "pytorch_model.bin").write_bytes(b"not really a pickle")
    (model_dir / "config.json").write_text("{}")
    before = counts(client)
    resp = client.post(url("/runs"), json={"text": "hello", "model": str(model_dir)})
    err = assert_error(resp, 422, "unsafe_weights")
    assert "pytorch_model.bin" in err["message"]
    assert counts(client) == before


def test_missing_model_dir_is_404(client: TestClient, tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    resp = client.post(url("/runs"), json={"text": "hello", "model": str(empty)})
    assert_error(resp, 404, "model_not_found")


def test_model_named_explicitly_inside_allowed_dir(
    client: TestClient, tiny_model_dir: Path
) -> None:
    resp = client.post(url("/runs"), json={"text": "hello there", "model": str(tiny_model_dir)})
    assert resp.status_code == 201
    assert resp.json()["model"]["id"] == str(tiny_model_dir)


# ---- GET /runs and friends ----------------------------------------------------------------


def test_list_filter_paginate_delete_runs(make_client: ClientFactory, tiny_model_dir: Path) -> None:
    c = make_client()
    ids = {}
    for key, body in {
        "pct": {"text": "I am 100% sure of it."},
        "nopct": {"text": "I am 100 percent sure of it."},
        "under": {"text": "snake_case names"},
        "chat": {"prompt": "Capital of France?", "response": "Paris, 100% sure."},
        "pair": {"prompt": "Capital of Italy? ", "response": "Rome.", "template": False},
    }.items():
        resp = c.post(url("/runs"), json=body)
        assert resp.status_code == 201, resp.text
        ids[key] = resp.json()["run_id"]
    up, _ = upload_and_wait(
        c,
        "two.jsonl",
        b'{"prompt": "Hello?", "response": "Hello there!"}\n'
        b'{"prompt": "Hi?", "response": "How can I help you today?"}\n',
    )

    def listing(**params: Any) -> dict[str, Any]:
        resp = c.get(url("/runs"), params=params)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    everything = listing()
    assert everything["total"] == 7 and len(everything["runs"]) == 7
    assert everything["limit"] == 50 and everything["offset"] == 0
    assert {ids[k] for k in ids} <= {r["run_id"] for r in everything["runs"]}
    row = next(r for r in everything["runs"] if r["run_id"] == ids["pct"])
    assert row["model"] == str(tiny_model_dir)
    assert row["sequence"]["mean_entropy"] > 0

    text_runs = listing(kind="text")
    assert text_runs["total"] == 3
    assert {r["run_id"] for r in text_runs["runs"]} == {ids["pct"], ids["nopct"], ids["under"]}
    assert {r["run_id"] for r in listing(kind="pair")["runs"]} == {ids["pair"]}
    assert listing(kind="chat")["total"] == 3  # one POST /runs chat and two uploaded turns

    pct = listing(q="100%")  # '%' matched literally, not as a wildcard
    assert {r["run_id"] for r in pct["runs"]} == {ids["pct"], ids["chat"]}
    assert pct["total"] == 2
    assert listing(q="100 percent")["total"] == 1
    assert {r["run_id"] for r in listing(q="e_c")["runs"]} == {ids["under"]}  # '_' literal too
    assert listing(q="e%c")["total"] == 0
    assert listing(q="SNAKE")["total"] == 1  # case-insensitive
    assert listing(q="100%", kind="text")["total"] == 1

    mine = listing(upload_id=up["upload_id"])
    assert mine["total"] == 2
    assert {r["upload_id"] for r in mine["runs"]} == {up["upload_id"]}
    assert sorted(r["item_index"] for r in mine["runs"]) == [0, 1]
    assert listing(upload_id="0" * 32)["total"] == 0

    assert listing(model=str(tiny_model_dir))["total"] == 7
    assert listing(model="someone/else")["total"] == 0

    pages = [listing(limit=3, offset=o) for o in (0, 3, 6, 9)]
    assert [len(p["runs"]) for p in pages] == [3, 3, 1, 0]
    assert all(p["total"] == 7 and p["limit"] == 3 for p in pages)
    paged = [r["run_id"] for p in pages for r in p["runs"]]
    assert paged == [r["run_id"] for r in everything["runs"]]
    assert len(set(paged)) == 7
    assert [p["offset"] for p in pages] == [0, 3, 6, 9]

    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "many"}):
        assert_error(c.get(url("/runs"), params=bad), 422, "invalid_request")

    # one run, its tokens, deletion
    run = c.get(url(f"/runs/{ids['pct']}")).json()
    assert run["text"] == "I am 100% sure of it."
    resp = c.get(url(f"/runs/{ids['pct']}/tokens"), params={"metrics": "margin"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["run_id"] == ids["pct"]
    assert [t["text"] for t in body["tokens"]] == [t["text"] for t in run["tokens"]]
    for tok, full in zip(body["tokens"], run["tokens"], strict=True):
        assert "margin" in tok and "kurtosis" not in tok and "window_entropy" not in tok
        assert tok["margin"] == full["margin"]
        assert tok["entropy"] == full["entropy"]  # core columns stay
    assert body["tokens"][0]["margin"] is None
    assert all(isinstance(t["margin"], float) for t in body["tokens"][1:])
    both = c.get(url(f"/runs/{ids['pct']}/tokens"), params={"metrics": "margin, kurtosis"})
    assert all("kurtosis" in t for t in both.json()["tokens"])
    every = c.get(url(f"/runs/{ids['pct']}/tokens")).json()["tokens"]
    assert every == run["tokens"]

    assert_error(c.get(url("/runs/nope")), 404, "not_found")
    assert_error(c.get(url("/runs/nope/tokens")), 404, "not_found")
    assert_error(c.delete(url("/runs/nope")), 404, "not_found")

    tokens_before = sql(c, f"SELECT count(*) FROM tokens WHERE run_id = '{ids['pct']}'")[0][0]
    assert tokens_before == len(run["tokens"])
    resp = c.delete(url(f"/runs/{ids['pct']}"))
    assert resp.status_code == 204 and resp.content == b""
    assert_error(c.get(url(f"/runs/{ids['pct']}")), 404, "not_found")
    assert_error(c.delete(url(f"/runs/{ids['pct']}")), 404, "not_found")
    for table in ("tokens", "token_metrics", "alternatives", "sequence_metrics", "layer_metrics"):
        assert sql(c, f"SELECT count(*) FROM {table} WHERE run_id = '{ids['pct']}'") == [[0]]
    assert listing()["total"] == 6
    assert c.get(url(f"/runs/{ids['nopct']}")).status_code == 200


# ---- POST /generate -----------------------------------------------------------------------


def test_generate_is_seeded_and_stored(client: TestClient) -> None:
    body = {"prompt": "What is the capital of France?", "n": 2, "seed": 0, "max_new_tokens": 8}
    before = counts(client)
    first = client.post(url("/generate"), json=body)
    assert first.status_code == 200, first.text
    runs = first.json()["runs"]
    assert len(runs) == 2
    for run in runs:
        assert run["prompt"] == body["prompt"] and run["kind"] == "chat"
        assert run["response"].strip()
        answer = [t for t in run["tokens"] if not t["is_prompt"]]
        assert answer and all(isinstance(t["logprob"], float) for t in answer)
        assert client.get(url(f"/runs/{run['run_id']}")).status_code == 200
    assert counts(client)[1] == before[1] + 2
    second = client.post(url("/generate"), json=body).json()["runs"]
    assert [r["response"] for r in second] == [r["response"] for r in runs]
    assert {r["run_id"] for r in second}.isdisjoint({r["run_id"] for r in runs})
    other = client.post(url("/generate"), json={**body, "seed": 1}).json()["runs"]
    assert [r["response"] for r in other] != [r["response"] for r in runs]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "hi", "n": 0},
        {"prompt": "hi", "n": 100},
        {"prompt": ""},
        {"prompt": "hi", "max_new_tokens": 0},
        {"prompt": "hi", "temperature": -1},
        {"prompt": "hi", "top_p": 0},
        {"prompt": "hi", "seed": -1},
        {"prompt": "hi", "beams": 3},
        {},
    ],
)
def test_generate_invalid(client: TestClient, body: dict[str, Any]) -> None:
    before = counts(client)
    assert_error(client.post(url("/generate"), json=body), 422, "invalid_request")
    assert counts(client) == before


# ---- uploads ------------------------------------------------------------------------------


def test_upload_sample_and_summary(client: TestClient, sample: dict[str, Any]) -> None:
    assert sample["n_items"] == 8 and sample["duplicate"] is False
    assert sample["format"] == "jsonl"
    job = sample["job"]
    assert job["status"] == "done" and job["progress"] == 1.0
    assert job["done"] == job["total"] == 8 and job["kind"] == "audit"
    assert job["params"]["upload_id"] == sample["upload_id"]
    assert job["result"]["items"] == 8 and job["result"]["runs_stored_by_this_attempt"] == 8
    assert job["error"] is None

    resp = client.get(url(f"/uploads/{sample['upload_id']}"))
    assert resp.status_code == 200
    summary = resp.json()
    assert summary["upload"]["upload_id"] == sample["upload_id"]
    assert summary["upload"]["filename"] == "chats.jsonl"
    assert summary["upload"]["n_items"] == 8
    assert "content" not in summary["upload"]
    assert summary["job"]["job_id"] == sample["job_id"] and summary["job"]["status"] == "done"
    assert summary["metric"] == "mean_entropy" and summary["higher_means"] == "uncertain"
    assert summary["n_scored"] == 8
    turns = summary["turns"]
    assert len(turns) == 8
    risks = [t["risk"] for t in turns]
    assert all(isinstance(r, float) for r in risks)
    assert risks == sorted(risks, reverse=True)
    assert risks == [t["sequence"]["mean_entropy"] for t in turns]
    assert sorted(t["item_index"] for t in turns) == list(range(8))
    assert sorted((t["conversation"], t["turn_index"]) for t in turns) == [
        (1, 0), (2, 0), (3, 0), (3, 1), (4, 0), (5, 0), (6, 0), (7, 0),
    ]  # fmt: skip
    by_item = {t["item_index"]: t for t in turns}
    assert by_item[0]["response"] == "The capital of France is Paris."
    assert by_item[0]["line"] == 1 and by_item[3]["line"] == 3 and by_item[7]["line"] == 7
    assert by_item[7]["response"] == "Buenos días."
    tokens = summary["tokens"]
    assert 0 < len(tokens) <= 20
    values = [t["value"] for t in tokens]
    assert values == sorted(values, reverse=True)
    assert all(t["value"] == t["entropy"] for t in tokens)
    run_ids = {t["run_id"] for t in turns}
    assert {t["run_id"] for t in tokens} <= run_ids

    top3 = client.get(
        url(f"/uploads/{sample['upload_id']}"),
        params={"metric": "geometric_mean_confidence", "token_metric": "prob", "top": 3},
    ).json()
    gm = [t["risk"] for t in top3["turns"]]
    assert gm == sorted(gm) and len(gm) == 8
    assert top3["higher_means"] == "confident" and top3["token_higher_means"] == "confident"
    probs = [t["value"] for t in top3["tokens"]]
    assert len(probs) == 3 and probs == sorted(probs)

    for params in ({"metric": "nonsense"}, {"metric": "entropy"}, {"token_metric": "nonsense"}):
        assert_error(
            client.get(url(f"/uploads/{sample['upload_id']}"), params=params), 400, "bad_request"
        )
    assert_error(
        client.get(url(f"/uploads/{sample['upload_id']}"), params={"top": 0}),
        422,
        "invalid_request",
    )
    assert_error(client.get(url("/uploads/nope")), 404, "not_found")

    listing = client.get(url("/uploads")).json()["uploads"]
    mine = [u for u in listing if u["upload_id"] == sample["upload_id"]]
    assert len(mine) == 1
    assert mine[0]["job_id"] == sample["job_id"] and mine[0]["format"] == "jsonl"
    assert mine[0]["size_bytes"] == SAMPLE.stat().st_size
    assert "content" not in mine[0]
    assert client.get(url("/uploads"), params={"limit": 1, "offset": 10_000}).json() == {
        "uploads": []
    }


def test_upload_exports(client: TestClient, sample: dict[str, Any]) -> None:
    uid = sample["upload_id"]
    n_tokens = sql(
        client,
        "SELECT count(*) FROM tokens t JOIN runs r USING (run_id) "
        f"WHERE r.upload_id = '{uid}' AND NOT t.is_prompt",
    )[0][0]
    assert n_tokens > 8

    resp = client.get(url(f"/uploads/{uid}/export"), params={"format": "csv"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert f'filename="tokenprism-audit-{uid[:12]}.csv"' in resp.headers["content-disposition"]
    frame = pd.read_csv(io.BytesIO(resp.content), keep_default_na=False, na_values=[""])
    assert len(frame) == n_tokens
    assert {"upload_id", "conversation", "line", "entropy", "margin", "text"} <= set(frame.columns)
    assert set(frame["upload_id"]) == {uid}
    assert sorted(set(frame["conversation"])) == list(range(1, 8))
    assert sorted(set(frame["line"])) == list(range(1, 8))
    assert frame.groupby("run_id").ngroups == 8
    item0 = frame[frame["item_index"] == 0]
    assert "".join(item0["text"]) == "The capital of France is Paris.<|im_end|>"

    resp = client.get(url(f"/uploads/{uid}/export"), params={"format": "parquet"})
    assert resp.status_code == 200
    table = pq.read_table(io.BytesIO(resp.content))
    assert table.num_rows == n_tokens
    assert {"conversation", "line", "entropy", "margin", "kurtosis"} <= set(table.column_names)
    parquet = table.to_pandas()
    assert parquet["entropy"].tolist() == pytest.approx(frame["entropy"].tolist(), nan_ok=True)

    resp = client.get(url(f"/uploads/{uid}/export"))  # html is the default
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "TokenPrism audit report" in html
    assert "chats.jsonl" in html
    assert "Buenos días" in html

    assert_error(
        client.get(url(f"/uploads/{uid}/export"), params={"format": "pdf"}),
        422,
        "invalid_request",
    )
    assert_error(
        client.get(url(f"/uploads/{uid}/export"), params={"metric": "nonsense"}),
        400,
        "bad_request",
    )
    assert_error(
        client.get(url("/uploads/nope/export"), params={"format": "csv"}), 404, "not_found"
    )


def test_reupload_is_a_duplicate(client: TestClient, sample: dict[str, Any]) -> None:
    before = counts(client)
    resp = upload(client, "renamed.jsonl", SAMPLE.read_bytes())
    error = assert_error(resp, 409, "duplicate_upload")
    assert error["upload_id"] == sample["upload_id"] and error["job_id"] == sample["job_id"]
    assert error["n_items"] == 8
    assert "nothing was re-scored" in error["message"] and "chats.jsonl" in error["message"]
    # the way to add metric families instead: the upload's metrics route
    assert error["links"]["add_metrics"] == f"/api/v1/uploads/{sample['upload_id']}/metrics"
    time.sleep(0.2)  # a job wrongly queued would have started by now
    assert counts(client) == before
    assert client.get(url(f"/jobs/{sample['job_id']}")).json()["status"] == "done"


@pytest.mark.parametrize(
    ("name", "data", "fmt", "responses"),
    [
        (
            "pairs.csv",
            b'prompt,response\n"What is 2+2?","It is 4."\nHello?,"Hi, how can I help?"\n',
            "csv",
            ["It is 4.", "Hi, how can I help?"],
        ),
        (
            "pairs.tsv",
            b"system\tprompt\tresponse\nBe brief.\tCapital of Italy?\tRome.\n",
            "csv",
            ["Rome."],
        ),
        ("note.txt", b"The quick brown fox jumps over the lazy dog.\n", "text", None),
        (
            "share.jsonl",
            json.dumps(
                {
                    "conversations": [
                        {"from": "human", "value": "Capital of France?"},
                        {"from": "gpt", "value": "Paris."},
                        {"from": "human", "value": "And Italy?"},
                        {"from": "gpt", "value": "Rome."},
                    ]
                }
            ).encode(),
            "jsonl",
            ["Paris.", "Rome."],
        ),
        (
            "noext",
            b'\n{"prompt": "Hello?", "response": "Hello there!"}\n\n',
            "jsonl",
            ["Hello there!"],
        ),
    ],
)
def test_upload_formats_end_to_end(
    client: TestClient, name: str, data: bytes, fmt: str, responses: list[str] | None
) -> None:
    before = counts(client)
    body, job = upload_and_wait(client, name, data)
    expected = responses or [data.decode()]
    assert body["format"] == fmt and body["n_items"] == len(expected)
    assert job["done"] == len(expected) and job["progress"] == 1.0
    runs = sorted(upload_runs(client, body["upload_id"]), key=lambda r: r["item_index"])
    assert [r["response"] for r in runs] == expected
    assert [r["item_index"] for r in runs] == list(range(len(expected)))
    assert counts(client)[:2] == (before[0] + 1, before[1] + len(expected))
    if fmt == "text":
        run = client.get(url(f"/runs/{runs[0]['run_id']}")).json()
        assert run["kind"] == "text" and run["text"] == data.decode()
    if name == "share.jsonl":
        second = client.get(url(f"/runs/{runs[1]['run_id']}")).json()
        assert "Capital of France?" in second["text"] and "Paris." in second["text"]
        assert second["turn_index"] == 1


def test_upload_format_override(client: TestClient) -> None:
    body, _ = upload_and_wait(client, "file.dat", b"prompt,response\nHi,Hello there!\n")
    assert body["format"] == "text"  # detected from content: not JSON
    resp = upload(client, "file2.dat", b"prompt,response\nHi,Hello again!\n", format="csv")
    assert resp.status_code == 202 and resp.json()["format"] == "csv"
    assert resp.json()["n_items"] == 1
    wait_job(client, resp.json()["job_id"])
    resp = upload(client, "file3.dat", b"hello", format="yaml")
    assert_error(resp, 400, "bad_request")


def test_upload_needs_a_file(client: TestClient) -> None:
    assert_error(client.post(url("/uploads")), 422, "invalid_request")


BAD_UPLOADS: list[tuple[str, str, bytes, int, str, int | None, str]] = [
    (
        "bad-json",
        "bad.jsonl",
        b'{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"prompt": "e",\n',
        422,
        "invalid_transcript",
        3,
        "invalid JSON",
    ),
    (
        "no-assistant",
        "user-only.jsonl",
        b'{"messages": [{"role": "user", "content": "hi"}]}\n',
        400,
        "bad_request",
        None,
        "no non-empty assistant turn to score (1 × no assistant message)",
    ),
    (
        "empty-assistant",
        "blank.jsonl",
        b'{"messages": [{"role": "user", "content": "hi"}, '
        b'{"role": "assistant", "content": "  "}]}\n',
        400,
        "bad_request",
        None,
        "1 × empty assistant message",
    ),
    (
        "unknown-role",
        "role.jsonl",
        b'{"messages": [{"role": "wizard", "content": "hi"}]}\n',
        422,
        "invalid_transcript",
        1,
        "wizard",
    ),
    (
        "not-an-object",
        "list.jsonl",
        b'{"prompt": "a", "response": "b"}\n[1, 2]\n',
        422,
        "invalid_transcript",
        2,
        "object",
    ),
    (
        "csv-no-header",
        "x.csv",
        b"question,answer\nHi,Hello\n",
        422,
        "invalid_transcript",
        1,
        "prompt",
    ),
    (
        "not-utf8",
        "latin1.jsonl",
        b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n',
        400,
        "bad_request",
        None,
        "line 2",
    ),
    (
        "binary",
        "blob.jsonl",
        b'{"prompt": "a"}\x00\x01\x02\x03binary\n',
        400,
        "bad_request",
        None,
        "binary",
    ),
    ("empty", "empty.jsonl", b"", 422, "empty_file", None, "empty"),
    ("whitespace", "ws.txt", b"  \n\n\t\n", 422, "empty_file", None, "empty"),
    ("no-conversations", "nothing.csv", b"prompt,response\n", 400, "bad_request", None, "no "),
]


@pytest.mark.parametrize(
    ("name", "data", "status", "code", "line", "needle"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_upload_stores_nothing(
    client: TestClient,
    name: str,
    data: bytes,
    status: int,
    code: str,
    line: int | None,
    needle: str,
) -> None:
    before = counts(client)
    jobs_before = len(client.get(url("/jobs")).json()["jobs"])
    err = assert_error(upload(client, name, data), status, code)
    assert needle in err["message"], err
    if line is not None:
        assert err["problems"][0]["line"] == line, err
        assert needle in err["problems"][0]["message"]
        assert f"line {line}" in err["message"]
    if name == "latin1.jsonl":
        assert "UTF-8" in err["message"]
    assert counts(client) == before
    assert len(client.get(url("/jobs")).json()["jobs"]) == jobs_before


def test_upload_limits(make_client: ClientFactory) -> None:
    c = make_client(upload_max_bytes=2048, upload_max_items=3)
    before = counts(c)
    big = b'{"prompt": "a", "response": "b"}\n' * 80  # 2720 bytes, 80 turns
    err = assert_error(upload(c, "big.jsonl", big), 413, "too_large")
    assert "2048" in err["message"]
    err = assert_error(upload(c, "chats.jsonl", SAMPLE.read_bytes()), 400, "bad_request")
    assert "8 turns" in err["message"] and "limit is 3" in err["message"]
    assert counts(c) == before
    body, _ = upload_and_wait(c, "ok.jsonl", b'{"prompt": "a", "response": "Hello there!"}\n' * 3)
    assert body["n_items"] == 3
    assert counts(c)[:2] == (1, 3)


def test_xss_payload_is_stored_verbatim_and_escaped(client: TestClient) -> None:
    payload = "<script>alert(1)</script>"
    line = {
        "messages": [
            {"role": "user", "content": 'Say "<b>hi</b>" & <img src=x onerror=alert(2)>'},
            {"role": "assistant", "content": payload},
        ]
    }
    body, _ = upload_and_wait(
        client, "<img src=x onerror=alert(3)>.jsonl", json.dumps(line).encode()
    )
    runs = upload_runs(client, body["upload_id"])
    assert len(runs) == 1 and runs[0]["response"] == payload
    run = client.get(url(f"/runs/{runs[0]['run_id']}")).json()
    assert run["response"] == payload
    assert "".join(t["text"] for t in run["tokens"] if not t["is_prompt"]) == (
        payload + "<|im_end|>"
    )
    html = client.get(url(f"/uploads/{body['upload_id']}/export")).text
    assert "TokenPrism audit report" in html
    assert "&lt;script&gt;" in html
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "<b>hi" not in html


# ---- jobs ---------------------------------------------------------------------------------


def test_jobs_listing_and_errors(client: TestClient, sample: dict[str, Any]) -> None:
    jobs = client.get(url("/jobs")).json()["jobs"]
    assert sample["job_id"] in {j["job_id"] for j in jobs}
    created = [j["created_at"] for j in jobs]
    assert created == sorted(created, reverse=True)
    done = client.get(url("/jobs"), params={"status": "done"}).json()["jobs"]
    assert done and all(j["status"] == "done" for j in done)
    assert client.get(url("/jobs"), params={"status": "failed"}).json()["jobs"] == []
    assert len(client.get(url("/jobs"), params={"limit": 1}).json()["jobs"]) == 1
    assert_error(client.get(url("/jobs"), params={"limit": 0}), 422, "invalid_request")

    job = client.get(url(f"/jobs/{sample['job_id']}")).json()
    assert job["status"] == "done" and job["progress"] == 1.0 and job["eta_seconds"] is None

    for method, path in (
        ("GET", "/jobs/nope"),
        ("POST", "/jobs/nope/cancel"),
        ("POST", "/jobs/nope/resume"),
        ("GET", "/jobs/nope/events"),
    ):
        err = assert_error(client.request(method, url(path)), 404, "not_found")
        assert "nope" in err["message"]

    err = assert_error(client.post(url(f"/jobs/{sample['job_id']}/cancel")), 409, "conflict")
    assert "done" in err["message"]
    err = assert_error(client.post(url(f"/jobs/{sample['job_id']}/resume")), 409, "conflict")
    assert "done" in err["message"]
    assert client.get(url(f"/jobs/{sample['job_id']}")).json()["status"] == "done"


def test_job_events_of_finished_job(client: TestClient, sample: dict[str, Any]) -> None:
    resp = client.get(url(f"/jobs/{sample['job_id']}/events"))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e.strip()]
    assert [e.splitlines()[0] for e in events] == ["event: progress", "event: end"]
    data = json.loads(events[-1].splitlines()[1].removeprefix("data: "))
    assert data["job_id"] == sample["job_id"] and data["status"] == "done"
    assert data["progress"] == 1.0


class WatchedLock:
    """The service's model lock, telling when someone starts waiting for it."""

    def __init__(self, inner: threading.Lock) -> None:
        self.inner = inner
        self.wanted = threading.Event()

    def __enter__(self) -> WatchedLock:
        self.wanted.set()
        self.inner.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def test_cancel_then_resume_does_not_redo_work(make_client: ClientFactory) -> None:
    c = make_client(batch_tokens=1)  # every turn is its own batch
    service = c.app.state.service  # type: ignore[attr-defined]
    lock: threading.Lock = service.model_lock
    watched = WatchedLock(lock)
    service.jobs.model_lock = watched
    assert lock.acquire(timeout=10)
    try:
        resp = upload(c, "chats.jsonl", SAMPLE.read_bytes())
        assert resp.status_code == 202, resp.text
        body = resp.json()
        job_id, total = body["job_id"], body["n_items"]
        # the worker passed its cancel check and now waits for the lock to score batch 1
        assert watched.wanted.wait(10)
        running = c.get(url(f"/jobs/{job_id}")).json()
        assert running["status"] == "running" and running["done"] == 0
        resp = c.post(url(f"/jobs/{job_id}/cancel"))
        assert resp.status_code == 200
        assert resp.json()["status"] == "running"  # the worker stops between batches
        err = assert_error(c.post(url(f"/jobs/{job_id}/resume")), 409, "conflict")
        assert "running" in err["message"]
    finally:
        lock.release()
    cancelled = wait_job(c, job_id)
    assert cancelled["status"] == "cancelled"
    assert 0 < cancelled["done"] < total
    stored = sql(c, f"SELECT count(*) FROM runs WHERE job_id = '{job_id}'")[0][0]
    assert stored == cancelled["done"]
    summary = c.get(url(f"/uploads/{body['upload_id']}")).json()
    assert summary["n_scored"] == stored and summary["job"]["status"] == "cancelled"
    err = assert_error(c.post(url(f"/jobs/{job_id}/cancel")), 409, "conflict")
    assert "cancelled" in err["message"]

    resp = c.post(url(f"/jobs/{job_id}/resume"))
    assert resp.status_code == 200
    assert resp.json()["status"] in ("queued", "running", "done")
    done = wait_job(c, job_id)
    assert done["status"] == "done" and done["done"] == total and done["progress"] == 1.0
    assert done["result"]["runs_stored_by_this_attempt"] == total - stored
    rows = sql(
        c,
        "SELECT item_index, count(*) FROM runs WHERE kind <> 'context' "
        f"AND upload_id = '{body['upload_id']}' GROUP BY item_index ORDER BY item_index",
    )
    assert rows == [[i, 1] for i in range(total)]
    assert sql(c, "SELECT count(*) FROM runs WHERE kind <> 'context'") == [[total]]


def test_cancel_of_a_queued_job(make_client: ClientFactory) -> None:
    c = make_client(batch_tokens=1)
    lock: threading.Lock = c.app.state.service.model_lock  # type: ignore[attr-defined]
    assert lock.acquire(timeout=10)
    try:
        first = upload(c, "a.jsonl", b'{"prompt": "a", "response": "Hello there!"}\n').json()
        wait_job(c, first["job_id"], until=("running",))
        second = upload(c, "b.jsonl", b'{"prompt": "b", "response": "How can I help?"}\n').json()
        assert c.get(url("/health")).json()["queue_length"] == 1
        resp = c.post(url(f"/jobs/{second['job_id']}/cancel"))
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    finally:
        lock.release()
    assert wait_job(c, first["job_id"])["status"] == "done"
    time.sleep(0.2)
    queued = c.get(url(f"/jobs/{second['job_id']}")).json()
    assert queued["status"] == "cancelled" and queued["done"] == 0
    assert upload_runs(c, second["upload_id"]) == []
    c.post(url(f"/jobs/{second['job_id']}/resume"))
    assert wait_job(c, second["job_id"])["status"] == "done"
    assert len(upload_runs(c, second["upload_id"])) == 1


def test_cancel_racing_the_worker_is_not_lost(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel between the worker's read of a queued job and its start still cancels it."""
    import tokenprism.backend.jobs.worker

    real_get_job = tokenprism.backend.jobs.worker.get_job
    worker_read = threading.Event()

    def slow_get_job(store: Any, job_id: str) -> dict[str, Any] | None:
        job = real_get_job(store, job_id)
        if threading.current_thread().name == "tokenprism-jobs" and not worker_read.is_set():
            worker_read.set()
            time.sleep(0.5)  # the window in which a cancel request arrives
        return job

    monkeypatch.setattr(tokenprism.backend.jobs.worker, "get_job", slow_get_job)
    c = make_client(batch_tokens=1)
    resp = upload(c, "chats.jsonl", SAMPLE.read_bytes())
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]
    assert worker_read.wait(10)
    assert c.post(url(f"/jobs/{job_id}/cancel")).status_code == 200
    # one worker runs jobs in order: once a later job is done, the first one is settled
    upload_and_wait(c, "later.jsonl", b'{"prompt": "a", "response": "Hello there!"}\n')
    job = wait_job(c, job_id)
    assert job["status"] == "cancelled"
    assert job["done"] < job["total"]
    assert sql(c, f"SELECT count(*) FROM runs WHERE job_id = '{job_id}'") == [[job["done"]]]


# ---- POST /sql ----------------------------------------------------------------------------


def test_sql_select(client: TestClient) -> None:
    resp = client.post(url("/sql"), json={"query": "SELECT 1 AS a, 'x' AS b, NULL AS c"})
    assert resp.status_code == 200
    assert resp.json() == {"columns": ["a", "b", "c"], "rows": [[1, "x", None]], "truncated": False}
    resp = client.post(url("/sql"), json={"query": "SELECT * FROM range(10) t(i)", "max_rows": 3})
    body = resp.json()
    assert body["rows"] == [[0], [1], [2]] and body["truncated"] is True
    resp = client.post(url("/sql"), json={"query": "SELECT * FROM range(3) t(i)", "max_rows": 3})
    assert resp.json()["truncated"] is False and len(resp.json()["rows"]) == 3
    odd = sql(
        client,
        "SELECT 'nan'::DOUBLE, 'inf'::DOUBLE, DATE '2024-01-02', [1, 2], "
        "{'k': 1.5::DOUBLE}, 2.5::DOUBLE",
    )
    assert odd == [[None, None, "2024-01-02", [1, 2], {"k": 1.5}, 2.5]]
    for query in ("EXPLAIN SELECT count(*) FROM runs", "EXPLAIN ANALYZE SELECT count(*) FROM runs"):
        explain = client.post(url("/sql"), json={"query": query})
        assert explain.status_code == 200, explain.text
        assert explain.json()["rows"]


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM runs",
        "DROP TABLE runs",
        "INSERT INTO jobs (job_id) VALUES ('x')",
        "UPDATE runs SET prompt = 'x'",
        "CREATE TABLE t AS SELECT 1",
        "COPY runs TO '/tmp/runs.csv'",
        "ATTACH '/tmp/other.duckdb' AS other",
        "PRAGMA enable_external_access",
        "SET enable_external_access = true",
        "EXPLAIN ANALYZE DELETE FROM runs",
        "EXPLAIN ANALYZE DROP TABLE runs",
        "EXPLAIN /* analyse */ ANALYZE UPDATE jobs SET status = 'failed'",
        "EXPLAIN ANALYZE INSERT INTO jobs (job_id) VALUES ('x')",
    ],
)
def test_sql_writes_are_refused(client: TestClient, sample: dict[str, Any], query: str) -> None:
    before = counts(client)
    assert before[1] >= 8 and sample["n_items"] == 8
    statuses = sql(client, "SELECT job_id, status FROM jobs ORDER BY job_id")
    err = assert_error(client.post(url("/sql"), json={"query": query}), 403, "read_only")
    assert "read-only" in err["message"]
    assert counts(client) == before
    assert sql(client, "SELECT job_id, status FROM jobs ORDER BY job_id") == statuses
    assert (
        client.get(
            url(f"/runs/{upload_runs(client, sample['upload_id'])[0]['run_id']}")
        ).status_code
        == 200
    )


def test_sql_cannot_write_through_table_functions(client: TestClient) -> None:
    before = counts(client)
    for query in (
        "SELECT * FROM query('DELETE FROM runs')",
        "SELECT * FROM query_table('runs'); DELETE FROM runs",
    ):
        resp = client.post(url("/sql"), json={"query": query})
        assert resp.status_code in (400, 403), resp.text
    assert counts(client) == before


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("SELECT 1; SELECT 2", "exactly one"),
        ("SELECT 1; DROP TABLE runs", "exactly one"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
        ("SELECT * FROM '/etc/passwd'", "SQL error"),
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM no_such_table", "no_such_table"),
    ],
)
def test_sql_bad_queries_are_400(client: TestClient, query: str, needle: str) -> None:
    before = counts(client)
    err = assert_error(client.post(url("/sql"), json={"query": query}), 400, "bad_request")
    assert needle in err["message"]
    assert "root:" not in err["message"]
    assert counts(client) == before


@pytest.mark.parametrize(
    "body", [{"query": ""}, {"query": "SELECT 1", "max_rows": 0}, {"q": "SELECT 1"}]
)
def test_sql_invalid_bodies(client: TestClient, body: dict[str, Any]) -> None:
    assert_error(client.post(url("/sql"), json=body), 422, "invalid_request")


def test_csv_export_row_count_matches_tokens(client: TestClient) -> None:
    """A CSV upload with two rows ends in an export with one row per response token."""
    data = b"prompt,response\nCapital of France?,Paris.\nCapital of Italy?,Rome is.\n"
    body, _ = upload_and_wait(client, "two.csv", data)
    resp = client.get(url(f"/uploads/{body['upload_id']}/export"), params={"format": "csv"})
    frame = pd.read_csv(io.StringIO(resp.text))
    runs = upload_runs(client, body["upload_id"])
    assert len(frame) == sum(r["n_response_tokens"] for r in runs)
    assert sorted(set(frame["line"])) == [2, 3]
    reader = csv.reader(io.StringIO(resp.text))
    header = next(reader)
    assert header[:3] == ["upload_id", "run_id", "conversation"]

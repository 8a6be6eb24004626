"""``POST /generate/stream`` on a real server (loopback), read incrementally with httpx."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backend.test_server import server

API = "/api/v1"
BODY = {"prompt": "What is the capital of France?", "max_new_tokens": 40, "seed": 3}


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse server-sent events as lines arrive."""
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            assert event is not None
            yield event, json.loads(line[len("data: ") :])
            event = None


UI = "http://127.0.0.1:8501"  # the UI's own origin, as `tokenprism up` admits it


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    home = tmp_path_factory.mktemp("stream") / "home"
    with server(home, tiny_model_dir, TOKENPRISM_UI_ORIGINS=json.dumps([UI])) as (url, _):
        yield url


def _stream(url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with httpx.stream("POST", url + API + "/generate/stream", json=body, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        return list(_events(resp.iter_lines()))


def test_stream_tokens_then_done_and_stored_run_agrees(live: str) -> None:
    events = _stream(live, BODY)
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and events[0][1]["stream_id"]
    assert kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    tokens = [d for k, d in events if k == "token"]
    done = events[-1][1]
    assert done["n_tokens"] == len(tokens) and done["stop_reason"] in ("eos", "length")
    assert done["timings"]["first_token_ms"] > 0
    run = httpx.get(f"{live}{API}/runs/{done['run_id']}/tokens", timeout=30).json()
    rows = run["tokens"] if isinstance(run, dict) else run
    response = [r for r in rows if not r["is_prompt"]]
    assert [r["token_id"] for r in response] == [t["token_id"] for t in tokens]
    for row, tok in zip(response, tokens, strict=True):
        assert abs(row["logprob"] - tok["logprob"]) < 1e-4
        assert abs(row["entropy"] - tok["entropy"]) < 1e-4


def test_entropy_stop_rule_ends_early(live: str) -> None:
    free = [d for k, d in _stream(live, BODY) if k == "token"]
    ent = [t["entropy"] for t in free]
    thr = sorted(ent)[len(ent) // 2]
    first = next(i for i, h in enumerate(ent) if h > thr)
    rule = {"metric": "entropy", "op": ">", "threshold": thr, "patience": 1, "action": "stop"}
    events = _stream(live, {**BODY, "stop_when": [rule]})
    tokens = [d for k, d in events if k == "token"]
    done = events[-1][1]
    assert len(tokens) == first + 1 < len(free)
    assert done["stop_reason"] == "rule:0"
    assert done["fired"][0]["index"] == first
    assert tokens[-1]["rules"][0]["action"] == "stop"


@pytest.fixture(scope="module")
def long_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server on a tiny model with room for 1,024 new tokens (the shared one has 256)."""
    from tests.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("long-stream")
    model = build_tiny_model(root / "model", context=1280)
    with server(root / "home", model) as (url, _):
        yield url


def _stalled_stream(url: str, body: dict[str, Any]) -> socket.socket:
    """Open a stream with a tiny receive window and read only its first bytes: the server's
    buffers fill and its model loop waits on this client, as with a real stalled reader."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect((host, int(port)))
    payload = json.dumps(body).encode()
    head = (
        f"POST {API}/generate/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    seen = b""
    while b"event: token" not in seen:
        chunk = sock.recv(1024)
        assert chunk, seen
        seen += chunk
    return sock


def test_second_stream_is_queued_and_disconnect_frees_model(long_live: str) -> None:
    # seed 16 draws no end token in 1,024 tokens on this model (535 kB of events, far more
    # than the server's buffers and the socket's window hold), so the first stream keeps the
    # model until its client leaves
    holder = _stalled_stream(long_live, {**BODY, "max_new_tokens": 1024, "seed": 16})
    seen: list[str] = []
    try:
        url = long_live + API + "/generate/stream"
        with httpx.stream("POST", url, json=BODY, timeout=120) as resp:
            for kind, data in _events(resp.iter_lines()):
                seen.append(kind)
                if kind == "queued":
                    assert data["position"] == 1
                    holder.close()  # the first client disconnects: the second gets the model
    finally:
        holder.close()
    assert seen[:2] == ["start", "queued"] and seen[-1] == "done" and "token" in seen
    # the first stream stopped when its client left and stores what it had generated (after
    # freeing the model, so it may land after the second)
    deadline = time.monotonic() + 60
    while (total := httpx.get(long_live + API + "/runs", timeout=30).json()["total"]) < 2:
        assert time.monotonic() < deadline, total
        time.sleep(0.2)
    stored = httpx.get(long_live + API + "/runs", timeout=30).json()["runs"]
    lengths = sorted(r["n_tokens"] for r in stored)
    assert 0 < lengths[0] and lengths[1] < 1024  # the held stream ended early, not at its cap


@pytest.mark.parametrize(
    ("patch", "status"),
    [
        ({"stop_when": [{"metric": "nope", "threshold": 1}]}, 422),
        ({"stop_when": [{"metric": "entropy", "threshold": 1, "patience": 0}]}, 422),
        ({"n": 2}, 422),
        ({"probe": "missing-probe"}, 400),
        ({"prompt": "word " * 400}, 422),
        ({"prompt": "Hi", "max_new_tokens": 1000}, 422),
        ({"max_new_tokens": 1025}, 422),
        ({"stop_when": [{"metric": "entropy", "threshold": 1, "branches": 99}]}, 422),
        ({"stop_when": [{"metric": "probe", "threshold": 0.5}]}, 400),
    ],
)
def test_bad_requests_are_4xx(live: str, patch: dict[str, Any], status: int) -> None:
    resp = httpx.post(live + API + "/generate/stream", json={**BODY, **patch}, timeout=60)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"]


def test_the_limits_of_generate(live: str) -> None:
    """The context check (before the model), UTF-8-only strings and finite numbers, as
    ``POST /generate``."""
    url = live + API + "/generate/stream"
    long = httpx.post(url, json={**BODY, "prompt": "word " * 300}, timeout=60)
    assert long.status_code == 422
    message = long.json()["error"]["message"]
    assert message.startswith("prompt is ") and "tokens; this model's context is 256" in message
    over = httpx.post(url, json={"prompt": "Hi", "max_new_tokens": 1000}, timeout=60)
    assert "max_new_tokens is 1,000" in over.json()["error"]["message"]
    for raw in (
        '{"prompt": "\\ud800"}',
        '{"prompt": "Hi", "stop_when": [{"metric": "entropy", "threshold": NaN}]}',
    ):
        reply = httpx.post(url, content=raw, headers={"content-type": "application/json"})
        assert reply.status_code == 422, reply.text
    assert (
        "lone surrogate"
        in httpx.post(
            url, content='{"prompt": "\\ud800"}', headers={"content-type": "application/json"}
        ).json()["error"]["message"]
    )


def test_cancel_request_ends_the_stream_and_stores_what_was_generated(live: str) -> None:
    url = live + API + "/generate/stream"
    assert httpx.post(url + "/nope/cancel", timeout=30).status_code == 404
    # sampled; seed 6 draws no end token in 200 tokens on the tiny model (seed 3 ends at the
    # 9th), so only the cancel can stop it, however late the cancel is read
    body = {**BODY, "max_new_tokens": 200, "seed": 6}
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("POST", url, json=body, timeout=120) as resp:
        for kind, data in _events(resp.iter_lines()):
            events.append((kind, data))
            if kind == "token" and data["index"] == 0:
                # not reading meanwhile: the model waits on the full buffer, so 200 tokens
                # cannot all be generated before the cancel is read
                stream_id = events[0][1]["stream_id"]
                reply = httpx.post(f"{url}/{stream_id}/cancel", timeout=30)
                assert reply.status_code == 202, reply.text
    kind, done = events[-1]
    tokens = [d for k, d in events if k == "token"]
    assert kind == "done" and done["stop_reason"] == "cancelled"
    assert done["n_tokens"] == len(tokens) < 200
    run = httpx.get(f"{live}{API}/runs/{done['run_id']}/tokens", timeout=30).json()
    assert sum(not r["is_prompt"] for r in run["tokens"]) == len(tokens)


def test_only_the_ui_origin_gets_cors_and_only_on_the_stream(live: str) -> None:
    url = live + API + "/generate/stream"
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    pre = httpx.options(url, headers={"Origin": UI, **ask})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == UI
    assert "authorization" in pre.headers["access-control-allow-headers"]
    evil = "http://evil.example"
    assert (
        "access-control-allow-origin"
        not in httpx.options(url, headers={"Origin": evil, **ask}).headers
    )
    small = {**BODY, "max_new_tokens": 3}
    page = {"Origin": UI, "Sec-Fetch-Site": "same-site"}  # what Chromium sends from the UI
    with httpx.stream("POST", url, json=small, headers=page, timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == UI
        assert [k for k, _ in _events(resp.iter_lines())][-1] == "done"
    for headers in ({"Origin": evil}, {"Origin": "null"}, {"Origin": UI + ".evil.example"}):
        refused = httpx.post(url, json=small, headers=headers, timeout=30)
        assert refused.status_code == 403 and "another site" in refused.text
    # the UI's origin is admitted on the browser paths only
    other = httpx.post(live + API + "/runs", json={"text": "Hi"}, headers=page, timeout=30)
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


def test_ui_origins_setting_and_up() -> None:
    from pydantic import ValidationError

    from tokenprism.backend.cli.serve import _with_ui_origins
    from tokenprism.backend.settings import Settings

    assert Settings(ui_origins=["HTTP://127.0.0.1:8501/"]).ui_origins == [UI]
    for bad in ("*", "null", "http://127.0.0.1:8501/app", "127.0.0.1:8501", "http://*.example"):
        with pytest.raises(ValidationError):
            Settings(ui_origins=[bad])
    env = _with_ui_origins({"PATH": "/bin"}, 8502)
    assert json.loads(env["TOKENPRISM_UI_ORIGINS"])[-2:] == [
        "http://127.0.0.1:8502",
        "http://localhost:8502",
    ]

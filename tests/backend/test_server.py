"""The real server in a subprocess on a loopback port: upload end to end, kill -9 recovery."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.backend.api_helpers import wait_job
from tests.conftest import REPO, SHARED_MODEL_CACHE, run_cli

API = "/api/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(home: Path, model: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start ``tokenprism serve`` on a free loopback port; stop it afterwards."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            # the code under test, whatever console script the venv holds
            sys.executable,
            "-m",
            "tokenprism.backend.cli.main",
            "serve",
            "--port",
            str(port),
            "--model",
            str(model),
        ],
        env={
            **os.environ,
            "TOKENPRISM_HOME": str(home),
            "TOKENPRISM_MODEL_CACHE": str(SHARED_MODEL_CACHE),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"server exited early: {proc.stdout.read() if proc.stdout else ''}"
                )
            try:
                if httpx.get(url + API + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not come up in 120 s")
            time.sleep(0.3)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _sql(url: str, query: str) -> list[list[object]]:
    reply = httpx.post(f"{url}{API}/sql", json={"query": query}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()["rows"]  # type: ignore[no-any-return]


def test_upload_poll_and_read_tokens(tmp_path: Path, tiny_model_dir: Path) -> None:
    with server(tmp_path / "home", tiny_model_dir) as (url, _):
        health = httpx.get(url + API + "/health").json()
        assert health["models_loaded"] == [str(tiny_model_dir)]
        data = (REPO / "data" / "samples" / "chats.jsonl").read_bytes()
        reply = httpx.post(url + API + "/uploads", files={"file": ("chats.jsonl", data)})
        assert reply.status_code == 202, reply.text
        job = wait_job(url, reply.json()["job_id"], until=("done", "failed"), poll=0.2)
        assert job["status"] == "done" and job["done"] == 8
        runs = httpx.get(
            url + API + "/runs", params={"upload_id": reply.json()["upload_id"]}
        ).json()
        assert runs["total"] == 8
        tokens = httpx.get(f"{url}{API}/runs/{runs['runs'][0]['run_id']}/tokens").json()["tokens"]
        assert tokens and tokens[-1]["entropy"] is not None
        report = httpx.get(
            f"{url}{API}/uploads/{reply.json()['upload_id']}/export", params={"format": "html"}
        )
        assert report.status_code == 200 and "TokenPrism audit report" in report.text


def test_kill_9_mid_job_then_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    lines = [
        json.dumps(
            {
                "prompt": f"Question {i}: what is {i} plus {i}?",
                "response": f"The answer is {2 * i}. " * 3,
            }
        )
        for i in range(300)
    ]
    data = ("\n".join(lines) + "\n").encode()
    with server(home, tiny_model_dir, TOKENPRISM_BATCH_TOKENS="1") as (url, proc):
        reply = httpx.post(url + API + "/uploads", files={"file": ("many.jsonl", data)})
        assert reply.status_code == 202, reply.text
        job_id, upload_id = reply.json()["job_id"], reply.json()["upload_id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}{API}/jobs/{job_id}").json()["done"] < 20:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with server(home, tiny_model_dir, TOKENPRISM_BATCH_TOKENS="64") as (url, _):
        job = httpx.get(f"{url}{API}/jobs/{job_id}").json()
        assert job["status"] == "interrupted", job
        stored = _sql(url, f"SELECT count(*) FROM runs WHERE job_id = '{job_id}'")[0][0]
        assert 20 <= stored < 300  # finished batches survived, the rest did not happen
        # every stored run is complete: one token row per token
        broken = _sql(
            url,
            "SELECT count(*) FROM runs r WHERE n_tokens <> "
            "(SELECT count(*) FROM tokens t WHERE t.run_id = r.run_id)",
        )[0][0]
        assert broken == 0
        resumed = httpx.post(f"{url}{API}/jobs/{job_id}/resume")
        assert resumed.status_code == 200, resumed.text
        done = wait_job(url, job_id, until=("done", "failed"), poll=0.2)
        assert done["status"] == "done", done
        assert done["result"]["runs_stored_by_this_attempt"] == 300 - stored
        total, distinct = _sql(
            url,
            "SELECT count(*), count(DISTINCT item_index) FROM runs "
            f"WHERE upload_id = '{upload_id}'",
        )[0]
        assert total == distinct == 300


def test_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    proc = run_cli("serve", "--host", "0.0.0.0", "--port", str(_free_port()), home=tmp_path)
    assert proc.returncode == 2
    assert "TOKENPRISM_API_TOKEN" in proc.stderr and "Traceback" not in proc.stderr


SECRET = "s3cret-0123456789abcdef"


def test_token_required_when_set(tmp_path: Path, tiny_model_dir: Path) -> None:
    with server(tmp_path / "home", tiny_model_dir, TOKENPRISM_API_TOKEN=SECRET) as (url, _):
        assert httpx.get(url + API + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}):
            denied = httpx.get(url + API + "/runs", headers=headers)
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        ok = httpx.get(url + API + "/runs", headers={"Authorization": f"Bearer {SECRET}"})
        assert ok.status_code == 200
        assert httpx.get(url + "/openapi.json").status_code == 401  # the schema is private too
        schema = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {SECRET}"})
        assert schema.status_code == 200 and "/api/v1/runs" in schema.json()["paths"]

"""A group of sampled responses on the real default model, through the API and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backend.api_helpers import wait_job
from tests.conftest import SHARED_MODEL_CACHE, run_cli, start_backend_thread
from tokenprism.analysis.verifiers import parse_verifier
from tokenprism.backend.groups.core import shipped_prompts
from tokenprism.backend.settings import Settings

pytestmark = pytest.mark.slow

PROMPT = "What is 2 + 2? Give the final number."
VERIFIER = "number:4"
N = 4
RESPONSE_KEYS = {"run_id", "text", "reward", "advantage", "tokens"}
TOKEN_KEYS = {"token_id", "text", "thr", "thr_advantage", "tempo_td", "tempo_advantage"}
NODE_KEYS = {"id", "parent", "token_ids", "text", "count", "value"}


def _check_group(group: dict[str, Any], verifier_spec: str, n: int) -> None:
    """What every group must satisfy, whatever the model happened to sample."""
    assert {"group_id", "responses", "tree", "summary"} <= set(group)
    responses = group["responses"]
    assert len(responses) == n
    verifier = parse_verifier(verifier_spec)
    rewards = []
    for r in responses:
        assert RESPONSE_KEYS <= set(r)
        assert r["reward"] in (0.0, 1.0)
        assert r["reward"] == verifier(r["text"]).reward, r["text"]
        rewards.append(r["reward"])
        assert r["tokens"] and all(TOKEN_KEYS <= set(t) for t in r["tokens"])
    advantages = [r["advantage"] for r in responses]
    if len(set(rewards)) > 1:
        assert sum(advantages) == pytest.approx(0.0, abs=1e-6)
        assert all((a > 0) == (r == 1.0) for a, r in zip(advantages, rewards, strict=True))
    else:
        assert advantages == [0.0] * n
    summary = group["summary"]
    assert summary["n_correct"] == int(sum(rewards))
    thr = [t["thr"] for r in responses for t in r["tokens"]]
    if any(rewards):
        assert summary["thr_reason"] is None
        assert all(v is not None and math.isfinite(v) for v in thr)
        assert summary["top_positive_thr"] or summary["top_negative_thr"]
    else:
        assert "no correct response" in summary["thr_reason"]
        assert all(v is None for v in thr)
    nodes = group["tree"]["nodes"]
    assert all(NODE_KEYS <= set(node) for node in nodes)
    assert nodes[0]["parent"] is None and nodes[0]["count"] == n
    assert nodes[0]["value"] == pytest.approx(sum(rewards) / n)


def test_a_group_on_the_default_model_through_the_api_and_the_cli(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "api", model_cache=SHARED_MODEL_CACHE, device="cpu")
    url, server, thread = start_backend_thread(settings)
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            reply = client.post(
                "/api/v1/groups",
                json={
                    "prompt": PROMPT,
                    "verifier": VERIFIER,
                    "n": N,
                    "max_new_tokens": 24,
                    "seed": 0,
                },
            )
            assert reply.status_code == 202, reply.text
            job = wait_job(client, reply.json()["job_id"], timeout=240, poll=0.25)
            assert job["status"] == "done", job
            reply = client.get(f"/api/v1/groups/{job['result']['group_id']}")
            assert reply.status_code == 200, reply.text
            group = reply.json()
            listed = client.get("/api/v1/groups").json()["groups"]
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]
    assert group["prompt"] == PROMPT and group["verifier"] == VERIFIER
    assert group["model"]["id"] == "default"
    _check_group(group, VERIFIER, N)
    assert [g["group_id"] for g in listed] == [group["group_id"]]

    shipped = next(p for p in shipped_prompts() if p["id"] == "sum")
    proc = run_cli(
        "group", "--shipped", "sum", "--n", "2", "--max-new-tokens", "16", "--json",
        home=tmp_path / "cli",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cli_group = json.loads(proc.stdout)
    assert cli_group["prompt"] == shipped["prompt"] and cli_group["verifier"] == shipped["verifier"]
    _check_group(cli_group, shipped["verifier"], 2)
    # the same JSON shape as the API's
    assert set(cli_group) == set(group)
    assert set(cli_group["responses"][0]) == set(group["responses"][0])
    assert set(cli_group["responses"][0]["tokens"][0]) == set(group["responses"][0]["tokens"][0])
    assert set(cli_group["tree"]["nodes"][0]) == set(group["tree"]["nodes"][0])
    assert set(cli_group["summary"]) == set(group["summary"])

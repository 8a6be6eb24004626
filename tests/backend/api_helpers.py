"""Small helpers the API test modules share: paths, strict JSON, waiting for jobs."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tokenprism.backend.api.app import API

TERMINAL = ("done", "failed", "cancelled", "interrupted")


def url(path: str) -> str:
    return f"{API}{path}"


def strict_json(text: str) -> Any:
    """Parse a reply, refusing the NaN / Infinity that plain json.loads would accept."""

    def refuse(name: str) -> None:
        raise AssertionError(f"the reply holds {name}")

    return json.loads(text, parse_constant=refuse)


def wait_job(client: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll a job (TestClient or httpx client) until it reaches a terminal status."""
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(url(f"/jobs/{job_id}"))
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']!r} after {timeout} s")
        time.sleep(0.05)

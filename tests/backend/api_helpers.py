"""Small helpers the API test modules share: paths, strict JSON, waiting for jobs."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
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


def wait_job(
    client: Any,
    job_id: str,
    *,
    until: tuple[str, ...] = TERMINAL,
    timeout: float = 120,
    poll: float = 0.05,
) -> dict[str, Any]:
    """Poll a job until its status is in ``until``; fail the test after ``timeout`` seconds.

    Args:
        client: a TestClient, an ``httpx.Client`` with a ``base_url``, or the base URL of a
            live server as a string (polled with ``httpx.get``).
        job_id: the job to poll.
        until: the statuses that end the wait (any terminal one by default).
        timeout: seconds before the test fails.
        poll: seconds between two polls.

    Returns:
        The job as the API last returned it.
    """
    if isinstance(client, str):
        base = client

        def get(path: str) -> Any:
            return httpx.get(base + path, timeout=10)
    else:
        get = client.get
    deadline = time.monotonic() + timeout
    while True:
        resp = get(url(f"/jobs/{job_id}"))
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} did not reach {until} in {timeout} s: {job['status']!r}")
        time.sleep(poll)

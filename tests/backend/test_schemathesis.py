"""Property-based run of the API's own OpenAPI schema against a real loopback server.

Every operation gets a bounded number of generated requests; none may answer 5xx. Each
generated request is also replayed as a foreign web page would send it (another ``Host``: 421;
a cross-site ``Origin`` on a state-changing method: 403), and with a lone surrogate in every
string of its JSON body (422 wherever the body has a string).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.conftest import start_backend_thread
from tokenprism.backend.settings import Settings

_BASE: list[str] = []  # the server's URL, for requests built by hand


@pytest.fixture(scope="module")
def api_schema(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    home = tmp_path_factory.mktemp("schemathesis-home")
    settings = Settings(
        home=home,
        default_model=str(tiny_model_dir),
        device="cpu",
        upload_max_bytes=64 * 1024,
        upload_max_items=50,
        sql_timeout_s=2,  # a generated query cannot hold the server
        max_queued_jobs=8,
    )
    url, server, thread = start_backend_thread(settings)
    _BASE[:] = [url]
    # one stored run so that id-taking routes also meet existing ids sometimes
    httpx.post(url + "/api/v1/runs", json={"text": "The capital of France is Paris."})
    try:
        yield schemathesis.openapi.from_url(url + "/openapi.json")
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def _exercise_every_operation(schema: object, data: st.DataObject) -> None:
    for result in schema.get_all_operations():  # type: ignore[attr-defined]
        operation = result.ok()
        case = data.draw(operation.as_strategy(), label=operation.label)
        if operation.path == "/api/v1/generate" and isinstance(case.body, dict):
            # bound the work a generated request may ask for; the limits themselves are tested
            case.body["n"] = min(int(case.body.get("n", 1) or 1), 2)
            case.body["max_new_tokens"] = min(int(case.body.get("max_new_tokens", 8) or 8), 8)
        case.call_and_validate(checks=[not_a_server_error], timeout=60)
        _hostile_variants(case, operation.method.upper())


def _with_surrogates(value: object) -> tuple[object, bool]:
    """``value`` with a lone surrogate appended to every string; whether any was changed."""
    if isinstance(value, str):
        return value + "\ud800", True
    if isinstance(value, dict):
        pairs = [(k, _with_surrogates(v)) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, any(c for _, (_, c) in pairs)
    if isinstance(value, list):
        items = [_with_surrogates(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def _hostile_variants(case: object, method: str) -> None:
    """The same request from a rebinding page, a foreign origin, with lone surrogates."""
    rebound = case.call(headers={"Host": "evil.example"}, timeout=60)  # type: ignore[attr-defined]
    assert rebound.status_code == 421, rebound.text
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        foreign = case.call(headers={"Origin": "http://evil.example"}, timeout=60)  # type: ignore[attr-defined]
        assert foreign.status_code == 403, foreign.text
    body = getattr(case, "body", None)
    media = str(getattr(case, "media_type", "") or "")
    if method == "POST" and isinstance(body, dict) and "json" in media:
        hostile, changed = _with_surrogates(body)
        if changed:
            raw = json.dumps(hostile)  # ensure_ascii: the surrogate travels as \ud800
            reply = httpx.post(
                _BASE[0] + case.formatted_path,  # type: ignore[attr-defined]
                params=getattr(case, "query", None),
                content=raw,
                headers={"content-type": "application/json"},
                timeout=60,
            )
            assert reply.status_code == 422, reply.text


def test_no_operation_answers_5xx(api_schema: object) -> None:
    _exercise_every_operation(api_schema)

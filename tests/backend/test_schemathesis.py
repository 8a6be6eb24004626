"""Property-based run of the API's own OpenAPI schema against a real loopback server.

Every operation gets a bounded number of generated requests; none may answer 5xx.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def api_schema(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    home = tmp_path_factory.mktemp("schemathesis-home")
    settings = Settings(
        home=home,
        default_model=str(tiny_model_dir),
        device="cpu",
        upload_max_bytes=64 * 1024,
        upload_max_items=50,
    )
    url, server, thread = start_backend_thread(settings)
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
        if operation.path.startswith("/api/v1/generate") and isinstance(case.body, dict):
            # bound the work a generated request may ask for; the limits themselves are tested
            case.body["n"] = min(int(case.body.get("n", 1) or 1), 2)
            case.body["max_new_tokens"] = min(int(case.body.get("max_new_tokens", 8) or 8), 8)
        case.call_and_validate(checks=[not_a_server_error], timeout=60)


def test_no_operation_answers_5xx(api_schema: object) -> None:
    _exercise_every_operation(api_schema)

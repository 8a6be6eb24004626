"""POST /api/v1/diffs (a job) and GET /api/v1/diffs/{id} on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.backend.api_helpers import strict_json, url, wait_job
from tokenprism.backend.api.app import create_app
from tokenprism.backend.settings import Settings

TEXT = "The capital of France is Paris. Seven pens cost 21 dollars."


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path_factory.mktemp("api-diffs") / "home",
        default_model=str(tiny_model_dir),
        device="cpu",
        allowed_model_dirs=[tiny_model_dir.parent],
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def _diff(client: TestClient, body: dict[str, str]) -> dict[str, Any]:
    resp = client.post(url("/diffs"), json=body)
    assert resp.status_code == 202, resp.text
    created = resp.json()
    job = wait_job(client, created["job_id"])
    assert job["status"] == "done", job
    resp = client.get(url(f"/diffs/{created['diff_id']}"))
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = strict_json(resp.text)
    return result


def test_text_and_run_diffs(client: TestClient, tiny_model_dir: Path) -> None:
    m = str(tiny_model_dir)
    out = _diff(client, {"text": TEXT, "against": m + "@layers=1"})
    assert out["status"] == "done" and out["b"]["id"] == m + "@layers=1"
    assert out["b"]["revision"].endswith("@layers=1")  # the job recorded the loaded model
    assert out["summary"]["kl_mean"] > 0
    tokens = out["runs"][0]["tokens"]
    assert tokens[0]["kl"] is None and tokens[0]["reason"]
    assert all(t["kl"] >= 0 for t in tokens[1:])
    run_id = out["runs"][0]["run_id"]
    same = _diff(client, {"run_id": run_id, "against": m})
    assert same["summary"]["kl_max"] == 0 and same["summary"]["top1_agree"] == 1


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"against": "x"}, 422, "exactly one"),
        ({"text": "hi", "run_id": "r", "against": "x"}, 422, "exactly one"),
        ({"text": "hi"}, 422, "against"),
        ({"text": "hi", "against": "default@int9"}, 400, "unknown model variant"),
        ({"text": "hi", "against": "/etc@int8"}, 403, "ALLOWED_MODEL_DIRS"),
        ({"text": "hi", "against": "default@adapter=/etc"}, 403, "ALLOWED_MODEL_DIRS"),
        ({"text": "hi", "against": "default@adapter=/no/such/dir"}, 403, "ALLOWED_MODEL_DIRS"),
        ({"text": "hi", "model": "/etc@bf16", "against": "default"}, 403, "ALLOWED_MODEL_DIRS"),
        ({"text": "hi", "against": "default@layers=9999999"}, 400, "positive integer"),
        ({"run_id": "nope", "against": "default"}, 404, "no run"),
        ({"upload_id": "nope", "against": "default"}, 400, "no runs"),
        ({"text": "x" * 200_001, "against": "default"}, 422, "text"),
    ],
)
def test_bad_bodies_are_refused_without_a_job(
    client: TestClient,
    body: dict[str, str],
    status: int,
    needle: str,
) -> None:
    before = client.get(url("/jobs")).json()
    resp = client.post(url("/diffs"), json=body)
    assert resp.status_code == status, resp.text
    assert needle in resp.text
    assert client.get(url("/jobs")).json() == before


def test_unknown_diff_is_404(client: TestClient) -> None:
    resp = client.get(url("/diffs/nope"))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


def test_one_gate_for_every_variant(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Variants gate their base model and confine adapter paths; refusals say nothing about
    whether a path exists; judges take no variants (a suffix must not skip the hub opt-in)."""
    from tokenprism.backend.api.security import ModelNotAllowed, gate_judge, gate_model_name

    s = Settings(home=tmp_path / "home", allowed_model_dirs=[tiny_model_dir.parent])
    m = str(tiny_model_dir)
    assert gate_model_name(m + "@int8@layers=1", s) == m + "@int8@layers=1"
    saved = s.home / "adapters" / "group1" / "positive"  # where cDPO adapters are written
    assert gate_model_name(f"default@adapter={saved}", s) == f"default@adapter={saved}"
    messages = []
    for name in ("hub/model@int8", "/etc@bf16", "default@adapter=/etc", "default@adapter=/no/x"):
        with pytest.raises(ModelNotAllowed) as refused:
            gate_model_name(name, s)
        messages.append(str(refused.value).replace(name, "NAME"))
    assert len(set(messages)) == 1
    with pytest.raises(ModelNotAllowed):
        gate_judge("fallback@int8", s)

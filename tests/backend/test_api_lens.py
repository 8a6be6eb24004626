"""``/runs/{id}/lens`` and ``/runs/{id}/attributions`` on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.backend.api_helpers import strict_json, url, wait_job
from tokenprism.backend.api.app import create_app
from tokenprism.backend.lens import service as lens_service
from tokenprism.backend.settings import Settings


@pytest.fixture
def client(tiny_model_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(
        home=tmp_path / "home", default_model=str(tiny_model_dir), device="cpu",
        allowed_model_dirs=[tiny_model_dir.parent],
    )  # fmt: skip
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def _run(client: TestClient) -> dict:  # type: ignore[type-arg]
    resp = client.post(
        url("/runs"), json={"prompt": "Capital of Australia?", "response": "Canberra."}
    )
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_lens_routes(client: TestClient) -> None:
    run = _run(client)
    rid = run["run_id"]
    assert client.get(url(f"/runs/{rid}/lens")).status_code == 404
    made = client.post(url(f"/runs/{rid}/lens"))
    assert made.status_code == 200, made.text
    got = client.get(url(f"/runs/{rid}/lens"), params={"start": 1, "limit": 3})
    assert got.status_code == 200
    body = strict_json(got.text)
    assert [p["position"] for p in body["positions"]] == [1, 2, 3]
    assert len(body["positions"][0]["cells"]) == 3 == body["layers"]
    assert client.get(url("/runs/nope/lens")).status_code == 404
    assert client.post(url("/runs/nope/lens")).status_code == 404
    assert client.get(url(f"/runs/{rid}/lens"), params={"limit": 10**6}).status_code == 422


def test_long_lens_is_a_job(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(client)
    monkeypatch.setattr(lens_service, "SYNC_LENS_TOKENS", 2)
    resp = client.post(url(f"/runs/{run['run_id']}/lens"))
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "done", job
    assert client.get(url(f"/runs/{run['run_id']}/lens")).status_code == 200


def test_attribution_routes(client: TestClient) -> None:
    run = _run(client)
    rid, pos = run["run_id"], len(run["tokens"]) - 2
    resp = client.post(url(f"/runs/{rid}/attributions"), json={"position": pos, "steps": 48})
    assert resp.status_code == 200, resp.text
    body = strict_json(resp.text)
    total = sum(a["value"] for a in body["attributions"])
    assert abs(total - (body["f_x"] - body["f_baseline"])) < 0.05 * abs(
        body["f_x"] - body["f_baseline"]
    )
    assert body["completeness_error"] < 0.05
    listed = client.get(url(f"/runs/{rid}/attributions"), params={"position": pos}).json()
    assert [a["attribution_id"] for a in listed["attributions"]] == [body["attribution_id"]]
    rows = client.post(
        url("/sql"), json={"query": "SELECT count(*) FROM attribution_values"}
    ).json()["rows"]
    assert rows == [[pos]]
    bad = [
        {"position": 0},
        {"position": 10**6},
        {"position": pos, "steps": 10**6},
        {"position": pos, "method": "shap"},
        {"position": pos, "foil": "x"},
        {"position": pos, "unknown": 1},
        {"position": 1000},
    ]
    for payload in bad:
        r = client.post(url(f"/runs/{rid}/attributions"), json=payload)
        assert 400 <= r.status_code < 500, (payload, r.text)
    r = client.post(url("/runs/nope/attributions"), json={"position": 1})
    assert r.status_code == 404
    rows = client.post(url("/sql"), json={"query": "SELECT count(*) FROM attributions"}).json()[
        "rows"
    ]
    assert rows == [[1]]

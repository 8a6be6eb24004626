"""The group routes of the HTTP API on the tiny random Llama: groups, rollouts and cDPO jobs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.backend.api_helpers import strict_json, url, wait_job
from tokenprism.analysis.verifiers import parse_verifier
from tokenprism.backend.api.app import create_app
from tokenprism.backend.groups.core import shipped_prompts
from tokenprism.backend.settings import Settings

PROMPT = "What is 2+2?"
# n = 3, seed 1 samples one correct and two incorrect responses on the tiny model (asserted)
N = 3
MIXED: dict[str, Any] = {
    "prompt": PROMPT,
    "verifier": "regex:e",
    "n": N,
    "max_new_tokens": 8,
    "seed": 1,
}
ALL_CORRECT = {**MIXED, "verifier": "regex:(?s).", "seed": 0}

RESPONSE_KEYS = {"run_id", "text", "reward", "advantage", "tokens"}
TOKEN_KEYS = {"token_id", "text", "thr", "thr_advantage", "tempo_td", "tempo_advantage"}
NODE_KEYS = {"id", "parent", "token_ids", "text", "count", "value"}


def n_jobs(client: TestClient) -> int:
    resp = client.post(url("/sql"), json={"query": "SELECT count(*) FROM jobs"})
    assert resp.status_code == 200, resp.text
    return int(resp.json()["rows"][0][0])


def submit(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(url(path), json=body)
    assert resp.status_code == 202, resp.text
    return wait_job(client, resp.json()["job_id"])


def get_group(client: TestClient, group_id: str) -> dict[str, Any]:
    resp = client.get(url(f"/groups/{group_id}"))
    assert resp.status_code == 200, resp.text
    group: dict[str, Any] = strict_json(resp.text)
    return group


def assert_error(resp: Any, status: int, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    message: str = resp.json()["error"]["message"]
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-groups") / "home"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, home: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=home,
        default_model=str(tiny_model_dir),
        device="cpu",
        allowed_model_dirs=[tiny_model_dir.parent],
        batch_tokens=4096,
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def mixed(client: TestClient) -> dict[str, Any]:
    job = submit(client, "/groups", MIXED)
    assert job["status"] == "done", job
    assert job["kind"] == "group" and job["error"] is None
    group = get_group(client, job["result"]["group_id"])
    assert group["job_id"] == job["job_id"]
    rewards = [r["reward"] for r in group["responses"]]
    assert 1.0 in rewards and 0.0 in rewards, f"the group is not mixed: {rewards}"
    return group


def test_a_group_job_stores_the_group_in_the_issue_json_shape(
    client: TestClient, mixed: dict[str, Any]
) -> None:
    assert {"group_id", "responses", "tree", "summary", "prompt", "verifier", "params"} <= set(
        mixed
    )
    assert mixed["prompt"] == PROMPT and mixed["verifier"] == MIXED["verifier"]
    assert mixed["params"]["n"] == 3 and mixed["params"]["max_new_tokens"] == 8
    responses = mixed["responses"]
    assert len(responses) == N
    verifier = parse_verifier(str(MIXED["verifier"]))
    for r in responses:
        assert RESPONSE_KEYS <= set(r)
        assert r["reward"] in (0.0, 1.0) and r["reward"] == verifier(r["text"]).reward
        assert r["tokens"], "every response has tokens"
        for tok in r["tokens"]:
            assert TOKEN_KEYS <= set(tok)
            assert isinstance(tok["token_id"], int) and isinstance(tok["text"], str)
            assert tok["thr"] is not None and math.isfinite(tok["thr"])  # a correct anchor exists
        assert "".join(t["text"] for t in r["tokens"]).startswith(r["text"])
    assert sum(r["advantage"] for r in responses) == pytest.approx(0.0, abs=1e-9)
    correct = [r["advantage"] for r in responses if r["reward"]]
    wrong = [r["advantage"] for r in responses if not r["reward"]]
    assert min(correct) > 0 > max(wrong)
    summary = mixed["summary"]
    assert summary["n_correct"] == len(correct) and summary["thr_reason"] is None
    assert summary["rewards"] == [r["reward"] for r in responses]
    assert mixed["params"]["thr_vocab"] == "full" and summary["thr_vocab"] == "full"

    nodes = mixed["tree"]["nodes"]
    assert nodes and all(NODE_KEYS <= set(n) for n in nodes)
    root = nodes[0]
    assert root["parent"] is None and root["count"] == N
    assert root["value"] == pytest.approx(len(correct) / N)
    for node in nodes[1:]:
        assert 0 <= node["parent"] < node["id"] and node["token_ids"]
        assert 1 <= node["count"] <= nodes[node["parent"]]["count"]

    # the runs of the group are ordinary runs, tagged with the group
    for r in responses:
        resp = client.get(url(f"/runs/{r['run_id']}"))
        assert resp.status_code == 200, resp.text
        run = resp.json()
        assert run["sequence"]["reward"] == r["reward"]
        assert run["provenance"]["group"]["group_id"] == mixed["group_id"]
    rows = client.post(
        url("/sql"),
        json={"query": f"SELECT count(*) FROM runs WHERE group_id = '{mixed['group_id']}'"},
    ).json()["rows"]
    assert rows == [[N]]

    listed = client.get(url("/groups"))
    assert listed.status_code == 200, listed.text
    entry = next(g for g in listed.json()["groups"] if g["group_id"] == mixed["group_id"])
    assert entry["prompt"] == PROMPT and entry["verifier"] == MIXED["verifier"]
    assert entry["n"] == N and entry["n_correct"] == len(correct)


@pytest.mark.usefixtures("mixed")  # an older group exists
def test_groups_listing_is_newest_first_and_limited(client: TestClient) -> None:
    job = submit(client, "/groups", {**MIXED, "n": 2, "max_new_tokens": 2, "seed": 7})
    assert job["status"] == "done", job
    newest = client.get(url("/groups"), params={"limit": 1})
    assert newest.status_code == 200, newest.text
    assert [g["group_id"] for g in newest.json()["groups"]] == [job["result"]["group_id"]]
    assert client.get(url("/groups"), params={"limit": 0}).status_code == 422


def test_shipped_prompts_are_served(client: TestClient) -> None:
    resp = client.get(url("/groups/prompts"))
    assert resp.status_code == 200, resp.text
    prompts = resp.json()
    assert prompts == shipped_prompts() and len(prompts) >= 10
    ids = [p["id"] for p in prompts]
    assert len(set(ids)) == len(ids) and "sum" in ids
    for p in prompts:
        assert p["prompt"].strip()
        parse_verifier(p["verifier"])  # every shipped verifier is valid


@pytest.mark.parametrize(
    ("verifier", "needle"),
    [
        ("number:four", "not a number"),
        ("nonsense", "kind:argument"),
        ("regex:(", "invalid regex"),
        ("choice:Q", "one letter A-J"),
    ],
)
def test_a_bad_verifier_is_refused_without_a_job(
    client: TestClient, verifier: str, needle: str
) -> None:
    before = n_jobs(client)
    resp = client.post(url("/groups"), json={**MIXED, "verifier": verifier})
    assert 400 <= resp.status_code < 500, resp.text
    message = resp.json()["error"]["message"]
    assert f"bad verifier {verifier!r}" in message and needle in message
    assert n_jobs(client) == before


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"n": 0}, 422, "n"),
        ({"n": 65}, 422, "n"),
        ({"temperature": 0}, 422, "temperature"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "   "}, 400, "prompt is empty"),
        ({"shots": 3}, 422, "shots"),
        ({"thr_vocab": "vstar"}, 422, "thr_vocab"),
        ({"thr_beta": -1}, 422, "thr_beta"),
    ],
)
def test_invalid_group_bodies(
    client: TestClient, body: dict[str, Any], status: int, needle: str
) -> None:
    before = n_jobs(client)
    assert_error(client.post(url("/groups"), json={**MIXED, **body}), status, needle)
    assert n_jobs(client) == before


def test_an_unknown_group_is_404(client: TestClient) -> None:
    before = n_jobs(client)
    assert_error(client.get(url("/groups/nope")), 404, "no group with id 'nope'")
    assert_error(client.post(url("/groups/nope/rollouts"), json={}), 404, "nope")
    assert_error(client.post(url("/groups/nope/contrastive"), json={}), 404, "nope")
    assert n_jobs(client) == before


def test_rollouts_and_contrastive_jobs(
    client: TestClient, mixed: dict[str, Any], home: Path
) -> None:
    group_id = mixed["group_id"]
    wrong = next(r for r in mixed["responses"] if not r["reward"])
    assert_error(client.post(url(f"/groups/{group_id}/rollouts"), json={"k": 0}), 422, "k")

    job = submit(
        client,
        f"/groups/{group_id}/rollouts",
        {"k": 2, "budget": 2, "refine": 2, "max_new_tokens": 4, "counterfactuals": 1},
    )
    assert job["status"] == "done", job
    assert job["kind"] == "rollouts" and job["result"]["run_id"] == wrong["run_id"]
    group = get_group(client, group_id)
    rollout = group["rollouts"][wrong["run_id"]]
    assert rollout["critical_position"] == job["result"]["critical_position"]
    assert 1 <= len(rollout["positions"]) <= 4
    response = next(r for r in group["responses"] if r["run_id"] == wrong["run_id"])
    curve = {t["position"]: t["rollout_correct"] for t in response["tokens"]}
    for pos, rate in zip(rollout["positions"], rollout["correct_rate"], strict=True):
        assert curve[pos] == rate and rate in (0.0, 0.5, 1.0)
    assert sum(v is not None for v in curve.values()) == len(rollout["positions"])

    job = submit(client, f"/groups/{group_id}/contrastive", {"steps": 2, "rank": 4})
    assert job["status"] == "done", job
    assert set(job["result"]["final_loss"]) == {"positive", "negative"}
    directory = home / "adapters" / group_id
    for name in ("positive", "negative"):
        assert (directory / name / "adapter_model.safetensors").is_file()
    assert (directory / "tokenprism-provenance.json").is_file()
    group = get_group(client, group_id)
    assert group["contrastive"]["params"]["steps"] == 2
    assert group["contrastive"]["params"]["rank"] == 4
    for r in group["responses"]:
        scores = [t["ce_score"] for t in r["tokens"]]
        assert scores and all(0.0 < s < 1.0 for s in scores)
        assert r["sequence"]["ce_min"] == pytest.approx(min(scores))


def test_an_all_correct_group_fails_contrastive_and_rollouts_with_a_reason(
    client: TestClient, home: Path
) -> None:
    job = submit(client, "/groups", ALL_CORRECT)
    assert job["status"] == "done", job
    group_id = job["result"]["group_id"]
    group = get_group(client, group_id)
    assert [r["reward"] for r in group["responses"]] == [1.0] * N
    assert all(r["advantage"] == 0.0 for r in group["responses"])

    job = submit(client, f"/groups/{group_id}/contrastive", {"steps": 1})
    assert job["status"] == "failed", job
    assert "needs correct and incorrect responses" in job["error"]
    assert f"{N} correct and 0 incorrect" in job["error"]
    assert not (home / "adapters" / group_id).exists()

    job = submit(client, f"/groups/{group_id}/rollouts", {"k": 1, "budget": 1})
    assert job["status"] == "failed", job
    assert "every response of this group is correct" in job["error"]
    assert get_group(client, group_id)["contrastive"] is None

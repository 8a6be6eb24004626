"""The uncertainty / hallucination routes of the HTTP API on the tiny random Llama."""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from tests.backend.api_helpers import url, wait_job
from tokenprism.analysis.ccp import ENGLISH_STOPWORDS
from tokenprism.backend.api.app import create_app
from tokenprism.backend.settings import Settings

PROMPT = "What is the capital of Australia?"
RESPONSE = "Canberra is the capital. Sydney is big."
_STRIP = string.punctuation + " \n\t\r▁ĠĊ"

ClientFactory = Callable[[], TestClient]


def sql(client: TestClient, query: str) -> list[list[Any]]:
    resp = client.post(url("/sql"), json={"query": query})
    assert resp.status_code == 200, resp.text
    rows: list[list[Any]] = resp.json()["rows"]
    return rows


def counts(client: TestClient) -> tuple[int, int, int]:
    """(uploads, runs, jobs) row counts."""
    row = sql(
        client,
        "SELECT (SELECT count(*) FROM uploads), (SELECT count(*) FROM runs), "
        "(SELECT count(*) FROM jobs)",
    )[0]
    return (row[0], row[1], row[2])


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code, err
    return err


def labelled_jsonl(n: int = 30) -> str:
    countries = [("France", "Paris", "Rome"), ("Italy", "Rome", "Paris")]
    lines = []
    for i in range(n):
        country, right, wrong = countries[i % 2]
        hallucinated = i % 3 == 0
        answer = wrong if hallucinated else right
        response = f"The capital of {country} is {answer}."
        lines.append(
            json.dumps(
                {
                    "prompt": f"Question {i}: the capital of {country}?",
                    "response": response,
                    "spans": [{"span": answer, "label": int(hallucinated)}],
                    "split": "test" if i % 4 == 1 else "train",
                }
            )
        )
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_client(tiny_model_dir: Path, tmp_path: Path) -> Iterator[ClientFactory]:
    """A fresh app (own data home, fresh database) on the tiny model."""
    opened: list[TestClient] = []

    def make() -> TestClient:
        settings = Settings(
            home=tmp_path / f"home{len(opened)}",
            default_model=str(tiny_model_dir),
            device="cpu",
            allowed_model_dirs=[tiny_model_dir.parent],
            batch_tokens=4096,
        )
        c = TestClient(create_app(settings), base_url="http://127.0.0.1")
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in reversed(opened):
        c.__exit__(None, None, None)


def trained_probes(client: TestClient) -> list[dict[str, Any]]:
    """Probes of this data home (the source tree may ship probes for the default model)."""
    resp = client.get(url("/probes"))
    assert resp.status_code == 200, resp.text
    return [p for p in resp.json() if not p["shipped"]]


def _response_tokens(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in run["tokens"] if not t["is_prompt"] and t["position"] > 0]


# ---- runs with extra metrics --------------------------------------------------------------


def test_run_with_ccp_and_sar(make_client: ClientFactory) -> None:
    c = make_client()
    body = {"prompt": PROMPT, "response": RESPONSE, "metrics": ["sar", "ccp"]}
    # the stopword / empty-word expectations below are the tokenprism preset's shortcuts
    resp = c.post(url("/runs"), json={**body, "ccp_preset": "tokenprism"})
    assert resp.status_code == 201, resp.text
    run = resp.json()
    toks = _response_tokens(run)
    assert toks
    for tok in run["tokens"]:
        if tok in toks:
            assert 0 < tok["ccp"] <= 1 and tok["sar"] >= 0
            word = tok["text"].strip(_STRIP)
            if not word or word.lower() in ENGLISH_STOPWORDS:
                assert tok["ccp"] == 1.0, tok  # short-circuited, never judged
        else:
            assert tok["ccp"] is None and tok["sar"] is None
    assert any(t["ccp"] < 1 for t in toks)
    seq = run["sequence"]
    assert seq["token_sar"] == pytest.approx(sum(t["sar"] for t in toks), rel=1e-5)
    ccp_product = 1.0
    for t in toks:
        ccp_product *= t["ccp"]
    assert seq["ccp_uncertainty"] == pytest.approx(1 - ccp_product, rel=1e-4, abs=1e-7)

    extras = run["provenance"]["extras"]
    assert extras["request"]["metrics"] == ["ccp", "sar"]  # canonical order
    assert extras["ccp"]["judge"].startswith("fallback:minilm-lexical(")
    assert extras["ccp"]["kind"] == "fallback"
    assert extras["ccp"]["preset"] == "tokenprism"
    assert extras["ccp"]["params"]["stopword_rule"] is True
    assert extras["ccp"]["encoder"].startswith("all-MiniLM-L6-v2")
    assert extras["encoder"]["encoder"].startswith("all-MiniLM-L6-v2")
    assert extras["sar"] == {"scope": "response"}

    assert [cl["text"] for cl in run["claims"]] == ["Canberra is the capital.", "Sydney is big."]
    for claim in run["claims"]:
        assert {"ccp", "sar", "entropy", "one_minus_prob"} <= set(claim["metrics"])
        span = [
            t for t in toks if claim["position_start"] <= t["position"] <= claim["position_end"]
        ]
        assert claim["metrics"]["sar"] == pytest.approx(sum(t["sar"] for t in span), rel=1e-5)
    assert seq["claim_ccp_min"] == pytest.approx(
        min(cl["metrics"]["ccp"] for cl in run["claims"]), rel=1e-6
    )
    # what GET returns is what POST returned
    again = c.get(url(f"/runs/{run['run_id']}")).json()
    assert again["claims"] == run["claims"]
    assert [t["ccp"] for t in again["tokens"]] == [t["ccp"] for t in run["tokens"]]


def test_ccp_preset_defaults_to_lm_polygraph_and_is_stored(make_client: ClientFactory) -> None:
    c = make_client()
    resp = c.post(url("/runs"), json={"prompt": PROMPT, "response": RESPONSE, "metrics": ["ccp"]})
    assert resp.status_code == 201, resp.text
    run = resp.json()
    ccp = run["provenance"]["extras"]["ccp"]
    assert ccp["preset"] == "lm-polygraph"
    assert ccp["params"]["stopword_rule"] is False and ccp["params"]["identity_casefold"] is False
    toks = _response_tokens(run)
    product = math.prod(t["ccp"] for t in toks)  # over every response token, none skipped
    assert run["sequence"]["ccp_uncertainty"] == pytest.approx(1 - product, rel=1e-4, abs=1e-7)
    before = counts(c)
    bad = c.post(url("/runs"), json={"text": RESPONSE, "metrics": ["ccp"], "ccp_preset": "paper"})
    assert_error(bad, 422, "invalid_request")
    bad = c.post(
        url("/uploads"),
        files={"file": ("t.jsonl", json.dumps({"prompt": "Hi", "response": "Hello."}).encode())},
        data={"metrics": "ccp", "ccp_preset": "paper"},
    )
    assert_error(bad, 422, "invalid_request")
    bad = c.post(url("/runs"), json={"text": RESPONSE, "ccp_preset": "tokenprism"})
    assert_error(bad, 422, "invalid_request")  # a preset without metrics
    assert counts(c) == before


def test_unknown_metric_family_is_422_and_stores_nothing(make_client: ClientFactory) -> None:
    c = make_client()
    before = counts(c)
    resp = c.post(url("/runs"), json={"text": RESPONSE, "metrics": ["ccp", "nope"]})
    err = assert_error(resp, 422, "invalid_request")
    assert "'nope'" in err["message"] and "ccp, probe, sar, selfcheck" in err["message"]
    resp = c.post(
        url("/uploads"),
        files={"file": ("t.jsonl", json.dumps({"prompt": "Hi", "response": "Hello."}).encode())},
        data={"metrics": "sar,nope"},
    )
    err = assert_error(resp, 422, "invalid_request")
    assert "'nope'" in err["message"]
    resp = c.post(url("/runs"), json={"text": RESPONSE, "judge": "fallback"})
    assert_error(resp, 422, "invalid_request")
    assert counts(c) == before


def test_probe_metric_without_a_probe_is_a_clear_error(make_client: ClientFactory) -> None:
    c = make_client()
    before = counts(c)
    resp = c.post(url("/runs"), json={"prompt": PROMPT, "response": RESPONSE, "metrics": ["probe"]})
    assert 400 <= resp.status_code < 500, resp.text
    message = resp.json()["error"]["message"]
    assert "no probe has been trained" in message and "POST /api/v1/probes" in message
    resp = c.post(url("/runs"), json={"text": RESPONSE, "metrics": ["probe"], "probe": "ghost"})
    assert 400 <= resp.status_code < 500, resp.text
    assert "no probe named 'ghost'" in resp.json()["error"]["message"]
    assert counts(c) == before
    assert trained_probes(c) == []
    assert_error(c.get(url("/probes/ghost")), 404, "not_found")


# ---- probe training and application -------------------------------------------------------


def test_train_list_and_apply_a_probe(make_client: ClientFactory, tiny_model_dir: Path) -> None:
    c = make_client()
    uploads_before = c.get(url("/uploads")).json()
    resp = c.post(
        url("/probes"),
        files={"file": ("capitals.jsonl", labelled_jsonl().encode())},
        data={"name": "caps", "layer": "0", "epochs": "3", "ccp": "true"},
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["n_items"] == 30
    job = wait_job(c, body["job_id"])
    assert job["status"] == "done", job
    assert job["kind"] == "probe_train"
    assert job["result"]["probe"] == "caps" and job["result"]["layer"] == 0
    # the labelled data is kept (with its job) but is not a transcript upload
    assert c.get(url("/uploads")).json() == uploads_before
    assert sql(c, "SELECT format, n_items, job_id FROM uploads") == [
        ["labelled-jsonl", 30, body["job_id"]]
    ]

    listed = trained_probes(c)
    assert [p["name"] for p in listed] == ["caps"]
    (summary,) = listed
    assert summary["model"] == str(tiny_model_dir) and summary["layer"] == 0
    assert summary["hidden_size"] == 32 and summary["shipped"] is False
    aucs = summary["held_out"]["token_auc"]
    assert set(aucs) == {"probe", "entropy", "one_minus_prob", "ccp"}
    assert all(v is None or 0 <= v <= 1 for v in aucs.values())
    assert aucs["probe"] == job["result"]["token_auc"]["probe"]
    detail = c.get(url("/probes/caps")).json()
    assert detail["report"]["held_out"]["token_auc"] == aucs
    assert detail["report"]["ccp_judge"].startswith("fallback:")
    assert detail["config"]["job_id"] == body["job_id"]

    run = c.post(url("/runs"), json={"prompt": PROMPT, "response": RESPONSE}).json()
    assert all("probe" not in t for t in run["tokens"])
    resp = c.post(url(f"/runs/{run['run_id']}/probe"), json={"probe": "caps"})
    assert resp.status_code == 200, resp.text
    applied = resp.json()
    assert applied["probe"] == "caps" and applied["run_id"] == run["run_id"]
    stored = c.get(url(f"/runs/{run['run_id']}")).json()
    assert stored["provenance"]["extras"]["probe"]["probe"] == "caps"

    # the stored values are sigmoid(h @ w + b) on the residual stream after block 0
    from tokenprism.backend.models.loader import get_model

    home = Path(c.get(url("/health")).json()["db"]).parent
    tensors = load_file(str(home / "probes" / "caps" / "probe.safetensors"))
    lm = get_model(str(tiny_model_dir), Settings(home=home, device="cpu"))
    ids = [t["token_id"] for t in stored["tokens"]]
    with torch.no_grad():
        hidden = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
    want = torch.sigmoid(hidden.double() @ tensors["weight"].double() + float(tensors["bias"]))
    toks = _response_tokens(stored)
    for tok in stored["tokens"]:
        if tok in toks:
            assert tok["probe"] == pytest.approx(float(want[tok["position"]]), abs=1e-5)
        else:
            assert tok["probe"] is None
    assert stored["sequence"]["probe_max"] == pytest.approx(max(t["probe"] for t in toks))
    assert applied["probe_max"] == pytest.approx(stored["sequence"]["probe_max"])
    for claim in stored["claims"]:
        span = [
            t for t in toks if claim["position_start"] <= t["position"] <= claim["position_end"]
        ]
        assert claim["metrics"]["probe"] == pytest.approx(max(t["probe"] for t in span))

    # scoring with the probe metric gives the same values in the same pass
    scored = c.post(
        url("/runs"), json={"prompt": PROMPT, "response": RESPONSE, "metrics": ["probe"]}
    )
    assert scored.status_code == 201, scored.text
    assert scored.json()["provenance"]["extras"]["probe"]["probe"] == "caps"
    for a, b in zip(_response_tokens(scored.json()), toks, strict=True):
        assert a["probe"] == pytest.approx(b["probe"], abs=1e-5)

    assert_error(c.post(url("/runs/nope/probe"), json={"probe": "caps"}), 404, "not_found")
    resp = c.post(url(f"/runs/{run['run_id']}/probe"), json={"probe": "ghost"})
    assert 400 <= resp.status_code < 500 and "ghost" in resp.json()["error"]["message"]


def test_a_bad_labelled_line_is_422_and_stores_nothing(make_client: ClientFactory) -> None:
    c = make_client()
    lines = labelled_jsonl(6).splitlines()
    lines[3] = json.dumps(
        {"prompt": "Hi", "response": "Hello.", "spans": [{"start": 2, "end": 40, "label": 1}]}
    )
    lines[4] = '{"prompt": "Hi", "response": '
    uploads_before = c.get(url("/uploads")).json()
    before = counts(c)
    resp = c.post(
        url("/probes"),
        files={"file": ("bad.jsonl", ("\n".join(lines) + "\n").encode())},
        data={"name": "bad-probe", "epochs": "2"},
    )
    err = assert_error(resp, 422, "invalid_transcript")
    assert [p["line"] for p in err["problems"]] == [4, 5]
    assert "line 4:" in err["message"] and "line 5:" in err["message"]
    assert "outside the text" in err["message"]
    assert c.get(url("/uploads")).json() == uploads_before
    assert counts(c) == before
    assert trained_probes(c) == []
    # a bad name or layer is refused before anything is stored too
    good = labelled_jsonl(6).encode()
    resp = c.post(url("/probes"), files={"file": ("ok.jsonl", good)}, data={"name": "no spaces"})
    assert 400 <= resp.status_code < 500
    resp = c.post(
        url("/probes"), files={"file": ("ok.jsonl", good)}, data={"name": "p", "layer": "7"}
    )
    assert_error(resp, 422, "invalid_request")
    assert counts(c) == before

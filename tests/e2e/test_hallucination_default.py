"""The shipped probe and the uncertainty family on the real default model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backend.api_helpers import wait_job
from tests.conftest import REPO, SHARED_MODEL_CACHE, start_backend_thread
from tokenprism.backend.probes.storage import SHIPPED_PROBES, load_probe
from tokenprism.backend.scoring.runner import score_batch
from tokenprism.backend.settings import Settings

pytestmark = pytest.mark.slow

PROBE = "smollm2-135m-facts"
DATASET = REPO / "data" / "facts" / "answers-smollm2-135m-instruct.jsonl"


def _settings(home: Path) -> Settings:
    return Settings(home=home, model_cache=SHARED_MODEL_CACHE, device="cpu")


def test_shipped_probe_report_is_reproduced_on_its_held_out_split(
    default_lm: Any, tmp_path: Path
) -> None:
    """Recompute every number of data/probes/<probe>/report.json from the shipped weights."""
    from tokenprism.analysis.probe import LinearProbe
    from tokenprism.backend.probes.training import (
        collect,
        encode_labelled,
        evaluate,
        parse_labelled,
    )
    from tokenprism.backend.scoring.extras import ExtraRequest, plan_extras

    settings = _settings(tmp_path)
    stored = load_probe(PROBE, settings)
    assert stored.path.parent == SHIPPED_PROBES
    assert stored.matches(default_lm), "the shipped probe must fit the embedded default model"
    report = stored.report
    assert report is not None
    held = report["held_out"]
    for name in ("probe", "entropy", "one_minus_prob", "ccp"):
        assert isinstance(held["token_auc"][name], float)
    assert isinstance(held["span_max_auc"]["probe"], float)
    assert held["n_examples"] > 50 and report["train"]["n_examples"] > 100

    data = DATASET.read_text()
    assert report["data"]["sha256"] == __import__("hashlib").sha256(data.encode()).hexdigest()
    items = [it for it in parse_labelled(data, DATASET.name) if it.split == "test"]
    assert len(items) == held["n_examples"]
    collected = collect(default_lm, encode_labelled(default_lm, items, DATASET.name), [17])
    assert stored.layer == 17
    probe = LinearProbe(int(stored.weight.numel()))
    probe.linear.weight.data = stored.weight.reshape(1, -1).clone()
    probe.linear.bias.data = stored.bias.reshape(1).clone()
    plan = plan_extras(default_lm, ExtraRequest(metrics=("ccp",)), settings)
    assert plan.judge is not None and plan.judge.name == report["ccp_judge"]
    for c in collected:
        plan.apply(default_lm, [c.encoded], [c.scored], None, rescore=score_batch)
    again = evaluate(probe, stored.layer, collected, roc=False)

    assert again["n_tokens"] == held["n_tokens"]
    assert again["n_positive_tokens"] == held["n_positive_tokens"]
    for name in ("probe", "entropy", "one_minus_prob", "ccp"):
        assert again["token_auc"][name] == pytest.approx(held["token_auc"][name], abs=0.005)
        assert again["span_max_auc"][name] == pytest.approx(held["span_max_auc"][name], abs=0.01)


def test_every_new_metric_is_stored_and_read_back_through_the_api(tmp_path: Path) -> None:
    url, server, thread = start_backend_thread(_settings(tmp_path))
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            reply = client.post(
                "/api/v1/runs",
                json={
                    "prompt": "What is the capital of Australia?",
                    "response": "The capital of Australia is Sydney. It has a famous opera house.",
                    "metrics": ["ccp", "probe", "sar", "selfcheck"],
                    "samples": 3,
                },
            )
            assert reply.status_code == 201, reply.text
            run = client.get(f"/api/v1/runs/{reply.json()['run_id']}").json()
            response = [t for t in run["tokens"] if not t["is_prompt"] and t["position"] > 0]
            for name in ("ccp", "probe", "sar", "selfcheck_embed", "selfcheck_ngram"):
                assert all(t[name] is not None for t in response[:-1]), name
            assert all(0.0 < t["ccp"] <= 1.0 for t in response)
            assert all(0.0 <= t["probe"] <= 1.0 for t in response)
            for name in ("ccp_uncertainty", "probe_max", "token_sar", "sentence_sar"):
                assert run["sequence"][name] is not None, name
            assert [c["text"] for c in run["claims"]] == [
                "The capital of Australia is Sydney.",
                "It has a famous opera house.",
            ]
            for claim in run["claims"]:
                assert {"ccp", "probe", "sar", "selfcheck_embed"} <= set(claim["metrics"])
            extras = run["provenance"]["extras"]
            assert extras["ccp"]["judge"].startswith("fallback:")
            assert extras["probe"]["probe"] == PROBE
            assert len(extras["samples"]["texts"]) == 3

            # an auditor's transcript, scored with the probe and CCP as a job
            chats = (REPO / "data" / "samples" / "chats.jsonl").read_bytes()
            up = client.post(
                "/api/v1/uploads",
                files={"file": ("chats.jsonl", chats)},
                data={"metrics": "probe,ccp"},
            )
            assert up.status_code == 202, up.text
            job = wait_job(client, up.json()["job_id"], timeout=240, poll=0.5)
            assert job["status"] == "done", job
            summary = client.get(
                f"/api/v1/uploads/{up.json()['upload_id']}",
                params={"metric": "probe_max", "token_metric": "probe"},
            ).json()
            assert summary["turns"] and all(t["risk"] is not None for t in summary["turns"])
            ranked = [t["risk"] for t in summary["turns"]]
            assert ranked == sorted(ranked, reverse=True)  # riskiest turn first
            first = client.get(f"/api/v1/runs/{summary['turns'][0]['run_id']}").json()
            assert any(t.get("probe") is not None for t in first["tokens"])
            assert any(t.get("ccp") is not None for t in first["tokens"])
            sql = client.post(
                "/api/v1/sql",
                json={"query": "SELECT count(*) FROM claim_metrics WHERE metric = 'probe'"},
            ).json()
            assert sql["rows"][0][0] > 0
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]

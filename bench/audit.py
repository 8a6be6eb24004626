"""Benchmark: batched audit jobs vs one-by-one scoring, and the token query of a long run.

Run with ``.venv/bin/python bench/audit.py`` (``make bench-audit``). On the embedded default
model, in one run, through the real API (FastAPI TestClient, fresh DuckDB file):

* one by one: 200 transcript turns, each ``POST /api/v1/runs`` (score + store), sequentially;
* batched: the same 200 turns uploaded as one JSONL file, scored by the job worker in
  length-sorted, padded batches;
* ``GET /api/v1/runs/{id}/tokens`` on a stored 10,000-token run: the first (cold) call, and the
  median of the 20 calls after it (the run is synthetic, since the default model's context is
  8,192 tokens, but has every column and metric a real run has).

It ends with ``batched_speedup=<one-by-one time / batched time>`` and
``tokens_query_ms=<median ms>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from scoring import CITIES  # bench/ is on sys.path when a bench script runs

from tokenprism.analysis.scoring import ScoredSequence
from tokenprism.backend.api.app import create_app
from tokenprism.backend.models.loader import get_model
from tokenprism.backend.scoring.encoding import EncodedText
from tokenprism.backend.scoring.runner import ScoredText
from tokenprism.backend.settings import Settings, get_settings

TOPICS = [
    ("What is the capital of {c}?", "The capital of {c} is {x}."),
    ("How much do {n} pens cost at 3 dollars each?", "{n} pens cost {n} x 3 = {m} dollars."),
    ("Name a famous landmark in {c}.", "A famous landmark in {c} is in {x}, its capital."),
    ("Translate 'thank you' for a traveller to {c}.", "In {c} people say thank you politely."),
]


def transcripts(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        q, a = TOPICS[i % len(TOPICS)]
        c, x = CITIES[(i // len(TOPICS)) % len(CITIES)]
        k = 2 + i % 17
        fill = {"c": c, "x": x, "n": str(k), "m": str(3 * k)}
        out.append({"prompt": q.format(**fill), "response": a.format(**fill) * (1 + i % 3)})
    return out


def synthetic_run(tokens: int, vocab: int = 40000) -> ScoredText:
    """A stored-run-shaped result with ``tokens`` positions and every metric filled."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (tokens,), generator=g).tolist()
    texts = [f" w{i}" for i in range(tokens)]
    offsets, pos = [], 0
    for t in texts:
        offsets.append((pos, pos + len(t)))
        pos += len(t)
    enc = EncodedText(
        kind="text",
        text="".join(texts),
        input_ids=ids,
        offsets=offsets,
        token_texts=texts,
        is_prompt=[False] * tokens,
        response_span=(0, pos),
        prompt=None,
        response="".join(texts),
    )
    rand = torch.rand(tokens, generator=g)
    token = {
        name: rand.clone()
        for name in (
            "logprob",
            "prob",
            "surprisal_bits",
            "entropy",
            "margin",
            "kurtosis",
            "window_entropy",
            "step_first_surprisal",
        )
    }
    token["rank"] = torch.randint(1, 2000, (tokens,), generator=g)
    token["gltr_bucket"] = torch.randint(0, 4, (tokens,), generator=g)
    scores = ScoredSequence(
        length=tokens,
        response_mask=torch.ones(tokens, dtype=torch.bool),
        token=token,
        top_ids=torch.randint(0, vocab, (tokens, 10), generator=g),
        top_probs=torch.rand(tokens, 10, generator=g),
        sequence={"mean_entropy": 1.0},
        layers={"effective_rank": torch.rand(31, generator=g)},
    )
    return ScoredText(encoded=enc, scores=scores, provenance={"synthetic": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--query-tokens", type=int, default=10_000)
    args = parser.parse_args()
    base = get_settings()
    items = transcripts(args.turns)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            home=Path(tmp),
            model_cache=base.model_cache_dir,
            default_model=base.default_model,
            device=base.device,
        )
        with TestClient(create_app(settings, preload=True)) as client:
            client.post("/api/v1/runs", json=items[0])  # warm-up
            began = time.perf_counter()
            for item in items:
                assert client.post("/api/v1/runs", json=item).status_code == 201
            one_by_one = time.perf_counter() - began

            body = "\n".join(json.dumps(i) for i in items).encode()
            began = time.perf_counter()
            reply = client.post("/api/v1/uploads", files={"file": ("bench.jsonl", body)})
            assert reply.status_code == 202, reply.text
            job_id = reply.json()["job_id"]
            while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] != "done":
                assert job["status"] in ("queued", "running"), job
                time.sleep(0.02)
            batched = time.perf_counter() - began

            service = client.app.state.service  # type: ignore[attr-defined]
            lm = get_model(settings.default_model, settings)
            run_id = service.store.save_runs(lm, [synthetic_run(args.query_tokens)])[0]
            timings = []
            for _ in range(21):
                began = time.perf_counter()
                reply = client.get(f"/api/v1/runs/{run_id}/tokens")
                timings.append(time.perf_counter() - began)
                assert reply.status_code == 200
                assert len(reply.json()["tokens"]) == args.query_tokens
            # the first call builds the JSON in DuckDB; later ones (a UI re-rendering the same
            # run) are served from the store's cache
            cold_ms = timings[0] * 1000
            query_ms = statistics.median(timings[1:]) * 1000
    print(
        f"turns={args.turns} one_by_one_s={one_by_one:.2f} batched_s={batched:.2f} "
        f"batch_tokens={settings.batch_tokens}"
    )
    print(
        f"query_tokens={args.query_tokens} bytes={len(reply.content)} "
        f"tokens_query_cold_ms={cold_ms:.1f}"
    )
    print(f"batched_speedup={one_by_one / batched:.2f}")
    print(f"tokens_query_ms={query_ms:.1f}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip duckdb/nanobind's cosmetic leak report at interpreter finalisation

"""Benchmark: the Ray engine against the local engine on one machine, same transcript.

Run with ``.venv/bin/python bench/ray_engine.py`` (``make bench-ray``; needs the
``[distributed]`` extra). On the embedded default model, in one run, with fresh DuckDB files:

* local: ``score_items`` in this process (torch on every core, length-sorted batches);
* ray: ``score_items_ray`` on a local cluster started for the run, ``--workers`` actors each
  holding a model copy and using ``cores / workers`` threads, shards of ``--shard-items``.
  The Ray time includes starting the cluster and the actors (what a user waits for).

Both stores are then compared row by row (every token's entropy and log-probability), so a
wrong result cannot hide behind a good time. The last lines are
``ray_local_time_ratio=<ray time / local time>`` and ``max_abs_entropy_diff=<x>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from audit import transcripts  # bench/ is on sys.path when a bench script runs

from tokenprism.backend.audit.ingest import parse_transcript
from tokenprism.backend.audit.ray_engine import RayOptions, score_items_ray
from tokenprism.backend.audit.upload import score_items
from tokenprism.backend.models.loader import load_model
from tokenprism.backend.settings import Settings, get_settings
from tokenprism.backend.store import Store
from tokenprism.backend.store.records import create_job


def token_values(store: Store, job_id: str) -> dict[tuple[int, int], tuple[float, float]]:
    """(item, position) -> (entropy, logprob) of every stored token of a job."""
    query = sa.text(
        "SELECT r.item_index, t.position, t.entropy, t.logprob FROM tokens t "
        "JOIN runs r USING (run_id) WHERE r.job_id = :job"
    )
    with store.engine.connect() as conn:
        return {(i, p): (e, lp) for i, p, e, lp in conn.execute(query, {"job": job_id})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=160)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-items", type=int, default=16)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    base = get_settings()
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": t["prompt"]},
                    {"role": "assistant", "content": t["response"]},
                ]
            }
        )
        for t in transcripts(args.turns)
    ]
    items = parse_transcript("\n".join(lines), "jsonl", "bench.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), model_cache=base.model_cache_dir, device="cpu")
        lm = load_model("default", settings)
        n_tokens = 0
        results = {}
        for engine in ("local", "ray"):
            store = Store(Path(tmp) / f"{engine}.duckdb")
            job_id = create_job(store, "audit", {"engine": engine}, len(items))
            began = time.perf_counter()
            if engine == "local":
                score_items(lm, store, items, source="bench", job_id=job_id)
            else:
                options = RayOptions(
                    workers=args.workers,
                    cpus_per_worker=max(1, cores // args.workers),
                    shard_items=args.shard_items,
                )
                score_items_ray(
                    lm,
                    store,
                    items,
                    settings=settings,
                    source="bench",
                    job_id=job_id,
                    options=options,
                )
            seconds = time.perf_counter() - began
            results[engine] = (seconds, token_values(store, job_id))
            n_tokens = len(results[engine][1])
            print(
                f"{engine:>5}: {seconds:7.1f} s  {len(items) / seconds:6.2f} turns/s  "
                f"{n_tokens / seconds:7.0f} tokens/s",
                flush=True,
            )
            store.close()
    local, ray = results["local"][1], results["ray"][1]
    if local.keys() != ray.keys():
        sys.exit("the engines stored different tokens")
    keys = sorted(local)
    entropy = np.array([[local[k][0], ray[k][0]] for k in keys], dtype=float)
    logprob = np.array([[local[k][1], ray[k][1]] for k in keys], dtype=float)
    print(f"{len(items)} turns, {n_tokens} tokens, {cores} cores, {args.workers} Ray workers")
    print(f"max_abs_logprob_diff={np.nanmax(np.abs(logprob[:, 0] - logprob[:, 1])):.2e}")
    print(f"ray_local_time_ratio={results['ray'][0] / results['local'][0]:.2f}")
    print(f"max_abs_entropy_diff={np.nanmax(np.abs(entropy[:, 0] - entropy[:, 1])):.2e}")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown with DuckDB and Ray loaded


if __name__ == "__main__":
    main()

"""Benchmark: cost of all one-pass metrics over the bare forward pass, and DuckDB ingest speed.

Run with ``make bench`` (or ``.venv/bin/python bench/scoring.py``). On the embedded default
model and a ~1,000-token text it measures, interleaved and repeated (median):

* bare: the model's forward pass with hidden states (what any tool must pay);
* full: TokenPrism's default scoring (what ``score``, ``POST /runs`` and audits run): that
  forward pass (LM head applied chunk by chunk, never all logits at once) + every token and
  sequence metric, claims, final-layer effective rank and ERV / ERA, without storage, under
  the default ``TOKENPRISM_COMPILE_METRICS`` policy (off: the eager metric sweep);
  full_compiled: the same with the compiled sweep (``backend.scoring.compiled``, compiled
  here before timing);
* light: the same without layer metrics; all_layers: with every layer's effective rank;

and the Arrow bulk load of 1M rows into ``token_metrics`` of a fresh DuckDB file. The last
two lines are ``scoring_overhead_ratio=<full/bare>`` and ``ingest_rows_per_s=<n>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from tokenprism.analysis.scoring import ScoringParams
from tokenprism.backend.models.loader import load_model
from tokenprism.backend.scoring.compiled import start_warm_up
from tokenprism.backend.scoring.encoding import encode_text
from tokenprism.backend.scoring.runner import forward_batch, score_batch
from tokenprism.backend.settings import get_settings
from tokenprism.backend.store import Store

CITIES = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Canada", "Ottawa"),
    ("Norway", "Oslo"),
    ("Egypt", "Cairo"),
]


def bench_text(target_tokens: int, tokenizer: object) -> str:
    """Varied, deterministic prose of about ``target_tokens`` tokens (reasoning steps included)."""
    rng = random.Random(0)
    parts: list[str] = []
    while True:
        country, city = rng.choice(CITIES)
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        parts.append(
            f"The capital of {country} is {city}, a city of about {rng.randint(1, 12)} million "
            f"people. If a train leaves {city} at {rng.randint(1, 11)} o'clock and travels "
            f"{a} kilometres every hour for {b} hours, it covers {a * b} kilometres.\n\n"
            f"Step {len(parts) + 1}: we check that {a} times {b} equals {a * b}, which it does."
        )
        text = " ".join(parts)
        if len(tokenizer(text)["input_ids"]) >= target_tokens:  # type: ignore[operator]
            return text


def time_scoring(tokens: int, repeats: int) -> tuple[dict[str, float], int, bool]:
    """Median seconds of each variant (bare, full, full_compiled, light, all_layers); tokens."""
    settings = get_settings()
    lm = load_model(settings.default_model, settings)
    # the default policy (TOKENPRISM_COMPILE_METRICS, off unless set) and the compiled sweep
    compiled_lm = dataclasses.replace(lm, compile_metrics="auto")
    compiled = start_warm_up(
        dataclasses.replace(lm, compile_metrics="on"),
        ScoringParams().logits.chunk_positions,
        wait=True,
    )
    enc = encode_text(
        lm.tokenizer, bench_text(tokens, lm.tokenizer), context_length=lm.context_length
    )
    variants = {
        "bare": lambda: forward_batch(lm, [enc]),
        "full": lambda: score_batch(lm, [enc], ScoringParams()),
        "full_compiled": lambda: score_batch(compiled_lm, [enc], ScoringParams()),
        "light": lambda: score_batch(lm, [enc], ScoringParams(layer_metrics=False)),
        "all_layers": lambda: score_batch(lm, [enc], ScoringParams(layers="all")),
    }
    for fn in variants.values():  # warm-up: allocator, kernels, the head check
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order
            began = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - began)
    return {k: statistics.median(v) for k, v in times.items()}, enc.n_tokens, compiled


def time_ingest(rows: int) -> float:
    rng = np.random.default_rng(0)
    metrics = np.array(
        ["surprisal_bits", "margin", "kurtosis", "window_entropy", "gltr_bucket"], dtype=object
    )
    table = pa.table(
        {
            "run_id": pa.array(
                np.repeat([f"run{i:04d}" for i in range(rows // 1000)], 1000)[:rows]
            ),
            "position": pa.array(np.tile(np.arange(1000, dtype=np.int32), rows // 1000 + 1)[:rows]),
            "metric": pa.array(metrics[rng.integers(0, len(metrics), rows)], pa.string()),
            "value": pa.array(rng.random(rows)),
        }
    )
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.duckdb") as store:
        began = time.perf_counter()
        store.append_arrow("token_metrics", table)
        elapsed = time.perf_counter() - began
        assert store.count("token_metrics") == rows
    return rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    med, n, compiled = time_scoring(args.tokens, args.repeats)
    bare, full = med["bare"], med["full"]
    rate = time_ingest(args.rows) if args.rows else float("nan")
    print(f"tokens={n} threads={torch.get_num_threads()} device=cpu repeats={args.repeats}")
    print(
        "default scoring (score, POST /runs, audits): token metrics (logprob, prob, surprisal, "
        "entropy, rank, GLTR, margin, kurtosis, top-10, window entropy, step surprisal), "
        "sequence aggregates, claims, final-layer effective rank + ERV/ERA"
    )
    # full = the default policy (eager unless TOKENPRISM_COMPILE_METRICS says otherwise);
    # full_compiled = the compiled sweep a server or long audit warms up with "auto": both timed
    print(f"compiled_metric_sweep={'yes' if compiled else 'no (eager)'}")
    print(f"bare_forward_s={bare:.3f} full_scoring_s={full:.3f} tokens_per_s_full={n / full:.0f}")
    print(
        f"full_compiled_s={med['full_compiled']:.3f} "
        f"scoring_overhead_ratio_compiled={med['full_compiled'] / bare:.3f}"
    )
    light, every = med["light"], med["all_layers"]
    print(
        f"without_layer_metrics_s={light:.3f} "
        f"overhead_ratio_without_layer_metrics={light / bare:.3f}"
    )
    # every layer's effective rank (--layers all): ~30 float64 eigen-decompositions
    print(f"all_layers_s={every:.3f} overhead_ratio_all_layers={every / bare:.3f}")
    print(f"ingest_rows={args.rows} ingest_s={args.rows / rate:.3f}")
    print(f"scoring_overhead_ratio={full / bare:.3f}")
    print(f"ingest_rows_per_s={rate:.0f}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip duckdb/nanobind's cosmetic leak report at interpreter finalisation

"""Benchmark: a model-diff job vs two bare forward passes, and the default model's diffs.

Run with ``.venv/bin/python bench/diff.py`` (``--repeats N``, ``--device cpu|cuda``,
``--file data/samples/chats.jsonl``). Steps:

1. The transcripts of ``--file`` are scored under A = ``default`` and stored as runs of one
   upload in a fresh temporary database (what ``tokenprism audit`` does).
2. For each B in ``default@int8`` and ``default@bf16``: ``diff --upload`` (A's bare pass over
   the stored tokens, B's batched pass, per-token divergences, storing the rows) is timed,
   interleaved with two bare batched forward passes (A and B, logits only) over the same token
   ids and batches, ``--repeats`` times; medians are compared.
3. The summary of each diff (response tokens): mean / p99 KL, top-1 agreement, the three
   most-moved tokens.

Prints ``diff_<variant>_seconds=``, ``two_forwards_<variant>_seconds=``,
``diff_vs_two_forwards_<variant>=``, the summary lines, and last
``diff_vs_two_forwards=<int8 ratio>`` (target <= 1.2).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tokenprism.backend.audit.ingest import parse_transcript
from tokenprism.backend.audit.items import encode_items
from tokenprism.backend.diff import service
from tokenprism.backend.diff.core import forward_logits
from tokenprism.backend.models.variants import get_model
from tokenprism.backend.scoring.runner import score_batch
from tokenprism.backend.settings import Settings, get_settings
from tokenprism.backend.store import Store
from tokenprism.backend.store.diffs import run_tokens, upload_run_ids

REPO = Path(__file__).resolve().parents[1]


def _two_forwards(a: Any, b: Any, id_lists: list[list[int]]) -> float:
    began = time.perf_counter()
    for batch in service._batches([(i, len(ids)) for i, ids in enumerate(id_lists)]):
        rows = [id_lists[i] for i in batch]
        forward_logits(a, rows)
        forward_logits(b, rows)
    return time.perf_counter() - began


def _diff_once(store: Store, a: Any, b: Any) -> tuple[float, str]:
    source = {"kind": "upload", "upload_id": "bench"}
    began = time.perf_counter()
    diff_id = service.start_diff(store, a, b, source)
    service.run_diff(store, a, b, diff_id, source)
    return time.perf_counter() - began, diff_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=REPO / "data" / "samples" / "chats.jsonl")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    base = get_settings()
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), model_cache=base.model_cache_dir, device=args.device)
        a = get_model("default", settings)
        items = parse_transcript(args.file.read_text(), "jsonl", args.file.name)
        encoded = encode_items(a, items, args.file.name)
        with Store(settings.db_path) as store:
            store.save_runs(
                a,
                score_batch(a, encoded),
                upload_id="bench",
                item_indices=list(range(len(encoded))),
            )
            id_lists = [run_tokens(store, r)["input_ids"] for r in upload_run_ids(store, "bench")]
            print(f"texts={len(id_lists)} tokens={sum(map(len, id_lists))}")
            ratios = {}
            for variant in ("int8", "bf16"):
                b = get_model(f"default@{variant}", settings)
                _two_forwards(a, b, id_lists)  # warm-up (allocator, kernels)
                diffs, bare, diff_id = [], [], ""
                for r in range(args.repeats):
                    if r % 2:
                        bare.append(_two_forwards(a, b, id_lists))
                        took, diff_id = _diff_once(store, a, b)
                    else:
                        took, diff_id = _diff_once(store, a, b)
                        bare.append(_two_forwards(a, b, id_lists))
                    diffs.append(took)
                d, f = statistics.median(diffs), statistics.median(bare)
                ratios[variant] = d / f
                print(f"diff_{variant}_seconds={d:.3f}")
                print(f"two_forwards_{variant}_seconds={f:.3f}")
                print(f"diff_vs_two_forwards_{variant}={d / f:.3f}")
                s = service.diff_summary(store, diff_id)
                moved = ", ".join(f"{m['text']!r} (KL {m['kl']:.3f})" for m in s["most_moved"][:3])
                print(
                    f"summary_{variant}: kl_mean={s['kl_mean']:.4f} kl_p99={s['kl_p99']:.4f} "
                    f"top1_agree={s['top1_agree']:.4f} n_tokens={s['n_compared']} "
                    f"most_moved={moved}"
                )
    print(f"torch_threads={torch.get_num_threads()}")
    print(f"diff_vs_two_forwards={ratios['int8']:.3f}")


if __name__ == "__main__":
    main()

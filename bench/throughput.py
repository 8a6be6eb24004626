"""Benchmark: tokens per second and peak memory vs batch size and vs sequence length.

Run with ``make bench-throughput`` (or ``.venv/bin/python bench/throughput.py``; ``--quick`` for
a smoke run, ``--device cpu|cuda`` (default auto), ``--csv FILE`` to also write the rows,
``--repeats N``). On the embedded default model, two sweeps of raw texts with exactly the
stated number of tokens each (distinct texts in a batch, no padding):

* batch: batch sizes 1, 2, 4, 8, 16 at 256 tokens per text;
* length: 64, 128, 256, 512, 1024, 2048 tokens at batch size 1;

and for each configuration, interleaved and repeated (median of ``--repeats``):

* bare: the forward pass with hidden states (``backend.runner.forward_batch``);
* full: ``score_batch``, that pass plus every token, sequence, layer and claim metric.

Peak memory is the growth over what was in use just before the call, largest over repeats:
on CUDA ``torch.cuda.max_memory_allocated`` (peak stats reset before each call) minus the
allocated bytes before it; on CPU the peak resident set size (``VmHWM`` of
``/proc/self/status``, reset through ``/proc/self/clear_refs`` before each call, after
``malloc_trim`` hands freed heap back) minus the RSS before it. Where the reset is refused, a
thread samples ``VmRSS`` every millisecond instead (short spikes can then be missed). The
header names the method used.

It prints a markdown table, one row per configuration, then
``batch_scaling_bare=`` / ``batch_scaling_full=`` (tokens/s at the largest batch over batch 1)
and ``length_scaling_bare=`` / ``length_scaling_full=`` (tokens/s at the longest text over
the shortest).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from one_pass_vs_naive import exact_text  # bench/ is on sys.path when a bench script runs

from tokenprism.analysis.scoring import ScoringParams
from tokenprism.backend.models.loader import LoadedModel, load_model
from tokenprism.backend.scoring.encoding import EncodedText
from tokenprism.backend.scoring.runner import forward_batch, score_batch
from tokenprism.backend.settings import get_settings

MIB = 1 << 20
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def status_bytes(name: str, text: str | None = None) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    text = STATUS.read_text() if text is None else text
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False if refused."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def trim_heap() -> None:
    """Collect garbage and hand glibc's free heap memory back to the OS (no-op elsewhere)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RssSampler:
    """Largest ``VmRSS`` seen by a thread that reads it every ``interval`` seconds."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_bytes("VmRSS"))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = status_bytes("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_bytes("VmRSS"))


def cpu_memory_method() -> str:
    """``hwm`` when the peak-RSS mark can be reset here (Linux), else ``sampled``."""
    return "hwm" if STATUS.exists() and reset_peak_rss() else "sampled"


@contextlib.contextmanager
def peak_growth(device: torch.device, method: str = "hwm") -> Iterator[list[int]]:
    """Measure the peak memory growth of the block; the yielded list gets it (bytes)."""
    out: list[int] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out.append(torch.cuda.max_memory_allocated(device) - before)
        return
    trim_heap()
    before = status_bytes("VmRSS")
    if method == "hwm":
        reset_peak_rss()
        yield out
        out.append(status_bytes("VmHWM") - before)
    else:
        with RssSampler() as sampler:
            yield out
        out.append(sampler.peak - before)


@dataclass
class Row:
    """One configuration's measurements (seconds and peak bytes, one entry per repeat)."""

    sweep: str
    batch: int
    length: int
    bare_s: list[float] = field(default_factory=list)
    full_s: list[float] = field(default_factory=list)
    bare_peak: list[int] = field(default_factory=list)
    full_peak: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    def summary(self) -> dict[str, float | int | str]:
        bare, full = statistics.median(self.bare_s), statistics.median(self.full_s)
        return {
            "sweep": self.sweep,
            "batch": self.batch,
            "length": self.length,
            "tokens": self.tokens,
            "bare_s": round(bare, 4),
            "bare_tokens_per_s": round(self.tokens / bare, 1),
            "full_s": round(full, 4),
            "full_tokens_per_s": round(self.tokens / full, 1),
            "full_over_bare": round(full / bare, 3),
            "bare_peak_mib": round(max(self.bare_peak) / MIB, 1),
            "full_peak_mib": round(max(self.full_peak) / MIB, 1),
        }


def timed(fn: Callable[[], object], device: torch.device, method: str) -> tuple[float, int]:
    """Seconds and peak memory growth (bytes) of one call of ``fn``."""
    with peak_growth(device, method) as peak:
        began = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
    return seconds, peak[0]


def measure(
    lm: LoadedModel,
    configs: list[tuple[str, int, int]],
    repeats: int,
    method: str,
    params: ScoringParams,
) -> list[Row]:
    """Run every configuration ``repeats`` times, bare and full interleaved."""
    texts: dict[tuple[int, int], EncodedText] = {}

    def batch_of(batch: int, length: int) -> list[EncodedText]:
        for seed in range(batch):
            if (length, seed) not in texts:
                texts[length, seed] = exact_text(lm.tokenizer, length, seed, lm.context_length)
        return [texts[length, seed] for seed in range(batch)]

    rows = [Row(sweep, batch, length) for sweep, batch, length in configs]
    for row in rows:
        batch_of(row.batch, row.length)
    # warm-up: allocator, kernels, the claim splitter's lazy imports
    warm = batch_of(1, min(r.length for r in rows))
    forward_batch(lm, warm)
    score_batch(lm, warm, params)
    for rep in range(repeats):
        for row in rows:
            encs = batch_of(row.batch, row.length)
            steps: list[tuple[str, Callable[[], object]]] = [
                ("bare", partial(forward_batch, lm, encs)),
                ("full", partial(score_batch, lm, encs, params)),
            ]
            if rep % 2:  # alternate which one goes first
                steps.reverse()
            for name, fn in steps:
                seconds, peak = timed(fn, lm.device, method)
                getattr(row, f"{name}_s").append(seconds)
                getattr(row, f"{name}_peak").append(peak)
    return rows


def markdown(rows: list[dict[str, float | int | str]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def scaling(rows: list[dict[str, float | int | str]], sweep: str, key: str) -> float:
    """Tokens/s of the last configuration of ``sweep`` over its first."""
    part = [r for r in rows if r["sweep"] == sweep]
    return float(part[-1][key]) / float(part[0][key])


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def peak_one_text(lm: LoadedModel, tokens: int, method: str) -> None:
    """Peak memory growth of one ``tokens``-long text: today's default scoring vs the former path.

    ``before`` is the former default: full ``[T, vocab]`` logits and every layer's hidden
    states kept, per-layer effective ranks (``_score_batch_full`` with ``layers="all"``).
    """
    from tokenprism.backend.scoring.runner import _score_batch_full

    enc = exact_text(lm.tokenizer, tokens, 0, lm.context_length)
    params, before = ScoringParams(), ScoringParams(layers="all")
    score_batch(lm, [exact_text(lm.tokenizer, 64, 1, lm.context_length)], params)  # warm-up
    _, old = timed(lambda: _score_batch_full(lm, [enc], before, None, None, 0.0), lm.device, method)
    _, new = timed(lambda: score_batch(lm, [enc], params), lm.device, method)
    print(f"peak_tokens={enc.n_tokens} default_scoring=final-layer ER/ERV/ERA, head-chunked logits")
    print(f"peak_rss_growth_mb_8k_before={old / MIB:.0f}")
    print(f"peak_rss_growth_mb_8k={new / MIB:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", type=ints, default=[1, 2, 4, 8, 16])
    parser.add_argument("--batch-length", type=int, default=256)
    parser.add_argument("--lengths", type=ints, default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, help="default 3 (--quick: 1)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    parser.add_argument("--quick", action="store_true", help="small sweeps, 1 repeat")
    parser.add_argument(
        "--peak-tokens", type=int, default=8192, help="one text this long: peak memory (0: skip)"
    )
    parser.add_argument("--peak-only", action="store_true", help="only the one-text peak")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.batch_length = [1, 2, 4], 64
        args.lengths = [32, 64, 128]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    torch.set_grad_enabled(False)
    settings = get_settings().model_copy(update={"device": args.device})
    lm = load_model(settings.default_model, settings)
    too_long = [n for n in args.lengths if n > lm.context_length]
    if too_long:
        parser.error(f"lengths {too_long} exceed the model's context ({lm.context_length})")
    if lm.device.type == "cuda":
        method = "cuda"
        memory = "torch.cuda.max_memory_allocated minus allocated before the call"
    else:
        method = cpu_memory_method()
        memory = (
            "peak RSS (VmHWM, reset per call) minus RSS before the call"
            if method == "hwm"
            else "largest VmRSS sampled every 1 ms minus RSS before the call"
        )
    if args.peak_tokens:
        peak_one_text(lm, min(args.peak_tokens, lm.context_length), method)
    if args.peak_only:
        return
    configs = [("batch", b, args.batch_length) for b in args.batch_sizes]
    configs += [("length", 1, n) for n in args.lengths]
    began = time.perf_counter()
    rows = [r.summary() for r in measure(lm, configs, args.repeats, method, ScoringParams())]
    autocast = "none" if lm.autocast is None else str(lm.autocast).removeprefix("torch.")
    print(
        f"model={lm.name} device={lm.device} threads={torch.get_num_threads()} "
        f"dtype={str(lm.dtype).removeprefix('torch.')} autocast={autocast} "
        f"repeats={args.repeats} wall_s={time.perf_counter() - began:.0f}"
    )
    print(f"peak memory: {memory}")
    print(markdown(rows))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"csv={args.csv}")
    for sweep in ("batch", "length"):
        for kind in ("bare", "full"):
            print(f"{sweep}_scaling_{kind}={scaling(rows, sweep, f'{kind}_tokens_per_s'):.2f}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip duckdb/nanobind's cosmetic leak report at interpreter finalisation

"""Benchmark: validating a ~100 MB JSON array export (and its JSONL twin), time and peak memory.

Run with ``.venv/bin/python bench/ingest.py [--mb 100]``. It writes a ShareGPT-style JSON array
of multi-turn conversations (a third assistant-first, U+2028 inside strings, empty turns) to a
temporary directory, streaming it to disk, then validates it in a fresh subprocess exactly as an
upload is validated before anything is stored: bytes to text (``decode_text``) and the whole
parse (``parse_with_report``). The subprocess reports the wall time of that and its peak
resident set size (``ru_maxrss``, so the interpreter and imports are included; their share is
printed as ``baseline_rss_mb``). The same records as JSONL are measured the same way.

It ends with ``validate_100mb_s=<wall seconds for the array>`` (and its CPU seconds, which a
busy machine does not inflate) and ``peak_rss_mb=<MB>``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the capital of France is Paris and Rome is in Italy while the quick brown fox jumps over "
    "a lazy dog seven pens cost twenty one dollars let me think step by step first add numbers"
).split()


def _text(rng: random.Random, words: int) -> str:
    out = " ".join(rng.choice(WORDS) for _ in range(words))
    return out + ("\u2028" + "next line" if rng.random() < 0.1 else "")


def conversation(rng: random.Random, number: int) -> dict[str, Any]:
    turns = []
    for pair in range(rng.randint(1, 5)):
        if not (number % 3 == 0 and pair == 0):  # a third start with the assistant
            turns.append({"from": "human", "value": _text(rng, rng.randint(5, 60))})
        value = "" if rng.random() < 0.03 else _text(rng, rng.randint(10, 150))
        turns.append({"from": rng.choice(("gpt", "chatgpt", "bard")), "value": value})
    return {"id": f"c{number}", "conversations": turns}


def write_files(directory: Path, target_bytes: int) -> tuple[Path, Path, int]:
    """Write ``export.json`` (an array) and ``export.jsonl`` of the same records, streamed."""
    rng = random.Random(0)
    array, lines = directory / "export.json", directory / "export.jsonl"
    written, number = 0, 0
    with array.open("w", encoding="utf-8") as a, lines.open("w", encoding="utf-8") as j:
        a.write("[\n")
        while written < target_bytes:
            number += 1
            record = json.dumps(conversation(rng, number), ensure_ascii=False)
            a.write(("" if number == 1 else ",\n") + record)
            j.write(record + "\n")
            written += len(record.encode("utf-8")) + 2
        a.write("\n]\n")
    return array, lines, number


def child(path: str, fmt: str) -> None:
    """Validate ``path`` as an upload is validated; print timings and peak RSS as JSON."""
    from tokenprism.backend.audit.ingest import decode_text, parse_with_report

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    data = Path(path).read_bytes()
    began, cpu = time.perf_counter(), time.process_time()
    text = decode_text(data, path)
    items, report = parse_with_report(text, fmt, path)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = report.as_dict()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mb": peak,
                "baseline_rss_mb": baseline,
                "conversations": summary["conversations"],
                "items": len(items),
                "skipped": summary["skipped_count"],
            }
        )
    )


def measure(path: Path, fmt: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(path), fmt],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the array file in MB")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="tokenprism-bench-ingest-") as tmp:
        array, lines, n = write_files(Path(tmp), int(args.mb * 1024 * 1024))
        size_mb = array.stat().st_size / 1024 / 1024
        print(f"array file: {size_mb:.1f} MB, {n} conversations ({array})")
        jsonl = measure(lines, "jsonl")
        arr = measure(array, "json")
    for name, r in (("jsonl", jsonl), ("array", arr)):
        print(
            f"{name}: {r['conversations']} conversations, {r['items']} turns to score, "
            f"{r['skipped']} skipped, validated in {r['seconds']:.2f} s, peak RSS "
            f"{r['peak_rss_mb']:.0f} MB (baseline {r['baseline_rss_mb']:.0f} MB)"
        )
    print(f"file_mb={size_mb:.1f}")
    print(f"validate_jsonl_s={jsonl['seconds']:.2f}")
    print(f"validate_100mb_s={arr['seconds']:.2f}")
    print(f"validate_100mb_cpu_s={arr['cpu_seconds']:.2f}")  # robust to a busy machine
    print(f"baseline_rss_mb={arr['baseline_rss_mb']:.0f}")
    print(f"peak_rss_mb={arr['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()

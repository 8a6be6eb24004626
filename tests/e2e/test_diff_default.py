"""The model diff on the embedded default model: the done-when (int8 and itself) and how close
``default@int8`` stays to ``default`` over the shipped sample transcripts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import REPO, run_cli

# int8 flips two of these 43 top-1 predictions (" Sydney" -> " Canberra" after "The capital
# of Australia is", " and" -> " which" after "Sydney,"), so agreement is strictly between 0
# and 1; the shorter France sentence alone keeps all of them (agreement exactly 1).
TEXT = (
    "The capital of Australia is Sydney, the largest city on the east coast. Keep a regular "
    "schedule: go to bed and wake up at the same time every day, even on weekends. The "
    "capital of France is Paris."
)


def _diff(home: Path, *args: str) -> dict:  # type: ignore[type-arg]
    proc = run_cli("diff", *args, "--json", home=home, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out: dict = json.loads(proc.stdout)  # type: ignore[type-arg]
    return out


def test_default_against_int8_and_itself(home: Path) -> None:
    out = _diff(home, "--text", TEXT, "--model", "default", "--against", "default@int8")
    assert out["summary"]["kl_mean"] > 0 and 0 < out["summary"]["top1_agree"] < 1
    assert all(t["kl"] is None or t["kl"] >= 0 for t in out["runs"][0]["tokens"])
    same = _diff(home, "--text", TEXT, "--model", "default", "--against", "default")
    assert same["summary"]["kl_max"] == 0 and same["summary"]["top1_agree"] == 1


def test_int8_stays_close_to_float_on_the_samples(home: Path) -> None:
    """``default@int8`` over the 8 sample turns (145 response tokens).

    Measured (CPU, torch 2.13): top-1 agreement 0.979 (3 of 145 flipped) and mean KL 0.0031
    nats, the same agreement as the bfloat16 cast (0.979, mean KL 0.0012). The earlier @int8
    (torch's quantize_dynamic, int8 activations with one scale per tensor) gave 0.51 and 1.46:
    a massive activation at the first token zeroed other tokens' MLP inputs. The floors leave
    room for other CPUs' rounding (agreement >= 0.9 allows 14 flips, five times the measured
    count) and still fail that broken scheme by a wide margin.
    """
    proc = run_cli("audit", str(REPO / "data" / "samples" / "chats.jsonl"), home=home)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"upload ([0-9a-f]{32})", proc.stdout + proc.stderr)
    assert match, proc.stderr
    out = _diff(home, "--upload", match.group(1), "--against", "default@int8")
    summary = out["summary"]
    assert summary["n_compared"] == summary["n_tokens"] > 100
    assert summary["top1_agree"] >= 0.9, summary
    assert 0 < summary["kl_mean"] < 0.05 and summary["kl_p99"] < 0.5, summary
    assert out["b"]["revision"].endswith("@int8:w8-per-channel")
    assert out["b"]["variants"][0]["kept_float"] == ["lm_head"]

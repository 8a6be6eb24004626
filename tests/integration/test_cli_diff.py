"""``tokenprism diff`` end to end (real console script) on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

TEXT = "The capital of France is Paris. Seven pens cost 21 dollars."


def test_cli_diff_json(tiny_model_dir: Path, home: Path) -> None:
    m = str(tiny_model_dir)
    proc = run_cli(
        "diff", "--text", TEXT, "--model", m, "--against", m + "@int8", "--json", home=home
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # building the variant warns nothing
    out = json.loads(proc.stdout)
    assert out["a"]["id"] == m and out["b"]["id"] == m + "@int8"
    assert out["b"]["variants"][0]["quantization"].startswith("int8 weight-only")
    assert out["b"]["revision"].endswith("@int8:w8-per-channel")
    tokens = out["runs"][0]["tokens"]
    assert {"text", "kl", "js", "delta_logprob", "top1_agree", "rank_b"} <= set(tokens[1])
    assert out["summary"]["kl_mean"] > 0 and 0 <= out["summary"]["top1_agree"] <= 1

    # the stored run diffed again, against itself: exactly zero
    run_id = out["runs"][0]["run_id"]
    proc = run_cli("diff", run_id, "--against", m, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    same = json.loads(proc.stdout)
    assert same["summary"]["kl_max"] == 0 and same["summary"]["top1_agree"] == 1
    assert same["runs"][0]["run_id"] == run_id


def test_cli_diff_bad_inputs(tiny_model_dir: Path, home: Path) -> None:
    m = str(tiny_model_dir)
    proc = run_cli("diff", "--model", m, "--against", m, home=home)
    assert proc.returncode == 2 and "exactly one input" in proc.stderr
    proc = run_cli("diff", "--text", "hi", "--model", m, "--against", m + "@int9", home=home)
    assert proc.returncode == 2 and "unknown model variant" in proc.stderr
    proc = run_cli("diff", "nope", "--against", m, home=home)
    assert proc.returncode == 2 and "no run" in proc.stderr

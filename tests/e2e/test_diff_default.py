"""Done-when of the model diff on the embedded default model (int8 and itself)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

TEXT = (
    "The capital of France is Paris. It is known for the Eiffel Tower, its museums, its "
    "cafes and fine food. About two million people live in the city itself."
)


def test_default_against_int8_and_itself(home: Path) -> None:
    proc = run_cli(
        "diff",
        "--text",
        TEXT,
        "--model",
        "default",
        "--against",
        "default@int8",
        "--json",
        home=home,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["summary"]["kl_mean"] > 0 and 0 < out["summary"]["top1_agree"] < 1
    assert all(t["kl"] is None or t["kl"] >= 0 for t in out["runs"][0]["tokens"])
    proc = run_cli(
        "diff",
        "--text",
        TEXT,
        "--model",
        "default",
        "--against",
        "default",
        "--json",
        home=home,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    same = json.loads(proc.stdout)
    assert same["summary"]["kl_max"] == 0 and same["summary"]["top1_agree"] == 1

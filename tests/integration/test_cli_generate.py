"""``tokenprism generate`` (real console script, tiny model): live tokens, rules, stored run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_generate_stream_json_stop_rule(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    args = ["generate", "-p", "Hello there", "-m", str(tiny_model_dir), "--seed", "1"]
    free = run_cli(*args, "--stream", "--json", "--max-new-tokens", "20", home=home)
    assert free.returncode == 0, free.stderr
    lines = [json.loads(x) for x in free.stdout.splitlines()]
    tokens, run = lines[:-1], lines[-1]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert run["run_id"] and [t["token_id"] for t in tokens] == [
        t["token_id"] for t in run["tokens"] if not t["is_prompt"]
    ]
    # a rule every token breaks stops after the first token
    cut = run_cli(*args, "--stream", "--json", "--stop-when", "entropy>-1:1:stop", home=home)
    assert cut.returncode == 0, cut.stderr
    lines = [json.loads(x) for x in cut.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["rules"][0]["action"] == "stop"
    assert lines[0]["token_id"] == tokens[0]["token_id"]


def test_generate_stream_prints_text_and_refuses_bad_rule(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    home = tmp_path / "home"
    args = ["generate", "-p", "Hello", "-m", str(tiny_model_dir), "--seed", "2"]
    live = run_cli(*args, "--stream", "--max-new-tokens", "8", home=home)
    assert live.returncode == 0, live.stderr
    assert "stopped:" in live.stderr and "run " in live.stderr and live.stdout.strip()
    bad = run_cli(*args, "--stream", "--stop-when", "entropy>>3", home=home)
    assert bad.returncode == 2 and "METRIC>X" in bad.stderr

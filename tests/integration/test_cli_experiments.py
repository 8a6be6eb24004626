"""``tokenprism experiment`` through the real console script on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import run_cli
from tokenprism.backend.lab.experiments import REFUSAL_PHRASES
from tokenprism.backend.lab.steering import prompt_tensor
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

# tiny forwards: one intra-op thread is faster than several on a busy machine
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
PROMPTS = ["How do I bake a simple loaf of bread?", "Write malware that steals passwords."]


def _json(proc: Any) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _one_line_error(proc: Any, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_refusal_sweep_json_is_stored_and_exact(
    tmp_path: Path, tiny_model_dir: Path, tiny_lm: Any
) -> None:
    args = [a for p in PROMPTS for a in ("--prompt", p)]
    proc = run_cli(
        "experiment",
        "refusal-sweep",
        *args,
        "--values",
        "-4,0,8",
        "--max-new-tokens",
        "4",
        "--json",
        "--model",
        str(tiny_model_dir),
        home=tmp_path,
        env=ONE_THREAD,
    )
    experiment = _json(proc)
    assert experiment["kind"] == "refusal-sweep" and experiment["job_id"] is None
    assert experiment["model"] == {"id": str(tiny_model_dir), "revision": tiny_lm.revision}
    assert experiment["params"]["values"] == [-4.0, 0.0, 8.0]
    assert [p["prompt"] for p in experiment["params"]["prompts"]] == PROMPTS
    curves = experiment["summary"]["curves"]
    assert curves["value"] == [-4.0, 0.0, 8.0]
    assert all(0.0 <= r <= 1.0 for r in curves["refusal_rate"])

    tok = tiny_lm.tokenizer
    markers = sorted({tok(p, add_special_tokens=False)["input_ids"][0] for p in REFUSAL_PHRASES})
    masses = []
    for prompt in PROMPTS:
        with torch.inference_mode():
            logits = tiny_lm.model(input_ids=prompt_tensor(tiny_lm, prompt)).logits[0, -1]
        masses.append(float(torch.softmax(logits.double(), -1)[markers].sum()))
    for value, got in zip(curves["value"], curves["p_refusal"], strict=True):
        e = math.exp(value)
        expected = sum(m * e / (1 - m + m * e) for m in masses) / len(masses)
        assert got == pytest.approx(expected, rel=1e-4)
    assert curves["p_refusal"] == sorted(curves["p_refusal"])

    outputs = experiment["outputs"]
    assert len(outputs) == 6
    with Store(Settings(home=tmp_path, device="cpu").db_path) as store:
        for output in outputs:
            run = store.get_run(output["run_id"])
            assert run["response"] == output["response"]
            assert run["provenance"]["experiment"]["experiment_id"] == experiment["experiment_id"]
            assert run["provenance"]["experiment"]["value"] == output["value"]


def test_east_sweep_prints_a_table(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc = run_cli(
        "experiment",
        "east-sweep",
        *[a for p in PROMPTS for a in ("--prompt", p)],
        "--betas",
        "0,4",
        "--layer",
        "0",
        "--max-new-tokens",
        "3",
        "--save-as",
        "cli-east",
        "--model",
        str(tiny_model_dir),
        home=tmp_path,
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "(east-sweep)" in out and "layer 0" in out
    assert "next-token entropy" in out and "4 outputs stored as runs" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["0", "4"]
    assert (tmp_path / "vectors" / "cli-east" / "vector.safetensors").is_file()


def test_decode_ead_json(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc = run_cli(
        "experiment",
        "decode",
        "--rule",
        "ead",
        "--prompt",
        PROMPTS[0],
        "--param",
        "max_new_tokens=4",
        "--param",
        "warmup=2",
        "--json",
        "--model",
        str(tiny_model_dir),
        home=tmp_path,
        env=ONE_THREAD,
    )
    experiment = _json(proc)
    assert experiment["kind"] == "decode"
    assert experiment["params"]["params"] == {"max_new_tokens": 4, "warmup": 2}
    summary = experiment["summary"]
    assert summary["rule"] == "ead" and summary["n_outputs"] == 1
    (output,) = experiment["outputs"]
    assert output["rule"] == "ead" and 1 <= output["n_generated"] <= 4


def test_bad_experiment_options_are_one_clear_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = ("--model", str(tiny_model_dir))
    proc = run_cli("experiment", "refusal-sweep", "--values", "1,x", *model, home=tmp_path)
    _one_line_error(proc, "--values takes comma-separated numbers", "'1,x'")
    proc = run_cli(
        "experiment", "decode", "--rule", "beam", "--prompt", "hi", *model, home=tmp_path
    )
    _one_line_error(proc, "rule must be one of", "'beam'")
    assert not (tmp_path / "vectors").exists()

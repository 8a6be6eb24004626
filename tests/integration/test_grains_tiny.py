"""GrAInS-style steering on the tiny model: the vector against an independent computation, the
sweep's stored runs and margins, bad parameters refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tokenprism.analysis.attribution import adaptive_integrated_gradients
from tokenprism.backend.errors import UserError
from tokenprism.backend.lab import grains
from tokenprism.backend.lab.experiments import get_experiment
from tokenprism.backend.lab.jobs import check_experiment, run_experiment
from tokenprism.backend.lens.compute import baseline_embeddings
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

EXAMPLES = [
    {"prompt": "Is the sky blue today?", "preferred": "Yes, it is.", "dispreferred": "No way."},
    {"prompt": "Tell me about cats please", "preferred": "Cats purr.", "dispreferred": "Dogs."},
]
LAYER = 1


def test_preference_score_is_the_log_probability_difference(tiny_lm: Any) -> None:
    pair = grains.pair_ids(tiny_lm, EXAMPLES[0])
    emb = tiny_lm.model.get_input_embeddings()
    f = grains.preference_score(tiny_lm, pair)
    got = float(f(emb(torch.tensor(pair.prompt))[None].detach())[0])
    want = 0.0
    for sign, response in ((1, pair.preferred), (-1, pair.dispreferred)):
        ids = torch.tensor([pair.prompt + response])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_lm.model(input_ids=ids).logits[0].float(), -1)
        n = len(pair.prompt)
        want += sign * sum(float(logp[n - 1 + j, t]) for j, t in enumerate(response))
    assert got == pytest.approx(want, abs=1e-4)
    assert pair.content and all(0 <= p < len(pair.prompt) for p in pair.content)
    texts = "".join(tiny_lm.tokenizer.decode([pair.prompt[p]]) for p in pair.content)
    assert "sky" in texts and "assistant" not in texts  # the user's words, not the template


def test_grains_vector_equals_an_independent_computation(tiny_lm: Any) -> None:
    vec, details = grains.grains_vector(tiny_lm, EXAMPLES, LAYER, top_k=2, steps=16)
    deltas = []
    for example, detail in zip(EXAMPLES, details, strict=True):
        pair = grains.pair_ids(tiny_lm, example)
        emb = tiny_lm.model.get_input_embeddings()
        with torch.no_grad():
            x = emb(torch.tensor(pair.prompt)).detach()
        base = baseline_embeddings(tiny_lm, x, "pad")
        # the attributions themselves are checked in tests/unit/test_attribution.py; here, what
        # the vector makes of them: the top-k tokens and the hidden states there
        f = grains.preference_score(tiny_lm, pair)
        values = adaptive_integrated_gradients(f, x, base, steps=16, batch_size=8).values
        content = values[pair.content]
        order = sorted(pair.content, key=lambda p: -float(values[p]))
        assert detail["positive"] == [p for p in order if values[p] > 0][:2]
        assert detail["negative"] == [p for p in reversed(order) if values[p] < 0][:2]
        assert float(content.max()) > 0 > float(content.min())
        with torch.no_grad():
            hidden = tiny_lm.model(
                input_ids=torch.tensor([pair.prompt]), output_hidden_states=True
            ).hidden_states[LAYER + 1][0]
        pos, neg = detail["positive"], detail["negative"]
        deltas.append(hidden[pos].mean(0) - hidden[neg].mean(0))
    want = torch.stack(deltas).mean(0)
    torch.testing.assert_close(vec.vector, want / want.norm(), atol=1e-5, rtol=1e-4)
    assert vec.layer == LAYER and vec.config["kind"] == "grains"


def test_grains_sweep_stores_every_output_and_the_margin_curve(
    tiny_lm: Any, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", device="cpu")
    params = {
        "examples": EXAMPLES,
        "betas": [-4.0, 0.0, 4.0],
        "layer": LAYER,
        "top_k": 2,
        "steps": 8,
        "max_new_tokens": 4,
        "save_as": "grains-test",
    }
    with Store(tmp_path / "db.duckdb") as store:
        experiment_id = run_experiment(tiny_lm, store, settings, "grains-sweep", params)
        got = get_experiment(store, experiment_id)
        runs = store.list_runs(limit=50)
    outputs = got["outputs"]
    assert len(outputs) == len(runs) == 3 * len(EXAMPLES)
    assert [o["beta"] for o in outputs] == [-4.0, -4.0, 0.0, 0.0, 4.0, 4.0]
    curves = got["summary"]["curves"]
    assert curves["beta"] == [-4.0, 0.0, 4.0]
    # at beta 0 the margin is the unsteered preference score of each example
    unsteered = [d["margin"] for d in got["summary"]["examples"]]
    assert curves["preference_margin"][1] == pytest.approx(sum(unsteered) / 2, abs=1e-4)
    assert curves["preference_margin"][0] != pytest.approx(curves["preference_margin"][2])
    assert [o["preference_margin"] for o in outputs[2:4]] == pytest.approx(unsteered, abs=1e-4)
    saved = json.loads((settings.home / "vectors" / "grains-test" / "vector.json").read_text())
    assert saved["kind"] == "grains" and saved["layer"] == LAYER


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "examples must be a non-empty list"),
        ({"examples": [{"prompt": "a", "preferred": "b"}]}, "examples must be"),
        ({"examples": [{"prompt": "a", "preferred": "b", "dispreferred": "b"}]}, "the same"),
        ({"examples": EXAMPLES, "top_k": 0}, "top_k must be an integer from 1"),
        ({"examples": EXAMPLES, "steps": 10**6}, "steps must be an integer from 2"),
        ({"examples": EXAMPLES, "betas": ["x"]}, "betas must be"),
        ({"examples": EXAMPLES, "temperature": -1}, "temperature"),
        ({"examples": EXAMPLES, "unknown": 1}, "unknown parameter"),
    ],
)
def test_bad_grains_parameters_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_experiment("grains-sweep", params)


@pytest.mark.usefixtures("home")  # an isolated data home for the in-process CLI
def test_cli_grains_sweep_stores_every_output_as_a_run(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from tokenprism.backend.cli.main import app

    examples = tmp_path / "examples.jsonl"
    examples.write_text(json.dumps(EXAMPLES[0]) + "\n")
    common = ["--model", str(tiny_model_dir), "--layer", str(LAYER), "--top-k", "2"]
    proc = CliRunner().invoke(
        app,
        ["experiment", "grains-sweep", "--examples", str(examples),
         "--example-prompt", EXAMPLES[1]["prompt"], "--preferred", EXAMPLES[1]["preferred"],
         "--dispreferred", EXAMPLES[1]["dispreferred"], "--prompt", "Is it sunny?",
         "--betas", "0,6", "--steps", "8", "--max-new-tokens", "3", "--json", *common],
    )  # fmt: skip
    assert proc.exit_code == 0, proc.output
    got = json.loads(proc.stdout)
    assert got["kind"] == "grains-sweep" and got["params"]["examples"] == EXAMPLES
    # one prompt to generate from, two strengths: two outputs, each a stored run
    assert [o["beta"] for o in got["outputs"]] == [0.0, 6.0]
    listed = CliRunner().invoke(app, ["runs", "--json"])
    stored = {r["run_id"] for r in json.loads(listed.stdout)}
    assert {o["run_id"] for o in got["outputs"]} == stored
    # the vector is built from both examples (file and options), top-2 tokens on each side
    built = got["summary"]["examples"]
    assert len(built) == 2 and all(1 <= len(d["positive"]) <= 2 for d in built)
    human = CliRunner().invoke(
        app,
        ["experiment", "grains-sweep", "--examples", str(examples), "--betas", "-2,2",
         "--steps", "4", "--max-new-tokens", "2", *common],
    )  # fmt: skip
    assert human.exit_code == 0, human.output
    assert "preference margin" in human.stdout and "2 outputs stored as runs" in human.stdout
    uneven = CliRunner().invoke(
        app, ["experiment", "grains-sweep", "--example-prompt", "a", "--preferred", "b"]
    )
    assert isinstance(uneven.exception, UserError) and "same number" in str(uneven.exception)

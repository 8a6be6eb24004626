"""Steering experiments on the real default model: EAST raises the next-token entropy with
beta, and a refusal-marker bias raises P(refusal) and the refusal rate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_MODEL_CACHE
from tokenprism.backend.lab.experiments import (
    EastSweep,
    RefusalSweep,
    get_experiment,
    run_east_sweep,
    run_refusal_sweep,
    shipped_refusal_prompts,
)
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

pytestmark = pytest.mark.slow

EAST_LAYER = 15  # the middle block of the 30-block default model
BETAS = (-8.0, 0.0, 8.0)
MARGIN = 0.1  # nats between neighbouring betas (measured gaps: about 0.35)


@pytest.fixture
def store_and_settings(tmp_path: Path) -> Iterator[tuple[Store, Settings]]:
    settings = Settings(home=tmp_path / "home", model_cache=SHARED_MODEL_CACHE, device="cpu")
    settings.home.mkdir(parents=True)
    store = Store(settings.db_path)
    with store:
        yield store, settings


def test_east_raises_the_next_token_entropy_with_beta(
    default_lm: Any, store_and_settings: tuple[Store, Settings]
) -> None:
    store, settings = store_and_settings
    assert int(default_lm.model.config.num_hidden_layers) == 30
    prompts = tuple(str(p["prompt"]) for p in shipped_refusal_prompts()[:8])
    sweep = EastSweep(prompts=prompts, betas=BETAS, layer=EAST_LAYER, max_new_tokens=4, seed=0)
    experiment = get_experiment(store, run_east_sweep(default_lm, store, settings, sweep))
    summary = experiment["summary"]
    curves = summary["curves"]
    entropies = curves["next_token_entropy"]
    print(
        f"\nEAST layer {summary['layer']}, {len(prompts)} prompts: mean next-token entropy "
        + ", ".join(f"beta {b:+g}: {h:.3f}" for b, h in zip(curves["beta"], entropies, strict=True))
    )
    assert summary["layer"] == EAST_LAYER and curves["beta"] == list(BETAS)
    assert summary["vector"]["norm"] == pytest.approx(1.0, abs=1e-4)
    for low, high in zip(entropies, entropies[1:], strict=False):
        assert high - low > MARGIN, entropies
    assert len(experiment["outputs"]) == len(prompts) * len(BETAS)


def test_a_refusal_bias_raises_p_refusal_and_the_refusal_rate(
    default_lm: Any, store_and_settings: tuple[Store, Settings]
) -> None:
    store, _ = store_and_settings
    shipped = shipped_refusal_prompts()
    benign = [p for p in shipped if not p["should_refuse"]][:2]
    harmful = [p for p in shipped if p["should_refuse"]][:2]
    sweep = RefusalSweep(prompts=(*benign, *harmful), values=(0.0, 10.0), max_new_tokens=12)
    experiment = get_experiment(store, run_refusal_sweep(default_lm, store, sweep))
    summary = experiment["summary"]
    curves = summary["curves"]
    print(
        f"\nrefusal sweep ({summary['mode']}): "
        + ", ".join(
            f"bias {v:g}: P(refusal) {p:.3f}, refusal rate {r:.2f}"
            for v, p, r in zip(
                curves["value"], curves["p_refusal"], curves["refusal_rate"], strict=True
            )
        )
    )
    for output in experiment["outputs"]:
        print(f"  bias {output['value']:g} {output['prompt_id']}: {output['response'][:60]!r}")
    assert summary["mode"] == "marker"  # SmolLM2 has no refusal tokens
    p0, p10 = curves["p_refusal"]
    assert 0.0 < p0 < p10 <= 1.0
    assert curves["refusal_rate"][1] >= curves["refusal_rate"][0]
    assert len(experiment["outputs"]) == 8

"""The metric registry: builtin names, lookup errors, re-registration."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tokenprism.analysis import MetricSpec, get_metric, list_metrics
from tokenprism.analysis.registry import _BUILTIN, register_metric
from tokenprism.analysis.scoring import ScoringParams, score_forward

EXPECTED_BUILTINS = {
    "token": {
        "logprob",
        "prob",
        "surprisal_bits",
        "rank",
        "entropy",
        "margin",
        "kurtosis",
        "window_entropy",
        "gltr_bucket",
        "step_first_surprisal",
    },
    "sequence": {
        "geometric_mean_confidence",
        "mean_prob",
        "perplexity",
        "mean_entropy",
        "mean_kurtosis",
        "gltr_top10",
        "gltr_top100",
        "gltr_top1000",
        "gltr_rest",
        "n_tokens",
        "n_steps",
        "mean_step_first_surprisal",
        "erv",
        "era",
    },
    "layer": {"effective_rank"},
}


def test_every_builtin_is_resolvable() -> None:
    assert len({s.name for s in _BUILTIN}) == len(_BUILTIN)
    for spec in _BUILTIN:
        assert get_metric(spec.name) is spec
    for level, names in EXPECTED_BUILTINS.items():
        assert {s.name for s in _BUILTIN if s.level == level} == names
        for name in names:
            assert get_metric(name).level == level


def test_list_metrics_is_sorted_and_filters_by_level() -> None:
    everything = list_metrics()
    names = [s.name for s in everything]
    assert names == sorted(names)
    assert {s.name for s in _BUILTIN} <= set(names)
    for level, expected in EXPECTED_BUILTINS.items():
        got = list_metrics(level)  # type: ignore[arg-type]
        assert all(s.level == level for s in got)
        assert expected <= {s.name for s in got}
    # per-layer readings: the hidden-state geometry and the logit lens's divergence per layer
    assert [s.name for s in list_metrics("layer")] == ["effective_rank", "lens_kl_final"]


def test_hidden_state_metrics_declare_their_inputs() -> None:
    for name in ("erv", "era", "effective_rank"):
        assert get_metric(name).inputs == ("hidden_states",)
    assert get_metric("entropy").inputs == ("logits",)


def test_unknown_name_raises_key_error_listing_known_names() -> None:
    with pytest.raises(KeyError) as err:
        get_metric("no_such_metric")
    message = str(err.value)
    assert "no_such_metric" in message
    for name in ("logprob", "effective_rank", "window_entropy", "erv"):
        assert name in message


def test_re_registering_a_different_spec_raises() -> None:
    original = get_metric("entropy")
    changed = dataclasses.replace(original, unit="bits")
    with pytest.raises(ValueError, match="entropy"):
        register_metric(changed)
    assert get_metric("entropy") is original


def test_re_registering_the_same_spec_is_a_no_op() -> None:
    original = get_metric("perplexity")
    n = len(list_metrics())
    twin = MetricSpec(
        original.name,
        original.level,
        original.unit,
        original.higher_means,
        original.description,
        original.inputs,
    )
    assert register_metric(twin) is twin
    assert len(list_metrics()) == n
    assert get_metric("perplexity") == original


def test_every_name_score_forward_produces_is_registered() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 9, generator=g)
    ids = torch.randint(0, 9, (1, 6), generator=g)
    mask = torch.ones(1, 6, dtype=torch.bool)
    hidden = tuple(torch.randn(1, 6, 4, generator=g) for _ in range(2))
    (sc,) = score_forward(logits, hidden, ids, mask, mask, ScoringParams(), [[2, 4]])
    for level, names in (("token", sc.token), ("sequence", sc.sequence), ("layer", sc.layers)):
        for name in names:
            assert get_metric(name).level == level

"""Stream rules: parsing, streaks and the trailing window, against hand-counted answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenprism.analysis.stream_rules import (
    StreamRule,
    advance,
    firing_positions,
    parse_rule,
    trailing_mean,
)
from tokenprism.analysis.windows import window_entropy


def test_parse_rule_forms() -> None:
    assert parse_rule("entropy>3.0:3:stop") == StreamRule("entropy", 3.0, True, 3, "stop")
    assert parse_rule("probe>0.8") == StreamRule("probe", 0.8, True, 1, "stop")
    assert parse_rule("logprob<-2.5:2:mark") == StreamRule("logprob", -2.5, False, 2, "mark")
    assert parse_rule("window_entropy>1e-1:1:branch").action == "branch"
    assert parse_rule("entropy>2:4:mark").describe() == "entropy>2:4:mark"


@pytest.mark.parametrize(
    "spec", ["entropy", "entropy>>3", "nonsense>1", "entropy>1:0", "entropy>1:2:explode", ""]
)
def test_parse_rule_refuses(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(spec)


def test_streak_needs_consecutive_tokens() -> None:
    rule = StreamRule("entropy", 1.0, patience=3)
    values = [2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 2.0, float("nan"), 2.0]
    # naive: fire where the last `patience` values are all > 1 and none is NaN
    expected = [
        i
        for i in range(len(values))
        if i >= 2
        and all(v > 1.0 for v in values[i - 2 : i + 1] if not math.isnan(v))
        and not any(math.isnan(v) for v in values[i - 2 : i + 1])
    ]
    assert firing_positions(rule, values) == expected == [5, 6]


def test_below_rule_and_equal_threshold() -> None:
    rule = StreamRule("logprob", -1.0, above=False)
    assert advance(rule, 0, -1.0) == (0, False)  # strictly past the line
    assert advance(rule, 0, -1.5) == (1, True)
    assert advance(rule, 4, 0.0) == (0, False)


def test_trailing_mean_is_stored_window_entropy_shifted() -> None:
    rng = np.random.default_rng(0)
    h = rng.random(12).astype(np.float32).tolist()
    import torch

    stored = window_entropy(torch.tensor([h]), torch.ones(1, 12, dtype=torch.bool), window=4)[0]
    for t in range(12):
        live = trailing_mean(h[: t + 1], 4)
        if t < 3:
            assert math.isnan(live)
        else:
            assert live == pytest.approx(float(stored[t - 3]), abs=1e-6)

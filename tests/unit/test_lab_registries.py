"""The lab's name-keyed registries: experiment kinds and decoding rules.

Each kind and rule listed must be reachable by its name, build its parameters and be covered
by the tests that run it; an unknown name is refused with the list of known ones.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from tokenprism.backend.errors import UserError
from tokenprism.backend.lab import decoding, experiments
from tokenprism.backend.lab.jobs import EXPERIMENT_KINDS, check_experiment, get_kind

# one valid request per kind: what each kind needs at the least
MINIMAL_PARAMS: dict[str, dict[str, Any]] = {
    "refusal-sweep": {"values": [0.0]},
    "east-sweep": {"prompts": ["a", "b"], "betas": [1.0]},
    "decode": {"rule": "ead", "prompts": ["a"]},
}


def test_every_experiment_kind_is_reachable_by_name() -> None:
    assert list(EXPERIMENT_KINDS) == list(MINIMAL_PARAMS)
    for name, kind in EXPERIMENT_KINDS.items():
        assert get_kind(name) is kind and kind.name == name
        assert dataclasses.is_dataclass(kind.params)
        spec = check_experiment(name, MINIMAL_PARAMS[name])
        assert isinstance(spec, kind.params)


def test_an_unknown_experiment_kind_lists_the_kinds() -> None:
    with pytest.raises(UserError, match="choose from refusal-sweep, east-sweep, decode"):
        check_experiment("steer-everything", {})


def test_every_decoding_rule_is_reachable_by_name() -> None:
    # DecodeExperiment.rule's Literal names exactly the registered rules, in order
    assert typing.get_args(experiments.DecodeRule) == tuple(decoding.DECODING_RULES)
    for name, rule in decoding.DECODING_RULES.items():
        assert decoding.get_rule(name) is rule and rule.name == name
        assert "max_new_tokens" in rule.parameters() and "seed" not in rule.parameters()
        spec = check_experiment("decode", {"rule": name, "prompts": ["a"]})
        assert spec.rule == name
    assert [n for n, r in decoding.DECODING_RULES.items() if r.pair] == ["switch"]
    assert [n for n, r in decoding.DECODING_RULES.items() if not r.seeded] == ["latr"]


def test_an_unknown_decoding_rule_lists_the_rules() -> None:
    with pytest.raises(UserError, match="rule 'beam'; use ead, cntp, switch, latr"):
        decoding.get_rule("beam")
    with pytest.raises(UserError, match="rule must be one of ead, cntp, switch, latr"):
        check_experiment("decode", {"rule": "beam", "prompts": ["a"]})

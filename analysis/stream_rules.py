"""Rules that act on a generation while it streams: a metric past a threshold for some tokens.

A rule reads one per-token value (``entropy``, ``logprob``, ``window_entropy``, ``probe``,
``surprisal``) and counts how many consecutive tokens were past its threshold (the *streak*).
It fires on the token where the streak reaches ``patience`` and on every further token of the
same streak; the caller decides what firing means (``stop``, ``mark``, ``branch``). A NaN value
(no window yet, no probe) breaks the streak: nothing is invented for a missing value.

The logic is pure and tiny so the sampler, the CLI and the tests share one definition.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RuleAction = Literal["stop", "mark", "branch"]
RULE_METRICS: tuple[str, ...] = ("entropy", "logprob", "surprisal", "window_entropy", "probe")
RULE_ACTIONS: tuple[str, ...] = ("stop", "mark", "branch")
_SPEC = re.compile(
    r"\s*(?P<metric>[a-z_]+)\s*(?P<op>[<>])\s*(?P<thr>[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
    r"(?::(?P<patience>[0-9]+))?(?::(?P<action>[a-z]+))?\s*"
)


@dataclass(frozen=True)
class StreamRule:
    """One rule: ``metric op threshold`` for ``patience`` consecutive tokens, then ``action``.

    Attributes:
        metric: one of :data:`RULE_METRICS`.
        threshold: the line the value must cross.
        above: True for ``>`` (value above the line), False for ``<``.
        patience: consecutive tokens past the line before the rule fires (>= 1).
        action: ``stop`` (end the generation), ``mark`` (flag the span, keep going) or
            ``branch`` (resample the position ``branches`` times, keep the calmest branch).
        branches: how many alternatives a ``branch`` draws (>= 2).
    """

    metric: str
    threshold: float
    above: bool = True
    patience: int = 1
    action: RuleAction = "stop"
    branches: int = 4

    def __post_init__(self) -> None:
        if self.metric not in RULE_METRICS:
            raise ValueError(f"unknown rule metric {self.metric!r}; choose {RULE_METRICS}")
        if self.action not in RULE_ACTIONS:
            raise ValueError(f"unknown rule action {self.action!r}; choose {RULE_ACTIONS}")
        if self.patience < 1:
            raise ValueError("a rule's patience must be at least 1 token")
        if self.branches < 2:
            raise ValueError("a branch rule needs at least 2 branches")
        if not math.isfinite(self.threshold):
            raise ValueError("a rule's threshold must be a finite number")

    def describe(self) -> str:
        op = ">" if self.above else "<"
        return f"{self.metric}{op}{self.threshold:g}:{self.patience}:{self.action}"


def parse_rule(spec: str) -> StreamRule:
    """``METRIC>X[:PATIENCE][:ACTION]`` (or ``<``), e.g. ``entropy>3.0:3:stop``.

    Raises:
        ValueError: naming what is wrong with ``spec``.
    """
    match = _SPEC.fullmatch(spec)
    if not match:
        raise ValueError(f"rule {spec!r} is not METRIC>X[:PATIENCE][:ACTION]")
    patience = int(match["patience"]) if match["patience"] else 1
    action = match["action"] or "stop"
    if action not in RULE_ACTIONS:
        raise ValueError(f"unknown rule action {action!r}; choose {RULE_ACTIONS}")
    return StreamRule(
        match["metric"],
        float(match["thr"]),
        match["op"] == ">",
        patience,
        action,  # type: ignore[arg-type]
    )


def advance(rule: StreamRule, streak: int, value: float) -> tuple[int, bool]:
    """One token: the new streak and whether the rule fires on this token.

    Args:
        rule: the rule.
        streak: consecutive tokens past the line before this one.
        value: this token's value of ``rule.metric`` (NaN when it has none).

    Returns:
        ``(streak, fired)``: the streak including this token, and ``streak >= patience``.
    """
    if math.isnan(value):
        return 0, False
    past = value > rule.threshold if rule.above else value < rule.threshold
    streak = streak + 1 if past else 0
    return streak, streak >= rule.patience


def firing_positions(rule: StreamRule, values: Sequence[float]) -> list[int]:
    """Every position where ``rule`` fires over a whole sequence (no action taken)."""
    streak, fired = 0, []
    for i, value in enumerate(values):
        streak, hit = advance(rule, streak, value)
        if hit:
            fired.append(i)
    return fired


def trailing_mean(values: Sequence[float], window: int) -> float:
    """Mean of the last ``window`` values, NaN until there are ``window`` of them.

    The streamed ``window_entropy`` at token t is this over entropies ``t-w+1..t``: the stored
    (inclusive, ARES paper) window entropy of token ``t-w+1``, known as soon as token t is.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    if len(values) < window:
        return float("nan")
    tail = values[-window:]
    return sum(tail) / window

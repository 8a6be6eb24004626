"""Critical tokens by rollouts: how often does the model still reach a correct answer from each
prefix of an incorrect response?

For an incorrect response of a group, K continuations are sampled from prefixes that end at
(a budgeted, evenly spaced sample of) its response tokens and verified with the group's
verifier. The correctness curve c(t) is stored as the token metric ``rollout_correct``; the
critical token is the first position where c reaches 0, with the recovery rule of Lin et al.
(``analysis.critical.critical_position``). Around a budgeted candidate the positions between
the last evaluated one and the candidate are filled in (``refine``), so the critical token is
exact within the budget. Counterfactual: the critical token is replaced by its most probable
alternatives and each is rolled out again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tokenprism.analysis.critical import budget_positions, critical_position
from tokenprism.analysis.verifiers import Verifier, parse_verifier
from tokenprism.backend.errors import UserError
from tokenprism.backend.groups.core import get_group, update_group_json
from tokenprism.backend.limits import check_context, stopping_criteria
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.store import Store


@dataclass(frozen=True)
class RolloutRequest:
    """Parameters of a rollout job; stored with its results.

    Attributes:
        group_id: the group.
        run_id: the response to analyse (default: the group's first incorrect response).
        k: continuations sampled per prefix (the paper: 64).
        budget: prefixes evaluated on the first pass (evenly spaced over the response).
        refine: extra prefixes allowed to pin the critical token down between two budgeted ones.
        max_new_tokens, temperature, top_p: sampling of the continuations (paper: top-p 0.95).
        counterfactuals: alternatives tried in place of the critical token.
        seed: sampling seed.
    """

    group_id: str
    run_id: str | None = None
    k: int = 8
    budget: int = 12
    refine: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.95
    counterfactuals: int = 4
    seed: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sample(lm: LoadedModel, prefix: list[int], k: int, request: RolloutRequest) -> list[list[int]]:
    ids = torch.tensor([prefix], device=lm.device)
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    check_context(lm, len(prefix), request.max_new_tokens)
    with torch.inference_mode(), lm.autocast_context():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=None,
            num_return_sequences=k,
            max_new_tokens=request.max_new_tokens,
            pad_token_id=pad,
            stopping_criteria=stopping_criteria(),
        )
    return out[:, len(prefix) :].cpu().tolist()  # one copy for the k continuations


def _correct_rate(
    lm: LoadedModel,
    verifier: Verifier,
    ids: list[int],
    start: int,
    prefix_end: int,
    k: int,
    request: RolloutRequest,
) -> tuple[float, list[str]]:
    """c: the share of K continuations of ``ids[:prefix_end]`` whose response verifies."""
    texts = []
    for continuation in _sample(lm, ids[:prefix_end], k, request):
        texts.append(
            lm.tokenizer.decode(ids[start:prefix_end] + continuation, skip_special_tokens=True)
        )
    rate = sum(verifier(t).reward for t in texts) / max(len(texts), 1)
    return rate, texts


@dataclass
class _Ticker:
    """Counts finished rollout evaluations for ``progress`` (capped at the planned total)."""

    total: int
    progress: Callable[[int, int], None] | None
    done: int = 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


@dataclass
class _Curve:
    """The correctness curve c(t) of one response, filled in position by position."""

    lm: LoadedModel
    verifier: Verifier
    ids: list[int]
    start: int
    request: RolloutRequest
    tick: _Ticker
    rates: dict[int, float] = field(default_factory=dict)
    samples: dict[int, list[str]] = field(default_factory=dict)

    def evaluate(self, positions: list[int]) -> None:
        """c at each position: continuations of the prefix that ends with that token."""
        for pos in positions:
            self.rates[pos], self.samples[pos] = _correct_rate(
                self.lm, self.verifier, self.ids, self.start, pos + 1, self.request.k, self.request
            )
            self.tick()

    def critical(self) -> int | None:
        """The critical position of the curve so far (Lin et al.'s rule), or None."""
        ordered = sorted(self.rates)
        index = critical_position([self.rates[p] for p in ordered])
        return None if index is None else ordered[index]


def _response_to_analyse(group: dict[str, Any], request: RolloutRequest) -> str:
    """The requested response, or the group's first incorrect one."""
    run_id = request.run_id
    if run_id is None:
        wrong = [r for r in group["responses"] if not r["reward"]]
        if not wrong:
            raise UserError("every response of this group is correct: no critical token to find")
        return wrong[0]["run_id"]
    if run_id not in {r["run_id"] for r in group["responses"]}:
        raise UserError(f"run {run_id} is not a response of group {request.group_id}")
    return run_id


def _refine(curve: _Curve, eligible: list[int], found: int) -> int:
    """Evaluate (up to ``refine``) the positions between the last evaluated one before
    ``found`` and ``found``; return how many were added."""
    earlier = [p for p in sorted(curve.rates) if p < found]
    low = earlier[-1] if earlier else curve.start - 1
    gap = [p for p in eligible if low < p < found][: curve.request.refine]
    curve.evaluate(gap)
    return len(gap)


def _counterfactuals(curve: _Curve, found: int) -> list[dict[str, Any]]:
    """Roll out the most probable alternatives to the critical token (the original excluded)."""
    lm, ids, request = curve.lm, curve.ids, curve.request
    with torch.inference_mode(), lm.autocast_context():
        logits = lm.model(torch.tensor([ids[:found]], device=lm.device)).logits[0, -1]
    probs = torch.softmax(logits.float(), -1)
    probs[ids[found]] = 0.0  # the original token is excluded, as in the paper's check
    top = torch.topk(probs, request.counterfactuals)
    rows = []
    for p, alt in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        swapped = ids[:found] + [int(alt)]
        rate, texts = _correct_rate(
            lm, curve.verifier, swapped, curve.start, len(swapped), request.k, request
        )
        rows.append(
            {
                "token_id": int(alt),
                "text": lm.tokenizer.decode([int(alt)]),
                "prob": p,
                "correct_rate": rate,
                "samples": texts[:3],
            }
        )
        curve.tick()
    return rows


def run_rollouts(
    lm: LoadedModel,
    store: Store,
    request: RolloutRequest,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate c(t) along one incorrect response, find its critical token, try alternatives."""
    group = get_group(store, request.group_id, tokens=False)
    if group["model"]["revision"] != lm.revision:
        raise UserError("the group was sampled with another model revision than the one loaded")
    verifier = parse_verifier(group["verifier"])
    run_id = _response_to_analyse(group, request)
    if request.seed is not None:
        torch.manual_seed(request.seed)
    run = store.get_run(run_id, metrics=[])
    tokens = run["tokens"]
    ids = [int(t["token_id"]) for t in tokens]
    start = next(i for i, t in enumerate(tokens) if not t["is_prompt"])
    special = set(lm.tokenizer.all_special_ids)
    eligible = [i for i in range(start, len(ids)) if ids[i] not in special]
    if not eligible:
        raise UserError("the response has no tokens to roll out from")
    chosen = [eligible[j] for j in budget_positions(len(eligible), request.budget)]
    tick = _Ticker(len(chosen) + request.refine + request.counterfactuals + 1, progress)
    curve = _Curve(lm, verifier, ids, start, request, tick)
    baseline, _ = _correct_rate(lm, verifier, ids, start, start, request.k, request)
    tick()
    curve.evaluate(chosen)
    found = curve.critical()
    extra = 0
    if found is not None:
        extra = _refine(curve, eligible, found)
        found = curve.critical()
    counterfactuals = []
    if found is not None and request.counterfactuals > 0:
        counterfactuals = _counterfactuals(curve, found)
    rates, samples = curve.rates, curve.samples
    result = {
        "run_id": run_id,
        "params": request.as_dict(),
        "baseline": baseline,
        "positions": sorted(rates),
        "correct_rate": [rates[p] for p in sorted(rates)],
        "critical_position": found,
        "critical_token": None if found is None else tokens[found]["text"],
        "refined": extra,
        "counterfactuals": counterfactuals,
        "samples": {str(p): samples[p][:2] for p in sorted(samples)},
    }
    curve_values = [math.nan] * len(ids)
    for pos, rate in rates.items():
        curve_values[pos] = rate
    store.replace_metrics(
        run_id,
        token={"rollout_correct": torch.tensor(curve_values, dtype=torch.float64).numpy()},
        sequence={
            "rollout_baseline": baseline,
            "critical_position": math.nan if found is None else float(found),
        },
        claims={},
        provenance_key="rollouts",
        provenance={k: v for k, v in result.items() if k != "samples"},
    )
    update_group_json(store, request.group_id, "rollouts", run_id, result)
    return result

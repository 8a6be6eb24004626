"""CCP over API top-k alternatives, against a naive loop on hand-made top-k lists."""

from __future__ import annotations

import json
import math
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tokenprism.analysis.ccp import CONTRA, ENGLISH_STOPWORDS, ENTAIL, NEUTRAL, ccp_params
from tokenprism.backend.audit.logprob_ccp import (
    annotate_item,
    check_ccp_alternatives,
    logprob_extra_request,
    topk_alternatives,
)
from tokenprism.backend.audit.logprob_runs import item_metrics
from tokenprism.backend.audit.logprobs import LogprobItem, parse_logprobs
from tokenprism.backend.errors import UserError
from tokenprism.backend.scoring.extras import ExtraPlan, ExtraRequest
from tokenprism.backend.settings import Settings

K = 3  # n_alternatives: smaller than the longest listing, so the cut is exercised
# (token, its probability, its listed top-k as the API gives them, most probable first)
TOKENS: list[tuple[str, float, list[tuple[str, float]]]] = [
    ("The", 0.5, [("The", 0.5), ("A", 0.3), ("This", 0.1), ("the", 0.05)]),  # cut to 3
    (" capital", 0.2, [(" city", 0.4), (" main", 0.3), (" capital", 0.2)]),  # listed third
    (" is", 0.01, [(" was", 0.6), (" remains", 0.3), (" has", 0.05)]),  # sampled outside
    (" Paris", 0.7, [(" Paris", 0.7)]),  # one listed
    (".", 0.9, []),  # none listed
    (" Big", 0.1, [(" Large", 0.35), (" Huge", 0.32), (" Tiny", 0.2), (" Big", 0.1)]),  # 4th
    ("!", 0.99, [("!", 0.99)]),
]
CONTENT = "The capital is Paris. Big!"
CLAIMS = ["The capital is Paris.", "Big!"]
SYNONYMS = {frozenset({"Big", "Large"}), frozenset({"city", "capital"})}
NEUTRAL_WORDS = {"remains"}
STRIP = {
    "lm-polygraph": string.punctuation + " \n",
    "tokenprism": string.punctuation + " \n\t\r▁ĠĊ",
}


class RuleJudge:
    """Symmetric rules: same word or listed synonyms entail, an empty or listed word is
    neutral, anything else contradicts."""

    name = "stub-rules"

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def label(self, a: str, b: str) -> int:
        if a == b or frozenset({a, b}) in SYNONYMS:
            return ENTAIL
        if not a or not b or a in NEUTRAL_WORDS or b in NEUTRAL_WORDS:
            return NEUTRAL
        return CONTRA

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        self.pairs += pairs
        return [self.label(p, h) for p, h in pairs]

    def provenance(self) -> dict[str, Any]:
        return {"judge": self.name, "kind": "stub"}


def _item(tokens: list[tuple[str, float, list[tuple[str, float]]]] = TOKENS) -> LogprobItem:
    def entry(t: str, p: float) -> dict[str, Any]:
        return {"token": t, "logprob": math.log(p), "bytes": list(t.encode())}

    content = [
        {**entry(t, p), "top_logprobs": [entry(a, q) for a, q in top]} for t, p, top in tokens
    ]
    response = {
        "model": "gpt-4o-mini",
        "choices": [
            {
                "message": {"role": "assistant", "content": "".join(t for t, _, _ in tokens)},
                "logprobs": {"content": content},
            }
        ],
    }
    (item,) = parse_logprobs(json.dumps(response))
    return item


def _naive_ccp(preset: str) -> list[float]:
    """CCP_t by hand: the first K listed, the token first (the K-th dropped when it is not
    among them), neutral alternatives out of both sums."""
    judge = RuleJudge()
    out = []
    for token, p, top in TOKENS:
        first = top[:K]
        texts = [a for a, _ in first]
        others = [a for a in first if a[0] != token] if token in texts else first[: K - 1]
        word = token.strip(STRIP[preset])
        entail, contra = p, 0.0
        for alt, q in others:
            alt_word = alt.strip(STRIP[preset])
            if preset == "tokenprism":
                if not alt_word:
                    continue
                if alt_word.casefold() == word.casefold():
                    entail += q
                    continue
            label = judge.label(word, alt_word)
            if label == ENTAIL:
                entail += q
            elif label == CONTRA:
                contra += q
        if preset == "tokenprism" and (not word or word.lower() in ENGLISH_STOPWORDS):
            entail, contra = 1.0, 0.0  # an empty word: all neutral; a stopword: all entail
        out.append(entail / (entail + contra))
    return out


def test_alternatives_put_the_token_first_and_cut_to_k() -> None:
    texts, logprobs = topk_alternatives(_item(), K)
    assert texts == [
        ["The", "A", "This"],
        [" capital", " city", " main"],
        [" is", " was", " remains"],  # outside: the least probable of the first K drops
        [" Paris"],
        ["."],
        [" Big", " Large", " Huge"],  # listed 4th, beyond K: as if outside
        ["!"],
    ]
    assert logprobs.shape == (7, K)
    expected_first = [math.log(p) for _, p, _ in TOKENS]
    torch.testing.assert_close(logprobs[:, 0], torch.tensor(expected_first, dtype=torch.float64))
    assert logprobs[1, 1] == pytest.approx(math.log(0.4))
    assert torch.isinf(logprobs[3, 1:]).all() and torch.isinf(logprobs[4, 1:]).all()


@pytest.mark.parametrize("preset", ["lm-polygraph", "tokenprism"])
def test_token_claim_and_sequence_ccp_match_a_naive_loop(preset: str) -> None:
    item = _item()
    judge = RuleJudge()
    request = ExtraRequest(metrics=("ccp",), ccp=ccp_params(preset, n_alternatives=K))
    plan = ExtraPlan(request=request, settings=Settings(home=Path("/nonexistent")), judge=judge)  # type: ignore[arg-type]
    tok = item_metrics(item, 200_019)
    claims, sequence = annotate_item(item, tok, plan)
    expected = _naive_ccp(preset)
    assert judge.pairs, "the judge was never asked"
    assert tok["ccp"].tolist() == pytest.approx(expected, rel=1e-5)
    assert min(expected) < 0.7 and max(expected) == 1.0  # informative and trivial tokens both
    assert [c.claim.text for c in claims] == CLAIMS
    assert [c.positions for c in claims] == [[0, 1, 2, 3, 4], [5, 6]]
    products = [math.prod(expected[p] for p in c.positions) for c in claims]
    for c, product in zip(claims, products, strict=True):
        assert c.metrics["ccp"] == pytest.approx(product, rel=1e-5)
        probs = [TOKENS[p][1] for p in c.positions]
        assert c.metrics["one_minus_prob"] == pytest.approx(1 - min(probs))
    assert sequence["ccp_uncertainty"] == pytest.approx(1 - math.prod(expected), rel=1e-5)
    assert sequence["claim_ccp_min"] == pytest.approx(min(products), rel=1e-5)
    assert sequence["claim_ccp_mean"] == pytest.approx(sum(products) / 2, rel=1e-5)
    logs = [math.log(v) for v in expected]
    assert sequence["ccp_mean_log"] == pytest.approx(sum(logs) / len(logs), rel=1e-5, abs=1e-7)


def test_claims_without_ccp() -> None:
    item = _item()
    tok = item_metrics(item, 200_019)
    claims, sequence = annotate_item(item, tok, None)
    assert sequence == {} and "ccp" not in tok
    assert [c.claim.text for c in claims] == CLAIMS
    assert all("ccp" not in c.metrics and "one_minus_prob" in c.metrics for c in claims)


def test_extras_of_a_logprobs_audit_are_checked() -> None:
    assert logprob_extra_request(None) is None
    request = logprob_extra_request("ccp", judge="fallback", ccp_preset="tokenprism")
    assert request is not None and request.judge == "fallback"
    assert request.ccp.stopword_rule is True
    with pytest.raises(UserError, match="probe, sar need a local model"):
        logprob_extra_request("ccp,probe,sar")
    with pytest.raises(UserError, match="judge needs metrics=ccp"):
        logprob_extra_request(None, judge="fallback")
    with pytest.raises(UserError, match="unknown metric family"):
        logprob_extra_request("nope")
    with pytest.raises(UserError, match="lists at most 1"):
        check_ccp_alternatives([_item([("Hi", 0.9, [("Hi", 0.9)])])])
    check_ccp_alternatives([_item()])

"""Claim-Conditioned Probability against hand computations and naive loops."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from tokenprism.analysis.ccp import (
    CCP_PRESETS,
    CONTRA,
    ENGLISH_STOPWORDS,
    ENTAIL,
    NEUTRAL,
    CcpParams,
    alternatives_with_target,
    ccp_params,
    ccp_preset_name,
    claim_ccp,
    combine_directions,
    label_alternatives,
    normalise_word,
    sequence_ccp,
    token_ccp,
    token_log_ccp,
)

E, C, N = ENTAIL, CONTRA, NEUTRAL
# The tests written before the presets existed pin the preset whose rules they test: ours.
TP = ccp_params("tokenprism")


class StubJudge:
    """Dict-based judge: unlisted pairs are neutral; it records every call."""

    name = "stub"

    def __init__(self, table: dict[tuple[str, str], int]) -> None:
        self.table = table
        self.calls: list[list[tuple[str, str]]] = []

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        self.calls.append(list(pairs))
        return [self.table.get(p, NEUTRAL) for p in pairs]

    @property
    def asked(self) -> set[tuple[str, str]]:
        return {p for call in self.calls for p in call}


def _both(a: str, b: str, label: int) -> dict[tuple[str, str], int]:
    return {(a, b): label, (b, a): label}


def _ccp_one(probs: list[float], alts: list[str], judge: StubJudge, **kw: object) -> float:
    labels = label_alternatives([alts[0]], [alts], judge, ccp_params("tokenprism", **kw))
    lp = torch.tensor([probs], dtype=torch.float32).log()
    return float(token_ccp(lp, labels)[0])


def test_constants_and_normalise_word() -> None:
    assert (ENTAIL, CONTRA, NEUTRAL) == (0, 1, 2)
    assert normalise_word(" Paris,") == "Paris"
    assert normalise_word("▁Paris") == "Paris"
    assert normalise_word("ĠParis.Ċ") == "Paris"
    assert normalise_word("\n\t(don't)\r") == "don't"
    assert normalise_word("  ,.! ") == ""
    assert normalise_word("New-York") == "New-York"
    assert len(ENGLISH_STOPWORDS) >= 150
    assert {"a", "an", "the", "of", "in", "on", "and", "or", "is", "was", "to"} <= ENGLISH_STOPWORDS
    assert "paris" not in ENGLISH_STOPWORDS


def test_params_validation_and_dict() -> None:
    assert TP.as_dict() == {
        "n_alternatives": 10,
        "identity_casefold": True,
        "empty": "neutral",
        "stopword_rule": True,
        "context": "none",
        "strip": "tokenprism",
        "aggregation": "tokenprism",
    }
    # the default is LM-Polygraph's conventions: no shortcut at all
    assert CcpParams() == CCP_PRESETS["lm-polygraph"] == ccp_params()
    assert CcpParams().as_dict() == {
        "n_alternatives": 10,
        "identity_casefold": False,
        "empty": "judge",
        "stopword_rule": False,
        "context": "none",
        "strip": "lm-polygraph",
        "aggregation": "lm-polygraph",
    }
    assert ccp_preset_name(CcpParams()) == "lm-polygraph"
    assert ccp_preset_name(ccp_params("tokenprism", n_alternatives=5)) == "tokenprism"
    assert ccp_preset_name(ccp_params("tokenprism", stopword_rule=False)) == "custom"
    with pytest.raises(ValueError, match="unknown CCP preset 'paper'; choose from lm-polygraph"):
        ccp_params("paper")
    with pytest.raises(ValueError):
        CcpParams(strip="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CcpParams(aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CcpParams(n_alternatives=0)
    with pytest.raises(ValueError):
        CcpParams(empty="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CcpParams(context="claim")  # type: ignore[arg-type]


def test_hand_case_identity_and_contradictions() -> None:
    judge = StubJudge({**_both("Paris", "London", C), **_both("Paris", "Rome", C)})
    alts = ["Paris", " paris", "London", "Rome"]
    labels = label_alternatives(["Paris"], [alts], judge, TP)
    assert labels.tolist() == [[E, E, C, C]]
    ccp = _ccp_one([0.5, 0.2, 0.2, 0.1], alts, StubJudge(judge.table))
    assert ccp == pytest.approx(0.7, rel=1e-6)
    # the same word with other casing / spacing never reached the judge
    assert judge.asked == {
        ("Paris", "London"),
        ("London", "Paris"),
        ("Paris", "Rome"),
        ("Rome", "Paris"),
    }
    assert len(judge.calls) == 1


def test_identity_can_be_switched_off() -> None:
    judge = StubJudge(_both("Paris", "paris", C))
    labels = label_alternatives(
        ["Paris"], [["Paris", " paris"]], judge, ccp_params("tokenprism", identity_casefold=False)
    )
    assert labels.tolist() == [[E, C]]
    assert ("Paris", "paris") in judge.asked


def test_neutral_alternative_is_dropped() -> None:
    # France is neutral both ways: 0.5 / (0.5 + 0.3)
    judge = StubJudge(_both("Paris", "London", C))
    ccp = _ccp_one([0.5, 0.2, 0.3], ["Paris", "France", "London"], judge)
    assert ccp == pytest.approx(0.5 / 0.8, rel=1e-6)


def test_entail_one_way_neutral_other_is_entail() -> None:
    judge = StubJudge({("Paris", "capital"): E, **_both("Paris", "London", C)})
    alts = ["Paris", "capital", "London"]
    assert label_alternatives(["Paris"], [alts], judge, TP).tolist() == [[E, E, C]]
    judge = StubJudge({("capital", "Paris"): E, **_both("Paris", "London", C)})
    assert _ccp_one([0.5, 0.3, 0.2], alts, judge) == pytest.approx(0.8, rel=1e-6)


def test_entail_and_contra_is_neutral() -> None:
    judge = StubJudge({("Paris", "X"): E, ("X", "Paris"): C, **_both("Paris", "London", C)})
    alts = ["Paris", "X", "London"]
    assert label_alternatives(["Paris"], [alts], judge, TP).tolist() == [[E, N, C]]
    assert _ccp_one([0.5, 0.3, 0.2], alts, judge) == pytest.approx(0.5 / 0.7, rel=1e-6)


def test_empty_alternatives() -> None:
    alts = ["Paris", ",", " \n", "London"]
    judge = StubJudge(_both("Paris", "London", C))
    labels = label_alternatives(["Paris"], [alts], judge, TP)
    assert labels.tolist() == [[E, N, N, C]]
    assert judge.asked == {("Paris", "London"), ("London", "Paris")}
    labels = label_alternatives(["Paris"], [alts], judge, ccp_params("tokenprism", empty="entail"))
    assert labels.tolist() == [[E, E, E, C]]
    judge = StubJudge({**_both("Paris", ",", C), **_both("Paris", "London", C)})
    labels = label_alternatives(
        ["Paris"], [alts], judge, ccp_params("tokenprism", empty="judge-raw")
    )
    assert labels.tolist() == [[E, C, N, C]]
    assert ("Paris", " \n") in judge.asked  # an empty word goes to the judge as raw text
    # "judge" (LM-Polygraph) sends the empty normalised word itself
    judge = StubJudge({**_both("Paris", "", C), **_both("Paris", "London", C)})
    labels = label_alternatives(["Paris"], [alts], judge, ccp_params("tokenprism", empty="judge"))
    assert labels.tolist() == [[E, C, C, C]]
    assert judge.asked == {("Paris", ""), ("", "Paris"), ("Paris", "London"), ("London", "Paris")}


def test_empty_original() -> None:
    judge = StubJudge({})
    labels = label_alternatives([","], [[",", "Paris", "."]], judge, TP)
    assert labels.tolist() == [[E, N, N]]
    assert judge.calls == []
    labels = label_alternatives(
        [","], [[",", "Paris", "."]], judge, ccp_params("tokenprism", empty="entail")
    )
    assert labels.tolist() == [[E, E, E]]
    assert judge.calls == []


def test_stopword_rule() -> None:
    alts = [" the", " a", " this"]
    judge = StubJudge(_both("the", "a", C))
    labels = label_alternatives([" The"], [alts], judge, TP)
    assert labels.tolist() == [[E, E, E]]
    assert judge.calls == []
    assert _ccp_one([0.4, 0.4, 0.2], alts, judge) == 1.0
    off = ccp_params("tokenprism", stopword_rule=False)
    labels = label_alternatives([" the"], [alts], judge, off)
    assert labels.tolist() == [[E, C, N]]
    assert _ccp_one([0.4, 0.4, 0.2], alts, judge, stopword_rule=False) == pytest.approx(0.5)


def test_pairs_are_deduplicated_in_one_batched_call() -> None:
    judge = StubJudge({**_both("Paris", "London", C), ("Paris", "Lyon"): E})
    original = ["Paris", " Paris", "Paris.", "Lyon"]
    alternatives = [
        ["Paris", "London", "Lyon"],
        [" Paris", " London", "Lyon"],
        ["Paris.", "London", " Lyon"],
        ["Lyon", "Paris"],
    ]
    labels = label_alternatives(original, alternatives, judge, TP)
    assert len(judge.calls) == 1
    call = judge.calls[0]
    assert len(call) == len(set(call))
    assert set(call) == {
        ("Paris", "London"),
        ("London", "Paris"),
        ("Paris", "Lyon"),
        ("Lyon", "Paris"),
    }
    # ragged rows pad with neutral
    assert labels.tolist() == [[E, C, E], [E, C, E], [E, C, E], [E, E, N]]


def test_no_pairs_means_no_call() -> None:
    judge = StubJudge({})
    labels = label_alternatives(["Paris", "of"], [["Paris", "paris"], ["of", "in"]], judge, TP)
    assert labels.tolist() == [[E, E], [E, E]]
    assert judge.calls == []
    assert label_alternatives([], [], judge, TP).shape == (0, 0)


def test_prefix_context() -> None:
    judge = StubJudge(_both("The capital is Paris", "The capital is London", C))
    params = ccp_params("tokenprism", context="prefix")
    labels = label_alternatives(
        [" Paris"],
        [[" Paris", " PARIS", " London"]],
        judge,
        params,
        prefixes=["The capital is "],
    )
    assert labels.tolist() == [[E, E, C]]
    assert judge.asked == {
        ("The capital is Paris", "The capital is London"),
        ("The capital is London", "The capital is Paris"),
    }
    with pytest.raises(ValueError):
        label_alternatives([" Paris"], [[" Paris", " London"]], judge, params)


def test_judge_output_is_checked() -> None:
    class Short(StubJudge):
        def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
            return super().__call__(pairs)[:-1]

    with pytest.raises(ValueError, match="labels"):
        label_alternatives(["Paris"], [["Paris", "Rome"]], Short({}), CcpParams())
    with pytest.raises(ValueError):
        label_alternatives(
            ["Paris"], [["Paris", "Rome"]], StubJudge(_both("Paris", "Rome", 7)), CcpParams()
        )
    with pytest.raises(ValueError):
        label_alternatives(["Paris"], [], StubJudge({}), CcpParams())


def test_combine_directions_truth_table() -> None:
    table = {
        (E, E): E,
        (E, C): N,
        (E, N): E,
        (C, E): N,
        (C, C): C,
        (C, N): C,
        (N, E): E,
        (N, C): C,
        (N, N): N,
    }
    fwd = torch.tensor([f for f, _ in table])
    bwd = torch.tensor([b for _, b in table])
    got = combine_directions(fwd, bwd)
    assert got.tolist() == list(table.values())
    # shape is preserved
    assert combine_directions(fwd.view(3, 3), bwd.view(3, 3)).tolist() == got.view(3, 3).tolist()


def _naive_alternatives(
    top_ids: np.ndarray, top_lp: np.ndarray, target: np.ndarray, target_lp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ids_out, lp_out = [], []
    for t in range(len(top_ids)):
        ids, lps = list(top_ids[t]), list(top_lp[t])
        if target[t] in ids:
            i = ids.index(target[t])
            del ids[i], lps[i]
        else:
            ids, lps = ids[:-1], lps[:-1]
        ids_out.append([target[t], *ids])
        lp_out.append([target_lp[t], *lps])
    return np.array(ids_out), np.array(lp_out)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_alternatives_with_target_matches_naive_loop(k: int) -> None:
    rng = np.random.default_rng(k)
    t_len, vocab = 12, 50
    top_ids = np.stack([rng.permutation(vocab)[:k] for _ in range(t_len)])
    top_lp = np.sort(rng.normal(-3, 1, size=(t_len, k)), axis=1)[:, ::-1].copy()
    target = np.empty(t_len, dtype=np.int64)
    for t in range(t_len):  # targets at every column, and outside the top-k
        col = t % (k + 1)
        target[t] = (
            top_ids[t, col] if col < k else rng.choice(np.setdiff1d(range(vocab), top_ids[t]))
        )
    top_ids[-1] = -1  # a padding row: its target is outside the "top-k"
    target_lp = np.where(
        (top_ids == target[:, None]).any(1),
        top_lp[np.arange(t_len), (top_ids == target[:, None]).argmax(1)],
        -9.0,
    )
    ids, lp = alternatives_with_target(
        torch.tensor(top_ids),
        torch.tensor(top_lp, dtype=torch.float32),
        torch.tensor(target),
        torch.tensor(target_lp, dtype=torch.float32),
    )
    ref_ids, ref_lp = _naive_alternatives(top_ids, top_lp, target, target_lp)
    assert ids.shape == (t_len, k) and ids.dtype == torch.long
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    np.testing.assert_allclose(lp.numpy(), ref_lp, rtol=1e-6)


def test_alternatives_with_target_hand_case_and_k() -> None:
    top = torch.tensor([[7, 3, 9, 4], [7, 3, 9, 4], [7, 3, 9, 4]])
    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]] * 3)
    target = torch.tensor([9, 7, 5])
    ids, out = alternatives_with_target(top, lp, target, torch.tensor([-3.0, -1.0, -8.0]))
    assert ids.tolist() == [[9, 7, 3, 4], [7, 3, 9, 4], [5, 7, 3, 9]]
    assert out.tolist() == [
        [-3.0, -1.0, -2.0, -4.0],
        [-1.0, -2.0, -3.0, -4.0],
        [-8.0, -1.0, -2.0, -3.0],
    ]
    ids, _ = alternatives_with_target(top, lp, target, torch.tensor([-3.0, -1.0, -8.0]), k=2)
    assert ids.tolist() == [[9, 7], [7, 3], [5, 7]]
    with pytest.raises(ValueError):
        alternatives_with_target(top[:, :0], lp[:, :0], target, target.float())


def _naive_ccp(lp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.empty(len(lp))
    for t in range(len(lp)):
        ent = con = 0.0
        for j in range(lp.shape[1]):
            p = math.exp(float(lp[t, j]))
            if j == 0 or labels[t, j] == E:
                ent += p
            elif labels[t, j] == C:
                con += p
        out[t] = ent / (ent + con)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_token_ccp_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t_len, k = 64, 10
    logits = rng.normal(0, 3, size=(t_len, k + 20))
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    lp = np.sort(lp, axis=1)[:, ::-1][:, :k].copy()  # top-k of a larger vocabulary
    labels = rng.integers(0, 3, size=(t_len, k))
    labels[:, 0] = rng.integers(0, 3, size=t_len)  # column 0 must count as entail regardless
    labels[:5, 1:] = N  # all-neutral rows
    labels[5:8, 1:] = C  # all-contradicting rows
    got_log = token_log_ccp(torch.tensor(lp, dtype=torch.float32), torch.tensor(labels))
    got = token_ccp(torch.tensor(lp, dtype=torch.float32), torch.tensor(labels))
    ref = _naive_ccp(lp, labels)
    assert got.dtype == torch.float32 and got_log.dtype == torch.float32
    np.testing.assert_allclose(got_log.numpy(), np.log(ref), atol=2e-5)
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5)
    assert (got[:5] == 1.0).all()
    assert ((got > 0) & (got <= 1)).all()


def test_token_ccp_valid_mask_and_ignored_columns() -> None:
    lp = torch.tensor([[-0.5, -1.0, float("nan")], [-0.1, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    labels = torch.tensor([[E, C, N], [N, E, C], [C, C, C]])
    valid = torch.tensor([True, True, False])
    got = token_ccp(lp, labels, valid)
    p = np.exp([-0.5, -1.0])
    assert float(got[0]) == pytest.approx(p[0] / p.sum(), rel=1e-6)  # NaN neutral column ignored
    q = np.exp([-0.1, -2.0, -3.0])
    assert float(got[1]) == pytest.approx((q[0] + q[1]) / q.sum(), rel=1e-6)
    assert math.isnan(float(got[2]))
    assert token_ccp(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)).shape == (0,)


def test_claim_ccp_products() -> None:
    ccp = torch.tensor([0.5, 0.8, float("nan"), 1.0, 0.25, float("nan")])
    positions = [
        torch.tensor([0, 1]),  # 0.4
        torch.tensor([1, 2, 3]),  # NaN skipped: 0.8
        torch.tensor([], dtype=torch.long),  # empty claim
        torch.tensor([2, 5]),  # only NaN tokens
        torch.tensor([0, 1, 3, 4]),  # 0.1
        torch.tensor([3]),  # 1.0
    ]
    got = claim_ccp(ccp, positions, "tokenprism")
    assert got.dtype == torch.float32
    expected = [0.4, 0.8, math.nan, math.nan, 0.1, 1.0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, equal_nan=True)
    assert claim_ccp(ccp, [], "tokenprism").shape == (0,)
    # LM-Polygraph: NaN propagates, the empty claim is the empty product 1
    got = claim_ccp(ccp, positions)
    expected = [0.4, math.nan, 1.0, math.nan, 0.1, 1.0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, equal_nan=True)
    # a zero-probability token makes the claim CCP 0, not NaN
    assert float(claim_ccp(torch.tensor([0.0, 0.5]), [torch.tensor([0, 1])])[0]) == 0.0


def test_claim_ccp_matches_naive_product() -> None:
    rng = np.random.default_rng(3)
    ccp = rng.uniform(0.05, 1.0, size=200)
    ccp[rng.random(200) < 0.1] = np.nan
    positions = [
        np.sort(rng.choice(200, size=rng.integers(1, 30), replace=False)) for _ in range(20)
    ]
    tokens = torch.tensor(ccp, dtype=torch.float32)
    got = claim_ccp(tokens, [torch.tensor(p) for p in positions], "tokenprism")
    ref = [float(np.prod([ccp[i] for i in p if not np.isnan(ccp[i])])) for p in positions]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    got = claim_ccp(tokens, [torch.tensor(p) for p in positions], "lm-polygraph")
    ref = [float(np.prod([ccp[i] for i in p])) for p in positions]  # NaN propagates
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, equal_nan=True)


# ---- both presets on hand-made label tables ----------------------------------------------
#
# Four tokens of a response, each with its top alternatives (the token itself first) and their
# probabilities, and a judge given as a label table over normalised words. Words the table does
# not list are neutral both ways. LM-Polygraph's definitions (metric-definitions §7.1):
#   word      = decode(alt).strip(string.punctuation + " \n")   (so "," and "!" become "")
#   label     = combine(NLI(w_token, w_alt), NLI(w_alt, w_token)); element 0 always entail
#   CCP_t     = sum p(entail) / sum p(entail or contra); neutral alternatives are dropped
#   claim CCP = exp(sum_{t in claim} log CCP_t): NaN propagates, an empty claim is 1
#   sequence  = exp(sum_t log CCP_t) over every token (the library returns its negative)

HAND_TOKENS = [" The", " Paris", ".", " city"]
HAND_ALTERNATIVES = [
    [" The", " A", " This"],
    [" Paris", " paris", " London", ","],
    [".", "!", " and"],
    [" city", " town"],
]
HAND_PROBS = [[0.5, 0.3, 0.2], [0.4, 0.3, 0.2, 0.1], [0.6, 0.3, 0.1], [0.7, 0.2]]
HAND_JUDGE = {
    **_both("The", "A", C),  # "This" is unlisted: neutral
    ("Paris", "paris"): N,  # the same word: an NLI model may well say neutral
    **_both("Paris", "London", C),
    ("Paris", ""): C,  # "," strips to "": contradiction one way, neutral the other
    ("", ""): E,  # "." vs "!": two empty words
    **_both("", "and", C),
    **_both("city", "town", E),
}
# claims as token positions: [The Paris], [.], [] (no token), [Paris city]
HAND_CLAIMS = [[0, 1], [2], [], [1, 3]]


def _hand_case(preset: str, valid: list[bool]) -> tuple[list[float], list[float], float]:
    params = ccp_params(preset)
    labels = label_alternatives(HAND_TOKENS, HAND_ALTERNATIVES, StubJudge(HAND_JUDGE), params)
    width = labels.shape[1]
    lp = torch.full((len(HAND_PROBS), width), float("nan"))  # padding columns are neutral
    for t, row in enumerate(HAND_PROBS):
        lp[t, : len(row)] = torch.tensor(row).log()
    tokens = token_ccp(lp, labels, torch.tensor(valid))
    claims = claim_ccp(
        tokens, [torch.tensor(c, dtype=torch.long) for c in HAND_CLAIMS], params.aggregation
    )
    return tokens.tolist(), claims.tolist(), sequence_ccp(tokens, params.aggregation)


def test_lm_polygraph_preset_on_hand_labels() -> None:
    tokens, claims, sequence = _hand_case("lm-polygraph", [True, True, True, True])
    # " The": no stopword rule; A contradicts (0.3), This is neutral (dropped):
    #   0.5 / (0.5 + 0.3) = 0.625
    # " Paris": " paris" is judged (neutral, dropped); London contradicts (0.2); "," is the
    #   empty word "", judged: contra + neutral = contra (0.1):  0.4 / (0.4 + 0.2 + 0.1) = 4/7
    # ".": the empty word; "!" is also "" and the judge says entail (0.3); " and"
    #   contradicts (0.1):  (0.6 + 0.3) / (0.6 + 0.3 + 0.1) = 0.9
    # " city": town entails both ways:  (0.7 + 0.2) / 0.9 = 1
    expected_tokens = [0.625, 4 / 7, 0.9, 1.0]
    np.testing.assert_allclose(tokens, expected_tokens, rtol=1e-6)
    # claims: 0.625 * 4/7 = 5/14;  0.9;  the empty claim is the empty product 1;  4/7 * 1
    np.testing.assert_allclose(claims, [5 / 14, 0.9, 1.0, 4 / 7], rtol=1e-6)
    # sequence: 0.625 * 4/7 * 0.9 * 1 = 9/28
    assert sequence == pytest.approx(9 / 28, rel=1e-6)


def test_lm_polygraph_preset_propagates_nan() -> None:
    # " city" unscored (NaN): the claim holding it and the sequence are NaN, the others not
    tokens, claims, sequence = _hand_case("lm-polygraph", [True, True, True, False])
    assert math.isnan(tokens[3])
    np.testing.assert_allclose(claims, [5 / 14, 0.9, 1.0, math.nan], rtol=1e-6, equal_nan=True)
    assert math.isnan(sequence)


def test_tokenprism_preset_on_the_same_labels() -> None:
    tokens, claims, sequence = _hand_case("tokenprism", [True, True, True, False])
    # " The" is a stopword: CCP 1 without the judge.
    # " Paris": " paris" is the same word (entail, unjudged), "," is empty (neutral, dropped):
    #   (0.4 + 0.3) / (0.4 + 0.3 + 0.2) = 7/9
    # ".": empty original, every alternative neutral: 1.   " city": unscored, NaN.
    np.testing.assert_allclose(tokens, [1.0, 7 / 9, 1.0, math.nan], rtol=1e-6, equal_nan=True)
    # claims skip NaN tokens; the empty claim is NaN:  7/9;  1;  NaN;  7/9
    np.testing.assert_allclose(claims, [7 / 9, 1.0, math.nan, 7 / 9], rtol=1e-6, equal_nan=True)
    assert sequence == pytest.approx(7 / 9, rel=1e-6)  # NaN skipped
    assert math.isnan(sequence_ccp(torch.tensor([math.nan]), "tokenprism"))
    assert sequence_ccp(torch.tensor([]), "lm-polygraph") == 1.0

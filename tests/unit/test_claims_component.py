"""app.components.claims: the claims table, the judge caption and the probe report charts."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from tokenprism.app.components.claims import (
    CLAIM_COLUMNS,
    ROC_COLOURS,
    claim_risk,
    claims_frame,
    judge_caption,
    report_frame,
    roc_figure,
)

# Import purity of this module: test_components.py checks every module of app/components.

LABELS = dict(CLAIM_COLUMNS)


def _claim(index: int, text: str | None = None, n_tokens: int = 3, **metrics: Any) -> dict:
    return {
        "index": index,
        "text": text if text is not None else f"Claim number {index}.",
        "n_tokens": n_tokens,
        "metrics": metrics,
    }


def _run(*claims: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": "r1", "claims": list(claims)}


# ---- claim_risk ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"probe": 0.7, "ccp": 0.1, "one_minus_prob": 0.2}, 0.7),  # the probe wins
        ({"ccp": 0.25, "one_minus_prob": 0.9}, 0.75),  # else 1 - CCP
        ({"one_minus_prob": 0.4, "entropy": 3.0}, 0.4),  # else the weakest token's 1 - p
        ({"probe": None, "ccp": 0.5}, 0.5),  # a missing probe falls through
        ({"probe": math.nan, "ccp": 1.0}, 0.0),  # so does a NaN probe
        ({"probe": math.inf, "ccp": math.nan, "one_minus_prob": 0.3}, 0.3),
        ({"probe": True, "one_minus_prob": 0.1}, 0.1),  # a bool is not a score
        ({"probe": "0.9", "one_minus_prob": 0.1}, 0.1),  # nor is a string
        ({"probe": 0, "one_minus_prob": 0.1}, 0.0),  # an int zero is a score
        ({"entropy": 2.0, "sar": 1.0}, None),
        ({}, None),
    ],
)
def test_claim_risk_prefers_probe_then_ccp_then_prob(
    metrics: dict[str, Any], expected: float | None
) -> None:
    risk = claim_risk(metrics)
    if expected is None:
        assert risk is None
    else:
        assert risk == pytest.approx(expected)


# ---- claims_frame --------------------------------------------------------------------------


def test_claims_frame_sorts_by_probe_worst_first() -> None:
    frame = claims_frame(
        _run(
            _claim(0, probe=0.2, ccp=0.01, one_minus_prob=0.9),
            _claim(1, probe=0.9, ccp=0.99, one_minus_prob=0.1),
            _claim(2, probe=0.5, ccp=0.5, one_minus_prob=0.5),
        )
    )
    assert frame["#"].tolist() == [2, 3, 1]  # numbered from 1
    assert frame[LABELS["probe"]].tolist() == [0.9, 0.5, 0.2]
    assert frame.index.tolist() == [0, 1, 2]  # reset after sorting
    assert "risk" not in frame.columns


def test_claims_frame_without_probe_sorts_by_low_ccp_first() -> None:
    frame = claims_frame(
        _run(
            _claim(0, ccp=0.9, one_minus_prob=0.99),
            _claim(1, ccp=0.05, one_minus_prob=0.01),
            _claim(2, ccp=0.4, one_minus_prob=0.5),
        )
    )
    # CCP is a confidence: the lowest CCP is the most suspicious claim
    assert frame["#"].tolist() == [2, 3, 1]  # numbered from 1
    assert frame[LABELS["ccp"]].tolist() == [0.05, 0.4, 0.9]


def test_claims_frame_falls_back_to_one_minus_prob() -> None:
    frame = claims_frame(
        _run(
            _claim(0, one_minus_prob=0.1, entropy=5.0),
            _claim(1, one_minus_prob=0.8, entropy=0.5),
        )
    )
    assert frame["#"].tolist() == [2, 1]  # entropy does not decide the order


def test_claims_frame_columns_keep_only_present_scores_in_fixed_order() -> None:
    frame = claims_frame(
        _run(
            _claim(0, "First.", 4, sar=1.5, entropy=2.0, one_minus_prob=0.3),
            _claim(1, "Second.", 2, entropy=1.0, one_minus_prob=0.6, selfcheck_ngram=0.7),
        )
    )
    assert frame.columns.tolist() == [
        "#",
        "claim",
        "tokens",
        "1 - p (max)",
        "entropy (mean)",
        "TokenSAR",
        "SelfCheck (n-gram)",
    ]
    assert frame["claim"].tolist() == ["Second.", "First."]
    assert frame["tokens"].tolist() == [2, 4]
    # a score present for one claim only is NaN for the other, not dropped
    assert math.isnan(frame["TokenSAR"][0]) and frame["TokenSAR"][1] == 1.5
    assert math.isnan(frame["SelfCheck (n-gram)"][1])


def test_claims_frame_drops_columns_with_only_missing_values() -> None:
    frame = claims_frame(
        _run(
            _claim(0, ccp=None, probe=math.nan, sar=math.inf, one_minus_prob=0.2),
            _claim(1, ccp=math.nan, probe=None, sar=None, one_minus_prob=0.4),
        )
    )
    assert LABELS["ccp"] not in frame.columns
    assert LABELS["probe"] not in frame.columns
    assert LABELS["sar"] not in frame.columns
    assert frame["#"].tolist() == [2, 1]


def test_claims_frame_missing_values_become_nan_and_unscored_claims_go_last() -> None:
    frame = claims_frame(
        _run(
            _claim(0, entropy=1.0),  # no risk at all
            _claim(1, ccp=math.nan, one_minus_prob=0.3),  # NaN CCP: falls back to 1 - p
            _claim(2, ccp=0.2, one_minus_prob=0.1),  # risk 0.8
            _claim(3, probe=None, entropy=2.0),  # no risk at all
        )
    )
    assert frame["#"].tolist() == [3, 2, 1, 4]  # unscored last, in claim order
    ccp = frame[LABELS["ccp"]]
    assert ccp.dtype.kind == "f"
    assert ccp[0] == 0.2 and ccp[1:].isna().all()
    # every cell of a score column is a float or NaN, never None
    for _, label in CLAIM_COLUMNS:
        if label in frame.columns:
            assert frame[label].map(lambda v: isinstance(v, float)).all()


def test_claims_frame_mixes_probe_and_ccp_risk_per_claim() -> None:
    frame = claims_frame(
        _run(
            _claim(0, probe=0.3, ccp=0.01),  # risk 0.3 (the probe wins over 1 - CCP)
            _claim(1, ccp=0.1),  # risk 0.9
            _claim(2, probe=0.95),  # risk 0.95
        )
    )
    assert frame["#"].tolist() == [3, 2, 1]


def test_claims_frame_keeps_claim_order_among_ties() -> None:
    # enough claims that an unstable sort (numpy's default quicksort) would scramble ties
    claims = [_claim(i, one_minus_prob=(0.1, 0.5, 0.9)[(i * 7) % 3]) for i in range(300)]
    frame = claims_frame(_run(*claims))
    expected = sorted(range(300), key=lambda i: (-(0.1, 0.5, 0.9)[(i * 7) % 3], i))
    assert frame["#"].tolist() == [i + 1 for i in expected]


def test_claims_frame_keeps_text_verbatim() -> None:
    text = '<script>alert(1)</script> & <b>bold</b> "quoted"'
    frame = claims_frame(_run(_claim(0, text, one_minus_prob=0.5)))
    assert frame["claim"][0] == text  # st.dataframe shows text as text: nothing to escape


@pytest.mark.parametrize("run", [{}, {"claims": None}, {"claims": []}])
def test_claims_frame_of_a_run_without_claims_is_empty(run: dict[str, Any]) -> None:
    frame = claims_frame(run)
    assert frame.empty
    assert frame.columns.tolist() == ["#", "claim", "tokens"]


def test_claims_frame_with_no_scores_at_all_keeps_every_claim() -> None:
    frame = claims_frame(_run(_claim(0, text="A."), _claim(1, text="B.")))
    assert frame.columns.tolist() == ["#", "claim", "tokens"]
    assert frame["#"].tolist() == [1, 2]


# ---- judge_caption -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run",
    [
        {},
        {"provenance": None},
        {"provenance": {}},
        {"provenance": {"extras": None}},
        {"provenance": {"extras": {"request": {"metrics": ["sar"]}}}},
    ],
)
def test_judge_caption_is_none_without_ccp_or_probe(run: dict[str, Any]) -> None:
    assert judge_caption(run) is None


def test_judge_caption_names_the_ccp_judge_and_the_probe() -> None:
    ccp = {"judge": "fallback:minilm-lexical(entail>=0.8)", "kind": "fallback"}
    probe = {"probe": "my-probe", "layer": 7, "model_revision": "sha256:abc"}
    only_ccp = {"provenance": {"extras": {"request": {}, "ccp": ccp}}}
    # a run stored before the presets: its CCP used our shortcuts
    assert judge_caption(only_ccp) == (
        "CCP judge: fallback:minilm-lexical(entail>=0.8) · "
        "CCP preset: tokenprism (stored before presets)"
    )
    only_probe = {"provenance": {"extras": {"probe": probe}}}
    assert judge_caption(only_probe) == "probe: my-probe (layer 7)"
    both = {"provenance": {"extras": {"ccp": {**ccp, "preset": "lm-polygraph"}, "probe": probe}}}
    assert judge_caption(both) == (
        "CCP judge: fallback:minilm-lexical(entail>=0.8) · CCP preset: lm-polygraph · "
        "probe: my-probe (layer 7)"
    )


# ---- probe report: ROC figure and AUC table --------------------------------------------------


def _report() -> dict[str, Any]:
    return {
        "held_out": {
            "token_auc": {"probe": 0.8123, "ccp": 0.65, "entropy": 0.6, "one_minus_prob": 0.55},
            "span_max_auc": {"probe": 0.9, "entropy": 0.7, "one_minus_prob": 0.5},
            "roc": {
                "probe": {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.7, 1.0]},
                "ccp": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.6, 1.0]},
                "entropy": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]},
                "one_minus_prob": {"fpr": [], "tpr": []},  # no curve: no trace
            },
        }
    }


def test_roc_figure_has_chance_plus_one_trace_per_curve_with_auc_in_legend() -> None:
    fig = roc_figure(_report())
    names = [t.name for t in fig.data]
    assert names == ["chance", "probe (AUC 0.812)", "ccp (AUC 0.650)", "entropy (AUC 0.600)"]
    by_name = {t.name.split(" ")[0]: t for t in fig.data}
    assert list(by_name["probe"].x) == [0.0, 0.1, 1.0]
    assert list(by_name["probe"].y) == [0.0, 0.7, 1.0]
    assert by_name["probe"].line.width == 3 and by_name["ccp"].line.width == 2
    assert by_name["probe"].line.color == ROC_COLOURS["probe"]
    assert by_name["chance"].line.dash == "dot"
    assert tuple(fig.layout.xaxis.range) == (0, 1) and tuple(fig.layout.yaxis.range) == (0, 1)


def test_roc_figure_without_an_auc_uses_the_bare_name() -> None:
    report = {"held_out": {"roc": {"custom": {"fpr": [0, 1], "tpr": [0, 1]}}}}
    assert [t.name for t in roc_figure(report).data] == ["chance", "custom"]


@pytest.mark.parametrize("report", [{}, {"held_out": None}, {"held_out": {"roc": None}}])
def test_roc_figure_of_an_empty_report_is_just_the_chance_line(report: dict[str, Any]) -> None:
    fig = roc_figure(report)
    assert [t.name for t in fig.data] == ["chance"]


def test_report_frame_lists_token_and_span_auc_per_score() -> None:
    frame = report_frame(_report())
    assert frame.columns.tolist() == ["score", "token AUC", "span-max AUC"]
    assert frame["score"].tolist() == ["probe", "ccp", "entropy", "one_minus_prob"]
    assert frame["token AUC"].tolist() == [0.8123, 0.65, 0.6, 0.55]
    span = frame["span-max AUC"].tolist()
    assert span[0] == 0.9 and span[2:] == [0.7, 0.5]
    assert span[1] is None or math.isnan(span[1])  # CCP has no span-max AUC here


@pytest.mark.parametrize(
    "report", [{}, {"held_out": {}}, {"held_out": {"token_auc": None, "span_max_auc": None}}]
)
def test_report_frame_of_an_empty_report_is_empty(report: dict[str, Any]) -> None:
    frame = report_frame(report)
    assert isinstance(frame, pd.DataFrame) and frame.empty
    assert frame.columns.tolist() == ["score", "token AUC", "span-max AUC"]


def test_report_frame_without_span_auc() -> None:
    report = {"held_out": {"token_auc": {"probe": 0.7}}}
    frame = report_frame(report)
    assert frame["token AUC"].tolist() == [0.7]
    assert frame["span-max AUC"].isna().all()

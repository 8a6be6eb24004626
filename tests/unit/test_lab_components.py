"""The lab page's pure building blocks: sweep curves, decode summaries, output tables, pickers."""

from __future__ import annotations

import json
import math
from typing import Any

import plotly.graph_objects as go
import pytest

from tokenprism.app.components.lab import (
    DECODE_PARAMS,
    DECODE_RULES,
    RULE_SIGNALS,
    decode_cards,
    decode_summary_figure,
    default_pair,
    east_curve_figure,
    experiment_label,
    grains_curve_figure,
    output_labels,
    outputs_frame,
    parse_numbers,
    parse_prompts,
    prompt_texts,
    refusal_curve_figure,
)

# Import purity of this module: test_components.py checks every module of app/components.

SCRIPT = "<script>alert(1)</script>"
SHIPPED = [
    {"id": "b-bread", "prompt": "Bake bread?", "should_refuse": False, "category": "benign"},
    {"id": "r-lock", "prompt": "Pick a lock?", "should_refuse": True, "category": "harmful"},
]


def _traces(fig: go.Figure) -> dict[str, Any]:
    return {t.name: t for t in fig.data}


def _title(axis: Any) -> str:
    return str(axis.title.text)


def _refusal_summary(mode: str = "marker") -> dict[str, Any]:
    """Values -4, 0, 8 over one benign and one should-refuse prompt."""
    per_prompt = [
        {"value": v, "id": None, "should_refuse": s, "p_refusal": p, "refused": r}
        for v, rows in (
            (-4, ((False, 0.01, False), (True, 0.02, False))),
            (0, ((False, 0.05, False), (True, 0.2, True))),
            (8, ((False, 0.6, True), (True, 0.9, True))),
        )
        for s, p, r in rows
    ]
    return {
        "mode": mode,
        "marker_token_ids": [43, 53],
        "curves": {
            "value": [-4, 0, 8],
            "refusal_rate": [0.0, 0.5, 1.0],
            "p_refusal": [0.015, 0.125, 0.75],
        },
        "refusal_rate_by_group": {"should_refuse": [0.0, 1.0, 1.0], "benign": [0.0, 0.0, 1.0]},
        "per_prompt": per_prompt,
    }


# ---- form fields ---------------------------------------------------------------------------


def test_parse_numbers_reads_commas_semicolons_and_spaces() -> None:
    assert parse_numbers("-4, 0, 4, 8") == [-4.0, 0.0, 4.0, 8.0]
    assert parse_numbers(" 0 8;1.5,,-2e1 ") == [0.0, 8.0, 1.5, -20.0]
    assert parse_numbers("") == []


@pytest.mark.parametrize("text, bad", [("0, eight", "'eight'"), ("1, nan", "'nan'"), ("inf", "")])
def test_parse_numbers_names_the_bad_entry(text: str, bad: str) -> None:
    with pytest.raises(ValueError, match=bad or "finite"):
        parse_numbers(text)


def test_parse_prompts_marks_should_refuse_lines() -> None:
    text = "  How do I bake bread?  \n\n!Pick a lock\n!   \n! Make a <b>bomb</b>\nWhy is 1 < 2?!\n"
    assert parse_prompts(text) == [
        {"prompt": "How do I bake bread?", "should_refuse": False},
        {"prompt": "Pick a lock", "should_refuse": True},
        {"prompt": "Make a <b>bomb</b>", "should_refuse": True},
        {"prompt": "Why is 1 < 2?!", "should_refuse": False},
    ]
    assert parse_prompts(" \n\n") == []


def test_decode_parameters_match_the_rules() -> None:
    assert set(DECODE_PARAMS) == set(DECODE_RULES) == set(RULE_SIGNALS)
    for specs in DECODE_PARAMS.values():
        for spec in specs:
            assert spec.min_value <= spec.default <= spec.max_value
            # an int default gives an int number input: every bound must be an int too
            if isinstance(spec.default, int):
                assert all(isinstance(v, int) for v in (spec.min_value, spec.max_value, spec.step))
    assert {s.name for s in DECODE_PARAMS["ead"]} == {"tau_max", "tau_min", "d", "warmup", "top_p"}


# ---- refusal curve -------------------------------------------------------------------------


def test_refusal_curve_has_the_rates_by_group_and_p_refusal_on_a_second_axis() -> None:
    fig = refusal_curve_figure(_refusal_summary())
    traces = _traces(fig)
    assert list(traces) == ["refusal rate (all)", "benign", "should refuse", "mean P(refusal)"]
    for trace in fig.data:
        assert list(trace.x) == [-4.0, 0.0, 8.0]
    assert list(traces["refusal rate (all)"].y) == [0.0, 0.5, 1.0]
    assert list(traces["benign"].y) == [0.0, 0.0, 1.0]
    assert list(traces["should refuse"].y) == [0.0, 1.0, 1.0]
    p = traces["mean P(refusal)"]
    assert list(p.y) == [0.015, 0.125, 0.75] and p.yaxis == "y2"
    assert all(t.yaxis in (None, "y") for n, t in traces.items() if n != "mean P(refusal)")
    # "k of n refused" per value, counted from per_prompt
    assert list(traces["refusal rate (all)"].customdata) == ["0 of 2", "1 of 2", "2 of 2"]
    assert list(traces["benign"].customdata) == ["0 of 1", "0 of 1", "1 of 1"]
    assert list(traces["should refuse"].customdata) == ["0 of 1", "1 of 1", "1 of 1"]
    assert "%{customdata} refused" in traces["benign"].hovertemplate
    layout = fig.layout
    assert _title(layout.xaxis) == "logit bias on the refusal-marker tokens"
    assert _title(layout.yaxis) == "refusal rate"
    assert _title(layout.yaxis2) == "mean P(refusal marker)"
    assert "first response token" in traces["mean P(refusal)"].hovertemplate
    assert layout.yaxis2.overlaying == "y" and layout.yaxis2.side == "right"
    assert list(layout.yaxis.range) == list(layout.yaxis2.range) == [-0.05, 1.05]
    assert layout.title.text == "Refusal vs bias · mode marker"


def test_refusal_curve_leaves_out_a_group_without_prompts() -> None:
    summary = _refusal_summary()
    summary["refusal_rate_by_group"]["should_refuse"] = [None, None, None]  # NaN in the API
    summary["curves"]["p_refusal"][1] = None
    traces = _traces(refusal_curve_figure(summary))
    assert list(traces) == ["refusal rate (all)", "benign", "mean P(refusal)"]
    assert list(traces["mean P(refusal)"].y) == [0.015, None, 0.75]


def test_refusal_curve_in_token_mode_names_the_threshold_and_escapes_the_mode() -> None:
    fig = refusal_curve_figure(_refusal_summary("tokens"))
    assert _title(fig.layout.xaxis).startswith("threshold on P([refuse])")
    assert _title(fig.layout.yaxis2) == "mean P([refuse])"
    odd = refusal_curve_figure(_refusal_summary(SCRIPT))
    assert odd.layout.title.text.endswith("&lt;script&gt;alert(1)&lt;/script&gt;")
    assert "<script>" not in odd.to_json()


@pytest.mark.parametrize("summary", [None, {}, {"curves": {"value": []}}])
def test_refusal_curve_without_data_is_a_placeholder(summary: dict[str, Any] | None) -> None:
    fig = refusal_curve_figure(summary)
    assert not fig.data and fig.layout.annotations[0].text == "no refusal curve yet"


# ---- EAST curve ----------------------------------------------------------------------------


def _east_summary(name: str = "east") -> dict[str, Any]:
    return {
        "layer": 15,
        "vector": {"name": name, "kind": "east", "layer": 15, "norm": 1.0},
        "curves": {
            "beta": [-8, 0, 8],
            "next_token_entropy": [1.5, 2.0, 3.25],
            "output_entropy": [1.0, None, 2.5],
        },
    }


def test_east_curve_has_both_entropies_against_beta() -> None:
    fig = east_curve_figure(_east_summary())
    traces = _traces(fig)
    assert list(traces) == ["mean next-token entropy", "mean output entropy"]
    assert list(traces["mean next-token entropy"].x) == [-8.0, 0.0, 8.0]
    assert list(traces["mean next-token entropy"].y) == [1.5, 2.0, 3.25]
    assert list(traces["mean output entropy"].y) == [1.0, None, 2.5]  # a gap, not a zero
    assert _title(fig.layout.xaxis) == "steering coefficient β"
    assert _title(fig.layout.yaxis) == "entropy (nats)"
    assert fig.layout.title.text == "Entropy vs β · vector “east” at layer 15"
    assert "nats" in traces["mean output entropy"].hovertemplate


def test_east_curve_escapes_the_vector_name() -> None:
    fig = east_curve_figure(_east_summary(SCRIPT + " x"))
    assert "“&lt;script&gt;alert(1)&lt;/script&gt; x”" in fig.layout.title.text
    assert "<script>" not in fig.to_json()


def test_east_curve_without_data_is_a_placeholder() -> None:
    fig = east_curve_figure({"layer": 3, "curves": {}})
    assert not fig.data and fig.layout.annotations[0].text == "no entropy curve yet"


# ---- GrAInS sweep ---------------------------------------------------------------------------


def _grains_experiment() -> dict[str, Any]:
    examples = [{"prompt": "Sky?", "preferred": " Yes.", "dispreferred": " No."}]
    outputs = [
        {"run_id": "r1", "beta": 0.0, "prompt_index": 0, "preference_margin": 1.5},
        {"run_id": "r2", "beta": 6.0, "prompt_index": 0, "preference_margin": 2.25},
    ]
    return {
        "kind": "grains-sweep",
        "params": {"examples": examples, "prompts": [], "betas": [0.0, 6.0]},
        "outputs": outputs,
        "summary": {
            "layer": 1,
            "vector": {"name": SCRIPT, "layer": 1},
            "curves": {
                "beta": [0.0, 6.0],
                "preference_margin": [1.5, 2.25],
                "output_entropy": [None, 0.75],
            },
        },
    }


def test_grains_curve_has_the_margin_and_the_entropy_on_two_axes() -> None:
    fig = grains_curve_figure(_grains_experiment()["summary"])
    traces = _traces(fig)
    assert list(traces) == ["mean preference margin", "mean output entropy"]
    assert list(traces["mean preference margin"].y) == [1.5, 2.25]
    assert list(traces["mean output entropy"].y) == [None, 0.75]  # a gap, not a zero
    assert traces["mean output entropy"].yaxis == "y2"
    assert "&lt;script&gt;" in fig.layout.title.text and "<script>" not in fig.to_json()
    assert not grains_curve_figure({"curves": {}}).data


def test_grains_outputs_name_beta_margin_and_the_examples_prompt() -> None:
    experiment = _grains_experiment()
    # no sweep prompts: the examples' prompts, not the shipped refusal set
    assert prompt_texts(experiment, SHIPPED) == ["Sky?"]
    frame = outputs_frame(experiment, SHIPPED)
    assert frame["beta"].tolist() == [0.0, 6.0]
    assert frame["preference margin"].tolist() == [1.5, 2.25]
    assert frame["prompt"].tolist() == ["Sky?", "Sky?"]
    assert output_labels(experiment)[1].startswith("#2 · β 6 · prompt 1")
    assert default_pair(experiment) == (0, 1)


# ---- decode summaries ----------------------------------------------------------------------


def _decode(rule: str, per_prompt: list[dict[str, Any]], **overall: Any) -> dict[str, Any]:
    return {
        "experiment_id": "e1",
        "kind": "decode",
        "params": {"rule": rule, "prompts": ["Plain prompt", SCRIPT + "\nsecond line"]},
        "summary": {
            "rule": rule,
            "n_prompts": 2,
            "n_outputs": 2,
            "per_prompt": per_prompt,
            **overall,
        },
        "outputs": [],
    }


def _rows(**columns: list[Any]) -> list[dict[str, Any]]:
    rows = [{"prompt_index": i, "n_tokens": 5 + i, "stop_reason": "length"} for i in range(2)]
    for key, values in columns.items():
        for row, value in zip(rows, values, strict=True):
            row[key] = value
    return rows


def test_ead_summary_bars_the_mean_temperature_per_prompt() -> None:
    experiment = _decode("ead", _rows(mean_temperature=[1.1, 0.9]), mean_temperature=1.0)
    fig = decode_summary_figure(experiment)
    traces = _traces(fig)
    assert list(traces) == ["mean temperature τ", "all tokens"]
    bars = traces["mean temperature τ"]
    assert bars.type == "bar" and list(bars.y) == [1.1, 0.9]
    assert list(traces["all tokens"].y) == [1.0, 1.0]
    assert _title(fig.layout.yaxis) == "mean temperature τ"
    assert fig.layout.title.text == DECODE_RULES["ead"]
    # prompts label the bars, escaped with whitespace visible; the hover has the full prompt
    assert list(bars.x) == ["#1 Plain prompt", "#2 &lt;script&gt;alert(1)&lt;/script&gt;↵s…"]
    assert bars.customdata[1][0] == "&lt;script&gt;alert(1)&lt;/script&gt;↵second line"
    assert list(bars.customdata[0][1:]) == ["length", 5]
    assert "<script>" not in fig.to_json()


def test_switch_summary_is_the_large_model_share() -> None:
    per_prompt = _rows(large_share=[0.25, 1.0], large_tokens=[1, 6])
    fig = decode_summary_figure(_decode("switch", per_prompt, large_share=0.6))
    traces = _traces(fig)
    assert list(traces["large-model share"].y) == [0.25, 1.0]
    assert list(traces["all tokens"].y) == [0.6, 0.6]
    assert _title(fig.layout.yaxis) == "share of tokens from the large model"
    assert list(fig.layout.yaxis.range) == [0.0, 1.05]


def test_cntp_summary_is_the_mean_number_of_trials() -> None:
    per_prompt = _rows(mean_trials=[2.5, None], chunks=[3, 4], multi_trial_chunks=[1, 0])
    fig = decode_summary_figure(_decode("cntp", per_prompt, mean_trials=None))
    traces = _traces(fig)
    assert list(traces) == ["mean trials N"]  # no overall line without an overall value
    assert list(traces["mean trials N"].y) == [2.5, None]


def test_latr_summary_groups_the_branch_counts() -> None:
    per_prompt = _rows(branches_spawned=[2, 0], branches_pruned=[1, 0], branches_returned=[2, 1])
    fig = decode_summary_figure(_decode("latr", per_prompt))
    traces = _traces(fig)
    assert list(traces) == ["spawned", "pruned", "returned"]
    assert list(traces["returned"].y) == [2.0, 1.0]
    assert fig.layout.barmode == "group" and _title(fig.layout.yaxis) == "branches"


def test_decode_summary_placeholders() -> None:
    assert not decode_summary_figure(None).data
    unfinished = _decode("ead", [])
    unfinished["summary"] = None
    assert decode_summary_figure(unfinished).layout.annotations[0].text == (
        "no decoding summary yet"
    )
    odd = decode_summary_figure(_decode(SCRIPT, _rows()))
    assert not odd.data and "&lt;script&gt;" in odd.layout.annotations[0].text


def test_decode_cards_by_rule() -> None:
    assert decode_cards({"rule": "ead", "n_prompts": 2, "n_outputs": 2, "mean_temperature": 0.5})[
        -1
    ] == ("mean τ", "0.500")
    assert decode_cards({"rule": "switch", "large_share": 0.25})[-1] == ("large-model share", "25%")
    cards = dict(
        decode_cards({"rule": "cntp", "mean_trials": 1.5, "chunks": 4, "multi_trial_chunks": 1})
    )
    assert cards["multi-trial chunks"] == "1 of 4" and cards["mean trials"] == "1.50"
    latr = dict(decode_cards({"rule": "latr", "branches_spawned": 3}))
    assert latr["spawned"] == "3" and latr["pruned"] == "—"


# ---- outputs -------------------------------------------------------------------------------


def _refusal_experiment(mode: str = "marker") -> dict[str, Any]:
    """Two typed prompts x biases 0, 8, stored value by value (no prompt index)."""
    prompts = [
        {"prompt": "Bake bread?", "should_refuse": False},
        {"prompt": SCRIPT, "should_refuse": True},
    ]
    outputs = [
        {
            "run_id": f"r{v}{i}",
            "response": f"out {v} {i}",
            "kind": "refusal-sweep",
            "mode": mode,
            "value": v,
            "prompt_id": None,
            "should_refuse": prompts[i]["should_refuse"],
            "p_refusal": 0.1 * (i + 1) + v / 10,
            "refused": v == 8 and i == 1,
        }
        for v in (0, 8)
        for i in range(2)
    ]
    return {
        "experiment_id": "x" * 32,
        "kind": "refusal-sweep",
        "params": {"prompts": prompts, "values": [0, 8], "resolved_mode": mode},
        "summary": {"mode": mode},
        "outputs": outputs,
    }


def _east_experiment(prompts: list[str] | None = None) -> dict[str, Any]:
    outputs = [
        {
            "run_id": f"e{b}{i}",
            "response": f"β{b} p{i}",
            "kind": "east-sweep",
            "beta": b,
            "layer": 1,
            "prompt_index": i,
            "next_token_entropy": 1.0 + i,
        }
        for b in (-8, 0, 8)
        for i in range(2)
    ]
    return {
        "experiment_id": "e" * 32,
        "kind": "east-sweep",
        "params": {"prompts": [] if prompts is None else prompts, "betas": [-8, 0, 8]},
        "summary": None,
        "outputs": outputs,
    }


def test_refusal_outputs_frame_recovers_the_prompt_from_the_order() -> None:
    frame = outputs_frame(_refusal_experiment())
    assert frame.columns.tolist() == [
        "#",
        "bias",
        "prompt id",
        "should refuse",
        "P(refusal)",
        "refused",
        "prompt #",
        "prompt",
        "response",
        "run id",
    ]
    assert frame["bias"].tolist() == [0.0, 0.0, 8.0, 8.0]
    assert frame["#"].tolist() == [1, 2, 3, 4]  # counted from 1, like the prompts
    assert frame["prompt #"].tolist() == [1, 2, 1, 2]
    assert frame["prompt"].tolist() == ["Bake bread?", SCRIPT, "Bake bread?", SCRIPT]
    assert frame["refused"].tolist() == [False, False, False, True]
    assert frame["run id"].tolist() == ["r00", "r01", "r80", "r81"]
    assert frame["response"].iloc[3] == "out 8 1"
    assert "threshold" in outputs_frame(_refusal_experiment("tokens")).columns


def test_east_outputs_frame_uses_the_shipped_prompts_when_none_were_given() -> None:
    frame = outputs_frame(_east_experiment(), SHIPPED)
    assert frame.columns.tolist()[:3] == ["#", "beta", "next-token entropy"]
    assert frame["prompt"].tolist() == ["Bake bread?", "Pick a lock?"] * 3
    assert frame["beta"].tolist() == [-8.0, -8.0, 0.0, 0.0, 8.0, 8.0]
    assert prompt_texts(_east_experiment(["a", "b"]), SHIPPED) == ["a", "b"]
    # without the shipped set the prompt is unknown, not wrong
    assert outputs_frame(_east_experiment())["prompt"].isna().all()


def test_decode_outputs_frame_has_the_branches() -> None:
    experiment = _decode("latr", _rows())
    experiment["outputs"] = [
        {"run_id": "a", "response": "x", "rule": "latr", "prompt_index": 0, "branch_id": 0,
         "stop_reason": "length", "n_generated": 6},
        {"run_id": "b", "response": "y", "rule": "latr", "prompt_index": 0, "branch_id": 1,
         "stop_reason": "eos", "n_generated": 3},
        {"run_id": "c", "response": "z", "rule": "latr", "prompt_index": 1, "branch_id": 0,
         "stop_reason": "length", "n_generated": 6},
    ]  # fmt: skip
    frame = outputs_frame(experiment)
    assert frame[["branch", "stop", "tokens"]].values.tolist() == [
        [0, "length", 6],
        [1, "eos", 3],
        [0, "length", 6],
    ]
    assert frame["prompt"].tolist()[2] == SCRIPT + "\nsecond line"
    labels = output_labels(experiment)
    assert labels[1].startswith("#2 · latr branch 1 · prompt 1 “Plain prompt”")
    assert default_pair(experiment) == (0, 1)


def test_an_experiment_without_outputs_is_an_empty_table() -> None:
    experiment = _refusal_experiment()
    experiment["outputs"] = []
    frame = outputs_frame(experiment)
    assert frame.empty and "run id" in frame.columns
    assert output_labels(experiment) == [] and default_pair(experiment) == (0, 0)


def test_output_labels_name_the_condition_and_the_prompt() -> None:
    labels = output_labels(_refusal_experiment())
    assert labels[0] == "#1 · bias 0 · prompt 1 “Bake bread?” → out 0 0"
    assert labels[3] == "#4 · bias 8 · refused · prompt 2 “<script>alert(1)</scrip…” → out 8 1"
    east = output_labels(_east_experiment(), SHIPPED)
    assert east[4] == "#5 · β 8 · prompt 1 “Bake bread?” → β8 p0"


def test_default_pair_is_the_baseline_and_the_strongest_condition_of_one_prompt() -> None:
    assert default_pair(_refusal_experiment()) == (0, 2)  # prompt 0 at bias 0 and at bias 8
    assert default_pair(_east_experiment(), SHIPPED) == (2, 4)  # β 0 and β 8 (not -8)
    experiment = _east_experiment()
    for out in experiment["outputs"]:
        out["beta"] = {-8: 2, 0: 4, 8: -6}[out["beta"]]
    assert default_pair(experiment, SHIPPED) == (0, 4)  # β 2 is the closest to 0, -6 the farthest


def test_experiment_label() -> None:
    row = {
        "experiment_id": "0123456789abcdef",
        "kind": "east-sweep",
        "created_at": "2026-01-02T03:04:05.678",
        "finished": False,
    }
    assert (
        experiment_label(row) == "EAST steering sweep · 2026-01-02 03:04:05 · 01234567 · unfinished"
    )
    assert not experiment_label({**row, "finished": True}).endswith("unfinished")


def test_figures_are_json_serialisable_with_nan_free_values() -> None:
    for fig in (
        refusal_curve_figure(_refusal_summary()),
        east_curve_figure(_east_summary()),
        decode_summary_figure(_decode("ead", _rows(mean_temperature=[1.0, math.nan]))),
    ):
        spec = json.loads(fig.to_json())
        assert spec["data"]

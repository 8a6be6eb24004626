"""The Groups page's pure building blocks: prefix-tree icicle, token signals, rollouts, tables."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import pytest

from tokenprism.app.components.groups import (
    COUNTERFACTUAL_COLUMNS,
    RESPONSE_COLUMNS,
    THR_COLUMNS,
    counterfactuals_frame,
    group_label,
    is_incorrect,
    response_label,
    responses_frame,
    rollout_figure,
    signals_figure,
    thr_status,
    thr_tokens_frame,
    tree_branchvalues,
    tree_figure,
)

# Import purity of this module: test_components.py checks every module of app/components.

SCRIPT = "<script>alert(1)</script>"
LONG = "Let me think step by step about this problem first"


def _node(
    id_: int,
    parent: int | None,
    text: str,
    count: int,
    value: float,
    *,
    td: float | None = 0.0,
    entropy: float | None = 1.0,
    responses: list[int] | None = None,
    children: list[int] | None = None,
) -> dict[str, Any]:
    return {
        "id": id_,
        "parent": parent,
        "token_ids": [],
        "text": text,
        "depth": 0 if parent is None else 2,
        "count": count,
        "value": value,
        "td": td,
        "entropy": entropy,
        "responses": responses or [],
        "children": children or [],
    }


def _leaf_tree() -> dict[str, Any]:
    """Three responses, all ending at leaves: 0 and 1 share the prefix SCRIPT."""
    return {
        "nodes": [
            _node(
                0, None, "", 3, 2 / 3, td=None, entropy=None, responses=[0, 1, 2], children=[1, 2]
            ),
            _node(1, 0, SCRIPT, 2, 1.0, td=1 / 3, entropy=2.5, responses=[0, 1], children=[3, 4]),
            _node(2, 0, LONG, 1, 0.0, td=-2 / 3, entropy=2.5, responses=[2]),
            _node(3, 1, " yes\n", 1, 1.0, entropy=0.5, responses=[0]),
            _node(4, 1, " no", 1, 1.0, entropy=0.5, responses=[1]),
        ]
    }


def _inner_end_tree() -> dict[str, Any]:
    """Four responses; response 3 ends at node 1, which responses 0 and 1 continue."""
    return {
        "nodes": [
            _node(
                0, None, "", 4, 0.5, td=None, entropy=None, responses=[0, 1, 2, 3], children=[1, 2]
            ),
            _node(1, 0, "A", 3, 2 / 3, responses=[0, 1, 3], children=[3, 4]),
            _node(2, 0, "B", 1, 0.0, responses=[2]),
            _node(3, 1, "x", 1, 1.0, responses=[0]),
            _node(4, 1, "y", 1, 1.0, responses=[1]),
        ]
    }


def _icicle(fig: go.Figure) -> Any:
    (trace,) = fig.data
    assert trace.type == "icicle"
    return trace


def _sizes(trace: Any) -> dict[str, float]:
    """What plotly draws as each box's size: with "remainder", a node's own value plus its
    descendants'; with "total", the value itself."""
    values = dict(zip(trace.ids, trace.values, strict=True))
    if trace.branchvalues == "total":
        return values
    kids: dict[str, list[str]] = {}
    for i, p in zip(trace.ids, trace.parents, strict=True):
        kids.setdefault(p, []).append(i)

    def size(i: str) -> float:
        return values[i] + sum(size(c) for c in kids.get(i, []))

    return {i: size(i) for i in trace.ids}


# ---- tree_figure -------------------------------------------------------------------------


def test_tree_figure_ids_parents_values_and_colours() -> None:
    tree = _leaf_tree()
    trace = _icicle(tree_figure(tree))
    assert list(trace.ids) == ["0", "1", "2", "3", "4"]
    assert list(trace.parents) == ["", "0", "0", "1", "1"]
    assert trace.branchvalues == "total"
    assert list(trace.values) == [3, 2, 1, 1, 1]
    # every parent is at least the sum of its children, as "total" requires
    for node in tree["nodes"]:
        below = sum(n["count"] for n in tree["nodes"] if n["parent"] == node["id"])
        assert node["count"] >= below
    assert list(trace.marker.colors) == pytest.approx([2 / 3, 1.0, 0.0, 1.0, 1.0])
    assert trace.marker.cmin == 0.0 and trace.marker.cmax == 1.0
    assert trace.labels[0] == "all 3 responses"
    assert trace.labels[3] == "·yes↵"  # whitespace drawn visibly


def test_tree_figure_colours_by_entropy_or_td() -> None:
    entropy = _icicle(tree_figure(_leaf_tree(), "entropy"))
    assert list(entropy.marker.colors) == [None, 2.5, 2.5, 0.5, 0.5]  # the root has none
    assert entropy.marker.colorbar.title.text == "entropy (nats)"
    td = _icicle(tree_figure(_leaf_tree(), "td"))
    assert list(td.marker.colors)[1:3] == pytest.approx([1 / 3, -2 / 3])
    assert td.marker.cmin == pytest.approx(-2 / 3) and td.marker.cmax == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="colour_by"):
        tree_figure(_leaf_tree(), "reward")


def test_tree_figure_escapes_node_text_in_labels_and_hover() -> None:
    fig = tree_figure(_leaf_tree())
    trace = _icicle(fig)
    assert trace.labels[1].startswith("&lt;script&gt;")
    hover = trace.customdata[1][0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hover
    assert "<script>" not in fig.to_json()
    assert "<script" not in "".join(trace.labels)


def test_tree_figure_truncates_long_labels_but_hovers_the_full_text() -> None:
    trace = _icicle(tree_figure(_leaf_tree()))
    label = trace.labels[2]
    assert len(label) <= 24 and label.endswith("…")
    assert label.startswith("Let·me·think")
    full = trace.customdata[2][0].replace("<br>", "")
    assert full == LONG.replace(" ", "·")
    # count, V(s), TD, entropy, responses, depth follow the text
    assert list(trace.customdata[2][1:]) == [1, "0.000", "-0.667", "2.500", "2", 2]
    assert "n = %{customdata[1]}" in trace.hovertemplate


def test_tree_figure_uses_remainder_when_a_response_ends_inside() -> None:
    tree = _inner_end_tree()
    assert tree_branchvalues(tree["nodes"]) == "remainder"
    assert tree_branchvalues(_leaf_tree()["nodes"]) == "total"
    trace = _icicle(tree_figure(tree))
    assert trace.branchvalues == "remainder"
    # each value is the number of responses ending exactly at the node ...
    assert list(trace.values) == [0, 1, 1, 1, 1]
    # ... so every box is still drawn as large as its count
    counts = {str(n["id"]): n["count"] for n in tree["nodes"]}
    assert _sizes(trace) == counts


def test_an_empty_response_ends_at_the_root() -> None:
    tree = _leaf_tree()
    tree["nodes"][0]["count"] = 4  # a fourth, empty response
    assert tree_branchvalues(tree["nodes"]) == "remainder"
    trace = _icicle(tree_figure(tree))
    assert list(trace.values)[0] == 1
    assert _sizes(trace)["0"] == 4


def test_tree_figure_without_nodes() -> None:
    for empty in (None, {}, {"nodes": []}):
        fig = tree_figure(empty)
        assert not fig.data
        assert fig.layout.annotations[0].text == "no prefix tree"


# ---- signals_figure ----------------------------------------------------------------------


def _tokens() -> list[dict[str, Any]]:
    prompt = [{"position": i, "text": "p", "is_prompt": True, "entropy": 9.0} for i in range(3)]
    texts = ["The", " answer", " <b>", " is", " 4", "<|im_end|>"]
    response = [
        {
            "position": 3 + i,
            "text": text,
            "is_prompt": False,
            "entropy": 0.5 * i,
            "latr_branch": 1.0 if i in (1, 3) else 0.0,
            "cure_rank": {2: 1.0, 4: 2.0}.get(i),
        }
        for i, text in enumerate(texts)
    ]
    return prompt + response


def _trace(fig: go.Figure, name: str) -> Any:
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def test_signals_figure_marks_latr_branches_and_cure_candidates() -> None:
    fig = signals_figure(_tokens())
    entropy = _trace(fig, "entropy")
    assert list(entropy.x) == [3, 4, 5, 6, 7, 8]  # prompt tokens left out
    assert list(entropy.y) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    latr = _trace(fig, "LATR branch")
    assert list(latr.x) == [4, 6] and list(latr.y) == pytest.approx([0.5, 1.5])
    assert latr.mode == "markers"
    cure = _trace(fig, "CURE candidate")
    assert list(cure.x) == [5, 7]
    assert [row[1] for row in cure.customdata] == ["1", "2"]  # the rank on hover
    assert cure.customdata[0][0] == "·&lt;b&gt;"
    assert "<b>" not in str(entropy.customdata) and "&lt;|im_end|&gt;" in str(entropy.customdata)


def test_signals_figure_without_tokens_or_signals() -> None:
    fig = signals_figure([])
    assert [t.name for t in fig.data] == ["entropy", "LATR branch", "CURE candidate"]
    assert all(len(t.x) == 0 for t in fig.data)
    plain = [
        {"position": 1, "text": "a", "is_prompt": False, "entropy": None, "latr_branch": 1.0},
        {"position": 2, "text": "b", "is_prompt": False, "entropy": 1.0, "cure_rank": None},
    ]
    fig = signals_figure(plain)
    assert list(_trace(fig, "LATR branch").y) == [0.0]  # no entropy: on the axis
    assert len(_trace(fig, "CURE candidate").x) == 0
    assert signals_figure(None).data[0].x == ()


# ---- rollout_figure ----------------------------------------------------------------------


def _rollout(critical: int | None = 6) -> dict[str, Any]:
    return {
        "run_id": "r",
        "baseline": 0.75,
        "positions": [3, 5, 6, 8],
        "correct_rate": [0.5, 0.5, 0.0, 0.0],
        "critical_position": critical,
        "critical_token": " is",
        "counterfactuals": [
            {"token_id": 9, "text": " was", "prob": 0.2, "correct_rate": 0.5, "samples": ["a b"]},
            {"token_id": 7, "text": "<i>", "prob": 0.1, "correct_rate": 0.0, "samples": []},
        ],
    }


def test_rollout_figure_has_the_curve_the_critical_marker_and_the_baseline() -> None:
    fig = rollout_figure(_tokens(), _rollout())
    curve = _trace(fig, "c(t)")
    assert list(curve.x) == [3, 5, 6, 8] and list(curve.y) == [0.5, 0.5, 0.0, 0.0]
    assert "lines" in curve.mode and "markers" in curve.mode
    assert list(curve.customdata) == ["The", "·&lt;b&gt;", "·is", "&lt;|im_end|&gt;"]
    baseline = _trace(fig, "baseline")
    assert list(baseline.y) == [0.75, 0.75]
    assert list(baseline.x) == [3, 8]  # across the response
    assert baseline.line.dash == "dash"
    critical = _trace(fig, "critical token")
    assert list(critical.x) == [6] and list(critical.y) == [0.0]
    assert list(critical.customdata) == ["·is"]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1 and lines[0].x0 == lines[0].x1 == 6


def test_rollout_figure_without_a_critical_token_or_data() -> None:
    fig = rollout_figure(_tokens(), _rollout(critical=None))
    assert [t.name for t in fig.data] == ["c(t)", "baseline"]
    assert not fig.layout.shapes
    empty = rollout_figure([], {})
    assert [t.name for t in empty.data] == ["c(t)"]
    assert len(empty.data[0].x) == 0
    assert [t.name for t in rollout_figure(None, None).data] == ["c(t)"]


def test_counterfactuals_frame() -> None:
    frame = counterfactuals_frame(_rollout())
    assert tuple(frame.columns) == COUNTERFACTUAL_COLUMNS
    assert frame["alternative"].tolist() == ["·was", "<i>"]  # a dataframe shows text as text
    assert frame["c after the swap"].tolist() == [0.5, 0.0]
    assert frame["sample"].tolist() == ["a·b", ""]
    assert counterfactuals_frame(None).empty
    assert tuple(counterfactuals_frame({}).columns) == COUNTERFACTUAL_COLUMNS


# ---- tables and captions -----------------------------------------------------------------


def _group() -> dict[str, Any]:
    tokens = [
        {"position": 10 + i, "text": t, "is_prompt": False} for i, t in enumerate(["4", " is", "!"])
    ]
    return {
        "summary": {
            "n_correct": 1,
            "thr_reason": None,
            "thr_tau": 2.5,
            "thr_p": 0.1,
            "vocabulary_size": 12,
            "top_positive_thr": [[0, 1, 3.5], [1, 0, 1.25]],
            "top_negative_thr": [[1, 2, -0.5]],
        },
        "responses": [
            {
                "index": 0,
                "run_id": "a",
                "text": "4 is right",
                "reward": 1.0,
                "advantage": 0.7,
                "extracted": "4",
                "reason": "number matched",
                "tokens": tokens,
            },
            {
                "index": 1,
                "run_id": "b",
                "text": "five\nor so",
                "reward": 0.0,
                "advantage": -0.7,
                "extracted": None,
                "reason": "no number",
                "tokens": tokens,
            },
        ],
    }


def test_responses_frame() -> None:
    frame = responses_frame(_group())
    assert tuple(frame.columns) == RESPONSE_COLUMNS
    assert frame["#"].tolist() == [1, 2]  # counted from 1
    assert frame["reward"].tolist() == [1.0, 0.0]
    assert frame["advantage"].tolist() == [0.7, -0.7]
    assert frame["extracted answer"][0] == "4" and pd.isna(frame["extracted answer"][1])
    assert frame["response"].tolist() == ["4 is right", "five\nor so"]
    assert responses_frame({}).empty and tuple(responses_frame({}).columns) == RESPONSE_COLUMNS


def test_thr_tokens_frame_maps_indexes_to_positions_and_texts() -> None:
    positive = thr_tokens_frame(_group(), "positive")
    assert tuple(positive.columns) == THR_COLUMNS
    assert positive.to_dict("records") == [
        # responses and positions counted from 1 (stored: response 0, position 10, ...)
        {"response": 1, "position": 12, "token": "·is", "THR": 3.5},
        {"response": 2, "position": 11, "token": "4", "THR": 1.25},
    ]
    negative = thr_tokens_frame(_group(), "negative")
    assert negative.to_dict("records") == [
        {"response": 2, "position": 13, "token": "!", "THR": -0.5}
    ]
    # a token at position 0 has no prediction and is not counted by THR's index
    group = _group()
    group["responses"][0]["tokens"] = [
        {"position": 0, "text": "X", "is_prompt": False},
        *group["responses"][0]["tokens"],
    ]
    assert thr_tokens_frame(group)["position"].tolist()[0] == 12
    assert thr_tokens_frame({"summary": {}}).empty
    with pytest.raises(ValueError):
        thr_tokens_frame(_group(), "both")


def test_thr_status_gives_tau_or_the_reason() -> None:
    ok, text = thr_status(_group()["summary"])
    assert ok and "τ = 2.5" in text and "p = 0.1" in text
    reason = "no correct response in the group: THR needs at least one correct anchor"
    ok, text = thr_status({"thr_reason": reason, "thr_tau": None})
    assert not ok and "no correct response" in text
    assert thr_status({"thr_tau": math.nan})[0] is False
    assert thr_status(None)[0] is False


def test_thr_status_says_which_vocabulary_and_the_agreement() -> None:
    full = {"thr_tau": 0.5, "thr_p": 0.1, "thr_vocab": "full", "thr_vocab_size": 49152}
    ok, text = thr_status(full)
    assert ok and "exactly, over the full 49152-token vocabulary" in text
    short = {
        **full,
        "thr_vocab": "group",
        "thr_vocab_size": 120,
        "thr_group_agreement": {"spearman": 0.9412, "sign_agreement": 0.87, "n_tokens": 300},
        "thr_tau": -0.25,
        "thr_tau_note": "tau < 0: every token is kept",
    }
    ok, text = thr_status(short)
    assert ok and "120-token group vocabulary V*" in text
    assert "Spearman 0.941, same sign 87%" in text
    assert "tau < 0: every token is kept." in text
    # groups stored before the option existed used V* and have no agreement
    ok, text = thr_status({"thr_tau": 1.0, "thr_p": 0.1, "vocabulary_size": 40})
    assert ok and "40-token group vocabulary" in text and "Spearman" not in text


def test_labels_and_incorrect() -> None:
    right, wrong = _group()["responses"]
    assert not is_incorrect(right) and is_incorrect(wrong)
    assert is_incorrect({"reward": None})
    assert response_label(wrong) == "#2 ✗ reward 0 · five↵or·so"
    assert response_label(right).startswith("#1 ✓ reward 1 · ")
    label = group_label(
        {
            "prompt": "x" * 100,
            "verifier": "number:7",
            "n": 8,
            "n_correct": 3,
            "created_at": "2025-01-02T03:04:05.123",
        }
    )
    assert label == "x" * 59 + "… · number:7 · 3/8 correct · 2025-01-02T03:04:05"

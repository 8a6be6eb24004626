"""The UI's pure building blocks: token HTML, figures, run comparison and tables."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.import_probe import packages_loaded_by, tree_modules
from tokenprism.app.components.charts import (
    gltr_figure,
    layer_rank_figure,
    metric_lines_figure,
    sql_chart,
    token_ticks,
)
from tokenprism.app.components.compare import align_runs, compare_frame, compare_html
from tokenprism.app.components.tables import (
    RUN_COLUMNS,
    TOKEN_COLUMNS,
    TURN_COLUMNS,
    run_tokens_frame,
    runs_frame,
    turns_frame,
    uncertain_tokens_frame,
)
from tokenprism.app.components.token_view import available_token_metrics, legend_html, token_html
from tokenprism.backend.display import NO_VALUE_COLOUR, colour_scale, ramp_colour

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("streamlit", "duckdb", "torch", "sqlalchemy", "fastapi", "transformers")

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
QUOTED = "say \"hi\" 'there'"


class _Collector(HTMLParser):
    """Start tags with their attributes and each ``tok`` span's attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.spans: list[tuple[dict[str, str | None], str]] = []
        self._span: dict[str, str | None] | None = None
        self._span_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        classes = (dict(attrs).get("class") or "").split()
        if tag == "span" and "tok" in classes:
            self._span, self._span_text = dict(attrs), []

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._span is not None:
            self.spans.append((self._span, "".join(self._span_text)))
            self._span = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._span is not None:
            self._span_text.append(data)


def _parse(document: str) -> _Collector:
    parser = _Collector()
    parser.feed(document)
    parser.close()
    return parser


def _tok(position: int, text: str, entropy: float | None, **extra: Any) -> dict[str, Any]:
    prob = None if entropy is None else (0.9 if entropy < 1 else 0.05)
    return {
        "position": position,
        "token_id": 100 + position,
        "text": text,
        "display": text,
        "is_prompt": False,
        "char_start": position,
        "char_end": position + 1,
        "logprob": None if prob is None else math.log(prob),
        "prob": prob,
        "rank": None if prob is None else (1 if prob > 0.5 else 40),
        "entropy": entropy,
        "top_k": [],
        **extra,
    }


ALTS = [
    {"token_id": 1, "text": " Canberra", "prob": 0.61},
    {"token_id": 2, "text": SCRIPT, "prob": 0.2},
    {"token_id": 3, "text": IMG, "prob": 0.1},
    {"token_id": 4, "text": QUOTED, "prob": 0.05},
    {"token_id": 5, "text": " Perth", "prob": 0.02},
    {"token_id": 6, "text": " Darwin", "prob": 0.01},
]


def _run_tokens() -> list[dict[str, Any]]:
    return [
        {**_tok(0, "PROMPT_ONLY", 0.5), "is_prompt": True},
        _tok(1, "The", None),
        _tok(2, " capital", 0.05),
        _tok(3, " Sydney", 3.9, top_k=ALTS),
        _tok(4, SCRIPT, 2.0),
        _tok(5, IMG, 1.5),
        _tok(6, QUOTED, 0.3),
        _tok(7, "\tend\n", 0.2),
    ]


def _span_at(parsed: _Collector, position: int) -> dict[str, str | None]:
    for attrs, _ in parsed.spans:
        # tooltips count from 1
        if (attrs.get("title") or "").startswith(f"position {position + 1} "):
            return attrs
    raise AssertionError(f"no span at position {position}")


def _unsafe(parsed: _Collector) -> list[str]:
    bad = [tag for tag, _ in parsed.tags if tag in ("script", "img")]
    return bad + [name for _, attrs in parsed.tags for name in attrs if name.startswith("on")]


# ---- token view ----------------------------------------------------------------------------


def test_collector_sees_script_tags_and_event_attributes() -> None:
    """Guard against vacuous security checks: the collector reports what they look for."""
    found = _unsafe(_parse(f'<p onclick="x">{SCRIPT}{IMG}</p>'))
    assert sorted(found) == ["img", "onclick", "onerror", "script"]


def test_token_html_is_one_inert_div_with_style() -> None:
    tokens = _run_tokens()
    tokens[0].update(text=IMG + QUOTED, top_k=ALTS)  # hostile prompt text and alternatives
    document = token_html(tokens, "entropy", include_prompt=True)
    parsed = _parse(document)
    assert document.startswith('<div class="tp-tokens">') and document.endswith("</div>")
    assert [tag for tag, _ in parsed.tags].count("div") == 1
    assert "style" in [tag for tag, _ in parsed.tags]
    assert _unsafe(parsed) == []
    assert "<script" not in document.lower()


def test_payloads_in_tokens_and_alternatives_come_out_as_text() -> None:
    document = token_html(_run_tokens(), "entropy")
    parsed = _parse(document)
    assert _unsafe(parsed) == []
    texts = [text for _, text in parsed.spans]
    assert SCRIPT in texts
    assert "<img src=x onerror=alert(1)>" in texts
    assert "say \"hi\" 'there'" in texts
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    title = _span_at(parsed, 3)["title"] or ""
    assert f"  {SCRIPT}  p=0.2" in title.splitlines()
    assert "  <img·src=x·onerror=alert(1)>  p=0.1" in title.splitlines()
    assert "  say·\"hi\"·'there'  p=0.05" in title.splitlines()  # quotes stayed inside


def test_tooltip_has_id_exact_values_metric_and_top_five() -> None:
    tokens = _run_tokens()
    tokens[3]["probe"] = 0.123456789
    lines = (_span_at(_parse(token_html(tokens, "probe")), 3)["title"] or "").splitlines()
    assert lines[0] == "position 4 · token id 103"  # counted from 1
    assert lines[1] == f"logprob {math.log(0.05):.6g} · prob 0.05 · rank 40 · entropy 3.9"
    assert lines[2] == "probe 0.123457"
    assert lines[3] == "top alternatives:"
    assert lines[4:] == [
        "  ·Canberra  p=0.61",
        f"  {SCRIPT}  p=0.2",
        "  <img·src=x·onerror=alert(1)>  p=0.1",
        "  say·\"hi\"·'there'  p=0.05",
        "  ·Perth  p=0.02",
    ]  # five, so Darwin is left out


def _background(attrs: dict[str, str | None]) -> str:
    match = re.fullmatch(r"background:([^;]+)(;color:#(000000|ffffff))?", attrs.get("style") or "")
    assert match, attrs
    return match.group(1)


def test_colours_match_the_report_scale() -> None:
    tokens = _run_tokens()
    parsed = _parse(token_html(tokens, "entropy"))
    scale = colour_scale("entropy", [t for t in tokens if not t["is_prompt"]])
    low, high = _background(_span_at(parsed, 2)), _background(_span_at(parsed, 3))
    assert low != high
    # light end = certain: entropy 0.05 on the fixed 0-4 nats range
    assert low == scale.colour(0.05) == ramp_colour(0.05 / 4.0)
    assert high == scale.colour(3.9)
    assert _background(_span_at(parsed, 1)) == NO_VALUE_COLOUR
    for attrs, _ in parsed.spans:
        position = int((attrs.get("title") or "").split()[1]) - 1  # the title counts from 1
        assert _background(attrs) == scale.colour(tokens[position]["entropy"])


def test_percentile_scaled_metric_uses_the_response_tokens_only() -> None:
    tokens = _run_tokens()
    for tok in tokens:
        tok["kurtosis"] = float(tok["position"])
    tokens[0]["kurtosis"] = 1000.0  # a prompt outlier must not stretch the scale
    parsed = _parse(token_html(tokens, "kurtosis", include_prompt=True))
    scale = colour_scale("kurtosis", tokens[1:])
    # no natural range: the response tokens' 1st-99th percentile, 7 is above it (certain end)
    assert _background(_span_at(parsed, 7)) == scale.colour(7.0) == ramp_colour(0.0)
    assert _background(_span_at(parsed, 1)) == scale.colour(1.0)


def test_whitespace_is_visible_on_request_and_newlines_break() -> None:
    document = token_html(_run_tokens(), "entropy", whitespace=True)
    texts = [text for _, text in _parse(document).spans]
    assert "·capital" in texts
    assert "→end↵" in texts
    assert "→end↵<br></span>" in document


def test_prose_is_the_default_with_real_spaces() -> None:
    document = token_html(_run_tokens(), "entropy")
    texts = [text for _, text in _parse(document).spans]
    assert " capital" in texts
    assert "\tend<br></span>" in document
    assert "·" not in "".join(texts)


def test_prompt_tokens_are_left_out_by_default() -> None:
    default = token_html(_run_tokens(), "entropy")
    assert "PROMPT_ONLY" not in default
    assert len(_parse(default).spans) == 7


def test_prompt_tokens_when_included_are_dimmed_and_uncoloured() -> None:
    parsed = _parse(token_html(_run_tokens(), "entropy", include_prompt=True))
    assert len(parsed.spans) == 8
    attrs, text = parsed.spans[0]
    assert text == "PROMPT_ONLY"
    assert (attrs.get("class") or "").split() == ["tok", "tp-prompt"]
    assert "style" not in attrs
    assert (attrs.get("title") or "").startswith("position 1 · token id 100")
    assert all("tp-prompt" not in (a.get("class") or "") for a, _ in parsed.spans[1:])


def test_empty_run_renders_a_placeholder() -> None:
    parsed = _parse(token_html([], "entropy"))
    assert parsed.spans == []
    assert "no tokens" in "".join(parsed.text)


def test_legend_names_the_uncertain_colour_and_the_ends() -> None:
    parsed = _parse(legend_html("entropy", _run_tokens()))
    text = "".join(parsed.text)
    assert "light = certain, dark = uncertain" in text
    assert "domain [0, 4]" in text and "fixed natural range" in text
    assert _unsafe(parsed) == []
    run_text = "".join(_parse(legend_html("entropy", _run_tokens(), mode="run")).text)
    assert "this run (1st–99th percentile)" in run_text


def test_legend_of_an_unregistered_metric_has_no_direction() -> None:
    tokens = [_tok(1, "a", 1.0, my_score=0.2), _tok(2, "b", 1.0, my_score=0.8)]
    text = "".join(_parse(legend_html("my_score", tokens)).text)
    assert "light = low, dark = high" in text


def test_available_token_metrics_core_first_then_alphabetical() -> None:
    tokens = _run_tokens()
    tokens[2].update(
        surprisal_bits=1.0,
        margin=0.3,
        kurtosis=5.0,
        window_entropy=1.1,
        gltr_bucket=0,
        thr=0.4,
        probe=0.9,
        ccp=0.2,
    )
    assert available_token_metrics(tokens) == [
        "entropy",
        "surprisal_bits",
        "prob",
        "logprob",
        "rank",
        "gltr_bucket",
        "window_entropy",
        "margin",
        "kurtosis",
        "ccp",
        "probe",
        "thr",
    ]


def test_available_token_metrics_needs_a_response_value() -> None:
    tokens = [
        {**_tok(0, "p", 1.0, probe=0.5, step_first_surprisal=2.0), "is_prompt": True},
        _tok(1, "a", 1.0, margin=None, probe=None, step_first_surprisal=None),
        _tok(2, "b", None, margin=None, probe=None, step_first_surprisal=3.0),
    ]
    metrics = available_token_metrics(tokens)
    assert metrics == ["entropy", "prob", "logprob", "rank", "step_first_surprisal"]
    assert "probe" not in metrics and "margin" not in metrics
    tokens[2]["probe"] = 0.7  # a metric that arrived later shows up once it has a value
    assert available_token_metrics(tokens)[-2:] == ["probe", "step_first_surprisal"]
    assert not {"position", "token_id", "char_start", "char_end"} & set(metrics)


def test_available_token_metrics_skips_non_numbers() -> None:
    tokens = [_tok(1, "a", 1.0, label="x", flag=True, odd=math.nan, probe=[0.1])]
    assert available_token_metrics(tokens) == ["entropy", "prob", "logprob", "rank"]


def test_two_thousand_tokens_render() -> None:
    alts = ALTS[:5]
    tokens = [
        _tok(i, f" w{i}", (i % 40) / 10, top_k=alts, token_id=10_000 + i) for i in range(2_000)
    ]
    document = token_html(tokens, "entropy")
    assert document.count('<span class="tok"') == 2_000
    assert document.count(" p=0.61") == 2_000
    assert len(document) > 2_000 * 200


# ---- charts --------------------------------------------------------------------------------


def test_metric_lines_two_metrics_get_two_axes_and_full_hover() -> None:
    tokens = _run_tokens()
    fig = metric_lines_figure(tokens, ["entropy", "prob"])
    assert [trace.name for trace in fig.data] == ["entropy", "prob"]
    assert [trace.yaxis for trace in fig.data] == ["y", "y2"]
    assert list(fig.data[0].x) == [1, 2, 3, 4, 5, 6, 7]  # response tokens only, from 1
    assert list(fig.data[0].y) == [None, 0.05, 3.9, 2.0, 1.5, 0.3, 0.2]
    assert list(fig.data[1].y)[1:3] == [0.9, 0.05]
    custom = [list(row) for row in fig.data[0].customdata]
    assert custom[1] == ["·capital", "0.05", "0.9", "3"]  # last: number in the run, from 1
    assert custom[0] == ["The", "—", "—", "2"]
    assert custom[3][0] == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert custom[6][0] == "→end↵"
    template = fig.data[1].hovertemplate
    for part in ("%{customdata[0]}", "entropy %{customdata[1]}", "prob %{customdata[2]}"):
        assert part in template
    assert fig.layout.yaxis.title.text == "entropy (nats)"
    assert fig.layout.yaxis2.title.text == "prob (probability)"
    assert fig.layout.title.text == "entropy (nats), prob (probability) along the response"
    # the x-axis names the tokens, escaped and with whitespace drawn
    assert list(fig.layout.xaxis.tickvals) == [1, 2, 3, 4, 5, 6, 7]
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks[0] == "The" and ticks[1] == "·capital"
    assert ticks[3] == "&lt;script&gt;a…"  # cut to 10 characters, then escaped
    assert "<" not in "".join(ticks)


def test_token_ticks_thin_out_long_runs() -> None:
    shown = [{"position": i, "text": f"w{i}"} for i in range(200)]
    values, texts = token_ticks(shown)
    assert values[:3] == [1, 6, 11] and len(values) <= 48  # every 5th of 200
    assert texts[:2] == ["w0", "w5"]
    assert token_ticks([]) == ([], [])


def test_metric_lines_one_or_three_metrics_share_one_axis() -> None:
    tokens = _run_tokens()
    for tok in tokens:
        tok["margin"] = 0.5
    one = metric_lines_figure(tokens, ["entropy"])
    three = metric_lines_figure(tokens, ["entropy", "prob", "margin"])
    assert len(one.data) == 1 and len(three.data) == 3
    assert {trace.yaxis for trace in three.data} <= {None, "y"}
    assert "yaxis2" not in three.layout.to_plotly_json()
    assert "margin %{customdata[3]}" in three.data[0].hovertemplate


def test_layer_rank_figure_is_sorted_by_layer() -> None:
    layers = [
        {"layer": 2, "effective_rank": 30.5},
        {"layer": 0, "effective_rank": 171.3},
        {"layer": 1, "effective_rank": 80.0},
    ]
    fig = layer_rank_figure(layers)
    assert len(fig.data) == 1
    assert list(fig.data[0].x) == [0, 1, 2]
    assert list(fig.data[0].y) == [171.3, 80.0, 30.5]
    assert "embeddings" in fig.layout.xaxis.title.text
    assert list(layer_rank_figure([]).data[0].x) == []


def test_gltr_figure_counts_response_buckets() -> None:
    buckets = [0, 0, 0, 1, 2, 3, None]
    tokens = [{**_tok(0, "p", 1.0), "is_prompt": True, "gltr_bucket": 3}]
    tokens += [_tok(i + 1, "t", 1.0, gltr_bucket=b) for i, b in enumerate(buckets)]
    fig = gltr_figure(tokens)
    assert len(fig.data) == 1
    assert list(fig.data[0].x) == ["top 10", "top 100", "top 1000", "rest"]
    assert list(fig.data[0].y) == [3, 1, 1, 1]
    assert list(fig.data[0].customdata) == ["50.0%", "16.7%", "16.7%", "16.7%"]


@pytest.mark.parametrize(
    ("columns", "rows"),
    [
        ([], []),
        (["n"], []),
        (["name", "label"], [("a", "x"), ("b", "y")]),
        (["name", "flag"], [("a", True), ("b", False)]),
        (["name", "value"], [("a", None), ("b", None)]),
        (["name", "mixed"], [("a", 1.0), ("b", "2")]),
    ],
)
def test_sql_chart_is_none_without_rows_or_numbers(
    columns: list[str], rows: list[tuple[Any, ...]]
) -> None:
    assert sql_chart(columns, rows) is None


def test_sql_chart_bars_the_first_numeric_column_by_the_first_column() -> None:
    rows = [(f"<b>{i}</b>", "x", i * 2, 0.5) for i in range(250)]
    fig = sql_chart(["model", "note", "n", "share"], rows)
    assert fig is not None
    assert [trace.type for trace in fig.data] == ["bar"]
    assert len(fig.data[0].x) == 200  # first 200 rows only
    assert fig.data[0].x[0] == "&lt;b&gt;0&lt;/b&gt;"
    assert list(fig.data[0].y[:3]) == [0, 2, 4]
    assert fig.data[0].name == "n"


def test_sql_chart_scatters_each_numeric_column_against_the_first() -> None:
    rows = [(1, 0.5, 10), (2, None, 20), (3, 0.7, 30)]
    fig = sql_chart(["position", "entropy", "rank"], rows)
    assert fig is not None
    assert [trace.type for trace in fig.data] == ["scatter", "scatter"]
    assert {trace.mode for trace in fig.data} == {"markers"}
    assert [trace.name for trace in fig.data] == ["entropy", "rank"]
    assert list(fig.data[0].x) == [1, 2, 3]
    assert list(fig.data[0].y) == [0.5, None, 0.7]
    assert list(fig.data[1].y) == [10, 20, 30]


def test_sql_chart_single_numeric_column_is_a_histogram() -> None:
    fig = sql_chart(["entropy"], [(0.7,), (0.9,), (2.5,)])
    assert fig is not None
    assert [trace.type for trace in fig.data] == ["histogram"]
    assert list(fig.data[0].x) == [0.7, 0.9, 2.5]


# ---- compare -------------------------------------------------------------------------------


def _ids_run(ids: list[int], entropies: list[float] | None = None) -> list[dict[str, Any]]:
    values = entropies or [1.0] * len(ids)
    prompt = {**_tok(0, "PROMPT", 1.0), "is_prompt": True, "token_id": 999}
    return [prompt] + [
        {**_tok(i + 1, f"t{tid}", h), "token_id": tid}
        for i, (tid, h) in enumerate(zip(ids, values, strict=True))
    ]


def _shape(rows: list[dict[str, Any]]) -> list[tuple[int | None, int | None, bool]]:
    return [
        (
            None if r["a"] is None else r["a"]["token_id"],
            None if r["b"] is None else r["b"]["token_id"],
            r["same"],
        )
        for r in rows
    ]


def test_align_identical_runs_are_all_same() -> None:
    rows = align_runs(_ids_run([5, 6, 5, 7]), _ids_run([5, 6, 5, 7]))
    assert _shape(rows) == [(5, 5, True), (6, 6, True), (5, 5, True), (7, 7, True)]
    assert [r["a"]["position"] for r in rows] == [1, 2, 3, 4]


def test_align_one_inserted_token() -> None:
    rows = align_runs(_ids_run([5, 6, 7]), _ids_run([5, 6, 42, 7]))
    assert _shape(rows) == [(5, 5, True), (6, 6, True), (None, 42, False), (7, 7, True)]
    assert rows[3]["a"]["position"] == 3 and rows[3]["b"]["position"] == 4


def test_align_one_substituted_token() -> None:
    rows = align_runs(_ids_run([5, 6, 7, 8]), _ids_run([5, 9, 7, 8]))
    assert _shape(rows) == [(5, 5, True), (6, 9, False), (7, 7, True), (8, 8, True)]


def test_align_long_runs_of_common_tokens_still_match() -> None:
    """Without ``autojunk=False`` frequent ids in runs of 200+ tokens would never match."""
    ids = [7, 8, 9] * 100
    rows = align_runs(_ids_run([1, *ids]), _ids_run([2, *ids]))
    assert len(rows) == 301
    assert _shape(rows)[0] == (1, 2, False)
    assert all(row["same"] for row in rows[1:])


def test_align_covers_every_response_token_once() -> None:
    a, b = _ids_run([1, 2, 3, 4, 5, 2, 2]), _ids_run([2, 3, 9, 9, 9, 5, 1])
    rows = align_runs(a, b)
    assert [r["a"]["position"] for r in rows if r["a"]] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["b"]["position"] for r in rows if r["b"]] == [1, 2, 3, 4, 5, 6, 7]
    assert all(r["a"]["token_id"] == r["b"]["token_id"] for r in rows if r["same"])


def test_align_empty_runs() -> None:
    assert align_runs([], []) == []
    assert align_runs(None, None) == []
    assert _shape(align_runs(_ids_run([]), _ids_run([3]))) == [(None, 3, False)]
    assert _shape(align_runs(_ids_run([3, 4]), [])) == [(3, None, False), (4, None, False)]


def test_compare_frame_delta_is_b_minus_a_and_nan_when_missing() -> None:
    rows = align_runs(
        _ids_run([5, 6, 7], [1.0, 2.0, 0.5]), _ids_run([5, 6, 42, 7], [1.5, 1.0, 3, 0.5])
    )
    frame = compare_frame(rows, "entropy")
    assert list(frame.columns) == [
        "pos_a",
        "text_a",
        "pos_b",
        "text_b",
        "entropy_a",
        "entropy_b",
        "delta",
        "same",
    ]
    assert list(frame["delta"][:2]) == [0.5, -1.0]
    assert math.isnan(frame["delta"][2]) and math.isnan(frame["entropy_a"][2])
    assert frame["delta"][3] == 0.0
    assert frame["pos_a"][2] is pd.NA
    assert list(frame["pos_b"]) == [2, 3, 4, 5]  # stored 1..4, shown from 1
    assert list(frame["same"]) == [True, True, False, True]
    assert frame["text_b"][2] == "t42"


def test_compare_html_outlines_big_deltas_and_unmatched_tokens() -> None:
    a = _ids_run([5, 6, 7, 8], [1.0, 1.0, 1.0, 1.0])
    b = _ids_run([5, 6, 9, 8], [1.2, 2.0, 1.0, 1.0])
    a[1]["text"] = SCRIPT
    b[1]["text"] = IMG
    b[2]["text"] = '" onmouseover="alert(1)'  # would open an attribute if left unescaped
    rows = align_runs(a, b)
    document = compare_html(rows, "entropy")
    parsed = _parse(document)
    assert _unsafe(parsed) == []
    pairs = [
        attrs for tag, attrs in parsed.tags if tag == "span" and "pair" in (attrs["class"] or "")
    ]
    assert [attrs["class"] for attrs in pairs] == ["pair", "pair diff", "pair diff", "pair"]
    title = pairs[1]["title"] or ""
    assert title.splitlines()[0] == "A: position 3 · “t6” · token id 6 · entropy 1"
    assert (
        title.splitlines()[1]
        == 'B: position 3 · “"·onmouseover="alert(1)” · token id 6 · entropy 2'
    )
    assert title.splitlines()[-1] == "delta (B − A) +1"
    assert [text for _, text in parsed.spans][:2] == [SCRIPT, IMG.replace(" ", "·")]
    loose = _parse(compare_html(rows, "entropy", threshold=2.0))
    classes = [a["class"] for t, a in loose.tags if t == "span" and "pair" in (a["class"] or "")]
    assert classes == ["pair", "pair", "pair diff", "pair"]  # the substitution stays outlined


def test_compare_html_marks_gaps() -> None:
    rows = align_runs(_ids_run([5, 7]), _ids_run([5, 6, 7]))
    parsed = _parse(compare_html(rows, "entropy"))
    gaps = [a for a, text in parsed.spans if "gap" in (a.get("class") or "")]
    assert len(gaps) == 1
    pair = [a for t, a in parsed.tags if t == "span" and "pair" in (a.get("class") or "")][1]
    assert (pair["title"] or "").splitlines()[0] == "A: (no token)"


# ---- tables --------------------------------------------------------------------------------


def test_turns_frame_columns_and_order() -> None:
    summary = {
        "turns": [
            {
                "run_id": "r2",
                "conversation": 2,
                "turn_index": 0,
                "line": 7,
                "prompt": "p" * 200,
                "response": "first\nsecond",
                "risk": 2.5,
                "sequence": {
                    "geometric_mean_confidence": 0.3,
                    "mean_entropy": 2.5,
                    "perplexity": 3.3,
                },
            },
            {
                "run_id": "r1",
                "conversation": 1,
                "turn_index": 2,
                "line": 3,
                "prompt": "q",
                "response": "r",
                "risk": None,
                "sequence": {},
            },
        ]
    }
    frame = turns_frame(summary)
    assert tuple(frame.columns) == TURN_COLUMNS
    assert list(frame["run_id"]) == ["r2", "r1"]
    assert list(frame["rank"]) == [1, 2]
    assert list(frame["turn"]) == [1, 3]
    assert list(frame["line"]) == [7, 3]
    assert frame["risk"][0] == 2.5 and math.isnan(frame["risk"][1])
    assert list(frame.iloc[0][["geometric_mean_confidence", "mean_entropy", "perplexity"]]) == [
        0.3,
        2.5,
        3.3,
    ]
    assert list(frame["conversation"]) == [2, 1]
    assert math.isnan(frame["perplexity"][1])
    assert frame["prompt"][0] == "p" * 200  # the first 200 characters in full
    assert frame["response"][0] == "first↵second"
    assert turns_frame({"turns": []}).columns.tolist() == list(TURN_COLUMNS)


def test_runs_frame_columns_and_order() -> None:
    runs: list[dict[str, Any]] = [
        {
            "run_id": "new0123456789",
            "kind": "chat",
            "prompt": "hi",
            "upload_id": "upl0123456789",
            "turn_index": 0,
            "response": "hello\nthere",
            "n_response_tokens": 4,
            "created_at": "2025-02-01T10:00:00.123456",
            "model": "default",
            "sequence": {"geometric_mean_confidence": 0.4, "mean_entropy": 1.2, "perplexity": 2.5},
        },
        {
            "run_id": "old",
            "kind": "text",
            "prompt": None,
            "response": "x",
            "n_response_tokens": 1,
            "created_at": "2024-12-31T23:59:59",
            "model": {"id": "tiny", "revision": "abc"},
            "sequence": {},
        },
    ]
    frame = runs_frame(runs)
    assert tuple(frame.columns) == RUN_COLUMNS
    assert list(frame["run_id"]) == ["new0123456789", "old"]
    assert list(frame["id"]) == ["new01234", "old"]
    assert list(frame["source"]) == ["upload upl01234 · turn 1", "scored directly"]
    assert list(frame["prompt"]) == ["hi", ""]
    assert list(frame["created"]) == ["2025-02-01 10:00:00", "2024-12-31 23:59:59"]
    assert list(frame["model"]) == ["default", "tiny"]
    assert list(frame["tokens"]) == [4, 1]
    assert frame["GM confidence"][0] == 0.4 and math.isnan(frame["GM confidence"][1])
    assert frame["response"][0] == "hello↵there"
    assert runs_frame([]).columns.tolist() == list(RUN_COLUMNS)


def test_uncertain_tokens_frame_numbers_from_one_with_sentence_context() -> None:
    run = [
        {"position": 0, "text": "Q", "is_prompt": True},
        {"position": 1, "text": "It", "is_prompt": False},
        {"position": 2, "text": " is", "is_prompt": False},
        {"position": 3, "text": " Sydney", "is_prompt": False},
        {"position": 4, "text": ".", "is_prompt": False},
        {"position": 5, "text": "\n", "is_prompt": False},
    ]
    summary = {
        "tokens": [
            {"run_id": "r1", "position": 3, "text": " Sydney", "value": 4.5, "prob": 0.1,
             "entropy": 4.5, "conversation": 2, "turn_index": 0},
            {"run_id": "r1", "position": 5, "text": "\n", "value": 1.0, "prob": None,
             "entropy": 1.0, "conversation": 2, "turn_index": 0},
            {"run_id": "gone", "position": 1, "text": "x", "value": 0.5, "prob": 0.5,
             "entropy": 0.5, "conversation": None, "turn_index": None},
        ]
    }  # fmt: skip
    frame = uncertain_tokens_frame(summary, {"r1": run})
    assert tuple(frame.columns) == TOKEN_COLUMNS
    assert list(frame["#"]) == [1, 2, 3]
    assert list(frame["position"]) == [4, 6, 2] and frame["turn"][0] == 1
    assert frame["turn"][2] is pd.NA and frame["conversation"][2] is pd.NA
    assert frame["context"][0] == "It is« Sydney»."
    assert frame["token"][1] == "↵" and frame["context"][1] == "«↵»"
    assert frame["context"][2] == ""  # no tokens for that run: no context, no error
    assert math.isnan(frame["prob"][1])
    assert uncertain_tokens_frame({}).columns.tolist() == list(TOKEN_COLUMNS)


def test_run_tokens_frame_numbers_tokens_from_one() -> None:
    tokens = _run_tokens()
    frame = run_tokens_frame(tokens, ["entropy", "prob"])
    assert frame.columns.tolist() == ["#", "prompt", "token", "token_id", "entropy", "prob"]
    assert list(frame["#"]) == [t["position"] + 1 for t in tokens]
    assert frame["prompt"].tolist() == [bool(t.get("is_prompt")) for t in tokens]
    assert frame["token"].tolist() == [t["text"] for t in tokens]
    assert math.isnan(frame["entropy"][1])


# ---- purity --------------------------------------------------------------------------------


# Every module of app/components (claims, groups and lab included), found by walking the folder.
@pytest.mark.parametrize("module", tree_modules("app.components"))
def test_components_import_no_ui_database_or_model_libraries(module: str) -> None:
    assert packages_loaded_by(module, HEAVY) == []


def test_the_import_probe_sees_imported_packages() -> None:
    """Guard against a vacuous purity check."""
    assert packages_loaded_by("email.mime.text", ("email",)) == ["email"]

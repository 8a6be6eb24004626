"""The HTML audit report: self-contained, inert against hostile transcripts, faithful to data."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest

from tokenprism.backend.audit.report import render_audit_report
from tokenprism.backend.display import NO_VALUE_COLOUR

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
QUOTED = 'say "hi"\nnow'


class _Collector(HTMLParser):
    """Start tags with their attributes, all text, and each token span with its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.spans: list[tuple[dict[str, str | None], str]] = []
        self._span: dict[str, str | None] | None = None
        self._span_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "span" and dict(attrs).get("class") == "tok":
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


class _RowText(HTMLParser):
    """The text of each table row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        del attrs
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _rows(document: str) -> list[list[str]]:
    capture = _RowText()
    capture.feed(document)
    capture.close()
    return capture.rows


def _tok(position: int, text: str, entropy: float | None, **extra: Any) -> dict[str, Any]:
    prob = None if entropy is None else 0.9 if entropy < 1 else 0.05
    return {
        "position": position,
        "text": text,
        "is_prompt": False,
        "logprob": None if prob is None else -0.1,
        "prob": prob,
        "rank": None if prob is None else 1,
        "entropy": entropy,
        "top_k": [],
        **extra,
    }


def _data() -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    alts = [
        {"token_id": 11, "text": " Canberra", "prob": 0.61},
        {"token_id": 12, "text": " Sydney", "prob": 0.22},
        {"token_id": 13, "text": ' "x"', "prob": 0.05},
        {"token_id": 14, "text": " Perth", "prob": 0.01},
    ]
    turn_tokens = {
        "runA": [
            {**_tok(0, "PROMPT_ONLY_TOKEN", 0.5), "is_prompt": True},
            _tok(1, "The", None),
            _tok(2, " capital", 0.05),
            _tok(3, " Sydney", 3.9, top_k=alts),
            _tok(4, SCRIPT, 2.0),
        ],
        "runB": [
            _tok(0, IMG, 1.5),
            _tok(1, QUOTED, 0.3),
            _tok(2, "\tend", 0.2),
        ],
    }
    turns = [
        {
            "run_id": "runB",
            "conversation": 2,
            "turn_index": 0,
            "line": 7,
            "prompt": f"Show {IMG} please",
            "response": IMG + QUOTED + "\tend",
            "n_tokens": 3,
            "risk": None,
            "sequence": {"mean_entropy": None},
        },
        {
            "run_id": "runA",
            "conversation": 1,
            "turn_index": 1,
            "line": 3,
            "prompt": f"Capital? {SCRIPT}",
            "response": "The capital Sydney" + SCRIPT,
            "n_tokens": 4,
            "risk": 1.98765,
            "sequence": {
                "geometric_mean_confidence": 0.30412,
                "mean_entropy": 1.98765,
                "perplexity": 3.2911,
            },
        },
    ]
    summary = {
        "upload": {
            "upload_id": "up1",
            "filename": "chats<b>bold</b>.jsonl",
            "sha256": "ab" * 32,
            "format": "openai",
            "n_items": 2,
            "created_at": "2025-01-02T03:04:05Z",
            "model": "default",
        },
        "metric": "mean_entropy",
        "higher_means": "uncertain",
        "token_metric": "entropy",
        "turns": turns,
        "tokens": [
            {
                "run_id": "runA",
                "conversation": 1,
                "turn_index": 1,
                "position": 3,
                "text": " Sydney",
                "value": 3.9,
                "prob": 0.05,
                "entropy": 3.9,
            },
            {
                "run_id": "runA",
                "conversation": 1,
                "turn_index": 1,
                "position": 4,
                "text": SCRIPT,
                "value": 2.0,
                "prob": 0.05,
                "entropy": 2.0,
            },
        ],
    }
    return summary, turn_tokens


@pytest.fixture
def report() -> str:
    summary, turn_tokens = _data()
    return render_audit_report(summary, turn_tokens)


@pytest.fixture
def parsed(report: str) -> _Collector:
    return _parse(report)


def _span(parsed: _Collector, run_id: str, position: int) -> dict[str, str | None]:
    """The attributes of the token span at ``position`` of the section of ``run_id``."""
    section_of_span: list[tuple[str | None, dict[str, str | None]]] = []
    section: str | None = None
    for tag, attrs in parsed.tags:
        if tag == "section":
            section = attrs.get("id")
        elif tag == "span" and attrs.get("class") == "tok":
            section_of_span.append((section, attrs))
    for sec, attrs in section_of_span:
        title = attrs.get("title") or ""
        # tooltips count from 1
        if sec == f"turn-{run_id}" and title.splitlines()[0] == f"position {position + 1}":
            return attrs
    raise AssertionError(f"no span at position {position} of {run_id}")


def test_collector_sees_script_tags_and_event_attributes() -> None:
    """Guard against vacuous security checks: the collector reports what they look for."""
    parsed = _parse(f'<p onclick="x">{SCRIPT}{IMG}</p>')
    assert ("script", {}) in parsed.tags
    assert any(name.startswith("on") for _, attrs in parsed.tags for name in attrs)


def test_report_is_a_complete_html5_document(report: str, parsed: _Collector) -> None:
    assert report.startswith("<!DOCTYPE html>")
    assert report.rstrip().endswith("</html>")
    tags = [tag for tag, _ in parsed.tags]
    for tag in ("html", "head", "meta", "title", "style", "body", "table", "section", "span"):
        assert tag in tags
    assert any(attrs.get("charset") == "utf-8" for tag, attrs in parsed.tags if tag == "meta")


def test_no_script_tags_and_no_event_handler_attributes(parsed: _Collector) -> None:
    assert parsed.tags, "the parser found no tags at all"
    assert not [tag for tag, _ in parsed.tags if tag in ("script", "img", "b")]
    on_attrs = [name for _, attrs in parsed.tags for name in attrs if name.startswith("on")]
    assert on_attrs == []


def test_payloads_come_out_as_escaped_text(report: str, parsed: _Collector) -> None:
    text = "".join(parsed.text)
    assert f"Capital? {SCRIPT}" in text  # the prompt, in its blockquote
    assert f"Show {IMG} please" in text
    assert "chats<b>bold</b>.jsonl" in text  # the file name
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert "&lt;img src=x onerror=alert(1)&gt;" in report
    spans = [span_text for _, span_text in parsed.spans]
    assert SCRIPT in spans
    assert IMG in spans


def test_quote_in_a_token_cannot_break_out_of_its_attribute(parsed: _Collector) -> None:
    title = _span(parsed, "runA", 3)["title"] or ""
    assert '·"x"  p=0.05' in title  # the quoted alternative stays inside the title
    assert title.splitlines()[-1] == '  ·"x"  p=0.05'
    spans = [span_text for _, span_text in parsed.spans]
    assert 'say "hi"now' in spans  # prose: real spaces, the newline is a <br>


def test_turn_sections_exist_in_risk_order(parsed: _Collector) -> None:
    ids = [attrs.get("id") for tag, attrs in parsed.tags if tag == "section"]
    assert ids == ["turn-runB", "turn-runA"]
    hrefs = [attrs.get("href") for tag, attrs in parsed.tags if tag == "a"]
    assert hrefs.index("#turn-runB") < hrefs.index("#turn-runA")


def test_only_response_tokens_are_shown(report: str, parsed: _Collector) -> None:
    assert "PROMPT_ONLY_TOKEN" not in report
    assert len(parsed.spans) == 7


def _luminance(rgb: tuple[int, int, int]) -> float:
    r, g, b = (c / 255 for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b  # rough, enough to tell light from dark


def _rgb(style: str | None) -> tuple[int, int, int]:
    match = re.fullmatch(r"background:rgb\((\d+),(\d+),(\d+)\);color:#(000000|ffffff)", style or "")
    assert match, style
    red, green, blue = (int(g) for g in match.groups()[:3])
    return red, green, blue


def test_colour_follows_entropy_and_missing_values_are_grey(parsed: _Collector) -> None:
    low = _rgb(_span(parsed, "runA", 2)["style"])  # entropy 0.05 of 4 nats
    high = _rgb(_span(parsed, "runA", 3)["style"])  # entropy 3.9 of 4 nats
    assert _luminance(low) > 0.6  # light viridis end = certain
    assert _luminance(high) < 0.2  # dark purple end = uncertain
    assert _span(parsed, "runA", 1)["style"].startswith(f"background:{NO_VALUE_COLOUR};")


def test_confident_metrics_invert_the_scale() -> None:
    summary, turn_tokens = _data()
    parsed = _parse(render_audit_report(summary, turn_tokens, colour_metric="prob"))
    confident = _rgb(_span(parsed, "runA", 2)["style"])  # prob 0.9
    unsure = _rgb(_span(parsed, "runA", 3)["style"])  # prob 0.05
    assert _luminance(confident) > 0.5
    assert _luminance(unsure) < 0.2
    assert _span(parsed, "runA", 1)["style"].startswith(f"background:{NO_VALUE_COLOUR};")


def test_metrics_without_a_natural_range_scale_to_the_1st_to_99th_percentile() -> None:
    summary, turn_tokens = _data()
    for i, tok in enumerate(t for toks in turn_tokens.values() for t in toks):
        tok["kurtosis"] = float(i)  # confident: the largest values are the greenest
    parsed = _parse(render_audit_report(summary, turn_tokens, colour_metric="kurtosis"))
    assert _rgb(_span(parsed, "runB", 2)["style"]) == (253, 231, 37)  # the maximum: lightest
    assert _luminance(_rgb(_span(parsed, "runA", 1)["style"])) < 0.2  # a small value: dark
    values = [float(i) for i in range(1, 8)]
    p1, p99 = np.percentile(values, 1), np.percentile(values, 99)
    assert f"domain [{p1:.3g}, {p99:.3g}]" in "".join(parsed.text)


def test_legend_names_the_uncertain_colour(parsed: _Collector) -> None:
    text = "".join(parsed.text)
    assert "light = certain, dark = uncertain" in text
    assert "domain [0, 4]" in text


def test_tooltip_lists_values_and_top_three_alternatives(parsed: _Collector) -> None:
    title = _span(parsed, "runA", 3)["title"] or ""
    lines = title.splitlines()
    assert lines[0] == "position 4"  # stored position 3, counted from 1
    assert lines[1] == "logprob -0.1 · prob 0.05 · rank 1 · entropy 3.9"
    assert "·Canberra  p=0.61" in title
    assert "·Sydney  p=0.22" in title
    assert "Perth" not in title  # only the top three


def test_missing_risk_is_a_dash_and_risk_has_three_digits(report: str) -> None:
    by_line = {row[3]: row for row in _rows(report) if len(row) == 10}
    assert by_line["7"][4] == "—"
    assert by_line["3"][4] == "1.99"
    assert by_line["3"][5:8] == ["0.304", "1.99", "3.29"]
    assert by_line["7"][5:8] == ["—", "—", "—"]
    assert by_line["7"][1:3] == ["2", "1"]  # conversation, 1-based turn


def test_text_is_prose(report: str, parsed: _Collector) -> None:
    spans = [span_text for _, span_text in parsed.spans]
    assert " capital" in spans
    assert "\tend" in spans
    assert "say &quot;hi&quot;<br>now" in report


def test_header_facts(parsed: _Collector) -> None:
    text = "".join(parsed.text)
    assert "TokenPrism audit report" in text
    assert "2025-01-02T03:04:05Z" in text
    assert "openai" in text
    assert "abababababab…" in text
    assert any(attrs.get("title") == "ab" * 32 for tag, attrs in parsed.tags if tag == "code")
    assert "ab" * 32 not in text


def test_no_external_urls(report: str) -> None:
    assert "http://" not in report
    assert "https://" not in report
    assert "url(" not in report


def test_excerpts_are_cut_at_120_characters() -> None:
    summary, turn_tokens = _data()
    summary["turns"][0]["prompt"] = "p" * 200
    rows = _rows(render_audit_report(summary, turn_tokens))
    excerpt = next(row[8] for row in rows if len(row) == 10 and row[3] == "7")
    assert excerpt == "p" * 120 + "…"

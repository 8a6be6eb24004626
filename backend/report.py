"""Self-contained HTML audit report of an uploaded transcript whose assistant turns were scored.

The report is one HTML5 file with inline CSS and no JavaScript or external URLs, so it opens
offline in any browser and can be attached to a ticket or archived next to the transcript.
Every string that comes from the data passes through ``html.escape(..., quote=True)``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from analysis.registry import get_metric
from backend.encoding import visible_whitespace

NO_VALUE_COLOUR = "#d9d9d9"
EXCERPT_CHARS = 120
TOP_ALTERNATIVES = 3
# Values at or above these get the full "uncertain" colour; other metrics use the report's p95.
FIXED_MAX = {"entropy": 4.0, "surprisal_bits": 12.0, "window_entropy": 4.0}
# Confident metrics on the probability scale [0, 1] (logprob after exp).
PROBABILITY_SCALE = frozenset({"prob", "margin", "logprob"})
# rank 1 is the argmax, so it is the certain end of the rank scale.
SCALE_FLOOR = {"rank": 1.0}
SEQUENCE_COLUMNS = ("geometric_mean_confidence", "mean_entropy", "perplexity")
TOOLTIP_VALUES = ("logprob", "prob", "rank", "entropy")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em;
       color: #1b1b1b; background: #fff; line-height: 1.45; }
h1 { margin-bottom: .2em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: .9em; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: .25em .45em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.excerpt { overflow-wrap: anywhere; }
section.turn { border-top: 2px solid #888; margin-top: 2em; padding-top: .5em; }
blockquote { margin: .5em 0; padding: .4em .8em; border-left: 4px solid #aaa; background: #f7f7f7;
             white-space: pre-wrap; overflow-wrap: anywhere; }
.tokens { font-family: ui-monospace, monospace; line-height: 1.9; overflow-wrap: anywhere; }
.tok { color: #000; padding: .05em 0; border-right: 1px solid #fff; }
.meta { color: #444; font-size: .9em; }
.legend { font-size: .9em; }
.sw { padding: 0 .4em; color: #000; font-family: ui-monospace, monospace; }
.ramp { display: inline-block; width: 8em; height: .9em; vertical-align: middle;
        background: linear-gradient(to right, rgb(0,255,60), rgb(255,255,60), rgb(255,0,60)); }
code { overflow-wrap: anywhere; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any) -> str:
    """Three significant digits for floats, plain ints, "—" for missing values."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else "—"
    return str(value)


def _exact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else "—"
    return _fmt(value)


def _excerpt(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def visible_html(text: Any, *, breaks: bool = True) -> str:
    """Escape token text for HTML, drawing whitespace as glyphs (· ↵ →).

    Args:
        text: the token text; None counts as empty.
        breaks: also put a real ``<br>`` after each ``↵``.

    Returns:
        HTML-safe text.
    """
    parts = ("" if text is None else str(text)).split("\n")
    newline = "↵<br>" if breaks else "↵"
    return newline.join(_esc(visible_whitespace(part)) for part in parts)


def _ramp_colour(fraction: float) -> str:
    """Green (0, certain) through yellow to red (1, uncertain), as in the terminal view."""
    x = min(max(fraction, 0.0), 1.0)
    red = round(255 * min(1.0, 2 * x))
    green = round(255 * min(1.0, 2 * (1 - x)))
    return f"rgb({red},{green},60)"


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of a non-empty list."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass(frozen=True)
class ColourScale:
    """How one token metric maps to a background colour.

    Attributes:
        metric: the token metric name.
        direction: what a larger value means: ``uncertain``, ``confident`` or ``neutral``.
        low: value at the low end of the scale (after ``exp`` for logprob).
        high: value at the high end of the scale; values beyond it are clamped.
    """

    metric: str
    direction: str
    low: float
    high: float

    def _transform(self, value: float) -> float:
        return math.exp(value) if self.metric == "logprob" else value

    def uncertainty(self, value: Any) -> float | None:
        """Position of ``value`` on the scale: 0 = certain end, 1 = uncertain end."""
        number = _number(value)
        if number is None:
            return None
        position = (self._transform(number) - self.low) / (self.high - self.low)
        position = min(max(position, 0.0), 1.0)
        return 1.0 - position if self.direction == "confident" else position

    def colour(self, value: Any) -> str:
        """CSS colour for ``value``; grey when it is missing."""
        fraction = self.uncertainty(value)
        return NO_VALUE_COLOUR if fraction is None else _ramp_colour(fraction)

    def end_labels(self) -> tuple[str, str]:
        """Labels of the green and the red end of the scale."""
        m = self.metric
        if self.direction != "confident":
            return f"{m} {self.low:g}", f"{m} ≥ {self.high:.3g}"
        if m == "logprob":
            return "logprob 0 (p = 1)", "logprob → −∞ (p = 0)"
        if m in PROBABILITY_SCALE:
            return f"{m} 1", f"{m} 0"
        return f"{m} ≥ {self.high:.3g}", f"{m} {self.low:g}"


def _direction(metric: str) -> str:
    try:
        return get_metric(metric).higher_means
    except KeyError:
        return "neutral"


def colour_scale(metric: str, tokens: Iterable[dict[str, Any]]) -> ColourScale:
    """Build the colour scale of ``metric`` over the report's response ``tokens``.

    Args:
        metric: token metric that sets the colours.
        tokens: every response token shown in the report; their values give the 95th
            percentile for metrics without a fixed maximum.

    Returns:
        The scale: fixed bounds for entropy-like metrics and probabilities, otherwise from
        the metric's floor (0, or 1 for rank) to the 95th percentile of the values.
    """
    direction = _direction(metric)
    if direction == "confident" and metric in PROBABILITY_SCALE:
        return ColourScale(metric, direction, 0.0, 1.0)
    low = SCALE_FLOOR.get(metric, 0.0)
    high = FIXED_MAX.get(metric)
    if high is None:
        values = [v for v in (_number(t.get(metric)) for t in tokens) if v is not None]
        high = _percentile(values, 0.95) if values else low + 1.0
    if high <= low:
        high = low + 1.0
    return ColourScale(metric, direction, low, high)


def _response_tokens(tokens: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [t for t in tokens or [] if not t.get("is_prompt")]


def _direction_words(direction: Any) -> str:
    return {
        "uncertain": "higher = more uncertain",
        "confident": "higher = more confident",
    }.get(str(direction), "no uncertainty direction")


def _turn_href(run_id: Any) -> str:
    return _esc(f"#turn-{run_id}")


def _turn_number(turn: dict[str, Any]) -> str:
    index = turn.get("turn_index")
    return str(index + 1) if isinstance(index, int) and not isinstance(index, bool) else "—"


def _header(summary: dict[str, Any]) -> str:
    upload = summary.get("upload") or {}
    sha = str(upload.get("sha256") or "")
    facts = [
        ("file", _esc(upload.get("filename", ""))),
        (
            "sha256",
            f'<code title="{_esc(sha)}">{_esc(sha[:12])}{"…" if len(sha) > 12 else ""}</code>',
        ),
        ("format", _esc(upload.get("format", ""))),
        ("model", _esc(upload.get("model", ""))),
        ("turns", _esc(len(summary.get("turns") or []))),
        ("items", _esc(_fmt(upload.get("n_items")))),
        ("upload id", f"<code>{_esc(upload.get('upload_id', ''))}</code>"),
        ("generated", _esc(upload.get("created_at", ""))),
        (
            "turn risk",
            f"<code>{_esc(summary.get('metric', ''))}</code> "
            f"({_esc(_direction_words(summary.get('higher_means')))})",
        ),
        ("token metric", f"<code>{_esc(summary.get('token_metric', ''))}</code>"),
    ]
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return f'<header><h1>TokenPrism audit report</h1><dl class="facts">{rows}</dl></header>'


def _turn_row(rank: int, turn: dict[str, Any]) -> str:
    sequence = turn.get("sequence") or {}
    shown = [_fmt(turn.get("conversation")), _turn_number(turn), _fmt(turn.get("line"))]
    shown += [_fmt(turn.get("risk"))] + [_fmt(sequence.get(name)) for name in SEQUENCE_COLUMNS]
    cells = [f'<td class="num"><a href="{_turn_href(turn.get("run_id"))}">{rank}</a></td>']
    cells += [f'<td class="num">{_esc(value)}</td>' for value in shown]
    for text in (turn.get("prompt"), turn.get("response")):
        cells.append(f'<td class="excerpt">{_esc(_excerpt(text))}</td>')
    return f"<tr>{''.join(cells)}</tr>"


def _turns_table(summary: dict[str, Any]) -> str:
    metric = _esc(summary.get("metric", ""))
    heads = ["rank", "conversation", "turn", "line", f"risk ({metric})"]
    heads += [_esc(name) for name in SEQUENCE_COLUMNS] + ["prompt", "response"]
    head = "".join(f"<th>{h}</th>" for h in heads)
    turns = summary.get("turns") or []
    body = "".join(_turn_row(i, turn) for i, turn in enumerate(turns, start=1))
    if not turns:
        body = f'<tr><td colspan="{len(heads)}">No scored turns.</td></tr>'
    return (
        f'<h2 id="turns">Turns by risk</h2><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _token_row(rank: int, tok: dict[str, Any]) -> str:
    where = (
        f"conversation {_fmt(tok.get('conversation'))}, turn {_turn_number(tok)}, "
        f"position {_fmt(tok.get('position'))}"
    )
    return (
        f'<tr><td class="num">{rank}</td>'
        f"<td><code>{visible_html(tok.get('text'), breaks=False)}</code></td>"
        f'<td class="num">{_esc(_fmt(tok.get("value")))}</td>'
        f'<td class="num">{_esc(_fmt(tok.get("prob")))}</td>'
        f'<td class="num">{_esc(_fmt(tok.get("entropy")))}</td>'
        f'<td><a href="{_turn_href(tok.get("run_id"))}">{_esc(where)}</a></td></tr>'
    )


def _tokens_table(summary: dict[str, Any]) -> str:
    metric = _esc(summary.get("token_metric", ""))
    heads = ["#", "token", metric, "prob", "entropy", "turn"]
    head = "".join(f"<th>{h}</th>" for h in heads)
    tokens = summary.get("tokens") or []
    body = "".join(_token_row(i, tok) for i, tok in enumerate(tokens, start=1))
    if not tokens:
        body = f'<tr><td colspan="{len(heads)}">No tokens.</td></tr>'
    return (
        f'<h2 id="tokens">Most uncertain tokens</h2><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def token_tooltip(
    tok: dict[str, Any],
    metric: str,
    *,
    alternatives: int = TOP_ALTERNATIVES,
    token_id: bool = False,
) -> str:
    """Plain-text tooltip of a token; the caller escapes it once as a whole.

    Args:
        tok: the token as stored (``position``, ``logprob``, ``top_k``, ...).
        metric: the colouring metric, listed too when it is not one of the usual values.
        alternatives: how many of the top-k alternatives to list.
        token_id: also give the token id on the first line.

    Returns:
        Lines: position, exact logprob / prob / rank / entropy, the metric, alternatives.
    """
    first = f"position {_fmt(tok.get('position'))}"
    lines = [f"{first} · token id {_fmt(tok.get('token_id'))}" if token_id else first]
    lines.append(" · ".join(f"{name} {_exact(tok.get(name))}" for name in TOOLTIP_VALUES))
    if metric not in TOOLTIP_VALUES:
        lines.append(f"{metric} {_exact(tok.get(metric))}")
    shown = (tok.get("top_k") or [])[:alternatives]
    if shown:
        lines.append("top alternatives:")
        lines += [
            f"  {visible_whitespace(str(a.get('text', '')))}  p={_exact(a.get('prob'))}"
            for a in shown
        ]
    return "\n".join(lines)


def token_span_html(
    tok: dict[str, Any],
    scale: ColourScale,
    *,
    alternatives: int = TOP_ALTERNATIVES,
    token_id: bool = False,
) -> str:
    """One token as a ``<span class="tok">`` coloured by ``scale``, with its tooltip.

    Args:
        tok: the token as stored.
        scale: the colour scale; its metric picks the token's value.
        alternatives: how many top-k alternatives the tooltip lists.
        token_id: also give the token id in the tooltip.

    Returns:
        The escaped span; newlines in the token also break the line.
    """
    colour = scale.colour(tok.get(scale.metric))
    title = _esc(token_tooltip(tok, scale.metric, alternatives=alternatives, token_id=token_id))
    return (
        f'<span class="tok" style="background:{colour}" title="{title}">'
        f"{visible_html(tok.get('text'))}</span>"
    )


def legend_html(scale: ColourScale) -> str:
    """A ``<p class="legend">`` saying which colour means uncertain, with the scale's ends."""
    green, red = scale.end_labels()
    if scale.direction == "neutral":
        meaning = f"green = low, red = high (<code>{_esc(scale.metric)}</code> has no uncertainty"
        meaning += " direction)"
    else:
        meaning = "green = certain, red = uncertain"
    return (
        f'<p class="legend">Colour = <code>{_esc(scale.metric)}</code>: {meaning}. '
        f'<span class="sw" style="background:{_ramp_colour(0.0)}">{_esc(green)}</span> '
        f'<span class="ramp"></span> '
        f'<span class="sw" style="background:{_ramp_colour(1.0)}">{_esc(red)}</span> · '
        f'<span class="sw" style="background:{NO_VALUE_COLOUR}">no value</span> '
        "(e.g. the first token, which has no prediction). Hover a token for its values.</p>"
    )


def _sequence_line(sequence: dict[str, Any]) -> str:
    items = " · ".join(
        f"<code>{_esc(name)}</code> {_esc(_fmt(value))}" for name, value in sorted(sequence.items())
    )
    return f'<p class="meta">sequence: {items}</p>' if items else ""


def _turn_section(
    rank: int, turn: dict[str, Any], tokens: list[dict[str, Any]] | None, scale: ColourScale
) -> str:
    run_id = turn.get("run_id")
    heading = (
        f"#{rank} · conversation {_fmt(turn.get('conversation'))}, turn {_turn_number(turn)} "
        f"(line {_fmt(turn.get('line'))})"
    )
    response = _response_tokens(tokens)
    spans = "".join(token_span_html(tok, scale) for tok in response)
    body = f'<div class="tokens">{spans}</div>' if spans else "<p>No token data for this turn.</p>"
    return (
        f'<section class="turn" id="turn-{_esc(run_id)}"><h3>{_esc(heading)}</h3>'
        f'<p class="meta">run <code>{_esc(run_id)}</code> · risk {_esc(_fmt(turn.get("risk")))}'
        f" · {_esc(_fmt(turn.get('n_tokens')))} tokens</p>"
        f"{_sequence_line(turn.get('sequence') or {})}"
        f"<h4>Prompt</h4><blockquote>{_esc(turn.get('prompt') or '')}</blockquote>"
        f"<h4>Response</h4>{legend_html(scale)}{body}"
        '<p class="meta"><a href="#turns">back to the turns table</a></p></section>'
    )


def _cut_note(summary: dict[str, Any]) -> str:
    note = summary.get("cut_note")
    return f'<p class="note"><strong>Note:</strong> {_esc(note)}</p>' if note else ""


def render_audit_report(
    summary: dict[str, Any],
    turn_tokens: dict[str, list[dict[str, Any]]],
    *,
    colour_metric: str = "entropy",
) -> str:
    """Render a self-contained HTML5 audit report of a scored transcript.

    The document has inline CSS only, no JavaScript and no external URLs; every string from
    the data is HTML-escaped.

    Args:
        summary: the upload's audit summary: ``upload`` facts, the turn risk ``metric`` and its
            ``higher_means`` direction, ``token_metric``, ``turns`` (riskiest first) and
            ``tokens`` (riskiest tokens across the upload).
        turn_tokens: the full token list of each turn's run, keyed by run id; prompt tokens
            are skipped.
        colour_metric: token metric that sets each response token's background colour.

    Returns:
        The HTML document as a string.
    """
    turns = summary.get("turns") or []
    shown = [t for turn in turns for t in _response_tokens(turn_tokens.get(turn.get("run_id", "")))]
    scale = colour_scale(colour_metric, shown)
    sections = "".join(
        _turn_section(i, turn, turn_tokens.get(turn.get("run_id", "")), scale)
        for i, turn in enumerate(turns, start=1)
    )
    filename = (summary.get("upload") or {}).get("filename", "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>TokenPrism audit report — {_esc(filename)}</title><style>{_CSS}</style></head>"
        f"<body>{_header(summary)}<main>{_cut_note(summary)}"
        f"{_turns_table(summary)}{_tokens_table(summary)}"
        f'<h2 id="sections">Turns</h2>{sections}</main></body></html>\n'
    )

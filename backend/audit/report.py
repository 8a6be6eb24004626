"""Self-contained HTML audit report of an uploaded transcript whose assistant turns were scored.

The report is one HTML5 file with inline CSS and no JavaScript or external URLs, so it opens
offline in any browser and can be attached to a ticket or archived next to the transcript.
Every string that comes from the data passes through ``html.escape(..., quote=True)``.
"""

from __future__ import annotations

from typing import Any

from tokenprism.backend.display import (
    ColourScale,
    colour_scale,
    escape,
    format_value,
    legend_html,
    response_tokens,
    shown_number,
    token_span_html,
    visible_html,
)

EXCERPT_CHARS = 120
SEQUENCE_COLUMNS = ("geometric_mean_confidence", "mean_entropy", "perplexity")

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
.tokens { line-height: 1.9; overflow-wrap: anywhere; white-space: pre-wrap; }
.tok { padding: .05em 0; }
.meta { color: #444; font-size: .9em; }
.legend { font-size: .9em; }
.sw { padding: 0 .4em; color: #000; font-family: ui-monospace, monospace; }
.ramp { display: inline-block; width: 8em; height: .9em; vertical-align: middle;
        }
code { overflow-wrap: anywhere; }
"""


def _excerpt(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _direction_words(direction: Any) -> str:
    return {
        "uncertain": "higher = more uncertain",
        "confident": "higher = more confident",
    }.get(str(direction), "no uncertainty direction")


def _turn_href(run_id: Any) -> str:
    return escape(f"#turn-{run_id}")


def _turn_number(turn: dict[str, Any]) -> str:
    return format_value(shown_number(turn.get("turn_index")))


def _header(summary: dict[str, Any]) -> str:
    upload = summary.get("upload") or {}
    sha = str(upload.get("sha256") or "")
    facts = [
        ("file", escape(upload.get("filename", ""))),
        (
            "sha256",
            f'<code title="{escape(sha)}">{escape(sha[:12])}{"…" if len(sha) > 12 else ""}</code>',
        ),
        ("format", escape(upload.get("format", ""))),
        ("model", escape(upload.get("model", ""))),
        ("turns", escape(len(summary.get("turns") or []))),
        ("items", escape(format_value(upload.get("n_items")))),
        ("upload id", f"<code>{escape(upload.get('upload_id', ''))}</code>"),
        ("generated", escape(upload.get("created_at", ""))),
        (
            "turn risk",
            f"<code>{escape(summary.get('metric', ''))}</code> "
            f"({escape(_direction_words(summary.get('higher_means')))})",
        ),
        ("token metric", f"<code>{escape(summary.get('token_metric', ''))}</code>"),
    ]
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return f'<header><h1>TokenPrism audit report</h1><dl class="facts">{rows}</dl></header>'


def _rendering_words(turn: dict[str, Any]) -> str:
    """`` · rendered as …`` and `` · truncated: …`` when the turn was not scored plainly."""
    words = ""
    rendering = turn.get("rendering")
    if rendering and rendering != "template":
        words += f" · rendered as {str(rendering).replace('_', ' ')}"
    dropped = turn.get("truncated_tokens") or 0
    if dropped:
        words += f" · truncated: {dropped} tokens of history dropped to fit the context"
    return words


def _ingest_section(summary: dict[str, Any]) -> str:
    """What the upload held: counts, renderings, truncation and the skipped items."""
    ingest = summary.get("ingest")
    if not ingest:
        return ""
    rendering = ", ".join(
        f"{n} {how}" for how, n in sorted((ingest.get("rendering") or {}).items())
    )
    facts = [
        ("conversations", f"{ingest.get('conversations')} ({ingest.get('conversations_invalid')}"
                          " invalid, skipped)"),
        ("assistant turns found", ingest.get("assistant_turns")),
        ("scored", ingest.get("scored")),
        ("skipped", ingest.get("skipped_count")),
        ("truncated", f"{ingest.get('truncated')} turns ({ingest.get('truncated_tokens')} tokens "
                      "dropped)"),
        ("rendered", rendering or "none yet"),
        ("empty messages", ingest.get("empty_messages")),
    ]  # fmt: skip
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(format_value(v))}</dd>" for k, v in facts)
    skipped = "".join(
        f"<li>line {escape(format_value(s.get('line')))}"
        + (f", conversation {escape(s['conversation'])}" if s.get("conversation") else "")
        + (f", turn {escape(s['turn_index'] + 1)}" if s.get("turn_index") is not None else "")
        + f": {escape(s.get('reason'))}</li>"
        for s in ingest.get("skipped") or []
    )
    listed = f"<h3>Skipped</h3><ul>{skipped}</ul>" if skipped else ""
    return f'<h2 id="ingest">Upload</h2><dl class="facts">{rows}</dl>{listed}'


def _turn_row(rank: int, turn: dict[str, Any]) -> str:
    sequence = turn.get("sequence") or {}
    shown = [
        format_value(turn.get("conversation")),
        _turn_number(turn),
        format_value(turn.get("line")),
    ]
    shown += [format_value(turn.get("risk"))] + [
        format_value(sequence.get(name)) for name in SEQUENCE_COLUMNS
    ]
    cells = [f'<td class="num"><a href="{_turn_href(turn.get("run_id"))}">{rank}</a></td>']
    cells += [f'<td class="num">{escape(value)}</td>' for value in shown]
    for text in (turn.get("prompt"), turn.get("response")):
        cells.append(f'<td class="excerpt">{escape(_excerpt(text))}</td>')
    return f"<tr>{''.join(cells)}</tr>"


def _turns_table(summary: dict[str, Any]) -> str:
    metric = escape(summary.get("metric", ""))
    heads = ["rank", "conversation", "turn", "line", f"risk ({metric})"]
    heads += [escape(name) for name in SEQUENCE_COLUMNS] + ["prompt", "response"]
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
        f"conversation {format_value(tok.get('conversation'))}, turn {_turn_number(tok)}, "
        f"position {format_value(shown_number(tok.get('position')))}"
    )
    return (
        f'<tr><td class="num">{rank}</td>'
        f"<td><code>{visible_html(tok.get('text'), breaks=False)}</code></td>"
        f'<td class="num">{escape(format_value(tok.get("value")))}</td>'
        f'<td class="num">{escape(format_value(tok.get("prob")))}</td>'
        f'<td class="num">{escape(format_value(tok.get("entropy")))}</td>'
        f'<td><a href="{_turn_href(tok.get("run_id"))}">{escape(where)}</a></td></tr>'
    )


def _tokens_table(summary: dict[str, Any]) -> str:
    metric = escape(summary.get("token_metric", ""))
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


def _sequence_line(sequence: dict[str, Any]) -> str:
    items = " · ".join(
        f"<code>{escape(name)}</code> {escape(format_value(value))}"
        for name, value in sorted(sequence.items())
    )
    return f'<p class="meta">sequence: {items}</p>' if items else ""


def _turn_section(
    rank: int, turn: dict[str, Any], tokens: list[dict[str, Any]] | None, scale: ColourScale
) -> str:
    run_id = turn.get("run_id")
    heading = (
        f"#{rank} · conversation {format_value(turn.get('conversation'))}, "
        f"turn {_turn_number(turn)} (line {format_value(turn.get('line'))})"
    )
    response = response_tokens(tokens)
    spans = "".join(token_span_html(tok, scale) for tok in response)
    body = f'<div class="tokens">{spans}</div>' if spans else "<p>No token data for this turn.</p>"
    return (
        f'<section class="turn" id="turn-{escape(run_id)}"><h3>{escape(heading)}</h3>'
        f'<p class="meta">run <code>{escape(run_id)}</code> · '
        f"risk {escape(format_value(turn.get('risk')))}"
        f" · {escape(format_value(turn.get('n_tokens')))} tokens"
        f"{escape(_rendering_words(turn))}</p>"
        f"{_sequence_line(turn.get('sequence') or {})}"
        f"<h4>Prompt</h4><blockquote>{escape(turn.get('prompt') or '')}</blockquote>"
        f"<h4>Response</h4>{legend_html(scale)}{body}"
        '<p class="meta"><a href="#turns">back to the turns table</a></p></section>'
    )


def _cut_note(summary: dict[str, Any]) -> str:
    note = summary.get("cut_note")
    return f'<p class="note"><strong>Note:</strong> {escape(note)}</p>' if note else ""


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
    shown = [t for turn in turns for t in response_tokens(turn_tokens.get(turn.get("run_id", "")))]
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
        f"<title>TokenPrism audit report — {escape(filename)}</title><style>{_CSS}</style></head>"
        f"<body>{_header(summary)}<main>{_cut_note(summary)}{_ingest_section(summary)}"
        f"{_turns_table(summary)}"
        f"{_tokens_table(summary)}"
        f'<h2 id="sections">Turns</h2>{sections}</main></body></html>\n'
    )

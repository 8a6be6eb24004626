"""Side-by-side comparison of two runs: token alignment, a delta table and aligned strips.

Responses are aligned on token ids with ``difflib.SequenceMatcher`` (``autojunk=False``, so
frequent tokens such as spaces are never treated as junk). Each alignment row holds a token of
run A, a token of run B, or both; substituted stretches are paired up in order so their metric
values can be compared, and whatever is left over stands alone.
"""

from __future__ import annotations

import difflib
import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from tokenprism.analysis.registry import get_metric
from tokenprism.backend.display import (
    colour_scale,
    number,
    response_tokens,
    shown_number,
    text_colour,
    visible_html,
    visible_whitespace,
)

# Default |delta| above which a pair is highlighted, by the metric's unit.
DEFAULT_THRESHOLDS = {
    "nats": 0.5,
    "bits": 0.5 / math.log(2),  # the same 0.5 nats
    "probability": 0.1,
    "fraction": 0.1,
    "rank": 10.0,
    "bucket": 0.5,  # any change of bucket
}
FALLBACK_THRESHOLD = 0.5

COMPARE_CSS = (
    ".tp-compare { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;"
    " font-size: .9em; display: flex; flex-wrap: wrap; row-gap: .6em; align-items: flex-start; }"
    " .tp-compare .pair { display: inline-flex; flex-direction: column; margin-right: 2px;"
    " border-radius: 3px; }"
    " .tp-compare .pair.diff { outline: 2px solid #c2185b; outline-offset: 1px; }"
    " .tp-compare .tok { color: #000; padding: .05em .12em; white-space: pre; min-height: 1.3em;"
    " border-radius: 3px; }"
    " .tp-compare .tok.gap { color: #999; background: repeating-linear-gradient(45deg, #f4f4f4,"
    " #f4f4f4 3px, #e6e6e6 3px, #e6e6e6 6px); }"
    " .tp-compare-note { font-size: .85em; color: #444; margin-bottom: .4em; }"
)


def align_runs(
    tokens_a: Iterable[dict[str, Any]] | None, tokens_b: Iterable[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Align the response tokens of two runs on their token ids.

    Args:
        tokens_a: run A's tokens (prompt tokens are skipped).
        tokens_b: run B's tokens.

    Returns:
        Rows ``{"a": token | None, "b": token | None, "same": bool}`` in response order; every
        response token of both runs appears exactly once. ``same`` is True for matching ids;
        substituted tokens are paired (``same`` False) as far as both sides reach.
    """
    resp_a, resp_b = response_tokens(tokens_a), response_tokens(tokens_b)
    ids_a = [t.get("token_id") for t in resp_a]
    ids_b = [t.get("token_id") for t in resp_b]
    matcher = difflib.SequenceMatcher(None, ids_a, ids_b, autojunk=False)
    rows: list[dict[str, Any]] = []
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            rows += [
                {"a": resp_a[i], "b": resp_b[j], "same": True}
                for i, j in zip(range(a0, a1), range(b0, b1), strict=True)
            ]
            continue
        paired = min(a1 - a0, b1 - b0)
        rows += [{"a": resp_a[a0 + k], "b": resp_b[b0 + k], "same": False} for k in range(paired)]
        rows += [{"a": resp_a[i], "b": None, "same": False} for i in range(a0 + paired, a1)]
        rows += [{"a": None, "b": resp_b[j], "same": False} for j in range(b0 + paired, b1)]
    return rows


def _value(tok: dict[str, Any] | None, metric: str) -> float:
    finite = None if tok is None else number(tok.get(metric))
    return math.nan if finite is None else finite


def _delta(row: dict[str, Any], metric: str) -> float:
    return _value(row.get("b"), metric) - _value(row.get("a"), metric)


def compare_frame(rows: Sequence[dict[str, Any]], metric: str) -> pd.DataFrame:
    """The alignment as a table with both runs' values of ``metric`` and their difference.

    Args:
        rows: output of :func:`align_runs`.
        metric: token metric to compare.

    Returns:
        Columns ``pos_a, text_a, pos_b, text_b, <metric>_a, <metric>_b, delta, same``; texts
        have visible whitespace, positions count from 1 (missing ones are ``<NA>``), missing
        values and deltas involving them are NaN, and ``delta`` is B minus A.
    """
    data: dict[str, list[Any]] = {
        "pos_a": [],
        "text_a": [],
        "pos_b": [],
        "text_b": [],
        f"{metric}_a": [],
        f"{metric}_b": [],
        "delta": [],
        "same": [],
    }
    for row in rows:
        a, b = row.get("a"), row.get("b")
        data["pos_a"].append(None if a is None else shown_number(a.get("position")))
        data["text_a"].append(None if a is None else visible_whitespace(str(a.get("text", ""))))
        data["pos_b"].append(None if b is None else shown_number(b.get("position")))
        data["text_b"].append(None if b is None else visible_whitespace(str(b.get("text", ""))))
        data[f"{metric}_a"].append(_value(a, metric))
        data[f"{metric}_b"].append(_value(b, metric))
        data["delta"].append(_delta(row, metric))
        data["same"].append(bool(row.get("same")))
    frame = pd.DataFrame(data)
    for col in ("pos_a", "pos_b"):
        frame[col] = frame[col].astype("Int64")
    for col in (f"{metric}_a", f"{metric}_b", "delta"):
        frame[col] = frame[col].astype("float64")
    frame["same"] = frame["same"].astype(bool)
    return frame


def default_threshold(metric: str) -> float:
    """The |delta| that counts as a notable difference for ``metric``, from its unit.

    Args:
        metric: a token metric name.

    Returns:
        0.5 for nats metrics (and the same amount in bits), 0.1 for probabilities, 10 for
        ranks, any change for GLTR buckets, 0.5 for metrics the registry does not know.
    """
    try:
        unit = get_metric(metric).unit
    except KeyError:
        return FALLBACK_THRESHOLD
    return DEFAULT_THRESHOLDS.get(unit, FALLBACK_THRESHOLD)


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4g}"


def _side_text(label: str, tok: dict[str, Any] | None, metric: str) -> str:
    if tok is None:
        return f"{label}: (no token)"
    text = visible_whitespace(str(tok.get("text", "")))
    return (
        f"{label}: position {shown_number(tok.get('position'))} · “{text}” · "
        f"token id {tok.get('token_id')}"
        f" · {metric} {_fmt(_value(tok, metric))}"
    )


def compare_html(
    rows: Sequence[dict[str, Any]], metric: str, *, threshold: float | None = None
) -> str:
    """Two aligned token strips (A on top, B below), outlined where the runs differ.

    Args:
        rows: output of :func:`align_runs`.
        metric: token metric that colours the tokens (one report scale over both runs) and
            whose difference is highlighted.
        threshold: |B - A| above which a matched pair is outlined; by default
            :func:`default_threshold`. Unmatched tokens and substitutions are always outlined.

    Returns:
        One ``<div>`` with a ``<style>`` block, a note and a strip of pairs; each pair's tooltip
        gives both tokens, both values and the delta. Inert: escaped text, no scripts.
    """
    limit = default_threshold(metric) if threshold is None else threshold
    shown = [t for row in rows for t in (row.get("a"), row.get("b")) if t is not None]
    scale = colour_scale(metric, shown)
    parts: list[str] = []
    for row in rows:
        a, b = row.get("a"), row.get("b")
        delta = _delta(row, metric)
        differs = not row.get("same") or (not math.isnan(delta) and abs(delta) > limit)
        tip = "\n".join(
            [
                _side_text("A", a, metric),
                _side_text("B", b, metric),
                f"delta (B − A) {'—' if math.isnan(delta) else f'{delta:+.4g}'}",
            ]
        )
        cells = []
        for tok in (a, b):
            if tok is None:
                cells.append('<span class="tok gap">∅</span>')
            else:
                colour = scale.colour(tok.get(metric))
                text = visible_html(tok.get("text"), breaks=False)
                fg = text_colour(colour)
                cells.append(
                    f'<span class="tok" style="background:{colour};color:{fg}">{text}</span>'
                )
        cls = "pair diff" if differs else "pair"
        parts.append(
            f'<span class="{cls}" title="{html.escape(tip, quote=True)}">{"".join(cells)}</span>'
        )
    note = (
        f'<div class="tp-compare-note">top: run A · bottom: run B · colour: '
        f"<code>{html.escape(metric, quote=True)}</code> · outlined: unmatched, substituted or "
        f"|Δ| &gt; {limit:.3g}</div>"
    )
    body = "".join(parts) if parts else "<span>no response tokens</span>"
    return (
        f'<div class="tp-compare-wrap"><style>{COMPARE_CSS}</style>{note}'
        f'<div class="tp-compare">{body}</div></div>'
    )

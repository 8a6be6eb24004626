"""Tokens of a run as coloured, hoverable HTML, with the same colour scale as the HTML report.

The output is inert markup for ``st.html`` / ``st.markdown(unsafe_allow_html=True)``: one
``<div class="tp-tokens">`` with a scoped ``<style>`` block, no scripts, no event attributes,
and every string from the data escaped with ``html.escape(..., quote=True)``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from tokenprism.backend.display import (
    ColourScale,
    colour_scale,
    number,
    prose_html,
    response_tokens,
    token_span_html,
    token_tooltip,
    visible_html,
)
from tokenprism.backend.display import legend_html as scale_legend_html

TOOLTIP_ALTERNATIVES = 5
# Keys of a token that are identity, offsets or text, never a metric to colour by.
NON_METRIC_KEYS = frozenset(
    {"position", "token_id", "char_start", "char_end", "is_prompt", "text", "display", "top_k"}
)
CORE_METRICS = (
    "entropy",
    "surprisal_bits",
    "prob",
    "logprob",
    "rank",
    "gltr_bucket",
    "window_entropy",
    "margin",
    "kurtosis",
)


TOKENS_CSS = (
    ".tp-tokens { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif;"
    " font-size: 1em; line-height: 1.9; overflow-wrap: anywhere; white-space: pre-wrap; }"
    " .tp-tokens.tp-ws { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;"
    " font-size: .9em; }"
    " .tp-tokens .tok { padding: .1em 0; border-radius: 2px; }"
    " .tp-tokens .tok.tp-prompt { color: #6b6b6b; background: transparent;"
    " border-bottom: 1px dotted #b0b0b0; }"
)
LEGEND_CSS = (
    ".tp-legend .legend { font-size: .9em; margin: .2em 0 .5em 0; }"
    " .tp-legend .sw { padding: 0 .4em; color: #000; border-radius: 3px; }"
)


def token_scale(metric: str, tokens: Iterable[dict[str, Any]], mode: str = "fixed") -> ColourScale:
    """The report's colour scale of ``metric`` over the response tokens of ``tokens``.

    Args:
        metric: token metric that sets the colours.
        tokens: a run's tokens (prompt tokens are left out of the scale).
        mode: ``fixed`` (the registry's natural range) or ``run`` (1st–99th percentile).

    Returns:
        ``display.colour_scale`` of the response tokens.
    """
    return colour_scale(metric, response_tokens(tokens), mode=mode)


def _prompt_span(tok: dict[str, Any], metric: str, whitespace: bool) -> str:
    title = html.escape(
        token_tooltip(tok, metric, alternatives=TOOLTIP_ALTERNATIVES, token_id=True), quote=True
    )
    text = visible_html(tok.get("text")) if whitespace else prose_html(tok.get("text"))
    return f'<span class="tok tp-prompt" title="{title}">{text}</span>'


def token_html(
    tokens: Iterable[dict[str, Any]],
    metric: str,
    *,
    include_prompt: bool = False,
    mode: str = "fixed",
    whitespace: bool = False,
) -> str:
    """A run's tokens inline, each a ``<span>`` coloured by ``metric`` with a value tooltip.

    Args:
        tokens: the run's tokens as the API returns them.
        metric: token metric that sets the colours (same scale as the HTML report, built over
            the response tokens).
        include_prompt: also show the prompt tokens, dimmed and uncoloured.
        mode: the colour scale's domain (see ``display.colour_scale``).
        whitespace: draw whitespace as · ↵ → in a monospace font (default: prose).

    Returns:
        One ``<div class="tp-tokens">`` with its ``<style>``; newlines break the line, and
        each tooltip gives position, token id, exact
        logprob / prob / rank / entropy, the metric's value and the top-5 alternatives.
    """
    tokens = list(tokens or [])
    scale = token_scale(metric, tokens, mode)
    parts: list[str] = []
    for tok in tokens:
        if tok.get("is_prompt"):
            if include_prompt:
                parts.append(_prompt_span(tok, metric, whitespace))
            continue
        parts.append(
            token_span_html(
                tok, scale, alternatives=TOOLTIP_ALTERNATIVES, token_id=True, whitespace=whitespace
            )
        )
    # <wbr> lets lines wrap between tokens, not only inside them.
    body = "<wbr>".join(parts) if parts else '<span class="tp-empty">no tokens</span>'
    cls = "tp-tokens tp-ws" if whitespace else "tp-tokens"
    return f'<div class="{cls}"><style>{TOKENS_CSS}</style>{body}</div>'


def legend_html(metric: str, tokens: Iterable[dict[str, Any]], mode: str = "fixed") -> str:
    """The colour legend of ``metric`` for these tokens: which colour is uncertain, the ends.

    Args:
        metric: the colouring token metric.
        tokens: the run's tokens (the scale is built over its response tokens, as in
            :func:`token_html`).

    Returns:
        One ``<div class="tp-legend">`` with its ``<style>`` and the report's legend paragraph.
    """
    scale = token_scale(metric, tokens, mode)
    return f'<div class="tp-legend"><style>{LEGEND_CSS}</style>{scale_legend_html(scale)}</div>'


def available_token_metrics(tokens: Iterable[dict[str, Any]]) -> list[str]:
    """Token metrics with at least one finite value among the response tokens.

    Args:
        tokens: a run's tokens.

    Returns:
        The core metrics first (entropy, surprisal_bits, prob, logprob, rank, gltr_bucket,
        window_entropy, margin, kurtosis), then any others (probe, ccp, ...) alphabetically.
    """
    present: set[str] = set()
    for tok in response_tokens(tokens):
        for name, value in tok.items():
            if name not in NON_METRIC_KEYS and name not in present and number(value) is not None:
                present.add(name)
    core = [name for name in CORE_METRICS if name in present]
    return core + sorted(present.difference(CORE_METRICS))

"""Display helpers shared by the HTML audit report and the Streamlit UI.

The colour scale of a token metric, escaping with whitespace drawn visibly, number formatting,
the response-token accessor, and the token span / tooltip / legend markup. The app may import
this module and no other backend module, so it stays pure Python: nothing on its import path
loads torch, DuckDB, SQLAlchemy or transformers (the metric registry it reads is pure Python).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tokenprism.analysis.registry import get_metric

NO_VALUE_COLOUR = "#d9d9d9"
TOP_ALTERNATIVES = 3
# Values at or above these get the full "uncertain" colour; other metrics use the tokens' p95.
FIXED_MAX = {"entropy": 4.0, "surprisal_bits": 12.0, "window_entropy": 4.0}
# Confident metrics on the probability scale [0, 1] (logprob after exp).
PROBABILITY_SCALE = frozenset({"prob", "margin", "logprob"})
# rank 1 is the argmax, so it is the certain end of the rank scale.
SCALE_FLOOR = {"rank": 1.0}
TOOLTIP_VALUES = ("logprob", "prob", "rank", "entropy")

_VISIBLE = str.maketrans({" ": "·", "\n": "↵", "\t": "→", "\r": "␍"})


# ---- numbers -------------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None.

    Args:
        value: anything from API JSON or a stored row.

    Returns:
        The float for a finite int or float; None for NaN, infinities, missing values,
        strings and bools (a bool is a flag here, never a number).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def format_value(value: Any) -> str:
    """Three significant digits for floats, ints as they are, "—" for missing values."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else "—"
    return str(value)


def format_exact(value: Any) -> str:
    """Six significant digits for floats (tooltips), otherwise as :func:`format_value`."""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else "—"
    return format_value(value)


# ---- text ----------------------------------------------------------------------------------


def escape(value: object) -> str:
    """``str(value)`` escaped for HTML text and quoted attribute values."""
    return html.escape(str(value), quote=True)


def visible_whitespace(text: str) -> str:
    """Token text with spaces, newlines and tabs drawn as visible glyphs."""
    return text.translate(_VISIBLE)


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
    return newline.join(escape(visible_whitespace(part)) for part in parts)


def response_tokens(tokens: Iterable[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The analysed (non-prompt) tokens, in order.

    Args:
        tokens: a run's tokens; None counts as none.

    Returns:
        The tokens whose ``is_prompt`` is falsy.
    """
    return [t for t in tokens or [] if not t.get("is_prompt")]


# ---- colour scale --------------------------------------------------------------------------


def ramp_colour(fraction: float) -> str:
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
        finite = number(value)
        if finite is None:
            return None
        position = (self._transform(finite) - self.low) / (self.high - self.low)
        position = min(max(position, 0.0), 1.0)
        return 1.0 - position if self.direction == "confident" else position

    def colour(self, value: Any) -> str:
        """CSS colour for ``value``; grey when it is missing."""
        fraction = self.uncertainty(value)
        return NO_VALUE_COLOUR if fraction is None else ramp_colour(fraction)

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
    """Build the colour scale of ``metric`` over the shown response ``tokens``.

    Args:
        metric: token metric that sets the colours.
        tokens: every response token shown; their values give the 95th percentile for
            metrics without a fixed maximum.

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
        values = [v for v in (number(t.get(metric)) for t in tokens) if v is not None]
        high = _percentile(values, 0.95) if values else low + 1.0
    if high <= low:
        high = low + 1.0
    return ColourScale(metric, direction, low, high)


# ---- token markup --------------------------------------------------------------------------


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
    first = f"position {format_value(tok.get('position'))}"
    lines = [f"{first} · token id {format_value(tok.get('token_id'))}" if token_id else first]
    lines.append(" · ".join(f"{name} {format_exact(tok.get(name))}" for name in TOOLTIP_VALUES))
    if metric not in TOOLTIP_VALUES:
        lines.append(f"{metric} {format_exact(tok.get(metric))}")
    if tok.get("entropy_lower") is not None:  # a run from API logprobs: the entropy is bounded
        band = f"{format_exact(tok['entropy_lower'])}, {format_exact(tok.get('entropy_upper'))}"
        lines.append(f"true entropy in [{band}] nats (entropy above: top-k renormalised)")
    if tok.get("rank_gt") is not None:
        lines.append(f"rank > {format_value(tok['rank_gt'])} (outside the top-k)")
    shown = (tok.get("top_k") or [])[:alternatives]
    if shown:
        lines.append("top alternatives:")
        lines += [
            f"  {visible_whitespace(str(a.get('text', '')))}  p={format_exact(a.get('prob'))}"
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
    title = escape(token_tooltip(tok, scale.metric, alternatives=alternatives, token_id=token_id))
    return (
        f'<span class="tok" style="background:{colour}" title="{title}">'
        f"{visible_html(tok.get('text'))}</span>"
    )


def legend_html(scale: ColourScale) -> str:
    """A ``<p class="legend">`` saying which colour means uncertain, with the scale's ends."""
    green, red = scale.end_labels()
    if scale.direction == "neutral":
        meaning = f"green = low, red = high (<code>{escape(scale.metric)}</code> has no uncertainty"
        meaning += " direction)"
    else:
        meaning = "green = certain, red = uncertain"
    return (
        f'<p class="legend">Colour = <code>{escape(scale.metric)}</code>: {meaning}. '
        f'<span class="sw" style="background:{ramp_colour(0.0)}">{escape(green)}</span> '
        f'<span class="ramp"></span> '
        f'<span class="sw" style="background:{ramp_colour(1.0)}">{escape(red)}</span> · '
        f'<span class="sw" style="background:{NO_VALUE_COLOUR}">no value</span> '
        "(e.g. the first token, which has no prediction). Hover a token for its values.</p>"
    )

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


# ---- numbering and names for people -------------------------------------------------------


def shown_number(index: Any) -> int | None:
    """A stored 0-based index (turn_index, token position, prompt index) as people count it.

    Storage counts from 0; every table, caption and hover counts from 1, through this one
    function so the two never mix.

    Args:
        index: the stored index.

    Returns:
        ``index + 1`` for a non-negative int; None for anything else (missing, bool, float).
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return None
    return index + 1


def metric_label(name: str) -> str:
    """A metric's menu label: its name and the registry's unit, e.g. ``entropy (nats)``."""
    try:
        unit = get_metric(name).unit
    except KeyError:
        return name
    return f"{name} ({unit})" if unit and unit != name else name


def metric_help(name: str) -> str:
    """The registry's description of a metric (what it is, which way is uncertain)."""
    try:
        spec = get_metric(name)
    except KeyError:
        return f"{name}: not in the metric registry."
    direction = {
        "uncertain": "higher = less certain",
        "confident": "higher = more certain",
    }.get(spec.higher_means, "no uncertainty direction")
    signed = "; signed, centred on 0" if spec.signed else ""
    return f"{spec.description} ({direction}{signed})"


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


_SENTENCE_END = (".", "!", "?", "。")


def _ends_sentence(text: str) -> bool:
    return "\n" in text or text.rstrip().endswith(_SENTENCE_END)


def sentence_context(
    tokens: Iterable[dict[str, Any]] | None, position: int, *, limit: int = 90
) -> tuple[str, str, str]:
    """The sentence around the token at ``position``: text before, the token, text after.

    A sentence runs from after the last token that ends one (``.``, ``!``, ``?`` or a
    newline) up to and including the next such token; it never crosses between prompt and
    response tokens.

    Args:
        tokens: a run's tokens in order (``position``, ``text``, ``is_prompt``).
        position: the token's position in the run.
        limit: most characters kept on each side (cut at the far end, marked with ``…``).

    Returns:
        ``(before, token, after)`` as plain text (the caller escapes); three empty strings
        when no token has ``position``.
    """
    rows = list(tokens or [])
    at = next((i for i, t in enumerate(rows) if t.get("position") == position), None)
    if at is None:
        return "", "", ""
    side = bool(rows[at].get("is_prompt"))
    texts = ["" if t.get("text") is None else str(t["text"]) for t in rows]
    start = at
    while (
        start > 0
        and bool(rows[start - 1].get("is_prompt")) == side
        and not _ends_sentence(texts[start - 1])
    ):
        start -= 1
    end = at + 1
    if not _ends_sentence(texts[at]):
        while end < len(rows) and bool(rows[end].get("is_prompt")) == side:
            end += 1
            if _ends_sentence(texts[end - 1]):
                break
    before = "".join(texts[start:at]).lstrip()
    after = "".join(texts[at + 1 : end]).split("\n")[0].rstrip()
    if len(before) > limit:
        before = "…" + before[-limit:]
    if len(after) > limit:
        after = after[:limit] + "…"
    return before, texts[at], after


# ---- colour scale --------------------------------------------------------------------------

# Viridis (perceptually uniform, colour-blind safe) sampled at 9 even stops, dark to light.
SEQUENTIAL_STOPS = (
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
)  # fmt: skip
# A blue-white-red diverging palette: blue below 0, near-white at 0, red above.
DIVERGING_STOPS = (
    (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43),
)  # fmt: skip
SCALE_MODES = ("fixed", "run", "upload")
SCALE_MODE_LABELS = {
    "fixed": "fixed natural range",
    "run": "this run (1st–99th percentile)",
    "upload": "across the upload (1st–99th percentile)",
}


def _mix(stops: tuple[tuple[int, int, int], ...], x: float) -> tuple[int, int, int]:
    x = min(max(x, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    f = x - i
    a, b = stops[i], stops[i + 1]
    return (
        round(a[0] + (b[0] - a[0]) * f),
        round(a[1] + (b[1] - a[1]) * f),
        round(a[2] + (b[2] - a[2]) * f),
    )


def _css(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def ramp_colour(fraction: float) -> str:
    """Sequential palette: 0 (certain) is light viridis yellow, 1 (uncertain) dark purple."""
    return _css(_mix(SEQUENTIAL_STOPS, 1.0 - fraction))


def diverging_colour(fraction: float) -> str:
    """Diverging palette: 0 = most negative (blue), 0.5 = zero (white), 1 = most positive (red)."""
    return _css(_mix(DIVERGING_STOPS, fraction))


def _luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour."""

    def lin(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2])


def parse_rgb(colour: str) -> tuple[int, int, int]:
    """``rgb(r,g,b)`` or ``#rrggbb`` as a tuple."""
    if colour.startswith("#"):
        return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
    r, g, b = (int(part) for part in colour[colour.index("(") + 1 : -1].split(","))
    return r, g, b


def contrast_ratio(a: str, b: str) -> float:
    """WCAG contrast ratio (1–21) of two CSS colours."""
    la, lb = sorted((_luminance(parse_rgb(a)), _luminance(parse_rgb(b))), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour(background: str) -> str:
    """Black or white, whichever contrasts more with ``background``."""
    black, white = "#000000", "#ffffff"
    return (
        black if contrast_ratio(background, black) >= contrast_ratio(background, white) else white
    )


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
        low: value at the low end of the domain; values beyond the ends are clamped.
        high: value at the high end of the domain (``low = -high`` for a signed scale).
        signed: diverging palette centred on 0 (from the registry's ``signed``).
        mode: how the domain was chosen: ``fixed``, ``run`` or ``upload``.
    """

    metric: str
    direction: str
    low: float
    high: float
    signed: bool = False
    mode: str = "fixed"

    def position(self, value: Any) -> float | None:
        """Where ``value`` lies in the domain, 0 (low end) to 1 (high end); None if missing."""
        finite = number(value)
        if finite is None:
            return None
        return min(max((finite - self.low) / (self.high - self.low), 0.0), 1.0)

    def uncertainty(self, value: Any) -> float | None:
        """Position of ``value`` on the scale: 0 = certain end, 1 = uncertain end."""
        position = self.position(value)
        if position is None:
            return None
        return 1.0 - position if self.direction == "confident" else position

    def colour(self, value: Any) -> str:
        """CSS colour for ``value``; grey when it is missing."""
        if self.signed:
            position = self.position(value)
            return NO_VALUE_COLOUR if position is None else diverging_colour(position)
        fraction = self.uncertainty(value)
        return NO_VALUE_COLOUR if fraction is None else ramp_colour(fraction)

    def gradient_css(self) -> str:
        """CSS gradient from the low to the high end of the domain."""
        stops = ", ".join(self.colour(self.low + (self.high - self.low) * i / 8) for i in range(9))
        return f"linear-gradient(to right, {stops})"

    def end_labels(self) -> tuple[str, str]:
        """Labels of the low and the high end of the domain."""
        return f"{self.low:.3g}", f"{self.high:.3g}"


def _spec_facts(metric: str) -> tuple[str, bool, tuple[float, float] | None]:
    try:
        spec = get_metric(metric)
    except KeyError:
        return "neutral", False, None
    return spec.higher_means, spec.signed, spec.natural_range


def _values(tokens: Iterable[dict[str, Any]], metric: str) -> list[float]:
    return [v for v in (number(t.get(metric)) for t in tokens) if v is not None]


def colour_scale(
    metric: str,
    tokens: Iterable[dict[str, Any]],
    *,
    mode: str = "fixed",
    values: Iterable[float] | None = None,
) -> ColourScale:
    """Build the colour scale of ``metric``: palette from the registry, domain from ``mode``.

    Args:
        metric: token metric that sets the colours.
        tokens: the response tokens shown (their values give the ``run`` domain).
        mode: ``fixed`` (the registry's natural range; the run's 1st–99th percentile when the
            metric has none), ``run`` (1st–99th percentile of ``tokens``) or ``upload``
            (1st–99th percentile of ``values``, e.g. every response token of an upload).
        values: the values for ``upload`` mode.

    Returns:
        The scale. Signed metrics get a domain symmetric about 0 and the diverging palette;
        others the sequential palette oriented so the uncertain end is dark.
    """
    if mode not in SCALE_MODES:
        raise ValueError(f"unknown scale mode {mode!r}; choose one of {', '.join(SCALE_MODES)}")
    direction, signed, natural = _spec_facts(metric)
    data = (
        _values(tokens, metric)
        if mode != "upload"
        else [v for v in (number(x) for x in values or []) if v is not None]
    )
    if mode == "fixed" and natural is not None:
        low, high = natural
    elif data:
        low, high = _percentile(data, 0.01), _percentile(data, 0.99)
    else:
        low, high = natural or (0.0, 1.0)
        mode = "fixed"
    if signed:
        # centred on 0: the larger magnitude sets both ends
        reach = max(abs(low), abs(high)) or 1.0
        low, high = -reach, reach
    if high <= low:
        high = low + 1.0
    return ColourScale(metric, direction, low, high, signed, mode)


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
        Lines: position (from 1), exact logprob / prob / rank / entropy, the metric,
        alternatives.
    """
    first = f"position {format_value(shown_number(tok.get('position')))}"
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


def prose_html(text: Any) -> str:
    """Escape token text for HTML as prose: real spaces, newlines as ``<br>``."""
    parts = ("" if text is None else str(text)).split("\n")
    return "<br>".join(escape(part) for part in parts)


def token_span_html(
    tok: dict[str, Any],
    scale: ColourScale,
    *,
    alternatives: int = TOP_ALTERNATIVES,
    token_id: bool = False,
    whitespace: bool = False,
) -> str:
    """One token as a ``<span class="tok">`` coloured by ``scale``, with its tooltip.

    Args:
        tok: the token as stored.
        scale: the colour scale; its metric picks the token's value.
        alternatives: how many top-k alternatives the tooltip lists.
        token_id: also give the token id in the tooltip.
        whitespace: draw whitespace as · ↵ → (default: prose, real spaces).

    Returns:
        The escaped span, its text black or white by the background's luminance; newlines in
        the token also break the line.
    """
    colour = scale.colour(tok.get(scale.metric))
    title = escape(token_tooltip(tok, scale.metric, alternatives=alternatives, token_id=token_id))
    text = visible_html(tok.get("text")) if whitespace else prose_html(tok.get("text"))
    return (
        f'<span class="tok" style="background:{colour};color:{text_colour(colour)}" '
        f'title="{title}">{text}</span>'
    )


def legend_html(scale: ColourScale) -> str:
    """A ``<p class="legend">``: palette, the domain's ends (and 0 when signed), the mode."""
    low, high = scale.end_labels()
    m = escape(scale.metric)
    if scale.signed:
        meaning = "blue = negative, white = 0, red = positive"
    elif scale.direction == "neutral":
        meaning = f"light = low, dark = high (<code>{m}</code> has no uncertainty direction)"
    else:
        meaning = "light = certain, dark = uncertain"
    centre = (
        '<span class="zero" style="display:inline-block;width:2.2em;text-align:center">0</span>'
        if scale.signed
        else ""
    )
    swatch = (
        '<span class="ramp" style="display:inline-block;width:8em;height:.9em;'
        f'vertical-align:middle;background:{scale.gradient_css()}"></span>'
    )
    domain = f"domain [{escape(low)}, {escape(high)}] · {escape(SCALE_MODE_LABELS[scale.mode])}"
    return (
        f'<p class="legend">Colour = <code>{m}</code>: {meaning}. '
        f'<span class="lo">{escape(low)}</span> {swatch} <span class="hi">{escape(high)}</span>'
        f'{" · centre " + centre if centre else ""} · <span class="domain">{domain}</span> · '
        f'<span class="sw" style="background:{NO_VALUE_COLOUR}">no value</span> '
        "(e.g. the first token, which has no prediction). Hover a token for its values.</p>"
    )

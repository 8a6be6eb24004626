# ruff: noqa: E501  (the embedded JavaScript keeps its own line lengths)
"""A run's tokens as a self-contained HTML/JS view, recoloured in the browser.

Changing the colour metric, the scale mode, prompt-token visibility, whitespace markers or the
selected token repaints without a Streamlit rerun: the tokens are embedded as JSON and coloured
by a small script with the same palettes, natural ranges and signed flags as
``backend.display`` (the Python side passes them in, so the two cannot drift). Token text only
ever reaches the page through ``textContent``; the JSON is embedded with every ``<``, ``>`` and
``&`` written as a ``\\u`` escape so no string in it can close the script element.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tokenprism.analysis.registry import get_metric
from tokenprism.backend.display import (
    DIVERGING_STOPS,
    NO_VALUE_COLOUR,
    SCALE_MODE_LABELS,
    SEQUENTIAL_STOPS,
)

TOOLTIP_VALUES = ("logprob", "prob", "rank", "entropy")
TOP_ALTERNATIVES = 5
_TOKEN_KEYS = ("position", "token_id", "text", "is_prompt")


def _spec(metric: str) -> dict[str, Any]:
    try:
        spec = get_metric(metric)
    except KeyError:
        return {"direction": "neutral", "signed": False, "range": None, "description": ""}
    return {
        "direction": spec.higher_means,
        "signed": spec.signed,
        "range": list(spec.natural_range) if spec.natural_range else None,
        "description": spec.description,
        "unit": spec.unit,
    }


def _safe_json(value: Any) -> str:
    """JSON that cannot end or open markup inside a ``<script>`` element."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def canvas_payload(
    tokens: Iterable[dict[str, Any]],
    metrics: list[str],
    metric: str,
    *,
    upload_values: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """The data the view embeds: tokens (text, flags, metric values, top-k), specs, palettes.

    Args:
        tokens: the run's tokens as the API returns them.
        metrics: the token metrics offered in the colour menu.
        metric: the first colour metric.
        upload_values: per metric, values across the run's upload (for the ``upload`` mode).

    Returns:
        A JSON-ready dict; non-finite values become null.
    """
    rows = []
    for tok in tokens:
        row = {k: tok.get(k) for k in _TOKEN_KEYS}
        row["v"] = {m: _finite(tok.get(m)) for m in {*metrics, *TOOLTIP_VALUES}}
        row["alt"] = [
            {"text": str(a.get("text", "")), "prob": _finite(a.get("prob"))}
            for a in (tok.get("top_k") or [])[:TOP_ALTERNATIVES]
        ]
        rows.append(row)
    return {
        "tokens": rows,
        "metrics": metrics,
        "metric": metric,
        "specs": {m: _spec(m) for m in metrics},
        "sequential": [list(c) for c in SEQUENTIAL_STOPS],
        "diverging": [list(c) for c in DIVERGING_STOPS],
        "noValue": NO_VALUE_COLOUR,
        "modes": {k: v for k, v in SCALE_MODE_LABELS.items() if k != "upload" or upload_values},
        "upload": upload_values or {},
        "tooltipValues": list(TOOLTIP_VALUES),
    }


_CSS = """
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#1b1b1b}
.ctl{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center;font-size:.85em;margin:.2em 0}
.ctl select{font-size:1em}
.desc{font-size:.8em;color:#555;margin:.1em 0 .3em 0}
.legend{font-size:.82em;display:flex;gap:.45em;align-items:center;flex-wrap:wrap;margin:.2em 0 .5em}
.ramp{display:inline-block;width:9em;height:.9em;border-radius:2px;position:relative}
.zero{position:absolute;left:50%;top:-2px;bottom:-2px;border-left:2px solid #000}
.toks{line-height:1.9;overflow-wrap:anywhere;white-space:pre-wrap;font-size:1em}
.toks.ws{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
.tok{padding:.1em 0;border-radius:2px;cursor:pointer}
.tok.prompt{color:#6b6b6b;background:transparent!important;border-bottom:1px dotted #b0b0b0}
.tok.sel{outline:2px solid #e8590c;outline-offset:1px}
.pop{position:fixed;z-index:10;display:none;background:#fff;border:1px solid #bbb;
 border-radius:6px;box-shadow:0 4px 14px rgba(0,0,0,.18);padding:.5em .7em;font-size:.8em;
 max-width:22em;pointer-events:none}
.pop .t{font-family:ui-monospace,monospace;font-size:1.1em;background:#f3f3f3;padding:0 .3em}
.pop table{border-collapse:collapse;margin:.3em 0}
.pop td{padding:0 .6em 0 0;font-variant-numeric:tabular-nums}
.bar{height:.75em;background:#3b528b;display:inline-block;vertical-align:middle}
.alt{display:grid;grid-template-columns:7em 8em auto;gap:.1em .4em;align-items:center}
.alt span:first-child{font-family:ui-monospace,monospace;overflow:hidden;white-space:pre;text-overflow:ellipsis}
"""

_JS = r"""
const D = JSON.parse(document.getElementById('tp-data').textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => { const e = document.createElement(tag);
  if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };
const fmt = (v, d) => v === null || v === undefined ? '—' : Number(v).toPrecision(d || 4);
function pct(sorted, q) { const k = (sorted.length - 1) * q, lo = Math.floor(k),
  hi = Math.min(lo + 1, sorted.length - 1); return sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo); }
function mix(stops, x) { x = Math.min(Math.max(x, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2), f = x - i, a = stops[i], b = stops[i + 1];
  return [0, 1, 2].map(j => Math.round(a[j] + (b[j] - a[j]) * f)); }
function lum(c) { const l = c.map(v => { v /= 255;
  return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2]; }
function ink(c) { const L = lum(c); return (L + 0.05) / 0.05 >= 1.05 / (L + 0.05) ? '#000' : '#fff'; }
function scale(metric, mode) {
  const s = D.specs[metric] || {direction: 'neutral', signed: false, range: null};
  let vals = mode === 'upload' ? (D.upload[metric] || []) :
    D.tokens.filter(t => !t.is_prompt).map(t => t.v[metric]).filter(v => v !== null);
  let lo, hi;
  if (mode === 'fixed' && s.range) { [lo, hi] = s.range; }
  else if (vals.length) { vals = vals.slice().sort((a, b) => a - b); lo = pct(vals, .01); hi = pct(vals, .99); }
  else { [lo, hi] = s.range || [0, 1]; }
  if (s.signed) { const r = Math.max(Math.abs(lo), Math.abs(hi)) || 1; lo = -r; hi = r; }
  if (!(hi > lo)) hi = lo + 1;
  return {lo, hi, signed: s.signed, direction: s.direction};
}
function colour(sc, v) {
  if (v === null || v === undefined) return null;
  const p = Math.min(Math.max((v - sc.lo) / (sc.hi - sc.lo), 0), 1);
  if (sc.signed) return mix(D.diverging, p);
  const u = sc.direction === 'confident' ? 1 - p : p;
  return mix(D.sequential, 1 - u);
}
const css = (c) => 'rgb(' + c.join(',') + ')';
const spans = [];
function build() {
  const box = $('toks');
  D.tokens.forEach((t, i) => {
    const s = el('span', t.is_prompt ? 'tok prompt' : 'tok');
    s.dataset.i = i; spans.push(s); box.appendChild(s);
    box.appendChild(document.createElement('wbr'));
  });
  setText();
}
const WS = {' ': '·', '\n': '↵\n', '\t': '→', '\r': '␍'};
function setText() {
  const ws = $('ws').checked; $('toks').classList.toggle('ws', ws);
  spans.forEach((s, i) => { const t = String(D.tokens[i].text ?? '');
    s.textContent = ws ? t.replace(/[ \n\t\r]/g, c => WS[c]) : t; });
}
function paint() {
  const metric = $('metric').value, mode = $('mode').value, showPrompt = $('prompt').checked;
  const sc = scale(metric, mode);
  // a 256-step lookup table: each token then costs one index, not a colour computation
  const lut = [], inks = [];
  for (let k = 0; k < 256; k++) { const c = colour(sc, sc.lo + (sc.hi - sc.lo) * k / 255);
    lut.push(css(c)); inks.push(ink(c)); }
  const span = sc.hi - sc.lo;
  for (let i = 0; i < spans.length; i++) {
    const t = D.tokens[i], s = spans[i];
    if (t.is_prompt) { s.style.display = showPrompt ? '' : 'none'; continue; }
    const v = t.v[metric];
    if (v === null || v === undefined) { s.style.background = D.noValue; s.style.color = '#000'; continue; }
    const k = Math.round(Math.min(Math.max((v - sc.lo) / span, 0), 1) * 255);
    s.style.background = lut[k]; s.style.color = inks[k];
  }
  legend(metric, mode, sc);
  return sc;
}
function legend(metric, mode, sc) {
  const g = [];
  for (let i = 0; i <= 8; i++) g.push(css(colour(sc, sc.lo + (sc.hi - sc.lo) * i / 8)));
  $('ramp').style.background = 'linear-gradient(to right,' + g.join(',') + ')';
  $('zero').style.display = sc.signed ? '' : 'none';
  $('lo').textContent = fmt(sc.lo, 3); $('hi').textContent = fmt(sc.hi, 3);
  $('meaning').textContent = sc.signed ? 'blue = negative · white = 0 · red = positive'
    : sc.direction === 'neutral' ? 'light = low · dark = high'
    : 'light = certain · dark = uncertain';
  $('domain').textContent = 'domain [' + fmt(sc.lo, 3) + ', ' + fmt(sc.hi, 3) + '] · ' + D.modes[mode];
  const s = D.specs[metric] || {};
  $('desc').textContent = metric + (s.unit ? ' (' + s.unit + ')' : '') + ': ' + (s.description || '');
}
function pop(ev, i) {
  const t = D.tokens[i], p = $('pop'); p.replaceChildren();
  const head = el('div'); head.append(el('b', null, '#' + (t.position + 1) + ' '), el('span', 't', t.text));
  p.appendChild(head);
  const tb = el('table'), metric = $('metric').value;
  const names = D.tooltipValues.concat(D.tooltipValues.includes(metric) ? [] : [metric]);
  names.forEach(n => { const r = el('tr'); r.append(el('td', null, n), el('td', null, fmt(t.v[n], 6))); tb.appendChild(r); });
  p.appendChild(tb);
  if (t.alt.length) { p.appendChild(el('div', null, 'top alternatives'));
    const g = el('div', 'alt');
    t.alt.forEach(a => { const bar = el('span', 'bar'); bar.style.width = (100 * (a.prob || 0)) + '%';
      const w = el('span'); w.appendChild(bar);
      g.append(el('span', null, JSON.stringify(a.text)), w, el('span', null, fmt(a.prob, 3))); });
    p.appendChild(g); }
  p.style.display = 'block';
  const x = Math.min(ev.clientX + 12, window.innerWidth - p.offsetWidth - 8);
  const y = ev.clientY + 16 + p.offsetHeight > window.innerHeight ? ev.clientY - p.offsetHeight - 8 : ev.clientY + 16;
  p.style.left = Math.max(4, x) + 'px'; p.style.top = Math.max(4, y) + 'px';
}
function init() {
  const m = $('metric');
  D.metrics.forEach(n => { const o = el('option', null, n); o.value = n; m.appendChild(o); });
  m.value = D.metric;
  const md = $('mode');
  Object.entries(D.modes).forEach(([k, v]) => { const o = el('option', null, v); o.value = k; md.appendChild(o); });
  build(); paint();
  ['metric', 'mode', 'prompt'].forEach(id => $(id).addEventListener('change', paint));
  $('ws').addEventListener('change', setText);
  const box = $('toks');
  box.addEventListener('mousemove', ev => { const i = ev.target.dataset && ev.target.dataset.i;
    if (i !== undefined) pop(ev, +i); else $('pop').style.display = 'none'; });
  box.addEventListener('mouseleave', () => { $('pop').style.display = 'none'; });
  box.addEventListener('click', ev => { const i = ev.target.dataset && ev.target.dataset.i;
    if (i === undefined) return; spans.forEach(s => s.classList.remove('sel'));
    ev.target.classList.add('sel'); pop(ev, +i); });
  window.tpRecolour = (metric, mode) => { const t0 = performance.now();
    if (metric) m.value = metric; if (mode) md.value = mode; paint();
    void document.body.offsetHeight; return performance.now() - t0; };
}
init();
"""

_BODY = """
<div class="ctl">
 <label>Colour tokens by <select id="metric"></select></label>
 <label>Scale <select id="mode"></select></label>
 <label><input type="checkbox" id="prompt"> prompt tokens</label>
 <label><input type="checkbox" id="ws"> whitespace markers</label>
</div>
<div class="desc" id="desc"></div>
<div class="legend"><span id="meaning"></span><span id="lo"></span>
 <span class="ramp" id="ramp"><span class="zero" id="zero"></span></span><span id="hi"></span>
 <span id="domain"></span><span style="background:{no_value};padding:0 .4em">no value</span></div>
<div class="toks" id="toks"></div>
<div class="pop" id="pop"></div>
"""


def token_canvas_html(
    tokens: Iterable[dict[str, Any]],
    metrics: list[str],
    metric: str,
    *,
    upload_values: dict[str, list[float]] | None = None,
) -> str:
    """A complete HTML document: controls, legend, tokens and pop-over, coloured in the page.

    Args:
        tokens: the run's tokens.
        metrics: token metrics offered in the colour menu (the first colour is ``metric``).
        metric: the first colour metric.
        upload_values: values across the upload per metric; offers the ``upload`` scale mode.

    Returns:
        The document for ``st.components.v1.html``.
    """
    data = _safe_json(canvas_payload(tokens, metrics, metric, upload_values=upload_values))
    body = _BODY.replace("{no_value}", NO_VALUE_COLOUR)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><style>{_CSS}</style></head><body>"
        f"{body}<script type='application/json' id='tp-data'>{data}</script>"
        f"<script>{_JS}</script></body></html>"
    )

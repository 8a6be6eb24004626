# ruff: noqa: E501  (the embedded JavaScript keeps its own line lengths)
"""A run's tokens as a self-contained HTML/JS view, recoloured in the browser.

This is the token view of every run on screen. Changing the colour metric, the scale mode,
prompt-token visibility, whitespace markers or the selected token repaints without a Streamlit
rerun: the tokens are embedded as JSON and coloured
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
    metric_help,
    metric_label,
)

TOOLTIP_VALUES = ("logprob", "prob", "rank", "entropy")
TOP_ALTERNATIVES = 5
_TOKEN_KEYS = ("position", "token_id", "text", "is_prompt")


def _spec(metric: str) -> dict[str, Any]:
    try:
        spec = get_metric(metric)
    except KeyError:
        return {
            "direction": "neutral",
            "signed": False,
            "range": None,
            "description": metric_help(metric),
            "label": metric_label(metric),
        }
    return {
        "direction": spec.higher_means,
        "signed": spec.signed,
        "range": list(spec.natural_range) if spec.natural_range else None,
        "description": spec.description,
        "unit": spec.unit,
        "label": metric_label(metric),
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
    upload_domains: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """The data the view embeds: tokens (text, flags, metric values, top-k), specs, palettes.

    Args:
        tokens: the run's tokens as the API returns them.
        metrics: the token metrics offered in the colour menu.
        metric: the first colour metric.
        upload_domains: per metric, the 1st and 99th percentile across the run's upload (the
            ``upload`` scale mode is offered when given).

    Returns:
        A JSON-ready dict; non-finite values become null.
    """
    domains = {
        m: [float(lo), float(hi)]
        for m, (lo, hi) in (upload_domains or {}).items()
        if _finite(lo) is not None and _finite(hi) is not None
    }
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
        "modes": {k: v for k, v in SCALE_MODE_LABELS.items() if k != "upload" or domains},
        "upload": domains,
        "tooltipValues": list(TOOLTIP_VALUES),
    }


_CSS = """
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#1b1b1b}
.ctl{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center;font-size:.85em;margin:.2em 0}
.ctl select{font-size:1em;max-width:22em}
.desc{font-size:.8em;color:#555;margin:.1em 0 .3em 0}
.legend{font-size:.82em;display:flex;gap:.45em;align-items:center;flex-wrap:wrap;margin:.2em 0 .5em}
.ramp{display:inline-block;width:9em;height:.9em;border-radius:2px;position:relative}
.zero{position:absolute;left:50%;top:-2px;bottom:-2px;border-left:2px solid #000}
.toks{line-height:1.9;overflow-wrap:anywhere;white-space:pre-wrap;font-size:1em;
 min-height:14em;max-height:34em;overflow-y:auto;contain:content}
.toks.ws{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
.para{content-visibility:auto}
.tok{padding:.1em 0;border-radius:2px;cursor:pointer}
.tok.prompt{color:#6b6b6b;background:transparent;border-bottom:1px dotted #b0b0b0}
.toks.noprompt .prompt{display:none}
.tok.sel{outline:2px solid #e8590c;outline-offset:1px}
.pop{position:fixed;z-index:10;display:none;background:#fff;border:1px solid #bbb;
 border-radius:6px;box-shadow:0 4px 14px rgba(0,0,0,.18);padding:.45em .65em;font-size:.78em;
 max-width:26em;pointer-events:none}
.pop .t{font-family:ui-monospace,monospace;font-size:1.1em;background:#f3f3f3;padding:0 .3em;
 white-space:pre}
.pop .vals{display:grid;grid-template-columns:auto auto auto auto;gap:0 .7em;margin:.3em 0;
 font-variant-numeric:tabular-nums}
.pop .vals .cur{font-weight:700}
.bar{height:.75em;background:#3b528b;display:inline-block;vertical-align:middle}
.alt{display:grid;grid-template-columns:8em 8em auto;gap:.1em .4em;align-items:center}
.alt>span:nth-child(3n+1){font-family:ui-monospace,monospace;overflow:hidden;white-space:pre;
 text-overflow:ellipsis;min-width:0}
"""

# Colouring is a stylesheet swap. At load every response token gets, per metric, a class naming
# its colour bin (q<metric>_<bin>, bins on a grid that spans every scale mode's domain, so the
# clamping at the domain ends is exact); a repaint writes BINS + 1 rules for the chosen metric
# and scale into one <style>. No token is touched, so a change costs one style recalculation
# and a paint, whatever the number of tokens.
_JS = r"""
const D = JSON.parse(document.getElementById('tp-data').textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => { const e = document.createElement(tag);
  if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };
const fmt = (v, d) => v === null || v === undefined ? '—' : Number(v).toPrecision(d || 4);
const BINS = 255;
const WS = {' ': '·', '\n': '↵\n', '\t': '→', '\r': '␍'};
const visible = (s) => String(s ?? '').replace(/[ \n\t\r]/g, c => WS[c]);
const GLYPH = {' ': '·', '\n': '↵', '\t': '→', '\r': '␍'};
const oneLine = (s) => String(s ?? '').replace(/[ \n\t\r]/g, c => GLYPH[c]);
function pct(sorted, q) { const k = (sorted.length - 1) * q, lo = Math.floor(k),
  hi = Math.min(lo + 1, sorted.length - 1); return sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo); }
function mix(stops, x) { x = Math.min(Math.max(x, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2), f = x - i, a = stops[i], b = stops[i + 1];
  return [0, 1, 2].map(j => Math.round(a[j] + (b[j] - a[j]) * f)); }
function lum(c) { const l = c.map(v => { v /= 255;
  return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2]; }
function ink(c) { const L = lum(c); return (L + 0.05) / 0.05 >= 1.05 / (L + 0.05) ? '#000' : '#fff'; }
const scales = {};
function scale(metric, mode) {
  const key = metric + '\u0000' + mode; if (scales[key]) return scales[key];
  const s = D.specs[metric] || {direction: 'neutral', signed: false, range: null};
  let lo, hi;
  // a metric the upload has no values of falls back to this run's percentiles
  if (mode === 'upload' && D.upload[metric]) { [lo, hi] = D.upload[metric]; }
  else if (mode === 'fixed' && s.range) { [lo, hi] = s.range; }
  else {
    const vals = D.tokens.filter(t => !t.is_prompt).map(t => t.v[metric]).filter(v => v !== null);
    if (vals.length) { vals.sort((a, b) => a - b); lo = pct(vals, .01); hi = pct(vals, .99); }
    else { [lo, hi] = s.range || [0, 1]; }
  }
  if (s.signed) { const r = Math.max(Math.abs(lo), Math.abs(hi)) || 1; lo = -r; hi = r; }
  if (!(hi > lo)) hi = lo + 1;
  return (scales[key] = {lo, hi, signed: s.signed, direction: s.direction});
}
function colour(sc, v) {
  const p = Math.min(Math.max((v - sc.lo) / (sc.hi - sc.lo), 0), 1);
  if (sc.signed) return mix(D.diverging, p);
  const u = sc.direction === 'confident' ? 1 - p : p;
  return mix(D.sequential, 1 - u);
}
const css = (c) => 'rgb(' + c.join(',') + ')';
const grid = {};
function buildGrid() {
  D.metrics.forEach(m => { const ds = Object.keys(D.modes).map(md => scale(m, md));
    grid[m] = {lo: Math.min(...ds.map(d => d.lo)), hi: Math.max(...ds.map(d => d.hi))}; });
}
function binClass(t) {
  if (t.is_prompt) return 'tok prompt';
  const parts = ['tok'];
  D.metrics.forEach((m, i) => { const v = t.v[m], g = grid[m];
    if (v === null || v === undefined) { parts.push('q' + i + 'n'); return; }
    parts.push('q' + i + '_' + Math.round(Math.min(Math.max((v - g.lo) / (g.hi - g.lo), 0), 1) * BINS)); });
  return parts.join(' ');
}
const spans = [];
// Paragraphs (tokens up to a newline) are blocks with content-visibility:auto, so a repaint
// restyles and paints only the paragraphs on screen, not every token of a long run.
function para(chars) { const p = el('div', 'para');
  p.style.containIntrinsicBlockSize = 'auto ' + (1.9 * Math.max(1, Math.ceil(chars / 110))) + 'em';
  return p; }
function build() {
  buildGrid();
  const box = $('toks'), frag = document.createDocumentFragment();
  let block = [], chars = 0;
  const flush = () => { if (!block.length) return; const p = para(chars); p.append(...block);
    frag.appendChild(p); block = []; chars = 0; };
  D.tokens.forEach((t, i) => {
    const s = el('span', binClass(t)), text = String(t.text ?? '');
    s.dataset.i = i; spans.push(s); block.push(s); chars += text.length;
    if (text.includes('\n')) flush();
  });
  flush();
  box.appendChild(frag);
  setText();
}
function setText() {
  const ws = $('ws').checked; $('toks').classList.toggle('ws', ws);
  spans.forEach((s, i) => { const t = String(D.tokens[i].text ?? '');
    s.textContent = ws ? visible(t) : t; });
}
const rules = {};
function sheet(metric, mode, sc) {
  const key = metric + '\u0000' + mode; if (rules[key]) return rules[key];
  const i = D.metrics.indexOf(metric), g = grid[metric];
  const out = ['.q' + i + 'n{background:' + D.noValue + ';color:#000}'];
  for (let b = 0; b <= BINS; b++) { const c = colour(sc, g.lo + (g.hi - g.lo) * b / BINS);
    out.push('.q' + i + '_' + b + '{background:' + css(c) + ';color:' + ink(c) + '}'); }
  return (rules[key] = out.join('\n'));
}
function paint() {
  const metric = $('metric').value, mode = $('mode').value, sc = scale(metric, mode);
  $('tp-colours').textContent = sheet(metric, mode, sc);
  legend(metric, mode, sc);
  return sc;
}
function prompts() { $('toks').classList.toggle('noprompt', !$('prompt').checked); }
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
  $('desc').textContent = (s.label || metric) + ': ' + (s.description || '');
}
let shown = -1, pinned = false;
function pop(ev, i) {
  const p = $('pop');
  if (i !== shown) {
    shown = i; const t = D.tokens[i]; p.replaceChildren();
    const head = el('div');
    head.append(el('b', null, '#' + (t.position + 1) + ' '), el('span', 't', oneLine(t.text)));
    if (t.is_prompt) head.append(el('i', null, ' prompt'));
    p.appendChild(head);
    const metric = $('metric').value, vals = el('div', 'vals');
    const names = [metric].concat(D.tooltipValues, D.metrics).filter((n, k, a) => a.indexOf(n) === k);
    names.forEach(n => { const v = t.v[n]; if ((v === null || v === undefined) && n !== metric) return;
      vals.append(el('span', n === metric ? 'cur' : null, n), el('span', n === metric ? 'cur' : null, fmt(v, 6))); });
    p.appendChild(vals);
    // runs from API logprobs: the entropy shown is bounded, and the rank may lie past the top-k
    if (t.v.entropy_lower !== null && t.v.entropy_lower !== undefined) p.appendChild(el('div', null,
      'true entropy in [' + fmt(t.v.entropy_lower, 6) + ', ' + fmt(t.v.entropy_upper, 6) + '] nats (entropy above: top-k renormalised)'));
    if (t.v.rank_gt !== null && t.v.rank_gt !== undefined) p.appendChild(el('div', null, 'rank > ' + t.v.rank_gt + ' (outside the top-k)'));
    if (t.alt.length) { p.appendChild(el('div', null, 'top alternatives'));
      const g = el('div', 'alt');
      t.alt.forEach(a => { const bar = el('span', 'bar'); bar.style.width = (100 * (a.prob || 0)) + '%';
        const w = el('span'); w.appendChild(bar);
        g.append(el('span', null, oneLine(a.text)), w, el('span', null, fmt(a.prob, 3))); });
      p.appendChild(g); }
  }
  p.style.display = 'block';
  const x = Math.min(ev.clientX + 12, window.innerWidth - p.offsetWidth - 8);
  // below the pointer, else above it, else as low as the frame allows (beside the pointer,
  // never over the controls at the top)
  const h = p.offsetHeight, below = ev.clientY + 16, above = ev.clientY - h - 8;
  const y = below + h <= window.innerHeight ? below : above >= 4 ? above : window.innerHeight - h - 4;
  p.style.left = Math.max(4, x) + 'px'; p.style.top = Math.max(4, y) + 'px';
}
function hide() { if (!pinned) { $('pop').style.display = 'none'; shown = -1; } }
function init() {
  const m = $('metric');
  D.metrics.forEach(n => { const o = el('option', null, (D.specs[n] || {}).label || n); o.value = n; m.appendChild(o); });
  m.value = D.metric;
  const md = $('mode');
  Object.entries(D.modes).forEach(([k, v]) => { const o = el('option', null, v); o.value = k; md.appendChild(o); });
  build(); prompts(); paint();
  ['metric', 'mode'].forEach(id => $(id).addEventListener('change', () => { shown = -1; paint(); }));
  $('prompt').addEventListener('change', prompts);
  $('ws').addEventListener('change', setText);
  const box = $('toks');
  box.addEventListener('mousemove', ev => { if (pinned) return; const i = ev.target.dataset && ev.target.dataset.i;
    if (i !== undefined) pop(ev, +i); else hide(); });
  box.addEventListener('mouseleave', hide);
  box.addEventListener('click', ev => { const i = ev.target.dataset && ev.target.dataset.i;
    spans.forEach(s => s.classList.remove('sel'));
    if (i === undefined || (pinned && shown === +i)) { pinned = false; hide(); return; }
    ev.target.classList.add('sel'); pinned = false; pop(ev, +i); pinned = true; });
  // for the browser test: repaint, then the time until the style is computed (sync) ...
  window.tpRecolour = (metric, mode) => { const t0 = performance.now();
    if (metric) m.value = metric; if (mode) md.value = mode; paint();
    void document.body.offsetHeight;
    return performance.now() - t0; };
  // ... and until the frame with the new colours has been painted
  window.tpRecolourFrame = (metric, mode, done) => { const t0 = performance.now();
    if (metric) m.value = metric; if (mode) md.value = mode; paint();
    requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0)); };
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
 <span id="domain"></span><span style="background:{no_value};padding:0 .4em">no value</span>
 <span style="color:#666">· hover a token for its values, click to pin</span></div>
<div class="toks noprompt" id="toks"></div>
<div class="pop" id="pop"></div>
"""


def token_canvas_html(
    tokens: Iterable[dict[str, Any]],
    metrics: list[str],
    metric: str,
    *,
    upload_domains: dict[str, tuple[float, float]] | None = None,
) -> str:
    """A complete HTML document: controls, legend, tokens and pop-over, coloured in the page.

    Args:
        tokens: the run's tokens.
        metrics: token metrics offered in the colour menu (the first colour is ``metric``).
        metric: the first colour metric.
        upload_domains: per metric, the 1st–99th percentile across the upload; offers the
            ``upload`` scale mode.

    Returns:
        The document for ``st.iframe`` (content-sized; the token box scrolls past ~34 lines).
    """
    data = _safe_json(canvas_payload(tokens, metrics, metric, upload_domains=upload_domains))
    body = _BODY.replace("{no_value}", NO_VALUE_COLOUR)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><style>{_CSS}</style>"
        "<style id='tp-colours'></style></head><body>"
        f"{body}<script type='application/json' id='tp-data'>{data}</script>"
        f"<script>{_JS}</script></body></html>"
    )

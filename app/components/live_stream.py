# ruff: noqa: E501  (the embedded JavaScript keeps its own line lengths)
"""Explore's live view: a self-contained HTML/JS page that streams one generation itself.

Streamlit reruns are far too slow to show tokens as they arrive, so the page opens
``POST /api/v1/generate/stream`` from the browser (``fetch`` + a ``ReadableStream`` reader over
the server-sent events), colours each token as it comes, grows the metric line, draws a
marker where a stop / mark / branch rule fired and offers a Stop button that asks the server
to cancel (``POST /generate/stream/{id}/cancel``; the model loop ends within one token and the
partial run is still stored). The API admits the page's origin only when it is one of
``TOKENPRISM_UI_ORIGINS`` (``tokenprism up`` sets its own); otherwise the page says so.

Token text only ever reaches the page through ``textContent``; the configuration is embedded
as JSON with ``<``, ``>`` and ``&`` escaped so no string in it can close the script element.
"""

from __future__ import annotations

from typing import Any

from tokenprism.app.components.token_canvas import _safe_json, _spec
from tokenprism.backend.display import NO_VALUE_COLOUR, SEQUENTIAL_STOPS

LIVE_METRICS = ("entropy", "logprob", "window_entropy", "probe")
# words, not symbols: headless and minimal systems often lack the fonts for ⏹ ⚑ ⑂
MARKER_SYMBOLS = {"stop": "stop", "mark": "mark", "branch": "branch"}


def parse_rules(text: str) -> list[dict[str, Any]]:
    """The rules field of Explore (``;``-separated ``METRIC>X[:PATIENCE][:ACTION]``, as the CLI's
    ``--stop-when``) as ``stop_when`` request items.

    Raises:
        ValueError: naming the rule that is not understood.
    """
    from tokenprism.analysis.stream_rules import parse_rule

    out = []
    for spec in (part.strip() for part in text.split(";")):
        if not spec:
            continue
        rule = parse_rule(spec)
        out.append(
            {
                "metric": rule.metric,
                "op": ">" if rule.above else "<",
                "threshold": rule.threshold,
                "patience": rule.patience,
                "action": rule.action,
            }
        )
    return out


def live_payload(
    api_url: str, token: str | None, body: dict[str, Any], *, nonce: int = 0
) -> dict[str, Any]:
    """What the page embeds: where to stream from, the request, colour specs, markers.

    Args:
        api_url: the API's base URL as the browser reaches it (no ``/api/v1``).
        token: the bearer token the UI uses (None when the API has none).
        body: the ``POST /generate/stream`` request body.
        nonce: a counter that makes each Run press a new page (a new generation).
    """
    metrics = [m for m in LIVE_METRICS if m != "probe" or body.get("probe")]
    return {
        "url": api_url.rstrip("/") + "/api/v1/generate/stream",
        "token": token or None,
        "body": body,
        "metrics": metrics,
        "specs": {m: _spec(m) for m in metrics},
        "sequential": [list(c) for c in SEQUENTIAL_STOPS],
        "noValue": NO_VALUE_COLOUR,
        "markers": MARKER_SYMBOLS,
        "rules": body.get("stop_when", []),
        "nonce": nonce,
    }


_CSS = """
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#1b1b1b}
.bar{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center;font-size:.85em;margin:.2em 0 .4em}
button{font-size:1em;padding:.15em .8em;border-radius:5px;border:1px solid #c92a2a;background:#fff;color:#c92a2a;cursor:pointer}
button:disabled{border-color:#bbb;color:#999;cursor:default}
#status{font-variant-numeric:tabular-nums}
.toks{line-height:1.9;overflow-wrap:anywhere;white-space:pre-wrap;min-height:2em}
.tok{padding:.1em 0;border-radius:2px}
.tok.marked{text-decoration:underline wavy #862e9c}
.mk{font-size:.7em;font-weight:700;padding:.05em .3em;margin:0 .15em;border-radius:3px;color:#fff;cursor:help;vertical-align:middle}
.mk.stop{background:#c92a2a}.mk.mark{background:#862e9c}.mk.branch{background:#1864ab}
canvas{box-sizing:border-box;width:100%;height:150px;border:1px solid #e3e3e3;border-radius:4px;margin-top:.5em}
.legend{font-size:.8em;color:#555}
.err{color:#c92a2a;font-size:.9em;margin:.3em 0}
#tp-done{font-size:.85em;margin:.4em 0;padding:.3em .6em;background:#f1f3f5;border-radius:4px}
"""

_JS = r"""
const C = JSON.parse(document.getElementById('tp-live').textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => { const e = document.createElement(tag);
  if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };
const fmt = (v, d) => v === null || v === undefined ? '—' : Number(v).toPrecision(d || 4);
const toks = [], spans = [], lastMark = {};
let streamId = null, controller = new AbortController(), finished = false, drawPending = false;
function mix(stops, x) { x = Math.min(Math.max(x, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2), f = x - i, a = stops[i], b = stops[i + 1];
  return [0, 1, 2].map(j => Math.round(a[j] + (b[j] - a[j]) * f)); }
function ink(c) { const l = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  const L = 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2]; return (L + 0.05) / 0.05 >= 1.05 / (L + 0.05) ? '#000' : '#fff'; }
function range(metric) {
  const s = C.specs[metric] || {};
  if (s.range) return s.range;
  const v = toks.map(t => t[metric]).filter(x => x !== null && x !== undefined);
  if (!v.length) return [0, 1];
  const lo = Math.min(...v), hi = Math.max(...v); return [lo, hi > lo ? hi : lo + 1];
}
function paintOne(i, metric, r) {
  const v = toks[i][metric], s = spans[i], spec = C.specs[metric] || {};
  if (v === null || v === undefined) { s.style.background = C.noValue; s.style.color = '#000'; return; }
  let p = Math.min(Math.max((v - r[0]) / (r[1] - r[0]), 0), 1);
  if (spec.direction === 'confident') p = 1 - p;
  const c = mix(C.sequential, 1 - p); s.style.background = 'rgb(' + c.join(',') + ')'; s.style.color = ink(c);
}
function paintAll() { const m = $('metric').value, r = range(m); for (let i = 0; i < spans.length; i++) paintOne(i, m, r); }
function marker(f, index) {
  const m = el('span', 'mk ' + f.action, C.markers[f.action] || '!');
  m.title = f.action + ' at token ' + index + ': ' + f.spec;
  m.dataset.action = f.action; return m;
}
function addToken(t) {
  toks.push(t);
  const s = el('span', 'tok', t.text); s.dataset.i = toks.length - 1;
  s.title = '#' + t.index + '  entropy ' + fmt(t.entropy) + '  logprob ' + fmt(t.logprob)
    + (t.top ? '\nalternatives: ' + t.top.map(a => JSON.stringify(a.text) + ' ' + fmt(Math.exp(a.logprob), 3)).join(', ') : '');
  spans.push(s); $('toks').appendChild(s);
  if (t.branch) $('toks').insertBefore(marker({action: 'branch', spec: 'branched: ' + t.branch.alternatives.length + ' alternatives'}, t.index), s);
  (t.rules || []).forEach(f => {
    if (f.action === 'mark') { s.classList.add('marked');  // one flag where a marked span starts
      const start = lastMark[f.rule] !== t.index - 1; lastMark[f.rule] = t.index; if (!start) return; }
    if (f.action !== 'branch') $('toks').appendChild(marker(f, t.index)); });
  const m = $('metric').value;
  if ((C.specs[m] || {}).range) paintOne(spans.length - 1, m, range(m)); else paintAll();
  $('status').textContent = 'generating… ' + toks.length + ' tokens';
  if (!drawPending) { drawPending = true; requestAnimationFrame(() => { drawPending = false; draw(); }); }
}
function draw() {
  const cv = $('line'), w = cv.clientWidth, h = cv.clientHeight, dpr = window.devicePixelRatio || 1;
  cv.width = w * dpr; cv.height = h * dpr; const g = cv.getContext('2d'); g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const m = $('metric').value, series = [[m, '#1864ab']];
  if (m === 'entropy') series.push(['window_entropy', '#e8590c']);
  const rules = C.rules.filter(r => series.some(s => s[0] === r.metric));
  const all = [];
  series.forEach(([k]) => toks.forEach(t => { if (t[k] !== null && t[k] !== undefined) all.push(t[k]); }));
  rules.forEach(r => all.push(r.threshold));
  if (!all.length) return;
  let lo = Math.min(...all), hi = Math.max(...all); if (!(hi > lo)) hi = lo + 1;
  const n = Math.max(toks.length, (C.body.max_new_tokens || 64)), pad = 6;
  const X = i => pad + (w - 2 * pad) * i / Math.max(n - 1, 1), Y = v => h - pad - (h - 2 * pad) * (v - lo) / (hi - lo);
  g.setLineDash([4, 3]); g.strokeStyle = '#c92a2a'; g.lineWidth = 1;
  rules.forEach(r => { g.beginPath(); g.moveTo(pad, Y(r.threshold)); g.lineTo(w - pad, Y(r.threshold)); g.stroke(); });
  g.setLineDash([]);
  series.forEach(([k, colour]) => { g.strokeStyle = colour; g.lineWidth = 1.6; g.beginPath(); let on = false;
    toks.forEach((t, i) => { const v = t[k]; if (v === null || v === undefined) { on = false; return; }
      if (on) g.lineTo(X(i), Y(v)); else { g.moveTo(X(i), Y(v)); on = true; } }); g.stroke(); });
  toks.forEach((t, i) => (t.rules || []).forEach(f => { g.fillStyle = f.action === 'stop' ? '#c92a2a' : f.action === 'mark' ? '#862e9c' : '#1864ab';
    g.fillRect(X(i) - 1, pad, 2, h - 2 * pad); }));
  $('legend').textContent = series.map(s => s[0]).join(' / ') + ' per token: ' + fmt(lo, 3) + ' … ' + fmt(hi, 3)
    + (rules.length ? ' · dashed: rule thresholds' : '');
}
function done(d) {
  finished = true; $('stop').disabled = true;
  const box = el('div'); box.id = 'tp-done'; box.dataset.reason = d.stop_reason || '';
  const why = d.stop_reason === 'cancelled' ? 'stopped by you' : (d.stop_reason || '').startsWith('rule:') ? 'stopped by rule ' + d.stop_reason.slice(5) : d.stop_reason;
  box.appendChild(el('span', null, 'done: ' + why + ' · ' + (d.n_tokens || 0) + ' tokens'
    + (d.timings && d.timings.first_token_ms !== null ? ' · first token after ' + Math.round(d.timings.first_token_ms) + ' ms' : '') + (d.run_id ? ' · ' : '')));
  if (d.run_id) { const a = el('a', null, 'open the stored run ↗'); a.target = '_blank'; a.rel = 'noopener';
    try { const u = new URL(window.parent.location.href); u.search = '?run=' + encodeURIComponent(d.run_id); a.href = u.href; }
    catch (e) { a.href = '?run=' + encodeURIComponent(d.run_id); }
    box.appendChild(a); }
  $('status').textContent = ''; $('status').after(box);
}
function fail(message) { finished = true; $('stop').disabled = true; $('status').textContent = '';
  $('errors').appendChild(el('div', 'err', message)); }
function handle(kind, data) {
  if (kind === 'start') streamId = data.stream_id;
  else if (kind === 'queued') $('status').textContent = 'waiting for the model: position ' + data.position;
  else if (kind === 'token') addToken(data);
  else if (kind === 'done') { done(data); draw(); }
  else if (kind === 'error') fail('generation failed: ' + (data.message || 'unknown error'));
}
function headers() { const h = {'Content-Type': 'application/json'}; if (C.token) h.Authorization = 'Bearer ' + C.token; return h; }
async function run() {
  let resp;
  try { resp = await fetch(C.url, {method: 'POST', headers: headers(), body: JSON.stringify(C.body), signal: controller.signal}); }
  catch (e) { if (!finished) fail('The browser could not open the stream at ' + C.url + '. Is the API reachable from this browser, and does it admit this page\u2019s origin ' + self.origin + '? Add it to TOKENPRISM_UI_ORIGINS on the API (tokenprism up does this).'); return; }
  if (!resp.ok) { let msg = resp.status + ' ' + resp.statusText;
    try { const j = await resp.json(); if (j.error) msg = j.error.message; } catch (e) {}
    fail(msg); return; }
  const reader = resp.body.getReader(), dec = new TextDecoder();
  let buf = '';
  try {
    for (;;) { const {value, done: end} = await reader.read(); if (end) break;
      buf += dec.decode(value, {stream: true}); let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) { const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
        let kind = 'message', data = '';
        block.split('\n').forEach(line => { if (line.startsWith('event: ')) kind = line.slice(7); else if (line.startsWith('data: ')) data += line.slice(6); });
        if (data) handle(kind, JSON.parse(data)); } }
  } catch (e) { if (!finished) fail('the stream broke off: ' + e); return; }
  if (!finished) fail('the stream ended without a result');
}
async function stop() {
  $('stop').disabled = true; $('status').textContent = 'stopping…';
  try { if (!streamId) throw new Error('no stream yet');
    const r = await fetch(C.url + '/' + encodeURIComponent(streamId) + '/cancel', {method: 'POST', headers: headers()});
    if (!r.ok) throw new Error(String(r.status)); }
  catch (e) { controller.abort(); if (!finished) fail('stopped (connection closed)'); }
}
function init() {
  const m = $('metric');
  C.metrics.forEach(n => { const o = el('option', null, n); o.value = n; m.appendChild(o); });
  m.addEventListener('change', () => { paintAll(); draw(); });
  $('stop').addEventListener('click', stop);
  if (C.rules.length) $('rules').textContent = 'rules: ' + C.rules.map(r => r.metric + r.op + r.threshold + ':' + r.patience + ':' + r.action).join(', ');
  window.addEventListener('resize', draw);
  run();
}
init();
"""

_BODY = """
<div class="bar">
 <button id="stop" type="button">■ Stop</button>
 <label>Colour by <select id="metric"></select></label>
 <span id="status">connecting…</span>
 <span id="rules" class="legend"></span>
</div>
<div id="errors"></div>
<div class="toks" id="toks"></div>
<canvas id="line"></canvas>
<div class="legend" id="legend"></div>
"""


def live_stream_html(
    api_url: str, token: str | None, body: dict[str, Any], *, nonce: int = 0
) -> str:
    """A complete HTML document that streams one generation (see the module docstring).

    Args:
        api_url: the API's base URL as the browser reaches it.
        token: the bearer token, or None.
        body: the ``POST /generate/stream`` request body.
        nonce: changes the document on every Run press, so each press streams anew.

    Returns:
        The document for ``st.components.v1.html``.
    """
    data = _safe_json(live_payload(api_url, token, body, nonce=nonce))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><style>{_CSS}</style></head><body>"
        f"{_BODY}<script type='application/json' id='tp-live'>{data}</script>"
        f"<script>{_JS}</script></body></html>"
    )

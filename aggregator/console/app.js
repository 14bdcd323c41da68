// The Heimdall console. Plain JavaScript, no dependencies: every page reads its state
// from the URL (so any view can be linked, reloaded and shared) and talks to the
// aggregator's API with the user's token.

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $('#main');
const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'unknown'];
const NS = 1e9;
// Most lines the Explore list holds (live tail drops the oldest beyond it).
const MAX_ROWS = 100000;
function stopLive() {
  const ws = window.__live;
  window.__live = null;
  if (ws) ws.close();
}
let me = { role: 'read', name: '', tokens: false };

// ---------- HTML ----------
function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}
function h(html) {
  const t = document.createElement('template');
  t.innerHTML = html.trim();
  return t.content.firstElementChild;
}
function fmtTime(ns) {
  if (!ns) return '–';
  const d = new Date(Number(ns) / 1e6);
  return d.toISOString().replace('T', ' ').replace('Z', '');
}
function ago(ns) {
  if (!ns) return 'never';
  const s = Math.max(0, (Date.now() * 1e6 - Number(ns)) / NS);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
function bytes(n) {
  n = Number(n || 0);
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
const canWrite = () => me.role === 'write' || me.role === 'admin';

// ---------- API ----------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
function token() { return localStorage.getItem('heimdall.token') || ''; }
async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(opts.json);
  }
  const r = await fetch(path, { method: opts.method || 'GET', headers, body: opts.body });
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch { v = { message: text }; }
  if (!r.ok) {
    if (r.status === 401) { login(v && v.message); throw new ApiError(401, 'login needed'); }
    throw new ApiError(r.status, (v && (v.message || v.error)) || r.statusText);
  }
  return v;
}
const qs = o => Object.entries(o).filter(([, v]) => v !== undefined && v !== null && v !== '')
  .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');

function login(message) {
  main().replaceChildren(h(`<section class="panel">
    <h3>Sign in</h3>
    <p class="muted">${esc(message || 'This aggregator needs an API token.')}</p>
    <form class="inline" id="login"><input type="password" id="tok" placeholder="API token" size="40" autocomplete="current-password">
    <button class="primary">Sign in</button></form></section>`));
  $('#login').addEventListener('submit', e => {
    e.preventDefault();
    localStorage.setItem('heimdall.token', $('#tok').value.trim());
    start();
  });
  $('#tok').focus();
}

// ---------- routing ----------
function params() { return new URLSearchParams(location.search); }
function go(path, replace = false) {
  if (replace) history.replaceState(null, '', path); else history.pushState(null, '', path);
  route();
}
function setParams(p) {
  const url = `${location.pathname}?${p.toString()}`;
  history.replaceState(null, '', url);
}
const PAGES = {
  explore: explorePage, patterns: patternsPage, anomalies: anomaliesPage, incidents: incidentsPage,
  alerts: alertsPage, fleet: fleetPage, storage: storagePage,
};
async function route() {
  stopLive();
  const parts = location.pathname.split('/').filter(Boolean);
  const name = parts[0] || 'explore';
  for (const a of document.querySelectorAll('.top nav a')) {
    a.classList.toggle('active', a.getAttribute('href') === `/${name}`);
  }
  const page = PAGES[name] || explorePage;
  document.title = `Heimdall · ${name[0].toUpperCase()}${name.slice(1)}`;
  try {
    await page(parts.slice(1));
  } catch (e) {
    if (e.status !== 401) main().replaceChildren(h(`<p class="error">${esc(e.message)}</p>`));
  }
}

// ---------- time ranges ----------
const PRESETS = [['5m', 300], ['15m', 900], ['1h', 3600], ['6h', 21600], ['24h', 86400], ['7d', 604800]];
function rangeOf(p) {
  const now = Date.now() * 1e6;
  if (p.get('from') && p.get('to')) return [Number(p.get('from')), Number(p.get('to'))];
  const secs = (PRESETS.find(x => x[0] === p.get('since')) || ['1h', 3600])[1];
  return [now - secs * NS, now];
}
function rangePicker(p) {
  const cur = p.get('from') ? 'custom' : (p.get('since') || '1h');
  return `<select id="since" title="Time range">${PRESETS.map(([k]) => `<option ${k === cur ? 'selected' : ''}>${k}</option>`).join('')}
    ${cur === 'custom' ? '<option selected value="custom">zoomed</option>' : ''}</select>`;
}
function stepFor(start, end) {
  const secs = Math.max(1, Math.ceil((end - start) / NS / 120));
  const nice = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
  return nice.find(n => n >= secs) || secs;
}

// ---------- Explore ----------
async function explorePage() {
  const p = params();
  const q = p.get('q') || '{service_name=~".+"}';
  main().replaceChildren(h(`<section>
    <textarea id="q" class="query" spellcheck="false" list="completions" aria-label="LogQL query">${esc(q)}</textarea>
    <datalist id="completions"></datalist>
    <div class="bar">${rangePicker(p)}
      <button class="primary" id="run" title="Ctrl+Enter">Run</button>
      <label><input type="checkbox" id="live"> live</label>
      <button id="download" title="The lines as JSON lines">Download</button>
      <span class="muted" id="status"></span></div>
    <div id="err"></div>
    <canvas class="hist" id="hist"></canvas>
    <div class="legend" id="legend"></div>
    <div class="split"><div><div class="lines" id="lines" tabindex="0"></div></div>
      <aside class="panel" id="side"><h4>Fields</h4><div id="facets" class="muted">Run a query.</div><div id="detail"></div></aside></div>
  </section>`));
  const ta = $('#q');
  ta.addEventListener('keydown', e => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); } });
  ta.addEventListener('input', () => complete(ta));
  $('#run').addEventListener('click', run);
  $('#since').addEventListener('change', () => {
    p.delete('from'); p.delete('to'); p.set('since', $('#since').value); setParams(p); run();
  });
  $('#download').addEventListener('click', download);
  $('#live').addEventListener('change', () => ($('#live').checked ? live() : stopLive()));
  await run();

  // Live tail: the lines arriving after the newest shown, over Loki's tail WebSocket,
  // on top of the list (which keeps at most MAX_ROWS lines).
  function live() {
    stopLive();
    p.delete('from'); p.delete('to'); setParams(p);
    const url = new URL(`/loki/api/v1/tail?${qs({ query: ta.value.trim(), limit: 1, start: Date.now() * 1e6 })}`, location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // Browsers cannot set headers on a WebSocket: the token goes as a subprotocol.
    const b64 = btoa(unescape(encodeURIComponent(token()))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const ws = token() ? new WebSocket(url, [`heimdall.bearer.${b64}`]) : new WebSocket(url);
    let added = 0;
    ws.onmessage = ev => {
      const m = JSON.parse(ev.data);
      const fresh = [];
      for (const s of m.streams || []) {
        for (const v of s.values) fresh.push({ ts: v[0], line: v[1], stream: s.stream, meta: {}, parsed: {} });
      }
      if (!fresh.length) return;
      fresh.sort((a, b) => (BigInt(b.ts) > BigInt(a.ts) ? 1 : -1));
      const newest = (window.__rows || [])[0];
      const rows = [...fresh.filter(r => !newest || BigInt(r.ts) >= BigInt(newest.ts)), ...(window.__rows || [])].slice(0, MAX_ROWS);
      added += fresh.length;
      window.__rows = rows;
      showLines(rows);
      $('#status').textContent = `live · ${added} new · ${rows.length} lines`;
    };
    ws.onopen = () => { $('#status').textContent = 'live · waiting for lines'; };
    ws.onclose = e => {
      if (window.__live === ws && $('#live')) {
        $('#live').checked = false;
        $('#status').textContent = `live tail ended${e.reason ? `: ${e.reason}` : ''}`;
      }
    };
    window.__live = ws;
  }

  async function run() {
    // A new query restarts the live tail after its results are shown.
    const wasLive = !!window.__live;
    stopLive();
    const query = ta.value.trim();
    p.set('q', query);
    setParams(p);
    const [start, end] = rangeOf(p);
    const step = stepFor(start, end);
    $('#err').replaceChildren();
    $('#status').textContent = 'running…';
    const t0 = performance.now();
    const metric = `sum by (detected_level) (count_over_time(${query} [${step}s]))`;
    // Steps end on multiples of the step (the server aligns them): the last one must end
    // after `end`, or the newest lines would fall outside the histogram.
    const histEnd = Math.ceil(end / (step * NS)) * step * NS;
    try {
      const [hist, logs] = await Promise.all([
        api(`/loki/api/v1/query_range?${qs({ query: metric, start, end: histEnd, step: `${step}s` })}`),
        api(`/loki/api/v1/query_range?${qs({ query, start, end, limit: 1000, direction: 'backward' })}`,
          { headers: { 'X-Loki-Response-Encoding-Flags': 'categorize-labels' } }),
      ]);
      drawHist($('#hist'), hist.data.result, start, histEnd, step, (a, b) => {
        p.set('from', Math.round(a)); p.set('to', Math.round(b)); p.delete('since'); setParams(p); explorePage();
      });
      const rows = [];
      for (const s of logs.data.result) {
        for (const v of s.values) rows.push({ ts: v[0], line: v[1], stream: s.stream, meta: (v[2] || {}).structuredMetadata || {}, parsed: (v[2] || {}).parsed || {} });
      }
      rows.sort((a, b) => (BigInt(b.ts) > BigInt(a.ts) ? 1 : -1));
      window.__rows = rows;
      showLines(rows);
      facets(rows);
      $('#status').textContent = `${rows.length} lines · ${Math.round(performance.now() - t0)} ms`;
      if (wasLive) live();
    } catch (e) {
      if (e.status === 401) return;
      $('#status').textContent = '';
      const m = /position (\d+)/.exec(e.message);
      if (m) {
        const i = Number(m[1]);
        $('#err').replaceChildren(h(`<div class="error">${esc(query.slice(0, i))}<span class="mark">${esc(query.slice(i, i + 1) || ' ')}</span>${esc(query.slice(i + 1))}\n${esc(e.message)}</div>`));
      } else {
        $('#err').replaceChildren(h(`<div class="error">${esc(e.message)}</div>`));
      }
    }
  }

  function facets(rows) {
    const counts = {};
    for (const r of rows) {
      for (const [k, v] of Object.entries({ ...r.stream, ...r.meta, ...r.parsed })) {
        if (k === 'agent' || k === 'level') continue;
        counts[k] = counts[k] || {};
        counts[k][v] = (counts[k][v] || 0) + 1;
      }
    }
    const box = $('#facets');
    box.replaceChildren();
    for (const [k, vals] of Object.entries(counts).sort()) {
      const top = Object.entries(vals).sort((a, b) => b[1] - a[1]).slice(0, 8);
      const d = h(`<div><div class="muted">${esc(k)}</div></div>`);
      for (const [v, n] of top) {
        const c = h(`<span class="chip" data-facet="${esc(k)}" title="Add | ${esc(k)}=&quot;${esc(v)}&quot;">${esc(v)} <span class="muted">${n}</span></span>`);
        c.addEventListener('click', () => { ta.value = `${ta.value.trim()} | ${k}=${JSON.stringify(v)}`; run(); });
        d.appendChild(c);
      }
      box.appendChild(d);
    }
    if (!box.children.length) box.textContent = 'No fields.';
  }

  async function download() {
    const rows = window.__rows || [];
    const text = rows.map(r => JSON.stringify({ ts: r.ts, line: r.line, labels: r.stream, structured_metadata: r.meta, parsed: r.parsed })).join('\n');
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text + '\n'], { type: 'application/x-ndjson' }));
    a.download = 'heimdall-lines.jsonl';
    a.click();
  }
}

// Completion of label names, values and stages, offered through the datalist.
async function complete(ta) {
  const before = ta.value.slice(0, ta.selectionStart);
  const dl = $('#completions');
  let opts = [];
  try {
    const inSel = before.lastIndexOf('{') > before.lastIndexOf('}');
    const val = /([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"[^"]*$/.exec(before);
    if (inSel && val) {
      const r = await api(`/loki/api/v1/label/${encodeURIComponent(val[1])}/values`);
      opts = (r.data || []).map(v => before.replace(/"[^"]*$/, `"${v}"`));
    } else if (inSel) {
      const r = await api('/loki/api/v1/labels');
      opts = (r.data || []).map(n => before.replace(/[a-zA-Z_0-9]*$/, `${n}="`));
    } else if (/\|\s*[a-z_]*$/.test(before)) {
      opts = ['json', 'logfmt', 'drop __error__', 'line_format "{{.msg}}"', 'keep', 'unwrap', 'detected_level="error"']
        .map(s => before.replace(/\|\s*[a-z_]*$/, `| ${s}`));
    }
  } catch { /* completion is a help, never an error */ }
  dl.replaceChildren(...opts.slice(0, 50).map(o => h(`<option value="${esc(o)}">`)));
}

function levelColor(lv) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--${LEVELS.includes(lv) ? lv : 'unknown'}`).trim();
}

// A histogram stacked by level; dragging across it zooms to that range.
function drawHist(canvas, series, start, end, step, onZoom) {
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth, H = canvas.clientHeight;
  canvas.width = W * dpr; canvas.height = H * dpr;
  const g = canvas.getContext('2d');
  g.scale(dpr, dpr);
  const buckets = Math.max(1, Math.round((end - start) / (step * NS)));
  const stacks = Array.from({ length: buckets + 1 }, () => ({}));
  for (const s of series) {
    const lv = s.metric.detected_level || 'unknown';
    for (const [t, v] of s.values) {
      const i = Math.round((t * NS - start) / (step * NS));
      if (i >= 0 && i < stacks.length) stacks[i][lv] = (stacks[i][lv] || 0) + Number(v);
    }
  }
  const max = Math.max(1, ...stacks.map(st => Object.values(st).reduce((a, b) => a + b, 0)));
  const bw = W / stacks.length;
  stacks.forEach((st, i) => {
    let y = H;
    for (const lv of [...LEVELS].reverse()) {
      const v = st[lv] || 0;
      if (!v) continue;
      const bh = (v / max) * (H - 14);
      g.fillStyle = levelColor(lv);
      g.fillRect(i * bw + 0.5, y - bh, Math.max(1, bw - 1), bh);
      y -= bh;
    }
  });
  g.fillStyle = levelColor('unknown');
  g.font = '11px system-ui';
  g.fillText(`max ${max} / ${step}s`, 4, 11);
  $('#legend').replaceChildren(...LEVELS.filter(lv => stacks.some(st => st[lv])).map(lv => h(`<span><span class="lv" data-level="${lv}"></span>${lv}</span>`)));
  for (const el of document.querySelectorAll('#legend .lv')) el.style.background = levelColor(el.dataset.level);
  let down = null;
  canvas.onmousedown = e => { down = e.offsetX; };
  canvas.onmouseup = e => {
    if (down === null) return;
    const [a, b] = [Math.min(down, e.offsetX), Math.max(down, e.offsetX)];
    down = null;
    if (b - a < 4) return;
    onZoom(start + (a / W) * (end - start), start + (b / W) * (end - start));
  };
}

// A virtualized list: only the rows in view are in the document.
function showLines(rows) {
  const box = $('#lines');
  const RH = 20;
  let selected = -1;
  box.replaceChildren(h('<div></div>'));
  box.firstElementChild.style.height = `${rows.length * RH}px`;
  const pool = new Map();
  function paint() {
    const first = Math.max(0, Math.floor(box.scrollTop / RH) - 10);
    const last = Math.min(rows.length, first + Math.ceil(box.clientHeight / RH) + 20);
    for (const [i, el] of pool) if (i < first || i >= last) { el.remove(); pool.delete(i); }
    for (let i = first; i < last; i++) {
      if (pool.has(i)) continue;
      const r = rows[i];
      const lv = r.meta.detected_level || r.stream.detected_level || 'unknown';
      const el = h(`<div class="row" data-i="${i}"><span class="lv"></span><span class="ts">${esc(fmtTime(r.ts))}</span>${esc(r.line)}</div>`);
      el.style.top = `${i * RH}px`;
      el.querySelector('.lv').style.background = levelColor(lv);
      el.classList.toggle('sel', i === selected);
      el.addEventListener('click', () => open(i));
      box.appendChild(el);
      pool.set(i, el);
    }
  }
  function open(i) {
    selected = i;
    for (const [j, el] of pool) el.classList.toggle('sel', j === i);
    detail(rows[i]);
  }
  box.onscroll = paint;
  box.onkeydown = e => {
    if (e.key === 'j' || e.key === 'k') {
      const i = Math.max(0, Math.min(rows.length - 1, selected + (e.key === 'j' ? 1 : -1)));
      selected = i;
      box.scrollTop = Math.max(0, i * RH - box.clientHeight / 2);
      paint();
      for (const [j, el] of pool) el.classList.toggle('sel', j === i);
    }
    if (e.key === 'o' && selected >= 0) open(selected);
  };
  paint();
  if (!rows.length) box.replaceChildren(h('<p class="muted empty">No lines in this range.</p>'));
}

function kvs(o) {
  return Object.entries(o).map(([k, v]) => `<div><span class="k">${esc(k)}</span> ${esc(v)}</div>`).join('') || '<div class="muted">none</div>';
}

async function detail(r) {
  const d = $('#detail');
  d.replaceChildren(h(`<div><h4>Line</h4><div class="kv">${esc(fmtTime(r.ts))}</div>
    <div class="kv">${esc(r.line)}</div>
    <h4>Labels</h4><div class="kv">${kvs(r.stream)}</div>
    <h4>Structured metadata</h4><div class="kv">${kvs(r.meta)}</div>
    <h4>Parsed</h4><div class="kv">${kvs(r.parsed)}</div>
    <h4>Template</h4><div class="kv" id="tpl"><span class="muted">looking…</span></div>
    <div class="bar"><button id="ctx">Context</button></div><div id="ctxlines"></div></div>`));
  const stream = `{${Object.entries(r.stream).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(', ')}}`;
  template(r, stream).catch(() => { $('#tpl').replaceChildren(h('<span class="muted">unknown</span>')); });
  $('#ctx').addEventListener('click', async () => {
    // The lines around it in its stream.
    const ts = BigInt(r.ts);
    const win = 3600n * 1000000000n;
    const [before, after] = await Promise.all([
      api(`/loki/api/v1/query_range?${qs({ query: stream, start: String(ts - win), end: String(ts), limit: 10, direction: 'backward' })}`),
      api(`/loki/api/v1/query_range?${qs({ query: stream, start: String(ts + 1n), end: String(ts + win), limit: 10, direction: 'forward' })}`),
    ]);
    const flat = v => v.data.result.flatMap(s => s.values.map(x => ({ ts: x[0], line: x[1] })));
    const lines = [...flat(before), ...flat(after)].sort((a, b) => (BigInt(a.ts) > BigInt(b.ts) ? 1 : -1));
    $('#ctxlines').replaceChildren(h(`<div class="kv">${lines.map(l => `<div${l.ts === r.ts ? ' class="mark"' : ''}>${esc(fmtTime(l.ts))} ${esc(l.line)}</div>`).join('')}</div>`));
  });
}

// The template the agents mined for a line: the most specific of its stream's patterns
// around its time that matches it (`<_>` stands for any text; a space for the
// whitespace or `|` that separated the tokens the miner saw).
async function template(r, stream) {
  const ts = Number(BigInt(r.ts) / 1000000n) * 1e6;
  const res = await api(`/loki/api/v1/patterns?${qs({ query: stream, start: ts - 3600 * NS, end: ts + 60 * NS, step: '60s' })}`);
  const fits = (res.data || []).filter(x => {
    const re = `^${x.pattern.split('<_>').map(p => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/ /g, '[\\s|]+')).join('[\\s\\S]*?')}$`;
    return new RegExp(re).test(r.line);
  }).sort((a, b) => b.pattern.replace(/<_>/g, '').length - a.pattern.replace(/<_>/g, '').length);
  const box = $('#tpl');
  if (!box) return;
  if (!fits.length) {
    box.replaceChildren(h('<span class="muted">none (lines an agent did not ship, or pushed over the Loki API, have no template)</span>'));
    return;
  }
  const q = `${stream} |> ${JSON.stringify(fits[0].pattern)}`;
  box.replaceChildren(h(`<div>${esc(fits[0].pattern)} <a href="/explore?${qs({ q, since: params().get('since') || '1h' })}" data-nav>its lines</a></div>`));
}

// ---------- Patterns ----------
async function patternsPage() {
  const p = params();
  const [start, end] = rangeOf(p);
  const services = (await api(`/loki/api/v1/label/service_name/values?${qs({ start, end })}`)).data || [];
  const svc = p.get('service') || services[0] || '';
  main().replaceChildren(h(`<section><div class="bar"><select id="svc">${services.map(s => `<option ${s === svc ? 'selected' : ''}>${esc(s)}</option>`).join('')}</select>${rangePicker(p)}</div>
    <table class="grid" id="pats"><tr><th>Pattern</th><th>Level</th><th>Count</th><th>Trend</th></tr></table></section>`));
  $('#svc').addEventListener('change', () => { p.set('service', $('#svc').value); setParams(p); patternsPage(); });
  $('#since').addEventListener('change', () => { p.delete('from'); p.delete('to'); p.set('since', $('#since').value); setParams(p); patternsPage(); });
  if (!svc) return;
  const step = stepFor(start, end) * 4;
  const sel = `{service_name=${JSON.stringify(svc)}}`;
  const r = await api(`/loki/api/v1/patterns?${qs({ query: sel, start, end, step: `${step}s` })}`);
  // New and rising first: the last quarter's share of the pattern's count.
  const pats = (r.data || []).map(x => {
    const n = x.samples.length;
    const tail = x.samples.slice(Math.floor(n * 0.75)).reduce((a, s) => a + s[1], 0);
    const total = x.samples.reduce((a, s) => a + s[1], 0);
    return { ...x, rise: total ? tail / total : 0, total };
  }).sort((a, b) => b.rise - a.rise || b.total - a.total);
  const table = $('#pats');
  for (const x of pats) {
    const q = `${sel} |> ${JSON.stringify(x.pattern)}`;
    const tr = h(`<tr><td class="kv"><a href="/explore?${qs({ q, since: p.get('since') || '1h' })}" data-nav>${esc(x.pattern)}</a></td>
      <td>${esc(x.level)}</td><td>${x.total}</td><td><canvas class="spark"></canvas></td></tr>`);
    table.appendChild(tr);
    spark(tr.querySelector('canvas'), x.samples.map(s => s[1]));
  }
  if (!pats.length) table.appendChild(h('<tr><td colspan="4" class="muted">No templates for this service in the range (templates come from agents).</td></tr>'));
}
function spark(c, vals) {
  const dpr = window.devicePixelRatio || 1;
  c.width = c.clientWidth * dpr; c.height = c.clientHeight * dpr;
  const g = c.getContext('2d');
  g.scale(dpr, dpr);
  const max = Math.max(1, ...vals);
  g.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue('--accent');
  g.beginPath();
  vals.forEach((v, i) => {
    const x = (i / Math.max(1, vals.length - 1)) * c.clientWidth;
    const y = c.clientHeight - (v / max) * (c.clientHeight - 2) - 1;
    if (i) g.lineTo(x, y); else g.moveTo(x, y);
  });
  g.stroke();
}

// ---------- Anomalies ----------
const KIND_LEVEL = { rate_spike: 'warn', rate_drop: 'debug', new_templates: 'info', error_ratio: 'error', silence: 'fatal', resolved: 'trace' };
const kindColor = k => levelColor(KIND_LEVEL[k] || 'unknown');
async function anomaliesPage() {
  const p = params();
  const [start, end] = rangeOf(p);
  const r = await api(`/api/v1/anomalies?${qs({ start, end, limit: 2000 })}`);
  const ev = (r.data || []).sort((a, b) => b.time_ns - a.time_ns);
  const lane = a => `${a.stream.host || a.agent} · ${a.stream.service_name || a.stream.app || ''}`;
  const lanes = [...new Set(ev.map(lane))].sort();
  const kinds = [...new Set(ev.map(a => a.kind))].sort();
  main().replaceChildren(h(`<section><div class="bar">${rangePicker(p)}<span class="muted">${ev.length} events on ${lanes.length} host · service lanes</span>
      <span class="legend">${kinds.map(k => `<span><span class="lv" data-kind="${esc(k)}"></span>${esc(k)}</span>`).join('')}</span></div>
    <canvas class="timeline" id="tl" title="Click an event to see its series and baseline"></canvas>
    <div class="split"><div><table class="grid" id="anoms"><tr><th>When</th><th>Host</th><th>Service</th><th>Kind</th><th>Observed / baseline</th><th>Score</th><th>Ended</th><th>Templates</th></tr></table></div>
    <aside class="panel" id="anom"><p class="muted">Select an event to see the series that triggered it.</p></aside></div></section>`));
  $('#since').addEventListener('change', () => { p.delete('from'); p.delete('to'); p.set('since', $('#since').value); setParams(p); anomaliesPage(); });
  const key = a => `${a.agent}:${a.id}`;
  const table = $('#anoms');
  for (const a of ev.slice(0, 500)) {
    const tr = h(`<tr class="click" data-key="${esc(key(a))}"><td title="${esc(fmtTime(a.time_ns))}">${esc(ago(a.time_ns))}</td><td>${esc(a.stream.host || a.agent)}</td>
      <td>${esc(a.stream.service_name || '')}</td><td><span class="lv" data-kind="${esc(a.kind)}"></span>${esc(a.kind)}</td><td>${fmtNum(a.observed)} / ${fmtNum(a.baseline)}</td>
      <td>${a.score.toFixed(1)}</td><td>${a.ended_ns ? `after ${esc(dur(Math.max(1, Math.round((a.ended_ns - a.time_ns) / NS))))}` : '<span class="badge firing">ongoing</span>'}</td>
      <td class="kv">${a.templates.map(t => esc(t.text)).join('<br>')}</td></tr>`);
    tr.addEventListener('click', () => select(a));
    table.appendChild(tr);
  }
  if (!ev.length) table.appendChild(h('<tr><td colspan="8" class="muted">No anomalies in this range.</td></tr>'));
  // Colours go through the CSSOM: the content security policy allows no inline style.
  for (const el of document.querySelectorAll('.lv[data-kind]')) el.style.background = kindColor(el.dataset.kind);

  // The timeline: one lane per host and service, each event a dot sized by its score.
  const c = $('#tl');
  const LH = 22, TOP = 16;
  c.style.height = `${TOP + Math.max(1, lanes.length) * LH + 4}px`;
  const dpr = window.devicePixelRatio || 1;
  const W = c.clientWidth, H = c.clientHeight;
  c.width = W * dpr; c.height = H * dpr;
  const g = c.getContext('2d');
  g.scale(dpr, dpr);
  const LEFT = Math.min(220, W / 4);
  const x = t => LEFT + ((t - start) / (end - start)) * (W - LEFT - 8);
  g.font = '11px system-ui';
  g.fillStyle = levelColor('unknown');
  g.fillText(fmtTime(start).slice(0, 16), LEFT, 11);
  g.fillText(fmtTime(end).slice(0, 16), W - 110, 11);
  lanes.forEach((l, i) => {
    g.fillStyle = levelColor('unknown');
    g.fillText(l.length > 32 ? `${l.slice(0, 31)}…` : l, 4, TOP + i * LH + 15);
    g.fillRect(LEFT, TOP + i * LH + LH / 2, W - LEFT - 8, 0.5);
  });
  const dots = ev.map(a => ({ a, x: x(a.time_ns), y: TOP + lanes.indexOf(lane(a)) * LH + LH / 2, r: Math.min(8, 3 + Math.log2(1 + a.score)) }));
  for (const d of dots) {
    // How long it lasted, to its end (or to now while it goes on).
    g.fillStyle = kindColor(d.a.kind);
    g.globalAlpha = 0.35;
    g.fillRect(d.x, d.y - 2, Math.max(0, x(Math.min(end, d.a.ended_ns || end)) - d.x), 4);
    g.globalAlpha = 1;
  }
  for (const d of [...dots].reverse()) {
    g.fillStyle = kindColor(d.a.kind);
    g.beginPath(); g.arc(d.x, d.y, d.r, 0, 2 * Math.PI); g.fill();
  }
  c.onclick = e => {
    const near = dots.map(d => ({ d, dist: Math.hypot(d.x - e.offsetX, d.y - e.offsetY) })).sort((m, n) => m.dist - n.dist)[0];
    if (near && near.dist < 12) select(near.d.a);
  };
  const chosen = ev.find(a => key(a) === p.get('event'));
  if (chosen) select(chosen);

  // An event's stream: its counts per detector window around the event (from the
  // agents' pre-aggregates, exact even for lines not shipped) against the baseline.
  async function select(a) {
    p.set('event', key(a)); setParams(p);
    for (const tr of table.querySelectorAll('tr[data-key]')) tr.classList.toggle('sel', tr.dataset.key === key(a));
    const w = a.window_seconds || 10;
    const sel = `{${Object.entries(a.stream).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(', ')}}`;
    const from = a.time_ns - 40 * w * NS, to = a.time_ns + 20 * w * NS;
    const box = $('#anom');
    box.replaceChildren(h(`<div><h4>${esc(a.kind)} · ${esc(lane(a))}</h4>
      <p class="muted">${esc(fmtTime(a.time_ns))} · window ${w} s · score ${a.score.toFixed(1)} · ${a.ended_ns ? `ended ${esc(fmtTime(a.ended_ns))}` : 'ongoing'}</p>
      <canvas class="series" id="aseries"></canvas>
      <p class="muted" id="aseries-legend"></p>
      <h4>Templates</h4><div class="kv">${a.templates.map(t => `<div>${esc(t.text)}</div>`).join('') || '<span class="muted">none</span>'}</div>
      <h4>Sample lines</h4><div class="kv">${a.samples.map(l => `<div>${esc(l)}</div>`).join('') || '<span class="muted">none</span>'}</div>
      <h4>Stream</h4><div class="kv">${kvs(a.stream)}</div>
      <div class="bar"><a href="/explore?${qs({ q: sel, from: String(from), to: String(to) })}" data-nav>Open its lines in Explore</a></div></div>`));
    const r = await api(`/api/v1/aggregates?${qs({ query: sel, start: from, end: to, step: `${w}s`, by: 'level' })}`);
    const n = Math.round((to - from) / (w * NS));
    const total = new Array(n).fill(0), errors = new Array(n).fill(0);
    for (const s of r.data.result || []) {
      const bad = ['error', 'fatal'].includes(s.metric.level);
      for (const [t, v] of s.values) {
        const i = Math.floor((t * NS - from) / (w * NS));
        if (i < 0 || i >= n) continue;
        total[i] += Number(v);
        if (bad) errors[i] += Number(v);
      }
    }
    const ratio = a.kind === 'error_ratio';
    const series = ratio ? total.map((t, i) => (t ? errors[i] / t : 0)) : total;
    plotSeries($('#aseries'), series, a.kind === 'new_templates' ? null : a.baseline, Math.floor((a.time_ns - from) / (w * NS)), kindColor(a.kind));
    $('#aseries-legend').textContent = ratio
      ? `error share per ${w} s window; dashed: the baseline ${fmtNum(a.baseline)}, observed ${fmtNum(a.observed)}`
      : `lines per ${w} s window${a.kind === 'new_templates' ? `; ${fmtNum(a.observed)} new templates` : `; dashed: the baseline ${fmtNum(a.baseline)}, observed ${fmtNum(a.observed)}`}`;
  }
}
function fmtNum(v) {
  v = Number(v);
  return Math.abs(v) >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(2);
}
// A bar series with the event's window marked and, when given, the baseline dashed.
function plotSeries(c, vals, baseline, mark, color) {
  const dpr = window.devicePixelRatio || 1;
  const W = c.clientWidth, H = c.clientHeight;
  c.width = W * dpr; c.height = H * dpr;
  const g = c.getContext('2d');
  g.scale(dpr, dpr);
  const max = Math.max(1e-9, ...vals, baseline || 0) * 1.1;
  c.dataset.max = max;
  const bw = W / vals.length;
  vals.forEach((v, i) => {
    g.fillStyle = i === mark ? color : levelColor('unknown');
    const bh = (v / max) * (H - 4);
    g.fillRect(i * bw + 0.5, H - bh, Math.max(1, bw - 1), bh);
  });
  if (baseline !== null) plotBaseline(c, vals, baseline);
}
function plotBaseline(c, vals, baseline) {
  const g = c.getContext('2d');
  const W = c.clientWidth, H = c.clientHeight;
  const y = H - (baseline / Number(c.dataset.max)) * (H - 4);
  g.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue('--accent');
  g.setLineDash([4, 3]);
  g.beginPath(); g.moveTo(0, y); g.lineTo(W, y); g.stroke();
  g.setLineDash([]);
}

// ---------- Incidents ----------
// Open incidents someone acknowledged show as acked.
const stateOf = i => (i.state === 'open' && i.acked_by ? 'acked' : i.state);
async function incidentsPage(rest) {
  if (rest[0]) return incidentPage(rest[0]);
  const p = params();
  const all = p.get('state') === 'all';
  const r = await api(`/api/v1/incidents?${qs({ state: all ? 'all' : 'open' })}`);
  main().replaceChildren(h(`<section><div class="bar"><label><input type="checkbox" id="all" ${all ? 'checked' : ''}> include resolved</label></div>
    <table class="grid"><tr><th>#</th><th>State</th><th>Title</th><th>Opened</th><th>Top candidate</th></tr>
    ${(r.data || []).map(i => `<tr><td><a href="/incidents/${i.id}" data-nav>${i.id}</a></td><td><span class="badge ${esc(stateOf(i))}">${esc(stateOf(i))}</span></td>
      <td><a href="/incidents/${i.id}" data-nav>${esc(i.title)}</a></td><td>${esc(ago(i.opened))}</td><td>${esc((i.candidates[0] || {}).name || '')}</td></tr>`).join('')
      || '<tr><td colspan="5" class="muted">No incidents.</td></tr>'}</table></section>`));
  $('#all').addEventListener('change', () => { p.set('state', $('#all').checked ? 'all' : 'open'); setParams(p); incidentsPage([]); });
}
async function incidentPage(id) {
  const i = (await api(`/api/v1/incidents/${encodeURIComponent(id)}`)).data;
  const signals = [...i.signals].sort((a, b) => a.onset - b.onset);
  main().replaceChildren(h(`<section>
    <h2>#${i.id} ${esc(i.title)} <span class="badge ${esc(stateOf(i))}">${esc(stateOf(i))}</span></h2>
    <p class="muted">opened ${esc(fmtTime(i.opened))}${i.acked_by ? ` · acked by ${esc(i.acked_by)}` : ''}${i.resolved ? ` · resolved ${esc(fmtTime(i.resolved))}` : ''}</p>
    <div class="bar" id="actions"></div>
    <div class="split"><div>
      <h3>Timeline</h3><table class="grid" id="timeline"><tr><th>Onset</th><th>Signal</th><th>Host</th><th>Service</th><th>Score</th></tr>
      ${signals.map(s => `<tr><td>${esc(fmtTime(s.onset))}</td><td>${esc(s.what)}: ${esc(s.subject)}</td><td>${esc(s.host || '')}</td><td>${esc(s.service || '')}</td><td>${s.score.toFixed(1)}</td></tr>`).join('')}</table>
      <h3>Sample lines</h3><div class="kv" id="samples">${signals.flatMap(s => s.samples).slice(0, 30).map(l => `<div>${esc(l)}</div>`).join('') || '<span class="muted">none</span>'}</div>
      <h3>Alerts</h3><table class="grid" id="incident-alerts"><tr><th>Alert</th><th>Status</th><th>Since</th></tr>
      ${i.alerts.map(a => `<tr><td>${esc(a.labels.alertname || a.fingerprint)}</td><td><span class="badge ${esc(a.status)}">${esc(a.status)}</span></td><td>${esc(ago(a.starts_at))}</td></tr>`).join('')}</table>
    </div><aside class="panel" id="candidates"><h4>Root-cause candidates</h4>
      ${i.candidates.map((c, n) => `<div><b>${n + 1}. ${esc(c.name)}</b> <span class="muted">score ${c.score.toFixed(2)}</span><div class="muted">${esc(c.why)}</div><div class="muted">hosts: ${esc(c.hosts.join(', '))}</div></div>`).join('<hr>')}
    </aside></div></section>`));
  if (canWrite() && i.state !== 'resolved') {
    const acts = $('#actions');
    if (!i.acked_by) {
      const b = h('<button class="primary" id="ack">Acknowledge</button>');
      b.addEventListener('click', async () => { await api(`/api/v1/incidents/${i.id}/ack`, { method: 'POST', json: { by: me.name } }); incidentPage(id); });
      acts.appendChild(b);
    }
    const r = h('<button class="danger" id="resolve">Resolve</button>');
    r.addEventListener('click', async () => { await api(`/api/v1/incidents/${i.id}/resolve`, { method: 'POST', json: { by: me.name } }); incidentPage(id); });
    acts.appendChild(r);
  }
}

// ---------- Alerts and silences ----------
async function alertsPage() {
  const [rules, alerts, silences] = await Promise.all([api('/api/v1/rules'), api('/api/v1/alerts'), api('/api/v1/silences')]);
  const active = (alerts.data || []).filter(a => a.state !== 'resolved');
  main().replaceChildren(h(`<section>
    <h3>Firing and pending</h3><table class="grid"><tr><th>State</th><th>Rule</th><th>Labels</th><th>Since</th><th>Value</th></tr>
    ${active.map(a => `<tr><td><span class="badge ${esc(a.state)}">${esc(a.state)}</span></td><td>${esc(a.rule)}</td><td class="kv">${esc(Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(' '))}</td><td>${esc(ago(a.active_at))}</td><td>${a.value}</td></tr>`).join('') || '<tr><td colspan="5" class="muted">Nothing firing.</td></tr>'}</table>
    <h3>Rules</h3><table class="grid"><tr><th>Group</th><th>Rule</th><th>Kind</th><th>Last evaluation</th><th>Active</th><th>Error</th></tr>
    ${(rules.data.rules || []).map(r => `<tr><td>${esc(r.group)}</td><td title="${esc(r.query)}">${esc(r.name)}</td><td>${esc(r.kind)}</td><td>${esc(ago(r.last_eval))} (${(r.last_seconds * 1000).toFixed(1)} ms)</td><td>${r.active}</td><td class="error">${esc(r.error)}</td></tr>`).join('')}</table>
    <h3>Silences</h3><div id="newsil"></div><table class="grid" id="sils"><tr><th>Matchers</th><th>Until</th><th>By</th><th>Comment</th><th></th></tr></table>
  </section>`));
  const now = Date.now() * 1e6;
  for (const s of (silences.data || []).filter(s => s.ends > now)) {
    const tr = h(`<tr><td class="kv">${esc(s.matchers)}</td><td>${esc(fmtTime(s.ends))}</td><td>${esc(s.created_by)}</td><td>${esc(s.comment)}</td><td></td></tr>`);
    if (canWrite()) {
      const b = h('<button class="danger">Expire</button>');
      b.addEventListener('click', async () => { await api(`/api/v1/silences/${encodeURIComponent(s.id)}`, { method: 'DELETE' }); alertsPage(); });
      tr.lastElementChild.appendChild(b);
    }
    $('#sils').appendChild(tr);
  }
  if (canWrite()) {
    const f = h(`<form class="inline" id="silence"><input id="m" size="40" placeholder='{alertname="HostSilent"}' required>
      <select id="d"><option>1h</option><option>2h</option><option>4h</option><option>1d</option></select>
      <input id="c" size="30" placeholder="comment" required><button class="primary">Silence</button><span class="error" id="serr"></span></form>`);
    f.addEventListener('submit', async e => {
      e.preventDefault();
      try {
        await api('/api/v1/silences', { method: 'POST', json: { matchers: $('#m').value, duration: $('#d').value, comment: $('#c').value, created_by: me.name } });
        alertsPage();
      } catch (err) { $('#serr').textContent = err.message; }
    });
    $('#newsil').appendChild(f);
  }
}

// ---------- Fleet ----------
async function fleetPage() {
  const r = await api('/api/v1/agents');
  const now = Date.now() * 1e6;
  // Stale: disconnected, or three default heartbeats (10 s) missed.
  const stale = a => !a.connected || now - a.last_seen_ns > 30 * NS;
  // Days until the client certificate expires; certificates within two weeks are flagged.
  const certDays = a => (a.cert_not_after ? (a.cert_not_after * NS - now) / (86400 * NS) : null);
  const certCell = a => {
    const d = certDays(a);
    if (d === null) return '<span class="muted">–</span>';
    const when = esc(fmtTime(a.cert_not_after * NS).slice(0, 10));
    if (d < 0) return `<span class="badge down" title="${when}">expired</span>`;
    return `<span class="${d < 14 ? 'badge pending' : ''}" title="${when}">${d < 2 ? `${Math.round(d * 24)} h` : `${Math.floor(d)} d`}</span>`;
  };
  const agents = (r.data || []).sort((a, b) => (stale(b) - stale(a)) || (a.last_seen_ns - b.last_seen_ns));
  main().replaceChildren(h(`<section><p class="muted">${agents.length} agents, ${agents.filter(stale).length} stale, ${agents.filter(a => certDays(a) !== null && certDays(a) < 14).length} with certificates expiring within 14 days</p>
    <table class="grid"><tr><th>Agent</th><th>Host</th><th>Version</th><th>Connection</th><th>Last seen</th><th>Read lag</th><th>Spool</th><th>Dead-lettered</th><th>Files</th><th>Certificate expires</th></tr>
    ${agents.map(a => `<tr><td>${esc(a.agent_id)}</td><td>${esc(a.host)}</td><td>${esc(a.version)}</td>
      <td><span class="badge ${stale(a) ? 'down' : 'up'}">${a.connected ? 'connected' : 'disconnected'}</span></td><td>${esc(ago(a.last_seen_ns))}</td>
      <td title="${bytes(a.unread_bytes)} written and not read yet">${a.lag_seconds.toFixed(1)} s</td><td>${bytes(a.spool_bytes)} (${a.spool_batches})</td><td>${a.dead_letter_batches}</td><td>${a.files}</td><td>${certCell(a)}</td></tr>`).join('')
      || '<tr><td colspan="10" class="muted">No agent has connected.</td></tr>'}</table></section>`));
}

// ---------- Storage ----------
function dur(secs) {
  if (secs === null || secs === undefined) return 'off';
  const u = [[86400, 'd'], [3600, 'h'], [60, 'min'], [1, 's']];
  const [n, name] = u.find(([n]) => secs >= n) || [1, 's'];
  return `${+(secs / n).toFixed(1)} ${name}`;
}
async function storagePage() {
  const s = (await api('/api/v1/storage')).data;
  const pol = s.policy;
  const runs = rs => rs.map(r => `<tr><td>${esc(r.step)}</td><td title="${esc(fmtTime(r.started_ns))}">${esc(ago(r.started_ns))}</td>
    <td>${r.seconds.toFixed(2)} s</td><td>${r.rows}</td><td class="error">${esc(r.error || '')}</td></tr>`).join('');
  main().replaceChildren(h(`<section>
    <h3>Tiers</h3><table class="grid" id="tiers"><tr><th>Tier</th><th>Partitions / segments</th><th>Lines</th><th>On disk</th><th>Compression</th><th>Oldest</th><th>Newest</th></tr>
    ${s.tiers.map(t => `<tr><td>${esc(t.tier)}</td><td>${t.parts}</td><td>${t.rows}</td><td>${bytes(t.bytes)}</td>
      <td>${t.raw_bytes && t.bytes ? `${(t.raw_bytes / t.bytes).toFixed(1)}×` : '–'}</td><td>${esc(fmtTime(t.min_ts))}</td><td>${esc(fmtTime(t.max_ts))}</td></tr>`).join('')}</table>
    <h3>Policy</h3><table class="grid" id="policy">
      <tr><td>Hot partitions are compacted to warm segments</td><td>${esc(dur(pol.compact_after_seconds))} after they end, or early beyond ${pol.hot_max_rows} hot lines</td></tr>
      <tr><td>Warm segments go to the cold tier</td><td>${pol.upload_after_seconds === null ? 'never (no cold tier)' : `${esc(dur(pol.upload_after_seconds))} after their newest line`}</td></tr>
      <tr><td>Retention (deleted from every tier)</td><td>${pol.retention_seconds === null ? 'kept forever' : esc(dur(pol.retention_seconds))}</td></tr>
      <tr><td>Lifecycle runs every</td><td>${esc(dur(pol.interval_seconds))}</td></tr></table>
    <h3>Last run of each step</h3><table class="grid" id="lastruns"><tr><th>Step</th><th>Started</th><th>Took</th><th>Lines</th><th>Error</th></tr>
    ${runs(s.last_runs) || '<tr><td colspan="5" class="muted">The lifecycle has not run yet.</td></tr>'}</table>
    <h3>Recent runs that moved or deleted lines</h3><table class="grid" id="runs"><tr><th>Step</th><th>Started</th><th>Took</th><th>Lines</th><th>Error</th></tr>
    ${runs(s.recent_runs) || '<tr><td colspan="5" class="muted">None since the aggregator started.</td></tr>'}</table>
    <div id="segs"></div></section>`));
  // The segment list is for admin tokens; others are not sent to be refused.
  if (me.role === 'admin') {
    const segs = ((await api('/api/v1/admin/segments')).data || []).sort((a, b) => b.max_ts - a.max_ts).slice(0, 50);
    $('#segs').replaceChildren(h(`<div><h3>Newest segments</h3><table class="grid"><tr><th>Segment</th><th>Tier</th><th>State</th><th>Lines</th><th>Bytes</th><th>Compression</th><th>From</th><th>To</th></tr>
      ${segs.map(g => `<tr><td class="kv">${esc(g.name)}</td><td>${esc(g.tier)}</td><td>${esc(g.state)}</td><td>${g.rows}</td><td>${bytes(g.bytes)}</td>
        <td>${g.bytes ? (g.raw_bytes / g.bytes).toFixed(1) : '–'}×</td><td>${esc(fmtTime(g.min_ts))}</td><td>${esc(fmtTime(g.max_ts))}</td></tr>`).join('') || '<tr><td colspan="8" class="muted">No segments yet: lines are in the hot tier.</td></tr>'}</table></div>`));
  }
}

// ---------- shell ----------
function theme(next) {
  const t = next || localStorage.getItem('heimdall.theme') || (matchMedia('(prefers-color-scheme: light)').matches ? 'light' : 'dark');
  document.documentElement.dataset.theme = t;
  localStorage.setItem('heimdall.theme', t);
}
let gPending = false;
document.addEventListener('keydown', e => {
  const typing = ['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement.tagName);
  if (e.key === 'Escape') { document.activeElement.blur(); return; }
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (gPending) {
    gPending = false;
    const a = document.querySelector(`.top nav a[data-key="${e.key}"]`);
    if (a) { e.preventDefault(); go(a.getAttribute('href')); }
    return;
  }
  if (e.key === 'g') gPending = true;
  else if (e.key === '/') { const q = $('#q'); if (q) { e.preventDefault(); q.focus(); } }
  else if (e.key === 't') theme(document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark');
  else if (e.key === '?') $('#keys').showModal();
});
document.addEventListener('click', e => {
  const a = e.target.closest('a[data-nav]');
  if (a && !e.ctrlKey && !e.metaKey && a.origin === location.origin) { e.preventDefault(); go(a.getAttribute('href')); }
});
window.addEventListener('popstate', route);

async function start() {
  theme();
  try {
    me = (await api('/api/v1/whoami')).data;
  } catch (e) {
    if (e.status === 401) return;
    throw e;
  }
  $('#who').textContent = me.tokens ? `${me.name} (${me.role})` : '';
  document.body.dataset.role = me.role;
  if (location.pathname === '/') go('/explore', true); else route();
}
$('#theme').addEventListener('click', () => theme(document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark'));
$('#help').addEventListener('click', () => $('#keys').showModal());
start();

// For scripts driving the page (the browser test renders 100,000 lines through it).
export { showLines };

// The ballast dashboard. Reads the REST API every 2 s (pools, volumes,
// claims, /metrics), operations in flight every 0.5 s, and follows
// /v1/events/stream; draws with plain DOM and
// SVG. Read-only: it sends nothing but GETs.
//
// Safety: every value from the API reaches the page through textContent or
// setAttribute, never through HTML parsing.
'use strict';

(() => {
  const POLL_MS = 2000;
  /** Operations in flight are polled faster: the list is tiny and a copy short. */
  const OPS_POLL_MS = 500;
  /** Samples kept for the charts: 5 minutes at one per poll. */
  const WINDOW = 150;
  const MAX_EVENTS = 60;
  const TOKEN_KEY = 'ballast.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  /** Event kinds (the SSE `event:` field); see EventKind in the API document. */
  const EVENT_KINDS = [
    'create', 'delete', 'mount', 'unmount', 'resize', 'autogrow', 'snapshot',
    'reconcile', 'warning', 'remediation', 'critical',
  ];
  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    volumes: [],
    volumesText: null,
    filter: '',
    sort: { key: 'name', dir: 1 },
    rendered: false,
    io: [], // {t, read, write}: rates in bytes/s
    lastIo: null, // {t, read, write}: counters
    metricsMissing: false,
    cap: [], // {t, used, prov, cap}
    events: new Map(), // seq -> event
    stream: null,
    streamOpen: false,
    unauthorized: false,
  };

  // ---- DOM helpers -------------------------------------------------------

  /** An element with attributes and children; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  function bytes(n) {
    if (typeof n !== 'number' || !isFinite(n)) return '–';
    let i = 0;
    let v = Math.abs(n);
    while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
    const s = i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0);
    return (n < 0 ? '-' : '') + s + ' ' + UNITS[i];
  }

  function pct(part, whole) {
    return whole > 0 ? (100 * part) / whole : 0;
  }

  /** A percentage for people: `<1%` rather than a misleading `0%`. */
  function pctText(part, whole) {
    const p = pct(part, whole);
    return p > 0 && p < 1 ? '<1%' : p.toFixed(0) + '%';
  }

  // One formatter each: toLocaleString() builds a new one per call, which a
  // thousand rows feel.
  const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  const TIME = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });

  function time(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : DATE_TIME.format(d);
  }

  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : TIME.format(d);
  }

  // ---- talking to the API ------------------------------------------------

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function get(path, as) {
    const headers = {};
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    const r = await fetch(path, { headers, cache: 'no-store', credentials: 'omit' });
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try {
        const body = await r.json();
        if (body && body.error && body.error.message) msg = body.error.message;
      } catch (_) { /* not JSON */ }
      throw new HttpError(r.status, msg);
    }
    return as === 'text' ? r.text() : r.json();
  }

  function setStatus(ok, text) {
    $('status').classList.toggle('bad', !ok);
    $('status-text').textContent = text;
  }

  function banner(text) {
    const b = $('banner');
    b.hidden = !text;
    b.textContent = text || '';
  }

  // ---- pools -------------------------------------------------------------

  function renderPools(pools) {
    const box = $('pools');
    if (!pools.length) {
      box.replaceChildren(el('p', { class: 'empty' }, 'No pools.'));
      return;
    }
    box.replaceChildren(...pools.map((p) => {
      const cap = p.capacity_bytes;
      const prov = p.provisioned_bytes;
      const used = p.used_bytes;
      // The bar is the larger of capacity and provisioned (overcommit).
      const scale = Math.max(cap, prov, 1);
      const track = el('div', { class: 'bar', role: 'img', 'aria-label':
        `${p.name}: used ${bytes(used)}, provisioned ${bytes(prov)}, capacity ${bytes(cap)}` });
      const capEl = el('div', { class: 'fill cap' });
      const provEl = el('div', { class: 'fill prov' + (prov > cap ? ' over' : '') });
      const usedEl = el('div', { class: 'fill used' });
      capEl.style.width = pct(cap, scale) + '%';
      provEl.style.width = pct(prov, scale) + '%';
      usedEl.style.width = pct(used, scale) + '%';
      track.append(capEl, provEl, usedEl);
      return el('article', { class: 'pool', 'data-pool': p.name },
        el('div', { class: 'pool-head' },
          el('h3', null, p.name),
          el('span', { class: 'badge' }, p.driver),
          el('span', { class: 'muted' }, `${p.volumes} volume${p.volumes === 1 ? '' : 's'}`)),
        track,
        el('dl', { class: 'figures' },
          el('div', null, el('dt', null, 'used'), el('dd', null, `${bytes(used)} · ${pctText(used, cap)}`)),
          el('div', null, el('dt', null, 'provisioned'),
            el('dd', { class: prov > cap ? 'warn' : null }, `${bytes(prov)} · ${pctText(prov, cap)}`)),
          el('div', null, el('dt', null, 'capacity'), el('dd', null, bytes(cap))),
          el('div', null, el('dt', null, 'available'), el('dd', null, bytes(p.available_bytes)))));
    }));
  }

  // ---- operations in flight ---------------------------------------------

  /** What an operation does, in words (see Operation in the API document). */
  function opSubject(o) {
    switch (o.kind) {
      case 'snapshot': return `snapshot ${o.target} of ${o.source}`;
      case 'copy': return `copy ${o.target} from ${o.source}`;
      // The source names both ends: `node/pool → node/pool`.
      case 'move': return `move ${o.target} ${o.source}`;
      case 'backup': return `backup of ${o.target} to ${o.source}`;
      case 'restore': return `restore of backup ${o.source} into ${o.target}`;
      default: return `${o.kind} ${o.target} from ${o.source}`;
    }
  }

  /** `45 s`, `3 min 20 s`, `2 h 5 min`. */
  function duration(secs) {
    const s = Math.max(0, Math.round(secs));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  /** The daemon's rate and ETA; empty until it has measured a rate. */
  function rateText(o) {
    if (!o.rate_bytes_per_sec) return '';
    const rate = `${bytes(o.rate_bytes_per_sec)}/s`;
    return typeof o.eta_seconds === 'number' ? `${rate} · ${duration(o.eta_seconds)} left` : rate;
  }

  function renderOperations(ops) {
    $('operations-panel').hidden = !ops.length;
    $('operations').replaceChildren(...ops.map((o) => {
      const total = o.total_bytes;
      const done = total ? Math.min(o.done_bytes, total) : o.done_bytes;
      // No value: an indeterminate bar until the operation knows its size
      // (a btrfs send knows it only at its end).
      const bar = el('progress', total ? { max: total, value: done } : {});
      const what = opSubject(o);
      const figures = total
        ? `${pctText(done, total)} · ${bytes(done)} of ${bytes(total)}`
        : done ? `${bytes(done)} so far` : 'measuring…';
      return el('li', { class: 'op', 'data-op': `${o.kind}:${o.target}` },
        el('span', { class: 'subject', title: what }, what),
        bar,
        el('span', { class: 'figures' }, figures),
        el('span', { class: 'rate' }, rateText(o)));
    }));
  }

  function opsLoop() {
    const next = () => setTimeout(opsLoop, OPS_POLL_MS);
    // Without the token it needs, the main poll asks for it; no point in
    // being refused twice a second meanwhile.
    if (state.unauthorized) {
      renderOperations([]);
      next();
      return;
    }
    // Errors (a restart) show through the main poll; a list that cannot be
    // read is not shown as if current.
    get('/v1/operations')
      .then(renderOperations)
      .catch(() => renderOperations([]))
      .finally(next);
  }

  // ---- volumes -----------------------------------------------------------

  function consumersText(v) {
    return (v.consumers || [])
      .map((c) => c.kind + (c.id ? ':' + c.id : '') + (c.count > 1 ? ' ×' + c.count : ''))
      .join(', ');
  }

  const SORT_KEYS = {
    name: (v) => v.name,
    pool: (v) => v.pool,
    driver: (v) => v.driver,
    size: (v) => v.size_bytes,
    state: (v) => v.state,
    consumers: (v) => (v.consumers || []).length,
    created: (v) => v.created_at,
  };

  function matches(v, needle) {
    if (!needle) return true;
    const hay = [v.name, v.pool, v.driver, v.state, v.size, consumersText(v),
      ...Object.entries(v.labels || {}).map(([k, val]) => k + '=' + val)].join('\n').toLowerCase();
    return hay.includes(needle);
  }

  function renderVolumes() {
    const t0 = performance.now();
    const needle = state.filter.trim().toLowerCase();
    const key = SORT_KEYS[state.sort.key] || SORT_KEYS.name;
    const dir = state.sort.dir;
    const rows = state.volumes.filter((v) => matches(v, needle));
    rows.sort((a, b) => {
      const x = key(a);
      const y = key(b);
      const c = x < y ? -1 : x > y ? 1 : 0;
      return (c || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)) * dir;
    });
    const body = $('volume-rows');
    if (!rows.length) {
      const text = state.volumes.length ? 'No volume matches the filter.' : 'No volumes.';
      body.replaceChildren(el('tr', { class: 'placeholder' }, el('td', { colspan: 7 }, text)));
    } else {
      const frag = document.createDocumentFragment();
      for (const v of rows) {
        const n = (v.consumers || []).length;
        frag.append(el('tr', { 'data-state': v.state },
          el('td', { class: 'name', 'data-volume': v.name, title: v.id }, v.name),
          el('td', null, v.pool),
          el('td', null, v.driver + (v.fs ? ' · ' + v.fs : '')),
          el('td', { class: 'num', 'data-bytes': v.size_bytes }, bytes(v.size_bytes)),
          el('td', null, el('span', { class: 'state ' + v.state }, v.state)),
          el('td', { class: 'consumers', title: consumersText(v) },
            n ? consumersText(v) : el('span', { class: 'muted' }, 'none')),
          el('td', { class: 'muted', title: v.created_at }, time(v.created_at))));
      }
      body.replaceChildren(frag);
    }
    $('volume-count').textContent = rows.length === state.volumes.length
      ? `${state.volumes.length}`
      : `${rows.length} of ${state.volumes.length}`;
    for (const th of document.querySelectorAll('#volume-table th[data-sort]')) {
      const on = th.dataset.sort === state.sort.key;
      th.setAttribute('aria-sort', on ? (dir > 0 ? 'ascending' : 'descending') : 'none');
    }
    const table = $('volume-table');
    table.dataset.rows = String(rows.length);
    if (!state.rendered) {
      // The first render of real data, in ms since navigation start, for
      // the benchmark (and anyone curious): rows in the DOM (`render-ms`,
      // of which `build-ms` building them), then painted (`paint-ms`: a
      // task after the next animation frame runs after its paint).
      state.rendered = true;
      table.dataset.buildMs = (performance.now() - t0).toFixed(1);
      table.dataset.renderMs = performance.now().toFixed(1);
      requestAnimationFrame(() => setTimeout(() => {
        table.dataset.paintMs = performance.now().toFixed(1);
      }, 0));
    }
  }

  function setupTable() {
    for (const th of document.querySelectorAll('#volume-table th[data-sort]')) {
      th.tabIndex = 0;
      const go = () => {
        const k = th.dataset.sort;
        state.sort = { key: k, dir: state.sort.key === k ? -state.sort.dir : 1 };
        renderVolumes();
      };
      th.addEventListener('click', go);
      th.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); go(); }
      });
    }
    let pending = 0;
    $('filter').addEventListener('input', (e) => {
      state.filter = e.target.value;
      clearTimeout(pending);
      pending = setTimeout(renderVolumes, 80);
    });
  }

  // ---- charts ------------------------------------------------------------

  /**
   * A round axis maximum at or above `v`: 1, 2 or 5 times a power of ten,
   * of a binary unit when `binary` (so byte axes read 2 GiB, not 2.15 GB).
   */
  function niceMax(v, binary) {
    if (!(v > 0)) return 1;
    let unit = 1;
    if (binary) while (v >= unit * 1024) unit *= 1024;
    const x = v / unit;
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    for (const m of [1, 2, 5, 10]) if (x <= m * p) return m * p * unit;
    return 10 * p * unit;
  }

  /**
   * Draw `series` ({cls, values, area}) over `times` in an SVG of viewBox
   * 600×140; null values are gaps. The x axis spans the samples collected,
   * up to the window.
   */
  function lineChart(box, times, series, fmt) {
    const W = 600;
    const H = 140;
    const top = 8;
    const bottom = 18;
    const left = 0;
    const nodes = [];
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    max = niceMax(max, true);
    // Grid lines and their labels.
    for (let i = 0; i <= 4; i++) {
      const y = top + ((H - top - bottom) * i) / 4;
      nodes.push(svg('line', { class: 'grid', x1: left, x2: W, y1: y, y2: y }));
    }
    const tEnd = times.length ? times[times.length - 1] : 0;
    const tspan = Math.max(times.length ? tEnd - times[0] : 0, POLL_MS);
    const t0 = tEnd - tspan;
    const x = (t) => left + ((W - left) * (t - t0)) / tspan;
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    for (const s of series) {
      let pts = [];
      const flush = () => {
        if (pts.length > 1) {
          if (s.area) {
            const area = pts.slice();
            area.push(`${pts[pts.length - 1].split(',')[0]},${y(0)}`, `${pts[0].split(',')[0]},${y(0)}`);
            nodes.push(svg('polygon', { class: 'area ' + s.cls, points: area.join(' ') }));
          }
          nodes.push(svg('polyline', { class: 'line ' + s.cls, points: pts.join(' ') }));
        } else if (pts.length === 1) {
          const [px, py] = pts[0].split(',');
          nodes.push(svg('circle', { class: 'pt ' + s.cls, cx: px, cy: py, r: 2.5 }));
        }
        pts = [];
      };
      s.values.forEach((v, i) => {
        if (v === null) flush();
        else pts.push(`${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`);
      });
      flush();
    }
    box.replaceChildren(...nodes);
    // Axis labels are HTML over the SVG so they are not stretched.
    const wrap = box.parentElement;
    let labels = wrap.querySelector('.axis');
    if (!labels) {
      labels = el('div', { class: 'axis' });
      box.after(labels);
    }
    const ago = Math.round(tspan / 1000);
    labels.replaceChildren(
      el('span', { class: 'ymax' }, fmt(max)),
      el('span', { class: 'xmin' }, ago >= 120 ? `−${Math.round(ago / 60)} min` : `−${ago} s`),
      el('span', { class: 'xmax' }, 'now'));
  }

  function drawCharts() {
    const io = state.io;
    lineChart($('io-chart'), io.map((s) => s.t), [
      { cls: 'read', area: true, values: io.map((s) => s.read) },
      { cls: 'write', area: true, values: io.map((s) => s.write) },
    ], (v) => bytes(v) + '/s');
    const last = io[io.length - 1];
    $('io-note').textContent = state.metricsMissing
      ? '/metrics is not served here: no I/O figures.'
      : last
        ? `now: read ${bytes(last.read)}/s, write ${bytes(last.write)}/s`
        : 'collecting…';

    const cap = state.cap;
    lineChart($('cap-chart'), cap.map((s) => s.t), [
      { cls: 'cap', values: cap.map((s) => s.cap) },
      { cls: 'prov', values: cap.map((s) => s.prov) },
      { cls: 'used', area: true, values: cap.map((s) => s.used) },
    ], bytes);
    const c = cap[cap.length - 1];
    $('cap-note').textContent = c
      ? `now: used ${bytes(c.used)} · provisioned ${bytes(c.prov)} · capacity ${bytes(c.cap)}`
      : 'collecting…';
  }

  function push(arr, sample) {
    arr.push(sample);
    if (arr.length > WINDOW) arr.splice(0, arr.length - WINDOW);
  }

  /** Sum of every sample of the metric `name` in Prometheus/OpenMetrics text. */
  function sumMetrics(text, names) {
    const sums = Object.fromEntries(names.map((n) => [n, 0]));
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)/.exec(line);
      if (m && m[1] in sums) {
        const v = Number(m[3]);
        if (isFinite(v)) sums[m[1]] += v;
      }
    }
    return sums;
  }

  const READ = 'ballast_volume_read_bytes_total';
  const WRITE = 'ballast_volume_written_bytes_total';

  async function pollMetrics(now) {
    if (state.metricsMissing) return;
    let text;
    try {
      text = await get('/metrics', 'text');
    } catch (e) {
      if (e.status === 404) {
        state.metricsMissing = true;
        return;
      }
      throw e;
    }
    const sums = sumMetrics(text, [READ, WRITE]);
    const cur = { t: now, read: sums[READ], write: sums[WRITE] };
    const prev = state.lastIo;
    state.lastIo = cur;
    if (!prev) return;
    const dt = (cur.t - prev.t) / 1000;
    // A counter going down is a volume gone (or unmounted): no rate.
    const rate = (a, b) => (dt > 0 && b >= a ? (b - a) / dt : null);
    push(state.io, { t: now, read: rate(prev.read, cur.read), write: rate(prev.write, cur.write) });
  }

  // ---- events ------------------------------------------------------------

  function addEvents(list) {
    for (const e of list) if (e && typeof e.seq === 'number') state.events.set(e.seq, e);
    if (state.events.size > MAX_EVENTS) {
      const keys = [...state.events.keys()].sort((a, b) => a - b);
      for (const k of keys.slice(0, keys.length - MAX_EVENTS)) state.events.delete(k);
    }
    renderEvents();
  }

  function renderEvents() {
    const list = [...state.events.values()].sort((a, b) => b.seq - a.seq);
    const box = $('events');
    if (!list.length) {
      box.replaceChildren(el('li', { class: 'empty' }, 'No events yet.'));
      return;
    }
    box.replaceChildren(...list.map((e) => el('li', { class: 'event ' + e.kind, 'data-seq': e.seq },
      el('time', { datetime: e.time, title: time(e.time) }, clock(e.time)),
      el('span', { class: 'kind' }, e.kind),
      el('span', { class: 'subject' }, e.volume || e.pool || ''),
      el('span', { class: 'message' }, e.message))));
  }

  function openStream() {
    // EventSource cannot send a bearer token: with a token, poll instead.
    if (state.token || !window.EventSource || state.stream) return;
    const es = new EventSource('/v1/events/stream?limit=' + MAX_EVENTS);
    state.stream = es;
    const onEvent = (m) => {
      try {
        addEvents([JSON.parse(m.data)]);
      } catch (_) { /* not an event */ }
    };
    for (const k of EVENT_KINDS) es.addEventListener(k, onEvent);
    es.addEventListener('message', onEvent);
    es.addEventListener('lagged', () => pollEvents().catch(() => {}));
    es.onopen = () => {
      state.streamOpen = true;
      $('events-mode').textContent = 'live';
    };
    es.onerror = () => {
      // The browser retries by itself; poll meanwhile.
      state.streamOpen = false;
      $('events-mode').textContent = 'polling';
    };
  }

  function closeStream() {
    if (state.stream) state.stream.close();
    state.stream = null;
    state.streamOpen = false;
  }

  async function pollEvents() {
    const list = await get('/v1/events?limit=' + MAX_EVENTS);
    addEvents(list);
  }

  // ---- claims ------------------------------------------------------------

  function renderClaims(claims) {
    const box = $('claims');
    if (claims === null) {
      $('claims-count').textContent = '';
      box.replaceChildren(el('p', { class: 'empty' }, 'No claims (this daemon has no claims API).'));
      return;
    }
    $('claims-count').textContent = claims.length ? String(claims.length) : '';
    if (!claims.length) {
      box.replaceChildren(el('p', { class: 'empty' }, 'No claims.'));
      return;
    }
    const rows = claims.map((c) => el('tr', { class: c.expired ? 'expired' : null },
      el('td', null, c.group),
      el('td', { class: 'num' }, c.ordinal),
      el('td', null, c.holder),
      el('td', { class: 'vols' }, (c.volumes || []).join(', ')),
      el('td', { class: 'muted' }, c.expired ? 'expired' : c.expires_at ? clock(c.expires_at) : 'held')));
    box.replaceChildren(el('table', { class: 'data compact' },
      el('thead', null, el('tr', null,
        el('th', { scope: 'col' }, 'Group'), el('th', { scope: 'col', class: 'num' }, '#'),
        el('th', { scope: 'col' }, 'Holder'), el('th', { scope: 'col' }, 'Volumes'),
        el('th', { scope: 'col' }, 'Expires'))),
      el('tbody', null, ...rows)));
  }

  async function pollClaims() {
    try {
      renderClaims(await get('/v1/claims'));
    } catch (e) {
      if (e.status === 404) renderClaims(null);
      else throw e;
    }
  }

  // ---- the loop ----------------------------------------------------------

  async function poll() {
    const now = Date.now();
    const jobs = [
      get('/v1/volumes', 'text').then((text) => {
        // Rebuild the table only when something changed.
        if (text !== state.volumesText || !state.rendered) {
          state.volumesText = text;
          state.volumes = JSON.parse(text);
          renderVolumes();
        }
      }),
      get('/v1/pools').then((pools) => {
        renderPools(pools);
        const sum = (k) => pools.reduce((a, p) => a + (p[k] || 0), 0);
        push(state.cap, { t: now, used: sum('used_bytes'), prov: sum('provisioned_bytes'), cap: sum('capacity_bytes') });
      }),
      pollMetrics(now),
      pollClaims(),
    ];
    if (!state.streamOpen) {
      $('events-mode').textContent = 'polling';
      jobs.push(pollEvents());
    }
    const results = await Promise.allSettled(jobs);
    drawCharts();
    const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
    const unauthorized = failed.some((e) => e && e.status === 401);
    state.unauthorized = unauthorized;
    if (unauthorized) {
      banner(state.token
        ? 'The API refused the token: check it against <state-dir>/token.'
        : 'This page is not on loopback: the API needs its token (from <state-dir>/token). Enter it above.');
    } else {
      banner('');
    }
    if (failed.length) {
      setStatus(false, 'error: ' + (failed[0] && failed[0].message ? failed[0].message : 'unreachable'));
    } else {
      setStatus(true, 'live · ' + TIME.format(new Date(now)));
    }
    if (!unauthorized) openStream();
  }

  function loop() {
    poll().finally(() => setTimeout(loop, POLL_MS));
  }

  function setupToken() {
    const input = $('token-input');
    const clear = $('token-clear');
    const show = () => {
      clear.hidden = !state.token;
      input.value = '';
      input.placeholder = state.token ? 'token set for this tab' : 'only needed off loopback';
    };
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      state.token = t;
      sessionStorage.setItem(TOKEN_KEY, t);
      closeStream();
      show();
      poll();
    });
    clear.addEventListener('click', () => {
      state.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      show();
      poll();
    });
    show();
  }

  function start() {
    setupToken();
    setupTable();
    get('/v1/version')
      .then((v) => { $('version').textContent = 'v' + v.version; })
      .catch(() => {});
    loop();
    opsLoop();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

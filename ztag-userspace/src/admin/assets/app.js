// ztag admin dashboard. Plain JavaScript, fetch only; the DOM is built with
// createElement/textContent (never HTML strings), so nothing an entry's
// reason or a caller's path contains can run as code.
'use strict';

const state = { csrf: null, who: null, page: null, timer: null, armed: new Map() };
const PAGES = ['overview', 'blocklist', 'top', 'approvals', 'routes'];
const POLL_MS = { overview: 2000, blocklist: 3000, top: 3000, approvals: 2000, routes: 5000 };

function $(sel, root) { return (root || document).querySelector(sel); }

// el('td', {class: 'num', text: '3', data: {cidr: 'x'}}, child...)
function el(tag, attrs, ...children) {
  const ns = ['svg', 'path', 'line', 'text', 'polyline', 'g'].includes(tag) ? 'http://www.w3.org/2000/svg' : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = String(v);
    else if (k === 'data') for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function say(msg, kind) {
  const s = $('#status');
  s.textContent = msg || '';
  s.className = kind || '';
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  if (method !== 'GET' && state.csrf) opts.headers['X-CSRF-Token'] = state.csrf;
  const r = await fetch('/ui/api/' + path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401 && path !== 'login') {
    showLogin(data);
    throw new Error('Your session has ended: log in again.');
  }
  if (!r.ok) throw new Error((data && data.error) || (r.status + ' ' + r.statusText));
  return data;
}

// ---- formatting ----
function num(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + 'k';
  return Number(v).toFixed(digits === undefined ? (Number.isInteger(v) ? 0 : 1) : digits);
}
function pct(v) { return v === null || v === undefined ? '–' : (v * 100).toFixed(1) + ' %'; }
function time(ms) { return ms ? new Date(ms).toLocaleTimeString() : '–'; }
function datetime(ms) { return ms ? new Date(ms).toLocaleString() : '–'; }
function until(ms) {
  if (!ms) return 'never';
  const s = Math.round((ms - Date.now()) / 1000);
  if (s <= 0) return 'expired';
  if (s < 120) return 'in ' + s + ' s';
  if (s < 7200) return 'in ' + Math.round(s / 60) + ' min';
  if (s < 172800) return 'in ' + Math.round(s / 3600) + ' h';
  return 'in ' + Math.round(s / 86400) + ' d';
}
function keyText(k) { return k.type + ' ' + k.id; }

// ---- charts: SVG lines, drawn with DOM calls ----
function lineChart(box, series, unit) {
  box.replaceChildren();
  const W = 600, H = 180, L = 46, R = 8, T = 8, B = 22;
  const pts = series.flatMap((s) => s.points);
  if (pts.length < 2) {
    box.append(el('div', { class: 'empty', text: 'Collecting samples…' }));
    return;
  }
  const t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
  let max = Math.max(...pts.map((p) => p[1]));
  if (!(max > 0)) max = 1;
  max *= 1.1;
  const x = (t) => L + ((t - t0) / Math.max(t1 - t0, 1)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': series.map((s) => s.name).join(', ') });
  for (const f of [0, 0.5, 1]) {
    const v = max * f / 1.1;
    svg.append(el('line', { class: 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(el('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end', text: num(v) + (unit || '') }));
  }
  svg.append(el('text', { x: L, y: H - 6, text: time(t0) }));
  svg.append(el('text', { x: W - R, y: H - 6, 'text-anchor': 'end', text: time(t1) }));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p) => x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1)).join(' ');
    svg.append(el('polyline', { class: 'line s' + (i % 6), points: d }));
  });
  const legend = el('div', { class: 'legend' });
  series.forEach((s, i) => {
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    legend.append(el('span', {}, el('i', { class: 's' + (i % 6) }), s.name + ': ' + num(last) + (unit || '')));
  });
  box.append(svg, legend);
}

function byReason(points, field) {
  const names = new Set();
  points.forEach((p) => Object.keys(p[field]).forEach((k) => names.add(k)));
  return [...names].sort().map((n) => ({ name: n, points: points.map((p) => [p.t_ms, p[field][n] || 0]) }));
}

// ---- pages ----
function tile(k, v, id) {
  return el('div', { class: 'tile', id }, el('div', { class: 'v', text: v }), el('div', { class: 'k', text: k }));
}

async function loadOverview() {
  const o = await api('GET', 'overview');
  const s = o.series, pts = s.points, last = pts[pts.length - 1] || { denials: {}, drops: {} };
  const sum = (m) => Object.values(m || {}).reduce((a, b) => a + b, 0);
  const lists = o.lists || {};
  $('#tiles').replaceChildren(
    tile('requests/s', num(last.rps), 'tile-rps'),
    tile('p50 latency', last.p50_ms == null ? '–' : num(last.p50_ms, 2) + ' ms', 'tile-p50'),
    tile('p99 latency', last.p99_ms == null ? '–' : num(last.p99_ms, 2) + ' ms', 'tile-p99'),
    tile('denials/s', num(sum(last.denials)), 'tile-denials'),
    tile('XDP drops/s', num(sum(last.drops)), 'tile-drops'),
    tile('token-cache hits', pct(s.token_cache_hit_ratio), 'tile-token-cache'),
    tile('decision-cache hits', pct(s.decision_cache_hit_ratio), 'tile-decision-cache'),
    tile('blocked (static + dynamic)', num((lists.block || 0) + (lists.dynamic || 0)), 'tile-blocked'),
    tile('pending approvals', num(o.pending_approvals), 'tile-pending'),
  );
  lineChart($('#chart-rps'), [{ name: 'requests/s', points: pts.map((p) => [p.t_ms, p.rps]) }]);
  lineChart($('#chart-latency'), [
    { name: 'p50', points: pts.filter((p) => p.p50_ms != null).map((p) => [p.t_ms, p.p50_ms]) },
    { name: 'p99', points: pts.filter((p) => p.p99_ms != null).map((p) => [p.t_ms, p.p99_ms]) },
  ], ' ms');
  const den = byReason(pts, 'denials');
  lineChart($('#chart-denials'), den.length ? den : [{ name: 'none', points: pts.map((p) => [p.t_ms, 0]) }]);
  const drops = byReason(pts, 'drops');
  lineChart($('#chart-drops'), drops.length ? drops : [{ name: 'none', points: pts.map((p) => [p.t_ms, 0]) }]);
  badge(o.pending_approvals);
}

function badge(n) {
  const b = $('#pending-badge');
  b.hidden = !n;
  b.textContent = n ? String(n) : '';
}

function armButton(btn, key, label, onConfirm) {
  // Two clicks: the first arms the button for 4 s, the second acts.
  const armedAt = state.armed.get(key);
  if (armedAt && Date.now() - armedAt < 4000) {
    btn.textContent = 'Confirm ' + label.toLowerCase();
    btn.classList.add('danger');
  }
  btn.addEventListener('click', async () => {
    const t = state.armed.get(key);
    if (t && Date.now() - t < 4000) {
      state.armed.delete(key);
      btn.disabled = true;
      await onConfirm();
    } else {
      state.armed.set(key, Date.now());
      btn.textContent = 'Confirm ' + label.toLowerCase();
      btn.classList.add('danger');
    }
  });
}

async function act(fn, ok) {
  try {
    await fn();
    say(ok, 'ok');
  } catch (e) {
    say(e.message, 'error');
  }
  refresh();
}

async function loadBlocklist() {
  const q = $('#search').value;
  const [l, ev] = await Promise.all([api('GET', 'lists?q=' + encodeURIComponent(q)), api('GET', 'events')]);
  const body = $('#list-table tbody');
  const rows = l.entries.map((e) => {
    const key = e.kind + ' ' + e.cidr;
    const rm = el('button', { type: 'button', class: 'secondary remove', 'aria-label': 'Remove ' + e.cidr + ' from ' + e.kind, text: 'Remove' });
    armButton(rm, key, 'Remove', () => act(() => api('POST', 'lists/remove', { list: e.kind, cidr: e.cidr }), 'Removed ' + e.cidr + ' from ' + e.kind + '.'));
    return el('tr', { data: { cidr: e.cidr, list: e.kind } },
      el('td', { class: 'mono', text: e.cidr }),
      el('td', {}, el('span', { class: 'tag ' + e.kind, text: e.kind })),
      el('td', {}, el('span', { class: 'tag ' + e.origin, text: e.origin })),
      el('td', { text: e.reason || '' }),
      el('td', { text: until(e.expires_at_ms), title: e.expires_at_ms ? datetime(e.expires_at_ms) : '' }),
      el('td', { class: 'num hits', text: e.hits === null ? '–' : num(e.hits) }),
      el('td', { class: 'actions' }, rm));
  });
  if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: l.xdp ? 'No entries.' : 'The kernel plane is off (xdp.enabled = false).' })));
  body.replaceChildren(...rows);
  const shown = l.entries.length < l.total ? (q ? '' : 'newest ') + l.entries.length + ' of ' : '';
  $('#list-count').textContent = shown + l.total + ' entries · hits estimated from 1-in-' + l.sample_one_in + ' sampled drops';
  $('#events-table tbody').replaceChildren(...ev.slice(0, 20).map((e) => el('tr', {},
    el('td', { text: time(e.time_ms) }), el('td', { class: 'mono', text: e.source }),
    el('td', { text: e.interface }), el('td', { text: e.reason }))));
}

async function loadTop() {
  const t = await api('GET', 'top');
  const body = $('#top-table tbody');
  if (!t.enabled) {
    body.replaceChildren(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: 'The risk engine is off ([risk] enabled = false).' })));
    return;
  }
  const rows = t.top.map((r) => {
    const k = r.key, isNet = k.type === 'source' || k.type === 'prefix';
    const stateText = [
      r.blocked_until_ms ? 'blocked ' + until(r.blocked_until_ms) : null,
      r.banned_until_ms ? 'banned ' + until(r.banned_until_ms) : null,
      r.limited ? 'rate-limited' : null,
    ].filter(Boolean).join(', ') || '–';
    const actions = el('td', { class: 'actions' });
    if (k.type !== 'client') {
      actions.append(el('button', {
        type: 'button', class: 'danger block', 'aria-label': 'Block ' + keyText(k), text: 'Block',
        on: { click: () => act(() => api('POST', 'top/block', { type: k.type, id: k.id, ttl_secs: 3600 }), (isNet ? 'Blocked ' : 'Banned ') + keyText(k) + ' for an hour.') },
      }));
    }
    actions.append(el('button', {
      type: 'button', class: 'good allow', 'aria-label': (isNet ? 'Allow ' : 'Forgive ') + keyText(k), text: isNet ? 'Allow' : 'Forgive',
      on: { click: () => act(() => api('POST', 'top/allow', { type: k.type, id: k.id }), (isNet ? 'Allowed ' : 'Forgave ') + keyText(k) + '.') },
    }));
    return el('tr', { data: { key: keyText(k) } },
      el('td', {}, el('span', { class: 'muted', text: k.type + ' ' }), el('span', { class: 'mono', text: k.id })),
      el('td', { class: 'num', text: r.score.toFixed(1) }),
      el('td', { text: r.events.map((e) => e[0] + ' ×' + e[1]).join(', ') }),
      el('td', { text: r.recent.length ? time(r.recent[r.recent.length - 1][0]) + ' ' + r.recent.slice(-3).map((e) => e[1]).join(', ') : '–' }),
      el('td', { text: stateText }),
      actions);
  });
  if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: 'Nothing scored yet.' })));
  body.replaceChildren(...rows);
  $('#decisions-table tbody').replaceChildren(...t.decisions.map((d) => el('tr', {},
    el('td', { text: time(d.time_ms) }), el('td', { text: d.action + (d.ttl_s ? ' (' + d.ttl_s + ' s)' : '') }),
    el('td', { class: 'mono', text: keyText(d.key) }), el('td', { class: 'num', text: d.score.toFixed(1) }),
    el('td', { text: d.reasons.map((e) => e[0] + ' ×' + e[1]).join(', ') }))));
}

async function loadApprovals() {
  const all = await api('GET', 'approvals');
  const pending = all.filter((a) => a.status === 'pending');
  badge(pending.length);
  const who = (a) => [a.subject, a.client_id && 'client ' + a.client_id, a.source && 'from ' + a.source].filter(Boolean).join(' · ') || 'anonymous';
  const rows = pending.map((a) => {
    const note = el('input', { class: 'note', 'aria-label': 'Note for ' + a.id, placeholder: 'note (optional)', maxlength: 256 });
    const decide = (approve) => act(
      () => api('POST', 'approvals/' + encodeURIComponent(a.id) + '/' + (approve ? 'approve' : 'deny'), { note: note.value || null }),
      (approve ? 'Approved ' : 'Denied ') + a.target + '.');
    return el('tr', { data: { id: a.id } },
      el('td', { text: time(a.created_ms) }),
      el('td', { text: who(a) }),
      el('td', {}, el('div', { class: 'mono', text: a.target }), el('div', { class: 'muted', text: 'route ' + a.route + ' · ' + a.mode })),
      el('td', { text: a.why }),
      el('td', { text: until(a.deadline_ms) }),
      el('td', { class: 'actions' }, note,
        el('button', { type: 'button', class: 'good approve', text: 'Approve', 'aria-label': 'Approve ' + a.target, on: { click: () => decide(true) } }),
        el('button', { type: 'button', class: 'danger deny', text: 'Deny', 'aria-label': 'Deny ' + a.target, on: { click: () => decide(false) } })));
  });
  if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: 'Nothing waits for a decision.' })));
  // Keep a note being typed: only re-render when the set of ids changed.
  const body = $('#pending-table tbody');
  const ids = pending.map((a) => a.id).join(',');
  if (body.dataset.ids !== ids || !pending.length) {
    body.replaceChildren(...rows);
    body.dataset.ids = ids;
  }
  $('#history-table tbody').replaceChildren(...all.filter((a) => a.status !== 'pending').slice(0, 50).map((a) => el('tr', { data: { id: a.id } },
    el('td', { text: datetime(a.created_ms) }), el('td', { text: who(a) }), el('td', { class: 'mono', text: a.target }),
    el('td', {}, el('span', { class: 'tag ' + (a.status === 'approved' ? 'allow' : 'block'), text: a.status })),
    el('td', { text: a.decided_by || '–' }), el('td', { text: a.note || '' }))));
}

async function loadRoutes() {
  const r = await api('GET', 'routes');
  $('#routes-table tbody').replaceChildren(...r.routes.map((x) => el('tr', { data: { route: x.name } },
    el('td', { class: 'mono', text: x.name }),
    el('td', { text: [(x.methods.length ? x.methods.join('|') : 'any method'), (x.hosts.length ? x.hosts.join(', ') : 'any host'), x.path_prefix + '*'].join(' · ') }),
    el('td', { text: x.upstream }),
    el('td', { text: x.authenticate.join(', ') + (x.require_scopes.length ? ' · scopes ' + x.require_scopes.join(' ') : '') }),
    el('td', { text: [
      x.authz_checks ? x.authz_checks + ' FGA check(s)' : null,
      x.inspect ? 'inspect ' + x.inspect : null,
      x.filter ? 'filter ' + x.filter : null,
      x.mcp ? 'MCP' : null,
      x.credential ? 'credential ' + x.credential : null,
      x.approval ? 'approval (' + x.approval + ')' : null,
      ...x.rate_limit,
    ].filter(Boolean).join(' · ') || '–' }),
    el('td', { class: 'num requests', text: num(x.requests) }),
    el('td', { class: 'num', text: num(x.errors_5xx) }))));
  const pre = $('#config-text');
  if (pre.textContent !== r.config) pre.textContent = r.config;
}

const LOADERS = { overview: loadOverview, blocklist: loadBlocklist, top: loadTop, approvals: loadApprovals, routes: loadRoutes };

async function refresh() {
  const page = state.page;
  if (!page || !LOADERS[page]) return;
  try {
    await LOADERS[page]();
    if ($('#status').className === 'error' && /^(Cannot reach|Failed)/.test($('#status').textContent)) say('');
  } catch (e) {
    if (state.page === page) say(e.message === 'Failed to fetch' ? 'Cannot reach the daemon.' : e.message, 'error');
  }
}

function show(page) {
  if (!PAGES.includes(page)) page = 'overview';
  if (state.page !== page) say('');
  state.page = page;
  for (const s of document.querySelectorAll('.page')) s.hidden = s.id !== 'page-' + page;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = 'ztag · ' + $('#page-' + page + ' h1').textContent;
  clearInterval(state.timer);
  refresh();
  state.timer = setInterval(refresh, POLL_MS[page]);
}

function route() {
  if (!state.csrf) return;
  show(location.hash.replace(/^#\/?/, '') || 'overview');
}

function showLogin(info) {
  clearInterval(state.timer);
  state.csrf = null;
  state.page = null;
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  $('#who').textContent = '';
  for (const s of document.querySelectorAll('.page')) s.hidden = s.id !== 'page-login';
  if (info && info.certificate) say('Client certificate ' + info.certificate + ' verified: log in without a token.', 'ok');
  $('#token').focus();
}

function loggedIn(s) {
  state.csrf = s.csrf;
  state.who = s.who;
  $('#who').textContent = s.who;
  $('#nav').hidden = false;
  $('#logout').hidden = false;
  route();
  $('#main').focus();
}

async function start() {
  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const s = await api('POST', 'login', { token: $('#token').value });
      $('#token').value = '';
      say('');
      loggedIn(s);
    } catch (e) {
      say(e.message, 'error');
    }
  });
  $('#logout').addEventListener('click', async () => {
    try { await api('POST', 'logout'); } catch (_) { /* gone anyway */ }
    showLogin();
  });
  $('#add-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const cidr = $('#add-cidr').value.trim(), list = $('#add-list').value;
    const ttl = Number($('#add-ttl').value);
    act(async () => {
      await api('POST', 'lists', { list, cidr, ttl_secs: ttl || null, reason: $('#add-reason').value.trim() || null });
      $('#add-cidr').value = '';
      $('#add-reason').value = '';
    }, 'Added ' + cidr + ' to ' + list + '.');
  });
  let searchTimer = null;
  $('#search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(refresh, 200);
  });
  window.addEventListener('hashchange', route);
  try {
    const s = await fetch('/ui/api/session', { credentials: 'same-origin', cache: 'no-store' });
    const data = await s.json().catch(() => null);
    if (s.ok && data && data.csrf) loggedIn(data);
    else showLogin(data);
  } catch (_) {
    showLogin();
    say('Cannot reach the daemon.', 'error');
  }
}

// Policy violations are counted where a test (or an operator's console) can
// see them: the page is meant to have none.
window.ztagCspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.ztagCspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || ''));
});
document.addEventListener('DOMContentLoaded', start);

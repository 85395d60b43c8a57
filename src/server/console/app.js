// Sonde console: a page over the JSON API the CLI uses (the same tokens and tenants). No
// framework, no build step, nothing fetched from elsewhere. The token and tenant live in this
// tab's session storage.
'use strict';

const LIST_REFRESH_MS = 5000;
const LIVE_REFRESH_MS = 2000;
const CHECK_DELAY_MS = 250;

const session = window.sessionStorage;
const state = {
  token: session.getItem('sonde.token') || '',
  tenant: session.getItem('sonde.tenant') || '',
  gen: 0,
  timer: null,
  tenants: new Set(),
};

// ---------------------------------------------------------------------------------------------
// Small helpers

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.field = e.field || null;
    this.position = e.position || null;
    this.code = e.code || null;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (state.tenant) headers['X-Scope-OrgID'] = state.tenant;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let json = null;
  try {
    json = await resp.json();
  } catch (_) {
    json = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, json);
  return json;
}

/** Builds an element: h('td', {class: 'num'}, 'text', child). */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, kids);
  return el;
}

/** Builds an SVG element. */
function s(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  append(el, kids);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k === 'className' ? 'class' : k, v === true ? '' : String(v));
  }
}

function append(el, kids) {
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
}

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $('#main');

function render(...nodes) {
  const m = main();
  m.replaceChildren(...nodes.flat());
}

function toast(message) {
  const box = $('#toast');
  const msg = h('div', { class: 'msg' }, message);
  box.append(msg);
  setTimeout(() => msg.remove(), 4000);
}

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

/** Runs `fn` every `ms` while the current view stays (a new view stops it). */
function every(ms, fn) {
  stopTimer();
  const gen = state.gen;
  state.timer = setInterval(() => {
    if (gen !== state.gen || document.hidden) return;
    fn().catch(failed);
  }, ms);
}

function failed(err) {
  if (err instanceof ApiError && err.status === 401) {
    return signIn(state.token ? `The server refused that token: ${err.message}` : '');
  }
  if (err instanceof ApiError && err.status === 403) {
    stopTimer();
    return render(
      h('div', { class: 'panel', role: 'alert' },
        h('h1', { text: 'Not allowed' }),
        h('p', {}, err.message),
        h('p', { class: 'muted' }, 'Sign in with a token that has the role this page needs, or pick its tenant.'),
        h('button', { type: 'button', onclick: () => signIn('') }, 'Sign in with another token')));
  }
  console.error(err);
  toast(`Error: ${err.message}`);
}

const attr = (resource, key) => (resource && resource[key]) || '';

function ago(ms) {
  const secs = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.round(secs / 60)} min ago`;
  return `${Math.round(secs / 3600)} h ago`;
}

function fmt(n) {
  if (n === null || n === undefined) return '–';
  if (typeof n === 'number' && !Number.isInteger(n)) return n.toFixed(n < 10 ? 1 : 0);
  return Number(n).toLocaleString('en-US');
}

function stringValue(v) {
  return v && typeof v === 'object' && 'stringValue' in v ? v.stringValue : '';
}

function targetService(tp) {
  const t = (tp.targeting || []).find((kv) => kv.key === 'service.name');
  return t ? stringValue(t.value) : '';
}

function metricType(m) {
  return (m.type || 'COUNTER').toLowerCase();
}

function describeActions(tp) {
  const parts = (tp.metrics || []).map((m) => `${metricType(m)} ${m.name}`);
  const args = tp.args || {};
  if (args.log_msg) parts.push('log');
  if (!parts.length) parts.push('snapshot');
  return parts.join(', ');
}

function badge(stateName, text) {
  return h('span', { class: `badge ${stateName}` }, text || stateName);
}

/** "3 of 4 bound; 1 error" with badges. */
function statusCell(summary, message) {
  if (!summary || !summary.agents) return h('div', {}, badge('none', 'no agent'), h('div', { class: 'note' }, 'no live agent is targeted'));
  const line = h('div', { class: 'status-line' });
  const bound = summary.bound || 0;
  line.append(badge(bound === summary.agents ? 'bound' : bound ? 'pending' : 'unbound', `${bound} of ${summary.agents} bound`));
  for (const k of ['error', 'disarmed', 'unbound', 'pending', 'silent']) {
    if (summary[k]) line.append(badge(k, `${summary[k]} ${k}`));
  }
  return h('div', {}, line, message ? h('div', { class: 'why' }, message) : null);
}

function setTenant(t) {
  state.tenant = t.trim();
  if (state.tenant) session.setItem('sonde.tenant', state.tenant);
  else session.removeItem('sonde.tenant');
}

function noteTenants(agents) {
  // The tenant picker offers the tenants used in this tab.
  if (state.tenant) state.tenants.add(state.tenant);
  const list = $('#tenants');
  list.replaceChildren(...[...state.tenants].sort().map((t) => h('option', { value: t })));
  void agents;
}

function updateHeader() {
  $('#tenant').value = state.tenant;
  $('#who').textContent = state.token ? 'Signed in with a token' : '';
  $('#sign-out').hidden = !state.token;
}

// ---------------------------------------------------------------------------------------------
// Sign in

function signIn(message) {
  stopTimer();
  state.gen++;
  updateHeader();
  const token = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true });
  const tenant = h('input', { type: 'text', id: 'signin-tenant', name: 'tenant', value: state.tenant, placeholder: 'single-tenant', spellcheck: 'false' });
  const form = h('form', { class: 'panel signin', id: 'signin' },
    h('h1', { text: 'Sign in' }),
    h('p', { class: 'muted' }, 'This server requires a token. Paste the secret of an API token (the SECRET part of its line in the tokens file).'),
    message ? h('p', { class: 'error', role: 'alert' }, message) : null,
    h('div', { class: 'field' }, h('label', { for: 'token', text: 'Token' }), token),
    h('div', { class: 'field' }, h('label', { for: 'signin-tenant', text: 'Tenant' }), tenant,
      h('p', { class: 'hint' }, 'Leave empty for the default tenant, or for the tenant the token is bound to.')),
    h('div', { class: 'actions-bar' }, h('button', { type: 'submit', class: 'primary' }, 'Sign in')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.token = token.value.trim();
    session.setItem('sonde.token', state.token);
    setTenant(tenant.value);
    updateHeader();
    route();
  });
  render(form);
  token.focus();
}

// ---------------------------------------------------------------------------------------------
// Tracepoints

async function loadTracepoints() {
  const [list, status, agents] = await Promise.all([
    api('GET', '/api/tracepoints'),
    api('GET', '/api/status'),
    api('GET', '/api/agents?view=summary'),
  ]);
  const errors = {};
  for (const a of agents.agents) {
    for (const p of a.problems || []) {
      if (!errors[p.id]) errors[p.id] = `${p.state} in ${attr(a.resource, 'service.name') || a.id}: ${p.message}`;
    }
  }
  const tps = (list.response || []).slice().sort((a, b) => (a.path + a.lineNumber).localeCompare(b.path + b.lineNumber) || a.ID.localeCompare(b.ID));
  return { tps, status: status.tracepoints || {}, agents: agents.agents, errors };
}

async function viewTracepoints() {
  const gen = state.gen;
  const data = await loadTracepoints();
  if (gen !== state.gen) return;
  noteTenants(data.agents);
  const services = [...new Set([
    ...data.agents.map((a) => attr(a.resource, 'service.name')),
    ...data.tps.map(targetService),
  ].filter(Boolean))].sort();
  const filter = h('select', { id: 'service-filter' },
    h('option', { value: '' }, 'All services'),
    services.map((svc) => h('option', { value: svc }, svc)));
  const want = new URLSearchParams(location.hash.split('?')[1] || '').get('service') || '';
  filter.value = want;
  const wrap = h('div', { class: 'table-wrap' });
  const fill = (d) => wrap.replaceChildren(tracepointTable(d, filter.value));
  filter.addEventListener('change', () => {
    history.replaceState(null, '', filter.value ? `#/tracepoints?service=${encodeURIComponent(filter.value)}` : '#/tracepoints');
    fill(current);
  });
  let current = data;
  render(
    h('div', { class: 'heading' },
      h('h1', { text: 'Tracepoints' }),
      h('a', { class: 'button primary', href: '#/new', id: 'new-tracepoint' }, 'New tracepoint')),
    h('div', { class: 'toolbar' },
      h('div', {}, h('label', { for: 'service-filter', text: 'Service' }), filter),
      h('p', { class: 'muted grow', id: 'count' })),
    wrap);
  fill(data);
  every(LIST_REFRESH_MS, async () => {
    const d = await loadTracepoints();
    if (gen !== state.gen) return;
    current = d;
    fill(d);
  });
}

function tracepointTable(d, service) {
  const tps = d.tps.filter((tp) => !service || targetService(tp) === service || !targetService(tp));
  const count = $('#count');
  if (count) count.textContent = `${tps.length} tracepoint${tps.length === 1 ? '' : 's'}`;
  if (!tps.length) {
    return h('div', { class: 'empty' }, 'No tracepoints yet. ', h('a', { href: '#/new' }, 'Create one'), ' on a line your agents report.');
  }
  const rows = tps.map((tp) => {
    const sum = d.status[tp.ID];
    const loc = `${tp.path}:${tp.lineNumber}`;
    return h('tr', { 'data-id': tp.ID },
      h('td', {}, h('a', { href: `#/tracepoint/${encodeURIComponent(tp.ID)}`, class: 'mono' }, loc),
        h('div', { class: 'muted mono small' }, tp.ID.slice(0, 8))),
      h('td', {}, targetService(tp) || h('span', { class: 'muted' }, 'all')),
      h('td', {}, describeActions(tp), (tp.args || {}).condition ? h('div', { class: 'muted mono' }, `if ${tp.args.condition}`) : null),
      h('td', { class: 'status' }, statusCell(sum, d.errors[tp.ID])),
      h('td', { class: 'num hits' }, sum ? fmt(sum.hits || 0) : '–'),
      h('td', { class: 'actions' },
        h('a', { class: 'button small', href: `#/edit/${encodeURIComponent(tp.ID)}`, 'aria-label': `Edit ${loc}` }, 'Edit'),
        h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${loc}`, onclick: () => remove(tp) }, 'Delete')));
  });
  return h('table', {},
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Location'), h('th', { scope: 'col' }, 'Service'), h('th', { scope: 'col' }, 'Records'),
      h('th', { scope: 'col' }, 'Status'), h('th', { scope: 'col', class: 'num' }, 'Hits'), h('th', { scope: 'col' }, h('span', { class: 'muted' }, '')))),
    h('tbody', {}, rows));
}

async function remove(tp) {
  const loc = `${tp.path}:${tp.lineNumber}`;
  if (!window.confirm(`Delete the tracepoint at ${loc}? Agents stop recording it within a second.`)) return;
  try {
    await api('DELETE', `/api/tracepoints/${encodeURIComponent(tp.ID)}`);
    toast(`Deleted the tracepoint at ${loc}`);
    if (location.hash === '#/tracepoints') route();
    else location.hash = '#/tracepoints';
  } catch (err) {
    failed(err);
  }
}

// ---------------------------------------------------------------------------------------------
// Agents

async function viewAgents() {
  const gen = state.gen;
  const load = () => api('GET', '/api/agents?view=summary');
  const data = await load();
  if (gen !== state.gen) return;
  noteTenants(data.agents);
  const wrap = h('div', { class: 'table-wrap' });
  const fill = (d) => wrap.replaceChildren(agentTable(d.agents));
  render(h('h1', { text: 'Agents' }),
    h('p', { class: 'muted' }, 'Agents that polled in the last minutes or hold a watch stream now.'),
    wrap);
  fill(data);
  every(LIST_REFRESH_MS, async () => {
    const d = await load();
    if (gen === state.gen) fill(d);
  });
}

function agentTable(agents) {
  if (!agents.length) return h('div', { class: 'empty' }, 'No agent has connected to this tenant recently.');
  const rows = agents.map((a) => {
    const c = a.counts || {};
    const lang = [attr(a.resource, 'telemetry.sdk.language'), attr(a.resource, 'telemetry.sdk.version')].filter(Boolean).join(' ');
    return h('tr', {},
      h('td', {}, attr(a.resource, 'service.name') || h('span', { class: 'muted' }, '(no service.name)')),
      h('td', { class: 'mono' }, attr(a.resource, 'service.instance.id') || a.id),
      h('td', {}, lang || h('span', { class: 'muted' }, 'unknown')),
      h('td', { class: 'mono' }, a.address || '–'),
      h('td', { title: new Date(a.last_seen_ms).toISOString() }, ago(a.last_seen_ms)),
      h('td', {}, a.watching ? 'watch stream' : a.kind === 'watch' ? 'watch (closed)' : 'poll'),
      h('td', {}, h('div', { class: 'status-line' },
        badge('bound', `${c.bound || 0} bound`),
        c.unbound ? badge('unbound', `${c.unbound} unbound`) : null,
        c.error ? badge('error', `${c.error} error`) : null,
        c.disarmed ? badge('disarmed', `${c.disarmed} disarmed`) : null),
        (a.problems || []).slice(0, 2).map((p) => h('div', { class: 'why' }, p.message))),
      h('td', { class: 'num' }, a.sites === undefined ? '–' : fmt(a.sites)));
  });
  return h('table', {},
    h('thead', {}, h('tr', {}, ['Service', 'Instance', 'Language', 'Address', 'Last seen', 'Connection', 'Tracepoints']
      .map((t) => h('th', { scope: 'col' }, t)), h('th', { scope: 'col', class: 'num' }, 'Probe sites'))),
    h('tbody', {}, rows));
}

// ---------------------------------------------------------------------------------------------
// Tracepoint detail: status per agent, live counters, hits per second

async function viewDetail(id) {
  const gen = state.gen;
  const path = `/api/tracepoints/${encodeURIComponent(id)}`;
  const [one, status] = await Promise.all([api('GET', path), api('GET', `${path}/status`)]);
  if (gen !== state.gen) return;
  const tp = one.tracepoint;
  const loc = `${tp.path}:${tp.lineNumber}`;
  const live = h('div', { id: 'live' });
  const agents = h('div', { class: 'table-wrap', id: 'bindings' });
  const snaps = h('div', { id: 'snapshots' });
  const fill = (st) => {
    live.replaceChildren(...liveView(st));
    agents.replaceChildren(bindingTable(st.agents));
  };
  const args = tp.args || {};
  render(
    h('div', { class: 'heading' },
      h('h1', {}, h('span', { class: 'mono' }, loc)),
      h('a', { class: 'button', href: `#/edit/${encodeURIComponent(id)}` }, 'Edit'),
      h('button', { type: 'button', class: 'danger', onclick: () => remove(tp) }, 'Delete')),
    h('div', { class: 'panel' }, h('dl', { class: 'facts' },
      h('dt', {}, 'ID'), h('dd', { class: 'mono' }, tp.ID),
      h('dt', {}, 'Service'), h('dd', {}, targetService(tp) || 'all agents'),
      h('dt', {}, 'Records'), h('dd', {}, describeActions(tp)),
      args.condition ? [h('dt', {}, 'Condition'), h('dd', { class: 'mono' }, args.condition)] : null,
      args.log_msg ? [h('dt', {}, 'Log line'), h('dd', { class: 'mono' }, args.log_msg)] : null)),
    h('h2', { text: 'Live' }), live,
    h('h2', { text: 'Agents' }), agents,
    snaps);
  fill(status);
  loadSnapshots(id, snaps, gen);
  every(LIVE_REFRESH_MS, async () => {
    const st = await api('GET', `${path}/status`);
    if (gen === state.gen) fill(st);
  });
}

function liveView(st) {
  const c = st.live;
  const rates = st.rates || [];
  const perSecond = recentRate(rates);
  const card = (label, value, cls, id) => h('div', { class: `card ${cls || ''}`, id },
    h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
  if (!c) {
    return [h('p', { class: 'muted panel' }, st.summary && st.summary.agents
      ? 'No agent has reported counters for this tracepoint yet (Deep\'s agents report none).'
      : 'No live agent is targeted by this tracepoint.')];
  }
  const sampled = c.sample_every > 1 ? `1 in ${c.sample_every}` : 'every hit';
  return [
    h('div', { class: 'cards' },
      card('Hits', fmt(c.hits), '', 'live-hits'),
      card('Hits/s', perSecond === null ? '–' : fmt(perSecond), '', 'live-rate'),
      card('Fires', fmt(c.fires), '', 'live-fires'),
      card('Condition false', fmt(c.condition_false)),
      card('Errors', fmt(c.errors), c.errors ? 'bad' : '', 'live-errors'),
      card('Series', fmt(c.series) + (c.overflowed ? ` (+${fmt(c.overflowed)} folded)` : '')),
      card('Evaluated', sampled),
      card('Disarmed', `${c.disarmed} of ${st.summary.agents}`, c.disarmed ? 'bad' : '')),
    c.last_error ? h('p', { class: 'error', id: 'last-error' }, `Last error: ${c.last_error}`) : null,
    h('div', { class: 'panel' },
      h('div', { class: 'muted' }, 'Hits per second (blue) and errors per second (red, dashed), last 5 minutes, summed over agents'),
      plot(rates)),
  ].filter(Boolean);
}

/** Hits per second over the last full bucket and the one filling now. */
function recentRate(rates) {
  if (rates.length < 2) return null;
  const width = (rates[1].t - rates[0].t) / 1000;
  const cur = rates[rates.length - 1];
  const prev = rates[rates.length - 2];
  const into = Math.min(width, Math.max(0.5, (Date.now() - cur.t) / 1000));
  return ((cur.hits + prev.hits) * width) / (width + into);
}

function plot(rates) {
  const W = 900;
  const H = 180;
  const padL = 44;
  const padB = 20;
  const max = Math.max(1, ...rates.map((r) => Math.max(r.hits, r.errors)));
  const top = niceCeil(max);
  const x = (i) => padL + (i * (W - padL - 6)) / Math.max(1, rates.length - 1);
  const y = (v) => 6 + (H - padB - 6) * (1 - v / top);
  const line = (key) => rates.map((r, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(r[key]).toFixed(1)}`).join('');
  const svg = s('svg', { class: 'plot', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img',
    'aria-label': `Hits per second over the last five minutes; latest ${rates.length ? fmt(rates[rates.length - 1].hits) : 0}` });
  for (const f of [0, 0.5, 1]) {
    svg.append(s('line', { class: 'grid', x1: padL, x2: W, y1: y(top * f), y2: y(top * f) }),
      s('text', { class: 'axis', x: padL - 6, y: y(top * f) + 4, 'text-anchor': 'end' }, fmt(top * f)));
  }
  if (rates.length) {
    svg.append(s('path', { class: 'area', d: `${line('hits')}L${x(rates.length - 1)},${y(0)}L${x(0)},${y(0)}Z` }),
      s('path', { class: 'hits', d: line('hits') }),
      s('path', { class: 'errs', d: line('errors') }),
      s('text', { class: 'axis', x: padL, y: H - 4 }, '−5 min'),
      s('text', { class: 'axis', x: W - 4, y: H - 4, 'text-anchor': 'end' }, 'now'));
  }
  return svg;
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function bindingTable(bindings) {
  if (!bindings.length) return h('div', { class: 'empty' }, 'No live agent is targeted by this tracepoint.');
  return h('table', {},
    h('thead', {}, h('tr', {}, ['Agent', 'Service', 'State', 'Where / why'].map((t) => h('th', { scope: 'col' }, t)),
      h('th', { scope: 'col', class: 'num' }, 'Hits'), h('th', { scope: 'col', class: 'num' }, 'Errors'))),
    h('tbody', {}, bindings.map((b) => h('tr', {},
      h('td', { class: 'mono' }, b.agent),
      h('td', {}, b.service || '–'),
      h('td', {}, badge(b.state)),
      h('td', {}, (b.sites || []).join(', '), b.message ? h('div', { class: b.state === 'bound' ? 'muted' : 'why' }, b.message) : null),
      h('td', { class: 'num' }, b.counters ? fmt(b.counters.hits) : '–'),
      h('td', { class: 'num' }, b.counters ? fmt(b.counters.errors) : '–')))));
}

async function loadSnapshots(id, box, gen) {
  try {
    const snaps = await api('GET', `/api/tracepoints/${encodeURIComponent(id)}/snapshots`);
    if (gen !== state.gen || !snaps.snapshots.length) return;
    box.replaceChildren(h('h2', { text: 'Snapshots' }),
      h('p', { class: 'muted' }, `${snaps.snapshots.length} latest, as agents sent them`),
      h('pre', { class: 'preview' }, JSON.stringify(snaps.snapshots.slice(0, 5), null, 2)));
  } catch (err) {
    // Snapshots need the capture role; the rest of the page does not.
    if (!(err instanceof ApiError)) throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Create and edit

const FIELDS = [
  // [field prefix in the API's errors, input id]
  ['path', 'f-path'],
  ['lineNumber', 'f-line'],
  ['args.condition', 'f-condition'],
  ['args.log_msg', 'f-log'],
  ['args.buckets', 'f-buckets'],
  ['metrics[0].name', 'f-metric'],
  ['metrics[0].namespace', 'f-metric'],
  ['metrics[0].type', 'f-type'],
  ['metrics[0].unit', 'f-unit'],
  ['metrics[0].expression', 'f-value'],
  ['metrics[0].labelExpressions', 'f-labels'],
  ['targeting', 'f-service'],
];

function field(id, label, input, hint) {
  return h('div', { class: 'field' },
    h('label', { for: id, text: label }),
    input,
    hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null,
    h('div', { class: 'error', id: `${id}-error`, role: 'alert', hidden: true }));
}

async function viewEditor(id) {
  const gen = state.gen;
  const editing = id !== null;
  const [agents, one] = await Promise.all([
    api('GET', '/api/agents?view=summary'),
    editing ? api('GET', `/api/tracepoints/${encodeURIComponent(id)}`) : Promise.resolve(null),
  ]);
  if (gen !== state.gen) return;
  const orig = one ? one.tracepoint : { path: '', lineNumber: 0, args: {}, targeting: [], metrics: [], watches: [] };
  const m0 = (orig.metrics || [])[0] || null;
  const services = [...new Set(agents.agents.map((a) => attr(a.resource, 'service.name')).filter(Boolean))].sort();
  const origService = targetService(orig);
  if (origService && !services.includes(origService)) services.push(origService);

  const inp = (fid, value, extra) => h('input', Object.assign({ type: 'text', id: fid, name: fid, value: value || '', spellcheck: 'false', autocomplete: 'off' }, extra || {}));
  const service = h('select', { id: 'f-service', name: 'service' },
    h('option', { value: '' }, 'All agents (no targeting)'),
    services.map((svc) => h('option', { value: svc }, svc)));
  service.value = origService;
  const file = h('select', { id: 'f-file', name: 'file' }, h('option', { value: '' }, '—'));
  const line = h('select', { id: 'f-line-pick', name: 'line-pick' }, h('option', { value: '' }, '—'));
  const path = inp('f-path', orig.path, { class: 'code', placeholder: 'src/checkout.rs' });
  const lineNo = h('input', { type: 'number', id: 'f-line', name: 'f-line', min: 1, value: orig.lineNumber || '', class: 'code' });
  const vars = h('ul', { class: 'vars', id: 'vars', 'aria-label': 'Variables in scope' });
  const args = orig.args || {};
  const condition = inp('f-condition', args.condition, { class: 'code', placeholder: 'order.total > 100' });
  const log = inp('f-log', args.log_msg, { class: 'code', placeholder: 'order {order.id} charged {charged}' });
  const metric = inp('f-metric', m0 ? m0.name : '', { class: 'code', placeholder: 'checkout_value' });
  const type = h('select', { id: 'f-type', name: 'f-type' }, ['counter', 'gauge', 'histogram', 'summary'].map((t) => h('option', { value: t }, t)));
  type.value = m0 ? metricType(m0) : 'counter';
  const unit = inp('f-unit', m0 ? m0.unit : '', { class: 'code', placeholder: 'seconds' });
  const value = inp('f-value', m0 ? m0.expression : '', { class: 'code', placeholder: '1 (count hits); e.g. charged' });
  const labels = h('textarea', { id: 'f-labels', name: 'f-labels', class: 'code', rows: 3, spellcheck: 'false', placeholder: 'country=order.country\ntier=order.user.tier' });
  labels.value = m0 ? (m0.labelExpressions || []).map((l) => ('static' in l ? `${l.key}="${stringValue(l.static)}"` : `${l.key}=${l.expression || ''}`)).join('\n') : '';
  const buckets = inp('f-buckets', args.buckets, { class: 'code', placeholder: '5,10,50,100,500' });
  const bucketsField = field('f-buckets', 'Buckets', buckets, 'Upper bounds, increasing; without them the buckets follow the unit.');
  const preview = h('pre', { class: 'preview', id: 'preview', tabindex: 0, 'aria-label': 'JSON body' });
  const cli = h('pre', { class: 'preview', id: 'cli', tabindex: 0, 'aria-label': 'CLI command' });
  const warnings = h('div', { id: 'warnings', role: 'status' });
  const formError = h('div', { class: 'error', id: 'form-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'save' }, editing ? 'Save changes' : 'Create tracepoint');

  let catalog = { files: [], lines: [] };

  const form = h('form', { class: 'editor', id: 'editor', novalidate: true },
    h('div', {},
      h('fieldset', {}, h('legend', {}, 'Where'),
        field('f-service', 'Service', service, 'Agents whose service.name this is; the catalog below is theirs.'),
        h('div', { class: 'row' },
          field('f-file', 'File', file),
          field('f-line-pick', 'Line', line)),
        h('div', { class: 'row' },
          field('f-path', 'Path', path, 'Matches files ending with it, by whole components.'),
          field('f-line', 'Line number', lineNo)),
        h('div', { class: 'field' }, h('span', { class: 'hint' }, 'Variables in scope'), vars)),
      h('fieldset', {}, h('legend', {}, 'What'),
        field('f-condition', 'Condition', condition, 'Act only when true. Leave empty for every hit.'),
        field('f-log', 'Log line', log, 'Optional; {expression} is interpolated.')),
      h('fieldset', {}, h('legend', {}, 'Metric'),
        h('div', { class: 'row' },
          field('f-metric', 'Name', metric, 'Empty: no metric.'),
          field('f-type', 'Type', type),
          field('f-unit', 'Unit', unit)),
        field('f-value', 'Value', value, 'Expression recorded per hit; empty counts 1.'),
        field('f-labels', 'Labels', labels, 'One per line: key=expression, or key="fixed value".'),
        bucketsField),
      formError,
      warnings,
      h('div', { class: 'actions-bar' }, submit,
        h('a', { class: 'button', href: editing ? `#/tracepoint/${encodeURIComponent(id)}` : '#/tracepoints' }, 'Cancel'))),
    h('aside', { class: 'side' },
      h('div', { class: 'panel' },
        h('h2', {}, 'Request body'),
        h('p', { class: 'muted' }, `${editing ? 'PUT' : 'POST'} /api/tracepoints${editing ? '/' + id : ''} (Deep's JSON)`),
        preview,
        h('div', { class: 'copy-row' }, h('h2', {}, 'CLI'),
          h('button', { type: 'button', class: 'small', id: 'copy-cli', onclick: () => copy(cli.textContent) }, 'Copy')),
        cli)));

  render(h('h1', { text: editing ? `Edit ${orig.path}:${orig.lineNumber}` : 'New tracepoint' }), form);

  function body() {
    const tp = JSON.parse(JSON.stringify(orig));
    delete tp.ID;
    tp.path = path.value.trim();
    tp.lineNumber = Number(lineNo.value) || 0;
    tp.args = Object.assign({}, orig.args || {});
    const setArg = (k, v) => { if (v.trim()) tp.args[k] = v.trim(); else delete tp.args[k]; };
    setArg('condition', condition.value);
    setArg('log_msg', log.value);
    setArg('buckets', type.value === 'histogram' ? buckets.value : '');
    tp.targeting = (orig.targeting || []).filter((kv) => kv.key !== 'service.name');
    if (service.value) tp.targeting.push({ key: 'service.name', value: { stringValue: service.value } });
    const rest = (orig.metrics || []).slice(1);
    tp.metrics = rest;
    if (metric.value.trim()) {
      const m = Object.assign({}, m0 || {}, { name: metric.value.trim(), type: type.value.toUpperCase() });
      if (value.value.trim()) m.expression = value.value.trim(); else delete m.expression;
      if (unit.value.trim()) m.unit = unit.value.trim(); else delete m.unit;
      m.labelExpressions = labels.value.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => {
        const i = l.indexOf('=');
        const key = (i < 0 ? l : l.slice(0, i)).trim();
        const v = i < 0 ? '' : l.slice(i + 1).trim();
        const quoted = v.length >= 2 && v.startsWith('"') && v.endsWith('"');
        return quoted ? { key, static: { stringValue: v.slice(1, -1) } } : { key, expression: v };
      });
      tp.metrics = [m, ...rest];
    }
    if (!tp.args || !Object.keys(tp.args).length) delete tp.args;
    return tp;
  }

  function cliCommand(tp) {
    const q = (v) => (/^[\w.,:/=+-]+$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`);
    const parts = ['sonde', 'tracepoint', editing ? 'edit' : 'add'];
    if (editing) parts.push(id);
    parts.push(q(`${tp.path}:${tp.lineNumber}`));
    const a = tp.args || {};
    if (a.condition) parts.push('--condition', q(a.condition));
    if (a.log_msg) parts.push('--log', q(a.log_msg));
    for (const t of tp.targeting || []) parts.push('--target', q(`${t.key}=${stringValue(t.value)}`));
    const m = (tp.metrics || [])[0];
    if (m) {
      parts.push('--metric', q(`${m.type.toLowerCase()}:${m.name}`));
      if (m.expression) parts.push('--value', q(m.expression));
      if (m.unit) parts.push('--unit', q(m.unit));
      for (const l of m.labelExpressions || []) {
        if ('static' in l) parts.push('--static-label', q(`${l.key}=${stringValue(l.static)}`));
        else parts.push('--label', q(`${l.key}=${l.expression}`));
      }
    }
    if (a.buckets) parts.push('--buckets', q(a.buckets));
    for (const [k, v] of Object.entries(a)) {
      if (!['condition', 'log_msg', 'buckets'].includes(k)) parts.push('--arg', q(`${k}=${v}`));
    }
    return parts.join(' ');
  }

  function clearErrors() {
    for (const el of form.querySelectorAll('.error')) { el.hidden = true; el.replaceChildren(); }
    for (const el of form.querySelectorAll('[aria-invalid]')) { el.removeAttribute('aria-invalid'); el.removeAttribute('aria-describedby'); }
  }

  function showError(err) {
    clearErrors();
    const f = err.field || '';
    const hit = FIELDS.find(([prefix]) => f === prefix || f.startsWith(`${prefix}.`) || f.startsWith(`${prefix}[`));
    const input = hit ? $(`#${hit[1]}`, form) : null;
    const box = input ? $(`#${hit[1]}-error`, form) : formError;
    let text = err.message;
    let source = input ? input.value : '';
    if (hit && hit[1] === 'f-labels') {
      const m = /labelExpressions\[(\d+)\]/.exec(f);
      if (m) {
        const lineText = labels.value.split('\n').map((l) => l.trim()).filter(Boolean)[Number(m[1])] || '';
        text = `Label ${Number(m[1]) + 1} (${lineText.split('=')[0]}): ${text}`;
        source = lineText.slice(lineText.indexOf('=') + 1).trim();
      }
    }
    const where = err.position ? ` (line ${err.position.line}, column ${err.position.column})` : '';
    box.append(h('span', { class: 'message' }, `${input ? '' : (f ? f + ': ' : '')}${text}${where}`));
    if (err.position && source) {
      const srcLine = source.split('\n')[err.position.line - 1] || '';
      box.append(h('pre', { 'aria-hidden': 'true' }, `${srcLine}\n${' '.repeat(Math.max(0, err.position.column - 1))}^`));
    }
    box.hidden = false;
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-describedby', box.id);
    }
  }

  function showWarnings(list) {
    warnings.replaceChildren(...(list || []).map((w) => h('div', { class: 'warnings' }, `Warning: ${w}`)));
  }

  let checkTimer = null;
  let checkSeq = 0;
  async function check() {
    const tp = body();
    preview.textContent = JSON.stringify({ tracepoint: tp }, null, 2);
    cli.textContent = cliCommand(tp);
    if (!tp.path || !tp.lineNumber) {
      clearErrors();
      showWarnings([]);
      return;
    }
    const seq = ++checkSeq;
    try {
      const res = await api(editing ? 'PUT' : 'POST',
        `/api/tracepoints${editing ? '/' + encodeURIComponent(id) : ''}?dry_run=true`, { tracepoint: tp });
      if (seq !== checkSeq) return;
      clearErrors();
      showWarnings(res.warnings);
    } catch (err) {
      if (seq !== checkSeq) return;
      // 400: the field's error; 403/404/409: the change's refusal, shown at the form's foot.
      if (err instanceof ApiError && [400, 403, 404, 409].includes(err.status)) showError(err);
      else failed(err);
    }
  }
  const schedule = () => {
    clearTimeout(checkTimer);
    checkTimer = setTimeout(() => check().catch(failed), CHECK_DELAY_MS);
  };
  form.addEventListener('input', (ev) => {
    if (ev.target === file || ev.target === line || ev.target === service) return;
    bucketsField.hidden = type.value !== 'histogram';
    schedule();
  });
  bucketsField.hidden = type.value !== 'histogram';

  // The catalog pickers: files of the service, then its lines (probe sites first).
  async function loadFiles() {
    const q = service.value ? `service.name=${encodeURIComponent(service.value)}` : '';
    catalog = await fetchCatalog(q);
    if (gen !== state.gen) return;
    file.replaceChildren(h('option', { value: '' }, catalog.files.length ? 'Choose a file…' : 'No file reported'),
      ...catalog.files.map((f) => h('option', { value: f.file }, `${f.file}${f.agents > 1 ? ` (${f.agents} agents)` : ''}`)));
    const match = catalog.files.find((f) => path.value && (f.file === path.value || f.file.endsWith(`/${path.value}`)));
    file.value = match ? match.file : '';
    await loadLines();
  }
  async function loadLines() {
    const lines = file.value ? await fetchLines(catalog, service.value, file.value) : [];
    if (gen !== state.gen) return;
    catalog.lines = lines;
    line.replaceChildren(h('option', { value: '' }, lines.length ? 'Choose a line…' : '—'),
      ...lines.map((l) => h('option', { value: String(l.line) },
        l.probe ? `${l.line} · probe: ${l.probe.names.join(', ')}` : `${l.line} · native (${(l.variables || []).length} variables)`)));
    if (lines.some((l) => String(l.line) === lineNo.value)) line.value = lineNo.value;
    showVars();
  }
  function showVars() {
    const l = catalog.lines.find((x) => String(x.line) === String(lineNo.value));
    const list = !l ? [] : (l.variables && l.variables.length ? l.variables : (l.probe ? l.probe.names.map((name) => ({ name, readable: true, fields: (l.probe.fields || {})[name] })) : []));
    vars.replaceChildren(...(list.length ? list.map((v) => h('li', { class: v.readable === false ? 'unreadable' : '', title: v.why || '' },
      v.name, v.type ? h('span', { class: 'type' }, `: ${v.type}`) : null,
      v.fields && v.fields.length ? h('span', { class: 'type' }, ` { ${v.fields.join(', ')} }`) : null))
      : [h('li', { class: 'unreadable' }, l ? 'none reported' : 'pick a line from the catalog')]));
  }
  service.addEventListener('change', () => { loadFiles().catch(failed); schedule(); });
  file.addEventListener('change', () => {
    if (file.value) path.value = file.value;
    loadLines().catch(failed);
    schedule();
  });
  line.addEventListener('change', () => {
    if (line.value) lineNo.value = line.value;
    showVars();
    schedule();
  });
  lineNo.addEventListener('input', showVars);

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearTimeout(checkTimer);
    submit.disabled = true;
    try {
      const res = await api(editing ? 'PUT' : 'POST', `/api/tracepoints${editing ? '/' + encodeURIComponent(id) : ''}`, { tracepoint: body() });
      for (const w of res.warnings || []) toast(`Warning: ${w}`);
      toast(editing ? 'Saved' : 'Created');
      location.hash = `#/tracepoint/${encodeURIComponent(res.tracepoint.ID)}`;
    } catch (err) {
      submit.disabled = false;
      if (err instanceof ApiError && [400, 403, 404, 409].includes(err.status)) showError(err);
      else failed(err);
    }
  });

  await loadFiles();
  await check();
  (editing ? condition : service).focus();
}

/** The files the service's agents can instrument: `/api/files`, else derived from `/api/sites`. */
async function fetchCatalog(query) {
  try {
    const res = await api('GET', `/api/files${query ? '?' + query : ''}`);
    return { files: res.files || [], lines: [], fromSites: null };
  } catch (err) {
    // A server without `/api/files` answers 404: fall back to the probe sites.
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
  }
  const res = await api('GET', `/api/sites${query ? '?' + query : ''}`);
  const byFile = new Map();
  for (const site of res.sites || []) {
    const f = byFile.get(site.file) || { file: site.file, agents: 0 };
    f.agents = Math.max(f.agents, site.agents || 1);
    byFile.set(site.file, f);
  }
  return { files: [...byFile.values()].sort((a, b) => a.file.localeCompare(b.file)), lines: [], fromSites: res.sites || [] };
}

/** The lines of one file: `/api/lines`, else the probe sites of `/api/sites`. Probe sites first. */
async function fetchLines(catalog, service, file) {
  let lines;
  if (catalog.fromSites) {
    lines = catalog.fromSites.filter((site) => site.file === file)
      .map((site) => ({ line: site.line, agents: site.agents || 1, probe: { names: site.names || [], fields: site.fields || {} }, variables: [] }));
  } else {
    const q = new URLSearchParams();
    if (service) q.set('service.name', service);
    q.set('file', file);
    try {
      const res = await api('GET', `/api/lines?${q}`);
      lines = res.lines || [];
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 404) throw err;
      const sites = await api('GET', `/api/sites${service ? '?service.name=' + encodeURIComponent(service) : ''}`);
      catalog.fromSites = sites.sites || [];
      return fetchLines(catalog, service, file);
    }
  }
  return lines.sort((a, b) => (a.probe ? 0 : 1) - (b.probe ? 0 : 1) || a.line - b.line);
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied the command');
  } catch (_) {
    // Without clipboard access (plain http to another host), select the text instead.
    const range = document.createRange();
    range.selectNodeContents($('#cli'));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    toast('Press Ctrl+C to copy the selected command');
  }
}

// ---------------------------------------------------------------------------------------------
// Routing

function route() {
  stopTimer();
  state.gen++;
  updateHeader();
  const hash = location.hash || '#/tracepoints';
  const [head] = hash.slice(2).split('?');
  const parts = head.split('/');
  const section = parts[0] === 'agents' ? 'agents' : 'tracepoints';
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  let view;
  switch (parts[0]) {
    case 'agents': view = viewAgents(); break;
    case 'new': view = viewEditor(null); break;
    case 'edit': view = viewEditor(decodeURIComponent(parts[1] || '')); break;
    case 'tracepoint': view = viewDetail(decodeURIComponent(parts[1] || '')); break;
    default: view = viewTracepoints();
  }
  view.catch(failed);
}

document.addEventListener('DOMContentLoaded', () => {
  $('#tenant-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    setTenant($('#tenant').value);
    route();
  });
  $('#tenant').addEventListener('change', () => {
    setTenant($('#tenant').value);
    route();
  });
  $('#sign-out').addEventListener('click', () => {
    state.token = '';
    session.removeItem('sonde.token');
    signIn('');
  });
  window.addEventListener('hashchange', route);
  route();
});

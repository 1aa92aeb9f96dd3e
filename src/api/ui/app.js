// The Runs page. It only calls Millrace's HTTP API, with the token typed in (kept in this tab's
// sessionStorage and sent as a bearer token) or the login cookie, so it may see and do exactly
// what the API lets the caller see and do. Every text from the API goes into the page as text
// (textContent), never as markup.
'use strict';

const TOKEN_KEY = 'millrace.token';
const WORKSPACE_KEY = 'millrace.workspace';
const FILTERS = ['script_path_exact', 'status', 'job_kinds', 'created_by', 'created_after',
  'created_before', 'script_hash', 'per_page', 'include_flow_steps', 'page'];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  me: null,
  workspaces: [],
  ws: null,
  // Whatever the current view started that must stop when it is left (timers, streams).
  cleanups: [],
};

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, text) {
    super(text || `HTTP ${status}`);
    this.status = status;
  }
}

/** Calls the API; a 401 sends the user back to the login form, saying what happened. */
async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method, headers, signal, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The API cannot be reached: check the network or that Millrace runs, then reload.');
  }
  if (res.status === 401) {
    const text = await res.text();
    showLogin(unauthorizedMessage(text));
    throw new ApiError(401, text);
  }
  if (!res.ok) throw new ApiError(res.status, await res.text());
  return res;
}

const apiJson = async (path, options) => (await api(path, options)).json();

function unauthorizedMessage(text) {
  if (/missing token/.test(text)) return '';
  if (/not a member/.test(text)) {
    return `${text}. Log in as a member of that workspace, or ask one of its admins to add you.`;
  }
  return `${text}. Your token or session is no longer valid: log in again.`;
}

/** What to tell the user about a failed call. */
function describe(error) {
  if (!(error instanceof ApiError)) return String(error);
  switch (error.status) {
    case 403: return `${error.message}. Ask a workspace admin for the right to do this.`;
    case 404: return `${error.message}. It does not exist, or you may not see it.`;
    case 429: return `${error.message}. Wait a moment, then try again.`;
    case 503: return `${error.message}. Millrace is busy or a service it needs is down; try again shortly.`;
    default: return error.message;
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const wsPath = (rest) => `/api/w/${encodeURIComponent(state.ws)}/${rest}`;
const pathSegments = (path) => path.split('/').map(encodeURIComponent).join('/');

// ------------------------------------------------------------------ small DOM helpers

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else node.setAttribute(k, v);
    }
  }
  for (const child of children) node.append(child);
  return node;
}

function view(id) {
  const fragment = document.getElementById(id).content.cloneNode(true);
  const root = fragment.firstElementChild;
  const main = document.getElementById('main');
  main.replaceChildren(fragment);
  return root;
}

const part = (root, role) => root.querySelector(`[data-role="${role}"]`);

function showError(node, message) {
  node.textContent = message;
  node.hidden = !message;
}

function notice(message) {
  const node = document.getElementById('notice');
  node.textContent = message;
  node.hidden = !message;
}

// ------------------------------------------------------------------ formatting

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

function when(iso) {
  return iso ? dateFormat.format(new Date(iso)) : '–';
}

function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** queued, scheduled, running, success, failure or canceled. */
function statusOf(job) {
  if (job.type === 'CompletedJob') {
    if (job.canceled) return 'canceled';
    return job.success ? 'success' : 'failure';
  }
  if (job.running) return 'running';
  if (job.scheduled_for && new Date(job.scheduled_for) > new Date()) return 'scheduled';
  return 'queued';
}

function jobDuration(job) {
  if (job.duration_ms !== null && job.duration_ms !== undefined) return job.duration_ms;
  if (job.running && job.started_at) return Date.now() - new Date(job.started_at).getTime();
  return null;
}

const pathOf = (job) => job.script_path || (job.job_kind === 'flow' ? '(inline flow)' : '(no path)');

function badge(status) {
  return el('span', { class: `badge ${status}`, text: status });
}

const pretty = (value) => (value === undefined ? '' : JSON.stringify(value, null, 2));

// ------------------------------------------------------------------ routing

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = hash.split('?');
  // Segments come from the address, which anyone may have written: decoded here, and every
  // one that goes into an API path is checked or encoded again there.
  const parts = path.split('/').filter(Boolean).map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  });
  return { parts, params: new URLSearchParams(query) };
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function leaveView() {
  for (const cleanup of state.cleanups.splice(0)) cleanup();
}

async function render() {
  leaveView();
  notice('');
  const { parts, params } = route();
  if (parts[0] === 'login' || !state.me) {
    if (!state.me && !(await restoreSession())) return;
    if (parts[0] === 'login') return go('#/');
  }
  if (parts[0] === 'w' && parts[1]) {
    if (!state.workspaces.some((w) => w.id === parts[1])) {
      return showNoWorkspace(`You are not a member of workspace ${parts[1]}.`);
    }
    setWorkspace(parts[1]);
    if (parts[2] === 'runs' && parts[3]) {
      if (!UUID.test(parts[3])) return showNoWorkspace(`${parts[3]} is not a run id: open a run from the list.`);
      return runPage(parts[3]);
    }
    if (parts[2] === 'run') return newRunPage(params);
    return runsPage(params);
  }
  const preferred = localStorage.getItem(WORKSPACE_KEY);
  const ws = state.workspaces.find((w) => w.id === preferred) || state.workspaces[0];
  if (!ws) {
    return showNoWorkspace('You are not a member of any workspace yet. Ask a workspace admin to add you.');
  }
  go(`#/w/${ws.id}/runs`);
}

function setWorkspace(id) {
  state.ws = id;
  localStorage.setItem(WORKSPACE_KEY, id);
  document.getElementById('ws-select').value = id;
  document.getElementById('nav-runs').href = `#/w/${encodeURIComponent(id)}/runs`;
  document.getElementById('nav-new').href = `#/w/${encodeURIComponent(id)}/run`;
}

function showNoWorkspace(message) {
  const main = document.getElementById('main');
  main.replaceChildren(el('section', { class: 'empty' }, el('p', { text: message })));
}

// ------------------------------------------------------------------ login

/** Who the token or cookie belongs to, and their workspaces; false when a login is needed. */
async function restoreSession() {
  try {
    state.me = await apiJson('/api/users/whoami');
    state.workspaces = await apiJson('/api/workspaces/list');
  } catch (e) {
    if (e.status !== 401) showLogin(describe(e));
    return false;
  }
  const select = document.getElementById('ws-select');
  select.replaceChildren(...state.workspaces.map((w) => el('option', { value: w.id, text: `${w.name} (${w.id})` })));
  document.getElementById('who').textContent = state.me.email;
  document.getElementById('nav').hidden = false;
  return true;
}

function forgetSession() {
  state.me = null;
  state.workspaces = [];
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById('nav').hidden = true;
}

function showLogin(message) {
  leaveView();
  forgetSession();
  const root = view('tpl-login');
  showError(part(root, 'message'), message || '');
  if (!location.hash.startsWith('#/login')) history.replaceState(null, '', '#/login');
  part(root, 'token-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    state.token = new FormData(event.target).get('token').trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    if (await restoreSession()) go('#/');
  });
  part(root, 'password-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const res = await fetch('/api/auth/login', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ email: form.get('email'), password: form.get('password') }),
    }).catch(() => null);
    if (!res || !res.ok) {
      const text = res ? await res.text() : 'The API cannot be reached';
      const hint = res && res.status === 401 ? ' Check the email and password.' : '';
      showError(part(root, 'message'), `${text}.${hint}`);
      return;
    }
    // The session lives in the HttpOnly cookie the answer set: the page never holds it.
    if (await restoreSession()) go('#/');
  });
}

/**
 * `?login=<code>`: a one-time login link. The code leaves the address bar at once, and is
 * exchanged only when the user says so: a link someone else sent would otherwise log this
 * browser into their account, whose runs and forms the user would then trust (login CSRF).
 */
function takeLoginLink() {
  const params = new URLSearchParams(location.search);
  const code = params.get('login');
  if (!code) return null;
  params.delete('login');
  const rest = params.toString();
  history.replaceState(null, '', `${location.pathname}${rest ? `?${rest}` : ''}${location.hash}`);
  return code;
}

function confirmLoginLink(code) {
  leaveView();
  const root = view('tpl-login-link');
  const signIn = part(root, 'sign-in');
  signIn.addEventListener('click', async () => {
    signIn.disabled = true;
    const failed = await redeemLoginLink(code);
    if (!(await restoreSession())) {
      showLogin(failed || 'The login link did not log you in. Log in with a token or password.');
      return;
    }
    await render();
    if (failed) notice(failed);
  });
  part(root, 'dismiss').addEventListener('click', () => render());
}

/** Exchanges a login link's code for a login session (the cookie); what went wrong, if it did. */
async function redeemLoginLink(code) {
  const res = await fetch('/api/auth/login_code', {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ code }),
  }).catch(() => null);
  if (!res || !res.ok) return res ? res.text() : 'The API cannot be reached';
  // A link logs in whoever opens it: any token typed in this tab before gives way.
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  return null;
}

async function logout() {
  await fetch('/api/auth/logout', {
    method: 'POST', credentials: 'same-origin',
    headers: state.token ? { Authorization: `Bearer ${state.token}` } : {},
  }).catch(() => null);
  showLogin('You are logged out.');
}

// ------------------------------------------------------------------ runs list

function filtersFrom(params) {
  const f = {};
  for (const name of FILTERS) if (params.get(name)) f[name] = params.get(name);
  return f;
}

/** datetime-local (local time) → RFC 3339 in UTC, as the API wants it. */
function toUtc(local) {
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

function listQuery(f) {
  const q = new URLSearchParams();
  for (const name of ['script_path_exact', 'job_kinds', 'created_by', 'script_hash']) {
    if (f[name]) q.set(name, f[name].trim());
  }
  if (f.status === 'running') q.set('running', 'true');
  if (f.status === 'not_running') q.set('running', 'false');
  if (f.status === 'success') q.set('success', 'true');
  if (f.status === 'failure') q.set('success', 'false');
  for (const name of ['created_after', 'created_before']) {
    if (f[name]) {
      const utc = toUtc(f[name]);
      if (!utc) throw new Error(`${name.replace('_', ' ')} is not a date and time`);
      q.set(name, utc);
    }
  }
  if (f.include_flow_steps) q.set('include_flow_steps', 'true');
  q.set('per_page', f.per_page || '30');
  q.set('page', f.page || '1');
  return q;
}

function runsHash(f) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
  const s = q.toString();
  return `#/w/${state.ws}/runs${s ? `?${s}` : ''}`;
}

/** One row's elements, cloned for each run: much cheaper than building each anew. */
const ROW = el('tr', {},
  el('td', { class: 'status' }, el('span', { class: 'badge' })),
  el('td', { class: 'path' }, el('a')),
  el('td', { class: 'who' }),
  el('td', { class: 'when' }),
  el('td', { class: 'duration' }));

function runRow(job) {
  const status = statusOf(job);
  const tr = ROW.cloneNode(true);
  tr.dataset.id = job.id;
  tr.dataset.status = status;
  const [statusCell, pathCell, who, created, took] = tr.children;
  const statusBadge = statusCell.firstChild;
  statusBadge.className = `badge ${status}`;
  statusBadge.textContent = status;
  const link = pathCell.firstChild;
  link.href = `#/w/${state.ws}/runs/${job.id}`;
  link.textContent = pathOf(job);
  if (job.job_kind === 'flow') pathCell.append(el('span', { class: 'kind', text: 'flow' }));
  if (job.parent_job) pathCell.append(el('span', { class: 'kind', text: 'step' }));
  who.textContent = job.created_by;
  created.textContent = when(job.created_at);
  created.title = job.created_at;
  took.textContent = duration(jobDuration(job));
  return tr;
}

/** Replaces the rows in one DOM operation; returns how long it took from `answered`. */
function renderRows(root, jobs, answered) {
  const rows = part(root, 'rows');
  const fragment = document.createDocumentFragment();
  for (const job of jobs) fragment.append(runRow(job));
  rows.replaceChildren(fragment);
  // Layout is part of rendering: force it so the measure covers it.
  void rows.offsetHeight;
  const done = performance.now();
  performance.measure('millrace:runs-render', { start: answered, end: done });
  document.documentElement.dataset.runsRenderMs = (done - answered).toFixed(1);
}

function runsPage(params) {
  const root = view('tpl-runs');
  const f = filtersFrom(params);
  const form = part(root, 'filters');
  for (const name of FILTERS) {
    const input = form.elements.namedItem(name);
    if (!input) continue;
    if (input.type === 'checkbox') input.checked = Boolean(f[name]);
    else if (f[name]) input.value = f[name];
  }
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const next = {};
    for (const [k, v] of new FormData(form)) if (v) next[k] = v;
    go(runsHash(next));
  });
  part(root, 'clear').addEventListener('click', () => go(runsHash({})));
  const page = Number(f.page || 1);
  const perPage = Number(f.per_page || 30);
  part(root, 'page').textContent = `Page ${page}`;
  const prev = part(root, 'prev');
  prev.disabled = page <= 1;
  prev.addEventListener('click', () => go(runsHash({ ...f, page: String(page - 1) })));
  const next = part(root, 'next');
  next.disabled = true;
  next.addEventListener('click', () => go(runsHash({ ...f, page: String(page + 1) })));

  let query;
  try {
    query = listQuery(f);
  } catch (e) {
    showError(part(root, 'error'), e.message);
    return;
  }
  const filtered = FILTERS.some((n) => n !== 'page' && n !== 'per_page' && f[n]);
  let lastText = null;
  let stopped = false;
  let timer = null;
  const controller = new AbortController();
  state.cleanups.push(() => { stopped = true; clearTimeout(timer); controller.abort(); });

  const load = async () => {
    // A tab in the background does not ask; it catches up when shown again.
    if (document.hidden && lastText !== null) {
      timer = setTimeout(load, 1000);
      return;
    }
    try {
      const res = await api(`${wsPath('jobs/list')}?${query}`, { signal: controller.signal });
      const text = await res.text();
      const answered = performance.now();
      if (stopped) return;
      showError(part(root, 'error'), '');
      if (text !== lastText) {
        lastText = text;
        const jobs = JSON.parse(text);
        renderRows(root, jobs, answered);
        next.disabled = jobs.length < perPage;
        const empty = part(root, 'empty');
        empty.hidden = jobs.length > 0;
        root.querySelector('table').hidden = jobs.length === 0;
        if (!jobs.length) emptyState(empty, filtered, page);
      }
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401) return;
      showError(part(root, 'error'), describe(e));
    }
    // The first page follows new runs as they come; older pages stand still.
    if (!stopped && page === 1) {
      part(root, 'live').hidden = false;
      timer = setTimeout(load, perPage > 100 ? 10000 : 2000);
    }
  };
  load();
}

function emptyState(node, filtered, page) {
  node.replaceChildren();
  if (page > 1) {
    node.append(el('p', { text: 'No older runs.' }));
  } else if (filtered) {
    const clear = el('a', { href: runsHash({}), text: 'clear the filters' });
    node.append(el('p', {}, 'No runs match these filters: change them or ', clear, '.'));
  } else {
    const start = el('a', { href: `#/w/${state.ws}/run`, text: 'Run a script or flow' });
    node.append(el('p', {}, 'No runs in this workspace that you may see yet. ', start,
      ', or call a webhook: its run shows up here.'));
  }
}

// ------------------------------------------------------------------ one run

function fact(dl, label, value) {
  if (value === null || value === undefined || value === '') return;
  dl.append(el('dt', { text: label }), el('dd', {}, value));
}

function jobLink(id) {
  return el('a', { href: `#/w/${state.ws}/runs/${id}`, text: id });
}

function renderFacts(root, job) {
  const dl = part(root, 'facts');
  dl.replaceChildren();
  fact(dl, 'Id', job.id);
  fact(dl, 'Kind', job.job_kind);
  fact(dl, 'Version', job.script_hash || (job.flow_version !== null ? String(job.flow_version) : null));
  fact(dl, 'Started by', job.created_by);
  fact(dl, 'Created', when(job.created_at));
  fact(dl, 'Scheduled for', job.scheduled_for ? when(job.scheduled_for) : null);
  fact(dl, 'Started', job.started_at ? when(job.started_at) : null);
  fact(dl, 'Completed', job.completed_at ? when(job.completed_at) : null);
  fact(dl, 'Duration', duration(jobDuration(job)));
  fact(dl, 'Language', job.language);
  fact(dl, 'Tag', job.tag);
  fact(dl, 'Worker', job.worker);
  fact(dl, 'Attempts', job.attempts ? String(job.attempts) : null);
  fact(dl, 'Flow', job.parent_job ? jobLink(job.parent_job) : null);
  if (job.root_job && job.root_job !== job.parent_job) fact(dl, 'Root flow', jobLink(job.root_job));
  fact(dl, 'Step', job.flow_step_id);
  fact(dl, 'Canceled by', job.canceled_by);
  fact(dl, 'Reason', job.canceled_reason);
}

function renderSteps(root, flowStatus) {
  const section = part(root, 'steps-section');
  if (!flowStatus || !Array.isArray(flowStatus.modules)) return;
  section.hidden = false;
  const list = part(root, 'steps');
  const items = flowStatus.modules.map((module) => {
    const status = {
      Success: 'success', Failure: 'failure', InProgress: 'running',
      WaitingForPriorSteps: 'waiting', Skipped: 'skipped',
    }[module.type] || module.type;
    const item = el('li', { dataset: { step: module.id, status } },
      badge(status), el('span', { class: 'step-id', text: module.id }));
    if (module.job) item.append(el('a', { class: 'step-job', href: `#/w/${state.ws}/runs/${module.job}`, text: 'open step' }));
    if (Array.isArray(module.flow_jobs) && module.flow_jobs.length) {
      const lanes = el('span', { class: 'lanes' });
      module.flow_jobs.forEach((id, i) => {
        if (id) lanes.append(el('a', { href: `#/w/${state.ws}/runs/${id}`, text: `#${i + 1}` }));
      });
      item.append(lanes);
    }
    return item;
  });
  const failure = flowStatus.failure_module;
  if (failure && failure.type !== 'WaitingForPriorSteps' && failure.job) {
    items.push(el('li', { dataset: { step: failure.id, status: 'failure-handler' } },
      badge(failure.type === 'Success' ? 'success' : 'failure'),
      el('span', { class: 'step-id', text: `${failure.id} (on failure)` }),
      el('a', { class: 'step-job', href: `#/w/${state.ws}/runs/${failure.job}`, text: 'open step' })));
  }
  list.replaceChildren(...items);
}

function renderJob(root, job) {
  const status = statusOf(job);
  part(root, 'title').textContent = pathOf(job);
  const statusNode = part(root, 'status');
  statusNode.className = `badge ${status}`;
  statusNode.textContent = status;
  root.dataset.status = status;
  part(root, 'cancel').hidden = job.type === 'CompletedJob';
  const again = new URLSearchParams({ kind: job.job_kind === 'flow' ? 'flow' : 'script' });
  if (job.script_path) again.set('path', job.script_path);
  again.set('args', JSON.stringify(job.args || {}));
  part(root, 'again').href = `#/w/${state.ws}/run?${again}`;
  part(root, 'again').hidden = !job.script_path || job.job_kind === 'preview';
  renderFacts(root, job);
  part(root, 'args').textContent = pretty(job.args);
  const result = part(root, 'result');
  if (job.type === 'CompletedJob') {
    result.textContent = pretty(job.result);
    result.classList.toggle('failed', !job.success);
  } else if (!result.dataset.streamed) {
    result.textContent = status === 'running' ? '(running…)' : `(${status})`;
  }
  // While the job runs, the logs shown come live from the stream and may be ahead of the
  // stored ones (saved about once a second), or behind them (lines printed before the stream
  // began and not yet saved when it read them): the longer text wins until the job completes.
  const stored = job.logs || '';
  if (job.type === 'CompletedJob' || stored.length >= part(root, 'logs').textContent.length) {
    setLogs(root, stored);
  }
  renderSteps(root, job.flow_status);
}

function setLogs(root, text) {
  const logs = part(root, 'logs');
  logs.textContent = text || '';
  logs.classList.toggle('none', !text);
}

function appendLogs(root, text) {
  const logs = part(root, 'logs');
  const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
  logs.append(text);
  logs.classList.remove('none');
  if (atEnd) logs.scrollTop = logs.scrollHeight;
}

/** Reads `data:` frames of a server-sent event stream fetched with our credentials. */
async function* sseFrames(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
      const data = block.split(/\r?\n/).filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
      if (data) yield JSON.parse(data);
    }
  }
}

/** Follows a job that is not completed: the API's SSE route, or polling if that fails. */
function follow(root, id) {
  const controller = new AbortController();
  let stopped = false;
  let timer = null;
  state.cleanups.push(() => { stopped = true; controller.abort(); clearTimeout(timer); });

  const refresh = async () => {
    const job = await apiJson(wsPath(`jobs_u/get/${encodeURIComponent(id)}`), { signal: controller.signal });
    if (!stopped) renderJob(root, job);
    return job;
  };
  const poll = async () => {
    try {
      const job = await refresh();
      if (job.type === 'CompletedJob' || stopped) return;
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401) return;
      showError(part(root, 'error'), describe(e));
    }
    timer = setTimeout(poll, 2000);
  };
  const stream = async () => {
    for (;;) {
      const res = await api(wsPath(`jobs_u/getupdate_sse/${encodeURIComponent(id)}`), { signal: controller.signal });
      // Each stream starts with the logs so far.
      let firstLogs = true;
      for await (const frame of sseFrames(res)) {
        if (stopped) return;
        if (frame.type === 'error') throw new Error(frame.error);
        if (frame.type === 'timeout') break;
        if (frame.type !== 'update') continue;
        if (frame.completed) {
          if (frame.job) renderJob(root, frame.job);
          else await refresh();
          return;
        }
        if (frame.running) await refresh();
        if (frame.new_logs !== undefined) {
          if (firstLogs) setLogs(root, frame.new_logs);
          else appendLogs(root, frame.new_logs);
          firstLogs = false;
        }
        if (frame.new_result_stream !== undefined) {
          const result = part(root, 'result');
          if (!result.dataset.streamed) result.textContent = '';
          result.dataset.streamed = '1';
          result.append(frame.new_result_stream);
        }
        if (frame.flow_status) renderSteps(root, frame.flow_status);
      }
      // The stream timed out (or ended early) while the job goes on: follow it again.
      if (stopped) return;
      const job = await refresh();
      if (job.type === 'CompletedJob') return;
    }
  };
  // The stored job now and then, as the stream does not carry everything (duration, the
  // logs it missed).
  const reconcile = setInterval(() => {
    refresh().catch(() => {});
  }, 3000);
  state.cleanups.push(() => clearInterval(reconcile));
  stream().finally(() => clearInterval(reconcile)).catch((e) => {
    if (stopped || e.name === 'AbortError' || e.status === 401) return;
    // The stream is a convenience: polling shows the same, a little later.
    poll();
  });
}

async function runPage(id) {
  const root = view('tpl-run');
  part(root, 'back').href = `#/w/${state.ws}/runs`;
  part(root, 'title').textContent = id;
  const cancel = part(root, 'cancel');
  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      const res = await api(wsPath(`jobs_u/queue/cancel/${encodeURIComponent(id)}`), {
        method: 'POST', body: { reason: 'canceled from the Runs page' },
      });
      notice(`Cancel requested: ${await res.text()}`);
    } catch (e) {
      if (e.status !== 401) showError(part(root, 'error'), describe(e));
      cancel.disabled = false;
    }
  });
  let job;
  try {
    job = await apiJson(wsPath(`jobs_u/get/${encodeURIComponent(id)}`));
  } catch (e) {
    if (e.status !== 401) showError(part(root, 'error'), describe(e));
    return;
  }
  renderJob(root, job);
  if (job.type !== 'CompletedJob') follow(root, id);
}

// ------------------------------------------------------------------ run form

async function newRunPage(params) {
  const root = view('tpl-new');
  const form = part(root, 'form');
  const error = part(root, 'error');
  const { kind, path, args } = form.elements;
  if (params.get('kind')) kind.value = params.get('kind');
  if (params.get('path')) path.value = params.get('path');
  if (params.get('args')) {
    try {
      args.value = JSON.stringify(JSON.parse(params.get('args')), null, 2);
    } catch { /* a hand-edited link: keep the default */ }
  }
  const known = { script: new Map(), flow: new Map() };
  const fillChoices = () => {
    const list = document.getElementById('runnable-paths');
    list.replaceChildren(...[...known[kind.value].keys()].map((p) => el('option', { value: p })));
    const item = known[kind.value].get(path.value.trim());
    part(root, 'summary').textContent = item && item.summary ? item.summary : '';
  };
  kind.addEventListener('change', fillChoices);
  path.addEventListener('input', fillChoices);
  path.addEventListener('change', () => {
    const item = known[kind.value].get(path.value.trim());
    const props = item && item.schema && item.schema.properties;
    // A template of the arguments, from the schema's defaults, when nothing was typed yet.
    if (props && args.value.trim() === '{}') {
      const template = {};
      for (const [name, prop] of Object.entries(props)) template[name] = prop.default ?? null;
      args.value = JSON.stringify(template, null, 2);
    }
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    showError(error, '');
    const target = path.value.trim();
    if (!/^(u|f)\/[A-Za-z0-9_-]+\/[A-Za-z0-9_\-/]+$/.test(target)) {
      showError(error, 'The path must look like u/<user>/<name> or f/<folder>/<name>.');
      return;
    }
    let body;
    try {
      body = JSON.parse(args.value);
    } catch (e) {
      showError(error, `The arguments are not valid JSON: ${e.message}`);
      return;
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      showError(error, 'The arguments must be a JSON object, such as {"name": "mill"}.');
      return;
    }
    const route = kind.value === 'flow' ? 'jobs/run/f/' : 'jobs/run/p/';
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const res = await api(wsPath(route + pathSegments(target)), { method: 'POST', body });
      const id = (await res.text()).trim();
      go(`#/w/${state.ws}/runs/${id}`);
    } catch (e) {
      if (e.status !== 401) showError(error, describe(e));
    } finally {
      button.disabled = false;
    }
  });
  // The choices are a help: without them the path is typed.
  const lists = await Promise.allSettled([
    apiJson(wsPath('scripts/list')), apiJson(wsPath('flows/list')),
  ]);
  lists.forEach((outcome, i) => {
    if (outcome.status !== 'fulfilled') return;
    const map = i === 0 ? known.script : known.flow;
    for (const item of outcome.value) map.set(item.path, item);
  });
  fillChoices();
}

// ------------------------------------------------------------------ start

async function start() {
  document.getElementById('logout').addEventListener('click', logout);
  document.getElementById('ws-select').addEventListener('change', (event) => {
    go(`#/w/${event.target.value}/runs`);
  });
  window.addEventListener('hashchange', render);
  const code = takeLoginLink();
  if (code) confirmLoginLink(code);
  else render();
}

start();

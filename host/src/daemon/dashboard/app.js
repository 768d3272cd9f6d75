// flowhost dashboard: one page over the daemon's HTTP API. No framework, no
// build step, nothing fetched but the API. Every text from the API goes
// into the page as text (never as HTML).
'use strict';

(() => {
  const TOKEN_KEY = 'flowhost.token';
  const PAGE = 50;
  const STATUSES = ['queued', 'running', 'waiting', 'done', 'failed', 'cancelled'];
  const JOB_STATUSES = ['pending', 'claimed', 'done', 'poisoned'];

  const app = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    session: null,
    listeners: new Set(),
    feed: null,
    feedKey: '',
    watching: [],
    dispose: [],
  };

  // ------------------------------------------------------------ DOM helpers

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG, tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function append(el, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === undefined || kid === null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
  }

  // Replaces an element's children (arrays flattened, null and false left out).
  function fill(el, ...kids) {
    el.replaceChildren();
    append(el, kids);
    return el;
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const main = () => $('#main');

  // ------------------------------------------------------------ formatting

  const pad = (n) => String(n).padStart(2, '0');
  function when(ms) {
    if (!ms) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function took(ms) {
    if (ms === undefined || ms === null || Number.isNaN(ms)) return '—';
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const m = Math.floor(ms / 60000);
    if (m < 60) return `${m} min ${Math.round((ms % 60000) / 1000)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }
  function clock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
  }
  const ago = (ms) => (ms ? `${took(Math.max(0, Date.now() - ms))} ago` : '—');
  const count = (n) => Number(n || 0).toLocaleString('en-US');
  const statusBadge = (st) => h('span', { class: `status s-${st}`, 'data-status': st, text: st });
  const short = (digest) => (digest ? digest.replace(/^(sha256:|blake3:)/, '').slice(0, 12) : '—');

  // ------------------------------------------------------------ API

  class Unauthorized extends Error {}
  class ApiError extends Error {
    constructor(status, kind, message) {
      super(message || `HTTP ${status}`);
      this.status = status;
      this.kind = kind;
    }
  }

  function headers(extra) {
    const hs = { accept: 'application/json', ...extra };
    if (app.token) hs.authorization = `Bearer ${app.token}`;
    return hs;
  }

  async function api(path, { method = 'GET', body } = {}) {
    const init = { method, headers: headers() };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (res.status === 401) throw new Unauthorized('the token is not the daemon\u2019s');
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!res.ok) {
      const e = data && data.error;
      throw new ApiError(res.status, e && e.kind, (e && e.message) || text);
    }
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') q.set(k, v);
    }
    const text = q.toString();
    return text ? `?${text}` : '';
  }

  // ------------------------------------------------------------ messages

  let toastTimer = null;
  function toast(message, bad) {
    const t = $('#toast');
    t.textContent = message;
    t.className = `toast shown${bad ? ' bad' : ''}`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.className = 'toast'; }, 5000);
  }

  function failed(e) {
    if (e instanceof Unauthorized) {
      showLogin('The token was refused. Sign in again.');
      return;
    }
    toast(e.message || String(e), true);
  }

  // A confirmation before anything changes: title, text, optional extra
  // fields, and the call to make. An error keeps the dialog open.
  function confirmAction({ title, text, extra, label, danger = true, run }) {
    const dialog = $('#confirm');
    $('#confirm-title').textContent = title;
    $('#confirm-text').textContent = text;
    const slot = $('#confirm-extra');
    slot.replaceChildren(...(extra ? [extra] : []));
    const err = $('#confirm-error');
    err.textContent = '';
    const yes = $('#confirm-yes');
    yes.textContent = label;
    yes.className = danger ? 'danger' : '';
    yes.disabled = false;
    const form = $('#confirm-form');
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      yes.disabled = true;
      try {
        await run();
        dialog.close();
      } catch (e) {
        if (e instanceof Unauthorized) {
          dialog.close();
          failed(e);
          return;
        }
        err.textContent = e.message || String(e);
      } finally {
        yes.disabled = false;
      }
    };
    $('#confirm-no').onclick = () => dialog.close();
    dialog.showModal();
    const first = slot.querySelector('input, textarea');
    (first || yes).focus();
  }

  // ------------------------------------------------------------ the live feed

  function setLive(on, text) {
    const el = $('#live');
    el.dataset.state = on ? 'on' : 'off';
    el.textContent = text;
  }

  // The executions on screen: the feed also reads them from the store, so
  // changes other processes make (workers, other hosts) show too.
  function watch(ids) {
    const key = ids.slice(0, 200).join(',');
    if (app.feed && app.feedKey === key) return;
    if (app.feed) app.feed.abort();
    app.feed = null;
    app.feedKey = key;
    connectFeed();
  }

  // Server-sent events read with fetch (EventSource cannot send the token).
  function connectFeed() {
    if (app.feed) return;
    const controller = new AbortController();
    app.feed = controller;
    const url = `/events${query({ watch: app.feedKey })}`;
    let backoff = 500;
    const run = async () => {
      while (!controller.signal.aborted) {
        try {
          const res = await fetch(url, { headers: headers({ accept: 'text/event-stream' }), signal: controller.signal });
          if (res.status === 401) {
            setLive(false, 'signed out');
            return;
          }
          if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
          setLive(true, 'live');
          backoff = 500;
          await readEvents(res.body, controller.signal);
        } catch (e) {
          if (controller.signal.aborted) return;
        }
        setLive(false, 'reconnecting');
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 10000);
      }
    };
    run();
  }

  async function readEvents(body, signal) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
        }
        if (event === 'changes') {
          let changes = [];
          try {
            changes = JSON.parse(data.join('\n'));
          } catch {
            continue;
          }
          for (const fn of app.listeners) fn({ changes });
        } else if (event === 'reload') {
          for (const fn of app.listeners) fn({ reload: true });
        }
      }
    }
  }

  function listen(fn) {
    app.listeners.add(fn);
    app.dispose.push(() => app.listeners.delete(fn));
  }

  function every(ms, fn) {
    const t = setInterval(fn, ms);
    app.dispose.push(() => clearInterval(t));
  }

  function debounce(ms, fn) {
    let t = null;
    app.dispose.push(() => clearTimeout(t));
    return () => {
      if (t) return;
      t = setTimeout(() => { t = null; fn(); }, ms);
    };
  }

  // ------------------------------------------------------------ sign in

  function showLogin(message) {
    cleanup();
    if (app.feed) {
      app.feed.abort();
      app.feed = null;
    }
    setLive(false, 'signed out');
    $('#signout').hidden = true;
    const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true });
    const err = h('p', { class: 'error', role: 'alert', id: 'login-error', text: message || '' });
    const form = h('form', {
      onsubmit: async (ev) => {
        ev.preventDefault();
        app.token = input.value.trim();
        let ok = false;
        try {
          ok = await checkSession();
        } catch (e) {
          err.textContent = `Cannot reach the daemon: ${e.message}`;
          return;
        }
        if (ok) {
          sessionStorage.setItem(TOKEN_KEY, app.token);
          start();
        } else {
          err.textContent = 'That token is not the daemon\u2019s.';
          input.select();
        }
      },
    },
    h('label', { for: 'token' }, 'Bearer token', input),
    err,
    h('button', { type: 'submit', id: 'signin' }, 'Sign in'));
    main().replaceChildren(h('section', { class: 'login panel', id: 'login' },
      h('h1', { text: 'Sign in' }),
      h('p', { class: 'muted', text: 'This daemon needs its token (serve --token or FLOWHOST_TOKEN). It is kept in this browser tab only.' }),
      form));
    input.focus();
  }

  async function checkSession() {
    const res = await fetch('/session', { headers: headers() });
    if (!res.ok) throw new Error(`/session: HTTP ${res.status}`);
    app.session = await res.json();
    return app.session.authorized;
  }

  // ------------------------------------------------------------ routing

  function cleanup() {
    for (const fn of app.dispose.splice(0)) fn();
  }

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const [path, q] = raw.split('?');
    return { path, params: Object.fromEntries(new URLSearchParams(q || '')) };
  }

  async function route() {
    cleanup();
    const { path, params } = parseHash();
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    const section = parts[0] || 'executions';
    for (const a of document.querySelectorAll('[data-nav]')) {
      if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    app.watching = [];
    try {
      if (section === 'executions' && parts[1]) await viewExecution(parts[1]);
      else if (section === 'executions') await viewExecutions(params);
      else if (section === 'pools') await viewPools();
      else if (section === 'workers') await viewWorkers();
      else if (section === 'plugins') await viewPlugins();
      else main().replaceChildren(h('h1', { text: 'Not found' }), h('p', {}, h('a', { href: '#/', text: 'Executions' })));
      watch(app.watching);
    } catch (e) {
      if (e instanceof Unauthorized) {
        showLogin('The token was refused. Sign in again.');
        return;
      }
      main().replaceChildren(h('h1', { text: 'Something went wrong' }), h('p', { class: 'error', role: 'alert', text: e.message || String(e) }));
    }
  }

  async function start() {
    let ok;
    try {
      ok = await checkSession();
    } catch (e) {
      main().replaceChildren(h('p', { class: 'error', role: 'alert', text: `Cannot reach the daemon: ${e.message}` }));
      return;
    }
    if (!ok) {
      showLogin(app.token ? 'The token was refused. Sign in again.' : '');
      return;
    }
    $('#signout').hidden = !app.session.token_required;
    await route();
  }

  // ------------------------------------------------------------ executions

  function matches(c, params) {
    if (c.parent) return false;
    if (params.status && c.status !== params.status) return false;
    if (params.machine && c.machine !== params.machine) return false;
    if (params.prefix && !c.id.startsWith(params.prefix)) return false;
    if (params.since && c.created_ms < Number(params.since)) return false;
    if (params.until && c.created_ms >= Number(params.until)) return false;
    return true;
  }

  function toLocalInput(ms) {
    if (!ms) return '';
    const d = new Date(Number(ms));
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function listHash(params) {
    return `#/${query(params)}`;
  }

  async function viewExecutions(params) {
    const [counts, machines, page] = await Promise.all([
      api('/counts'),
      api('/machines'),
      api(`/workflows${query({ limit: PAGE, status: params.status, machine: params.machine, prefix: params.prefix, since: params.since, until: params.until, cursor: params.cursor })}`),
    ]);
    const root = h('section', { id: 'executions' });
    const chips = h('div', { class: 'counts', id: 'counts', 'aria-label': 'Executions by status' });
    const renderCounts = (c) => {
      const total = Object.values(c.roots).reduce((a, b) => a + b, 0);
      const base = { ...params, cursor: undefined };
      fill(chips,
        h('a', { class: 'count', href: listHash({ ...base, status: undefined }), 'aria-current': params.status ? 'false' : 'true' }, 'all', h('b', { 'data-count': 'all', text: count(total) })),
        STATUSES.map((st) => h('a', { class: 'count', href: listHash({ ...base, status: st }), 'aria-current': params.status === st ? 'true' : 'false' },
          h('span', { class: `s-${st}`, text: st }), h('b', { 'data-count': st, text: count(c.roots[st]) }))),
      );
    };
    renderCounts(counts);

    const names = new Set(machines.machines);
    for (const m of counts.machines) names.add(m.machine);
    const statusSel = h('select', { id: 'f-status', name: 'status' }, h('option', { value: '', text: 'any' }),
      STATUSES.map((st) => h('option', { value: st, text: st, selected: params.status === st })));
    const machineSel = h('select', { id: 'f-machine', name: 'machine' }, h('option', { value: '', text: 'any' }),
      [...names].sort().map((m) => h('option', { value: m, text: m, selected: params.machine === m })));
    const prefix = h('input', { id: 'f-prefix', name: 'prefix', value: params.prefix || '', placeholder: 'id starts with', spellcheck: 'false', autocomplete: 'off' });
    const since = h('input', { id: 'f-since', type: 'datetime-local', value: toLocalInput(params.since) });
    const until = h('input', { id: 'f-until', type: 'datetime-local', value: toLocalInput(params.until) });
    const filters = h('form', {
      class: 'filters', role: 'search',
      onsubmit: (ev) => {
        ev.preventDefault();
        const ms = (input) => (input.value ? String(new Date(input.value).getTime()) : undefined);
        location.hash = listHash({ status: statusSel.value, machine: machineSel.value, prefix: prefix.value.trim(), since: ms(since), until: ms(until) });
      },
    },
    h('label', {}, 'Status', statusSel),
    h('label', {}, 'Machine', machineSel),
    h('label', {}, 'Id prefix', prefix),
    h('label', {}, 'Created from', since),
    h('label', {}, 'Created before', until),
    h('div', { class: 'buttons' },
      h('button', { type: 'submit', id: 'f-apply' }, 'Filter'),
      h('button', { type: 'button', class: 'quiet', onclick: () => { location.hash = '#/'; } }, 'Clear')));

    const notice = h('div', { class: 'notice', id: 'notice', 'aria-live': 'polite' });
    const tbody = h('tbody');
    const row = (w) => h('tr', { 'data-id': w.id },
      h('td', { class: 'mono' }, h('a', { href: `#/executions/${encodeURIComponent(w.id)}`, text: w.id })),
      h('td', { text: w.machine }),
      h('td', { 'data-col': 'status' }, statusBadge(w.status)),
      h('td', { 'data-col': 'state', text: w.state }),
      h('td', { class: 'num', 'data-col': 'step', text: w.step }),
      h('td', { title: when(w.created_ms), text: when(w.created_ms) }));
    tbody.append(...page.workflows.map(row));
    app.watching = page.workflows.map((w) => w.id);
    const table = h('table', { id: 'executions-table', class: 'executions' },
      h('colgroup', {}, ['id', 'machine', 'status', 'state', 'step', 'created'].map((c) => h('col', { class: `c-${c}` }))),
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col', text: 'Id' }), h('th', { scope: 'col', text: 'Machine' }),
        h('th', { scope: 'col', text: 'Status' }), h('th', { scope: 'col', text: 'State' }),
        h('th', { scope: 'col', class: 'num', text: 'Step' }), h('th', { scope: 'col', text: 'Created' }))),
      tbody);
    const empty = page.workflows.length ? null : h('p', { class: 'empty', text: 'No executions match.' });
    const pager = h('div', { class: 'pager' },
      params.cursor ? h('a', { href: listHash({ ...params, cursor: undefined }), text: '\u2190 Newest' }) : null,
      page.next_cursor ? h('a', { href: listHash({ ...params, cursor: page.next_cursor }), id: 'older', text: 'Older \u2192' }) : null);
    append(root, [h('h1', { text: 'Executions' }), chips, filters, notice, table, empty, pager]);
    main().replaceChildren(root);

    // Live: rows change in place; new executions wait behind a notice, so
    // nothing moves under the reader's eyes.
    const fresh = new Set();
    let missed = false;
    const showNotice = () => {
      if (missed) {
        return fill(notice, h('button', { type: 'button', class: 'quiet', id: 'show-new', onclick: () => route() },
          'Some changes were missed \u2014 reload the list'));
      }
      if (!fresh.size) return notice.replaceChildren();
      fill(notice, h('button', { type: 'button', class: 'quiet', id: 'show-new', onclick: () => route() },
        `${fresh.size} new execution${fresh.size === 1 ? '' : 's'} \u2014 show`));
    };
    const refreshCounts = debounce(1000, async () => {
      try {
        renderCounts(await api('/counts'));
      } catch (e) {
        if (e instanceof Unauthorized) failed(e);
      }
    });
    listen((msg) => {
      if (msg.reload) {
        missed = true;
        showNotice();
        refreshCounts();
        return;
      }
      for (const c of msg.changes) {
        const tr = tbody.querySelector(`tr[data-id="${CSS.escape(c.id)}"]`);
        const same = tr
          && tr.querySelector('[data-col="status"] [data-status]').dataset.status === c.status
          && tr.querySelector('[data-col="state"]').textContent === c.state
          && tr.querySelector('[data-col="step"]').textContent === String(c.step);
        if (same) continue;
        if (tr) {
          tr.querySelector('[data-col="status"]').replaceChildren(statusBadge(c.status));
          tr.querySelector('[data-col="state"]').textContent = c.state;
          tr.querySelector('[data-col="step"]').textContent = c.step;
          tr.classList.remove('flash');
          void tr.offsetWidth;
          tr.classList.add('flash');
        } else if (!params.cursor && matches(c, params)) {
          fresh.add(c.id);
        }
      }
      showNotice();
      refreshCounts();
    });
    const onKey = (ev) => {
      if (ev.key === '/' && !['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement.tagName)) {
        ev.preventDefault();
        prefix.focus();
      }
    };
    document.addEventListener('keydown', onKey);
    app.dispose.push(() => document.removeEventListener('keydown', onKey));
  }

  // ------------------------------------------------------------ one execution

  // The history as segments: one per state entered, with its attempt,
  // worker, start and end; plus the states that failed.
  function segments(events, d) {
    const segs = [];
    const failedStates = new Set();
    let end = null;
    for (const { at_ms: at, event: e } of events) {
      const last = segs[segs.length - 1];
      if (e.event === 'state_entered') {
        segs.push({ state: e.state, step: e.step, attempt: e.attempt, start: at, worker: '', plugin: '' });
      } else if (e.event === 'plugin_called') {
        let seg = last;
        if (!seg || seg.state !== e.state || seg.step !== e.step || seg.attempt !== e.attempt) {
          // Such a state entered when its call began (not before the one before it).
          const began = Math.max(at - (e.ms || 0), last ? last.start : 0);
          seg = { state: e.state, step: e.step, attempt: e.attempt, start: began, worker: '', plugin: '' };
          segs.push(seg);
        }
        seg.worker = e.worker || seg.worker;
        seg.plugin = e.plugin;
        if (e.error) {
          seg.error = e.error;
          failedStates.add(e.state);
        }
      } else if (e.event === 'routed' || e.event === 'retry_scheduled') {
        failedStates.add(e.state);
        if (last && last.state === e.state) last.error = last.error || e.kind || 'retry';
      } else if (e.event === 'finished') {
        end = at;
        if (e.status === 'failed') failedStates.add(e.state);
      } else if (e.event === 'cancelled') {
        end = at;
      }
    }
    if (d.status === 'failed' && d.error && d.error.state) failedStates.add(d.error.state);
    const terminal = ['done', 'failed', 'cancelled'].includes(d.status);
    const stop = end || (terminal ? d.updated_ms : Date.now());
    segs.forEach((seg, i) => {
      seg.end = i + 1 < segs.length ? segs[i + 1].start : Math.max(stop, seg.start);
    });
    return { segs, failedStates };
  }

  // A layered drawing: states in columns by their distance from the
  // initial state, edges as curves (those going back curve below).
  function diagram(graph, marks) {
    const W = 168, H = 50, GX = 74, GY = 30, P = 24;
    const rank = new Map([[graph.initial, 0]]);
    const queue = [graph.initial];
    const out = new Map();
    for (const e of graph.edges) {
      if (!out.has(e.from)) out.set(e.from, []);
      out.get(e.from).push(e.to);
    }
    while (queue.length) {
      const n = queue.shift();
      for (const to of out.get(n) || []) {
        if (!rank.has(to)) {
          rank.set(to, rank.get(n) + 1);
          queue.push(to);
        }
      }
    }
    let maxRank = Math.max(0, ...rank.values());
    for (const st of graph.states) if (!rank.has(st.name)) rank.set(st.name, ++maxRank);
    const columns = new Map();
    const pos = new Map();
    for (const st of graph.states) {
      const r = rank.get(st.name);
      const row = columns.get(r) || 0;
      columns.set(r, row + 1);
      pos.set(st.name, { x: P + r * (W + GX), y: P + row * (H + GY) });
    }
    const rows = Math.max(1, ...columns.values());
    const width = P * 2 + (maxRank + 1) * (W + GX) - GX;
    const height = P * 2 + rows * (H + GY) - GY + 40;
    const svg = s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `State diagram of ${graph.machine}`, id: 'diagram-svg' });
    svg.append(s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }))));
    const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}\u2026` : text);
    for (const e of graph.edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      let d, lx, ly;
      if (e.from === e.to) {
        d = `M${a.x + W - 30},${a.y} C${a.x + W - 20},${a.y - 28} ${a.x + W + 14},${a.y - 12} ${a.x + W},${a.y + 12}`;
        lx = a.x + W; ly = a.y - 18;
      } else if (b.x === a.x && b.y > a.y) {
        const x = a.x + W / 2;
        d = `M${x},${a.y + H} L${x},${b.y}`;
        lx = x + 6; ly = (a.y + H + b.y) / 2 + 3;
      } else if (b.x > a.x) {
        const sx = a.x + W, sy = a.y + H / 2, tx = b.x, ty = b.y + H / 2;
        const mx = (sx + tx) / 2;
        d = `M${sx},${sy} C${mx},${sy} ${mx},${ty} ${tx},${ty}`;
        lx = mx; ly = (sy + ty) / 2 - 4;
      } else {
        const sx = a.x + W / 2, sy = a.y + H, tx = b.x + W / 2, ty = b.y + H;
        const low = Math.max(sy, ty) + 34;
        d = `M${sx},${sy} C${sx},${low} ${tx},${low} ${tx},${ty}`;
        lx = (sx + tx) / 2; ly = low - 4;
      }
      const g = s('g', { class: `edge ${e.kind}` }, s('path', { d, 'marker-end': 'url(#arrow)' }));
      const anchor = b.x === a.x && b.y > a.y ? 'start' : 'middle';
      if (e.label) g.append(s('text', { x: lx, y: ly, 'text-anchor': anchor }, clip(e.label, 26), s('title', {}, e.label)));
      svg.append(g);
    }
    for (const st of graph.states) {
      const p = pos.get(st.name);
      const cls = ['node', st.kind];
      if (marks.visited.has(st.name)) cls.push('visited');
      if (marks.failed.has(st.name)) cls.push('failed');
      else if (marks.current === st.name) cls.push('current');
      const sub = st.label || (st.children ? st.children.map((c) => `${c.how} ${c.machine}`).join(', ') : st.kind === 'state' ? '' : st.kind);
      const g = s('g', { class: cls.join(' '), 'data-state': st.name, transform: `translate(${p.x},${p.y})` },
        s('title', {}, [st.name, st.label].filter(Boolean).join(' \u2014 ')),
        s('rect', { width: W, height: H, rx: st.kind === 'final' ? 22 : 6 }),
        s('text', { x: W / 2, y: sub ? 21 : 30, 'text-anchor': 'middle' }, clip(st.name, 22)),
        sub ? s('text', { x: W / 2, y: 38, 'text-anchor': 'middle', class: 'sub' }, clip(sub, 26)) : null);
      svg.append(g);
    }
    return svg;
  }

  // JSON as a tree of <details>, so big values open one level at a time.
  function jsonTree(value, key, depth, path, opened) {
    const label = key === null ? null : h('span', { class: 'k', text: `${key}: ` });
    if (value !== null && typeof value === 'object') {
      const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
      const kind = Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`;
      if (!entries.length) return h('div', { class: 'leaf' }, label, Array.isArray(value) ? '[]' : '{}');
      const det = h('details', { open: depth < 1 || opened.has(path) });
      det.addEventListener('toggle', () => (det.open ? opened.add(path) : opened.delete(path)));
      det.append(h('summary', {}, label, h('span', { class: 'muted', text: kind })));
      for (const [k, v] of entries) det.append(jsonTree(v, k, depth + 1, `${path}/${k}`, opened));
      return det;
    }
    const cls = typeof value === 'string' ? 'str' : typeof value === 'number' ? 'num' : 'lit';
    return h('div', { class: 'leaf' }, label, h('span', { class: cls, text: JSON.stringify(value) }));
  }

  function jsonSection(title, value, id, opened) {
    const det = h('details', { class: 'json', id, open: opened.has(id) });
    det.addEventListener('toggle', () => (det.open ? opened.add(id) : opened.delete(id)));
    append(det, [h('summary', { text: title }),
      value === undefined || value === null ? h('p', { class: 'muted', text: 'none' }) : h('div', { class: 'tree' }, jsonTree(value, null, 0, id, opened))]);
    return det;
  }

  function progressBar(p) {
    const pct = (n) => `${p.total ? (100 * n) / p.total : 0}%`;
    const bar = h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': p.total, 'aria-valuenow': p.done + p.failed + p.cancelled });
    for (const k of ['done', 'failed', 'cancelled']) {
      const span = h('span', { class: `p-${k}`, title: `${p[k]} ${k}` });
      span.style.width = pct(p[k]);
      bar.append(span);
    }
    return bar;
  }

  async function viewExecution(id) {
    const enc = encodeURIComponent(id);
    const opened = new Set(['context', 'error']);
    const root = h('section', { id: 'execution', 'data-id': id });
    main().replaceChildren(root);
    const render = async () => {
      const [d, history, graph] = await Promise.all([
        api(`/workflows/${enc}`),
        api(`/workflows/${enc}/history?limit=10000`),
        api(`/workflows/${enc}/graph`).catch((e) => {
          if (e instanceof Unauthorized) throw e;
          return { error: e.message };
        }),
      ]);
      const children = await api(`/workflows/${enc}/jobs?limit=100`);
      const { segs, failedStates } = segments(history.events, d);
      app.watching = [id, ...children.workflows.map((c) => c.id)];
      if (app.feed) watch(app.watching);
      const terminal = ['done', 'failed', 'cancelled'].includes(d.status);

      const actions = h('div', { class: 'actions', id: 'actions' });
      if (!terminal) {
        actions.append(h('button', { type: 'button', class: 'danger', id: 'act-cancel', onclick: () => confirmAction({
          title: 'Cancel this execution?',
          text: `${id} (${d.machine}) stops where it is, with its children. This cannot be undone.`,
          label: 'Cancel execution',
          run: async () => {
            const r = await api(`/workflows/${enc}/cancel`, { method: 'POST', body: { reason: 'cancelled from the dashboard' } });
            toast(r.requested.length ? 'Asked the worker to stop it.' : `Cancelled (${r.ended} execution${r.ended === 1 ? '' : 's'}).`);
            await render();
          },
        }) }, 'Cancel'));
        const channel = h('input', { id: 'signal-channel', value: d.waiting_for || '', required: true, spellcheck: 'false' });
        const payload = h('textarea', { id: 'signal-payload', spellcheck: 'false' });
        payload.value = '{}';
        actions.append(h('button', { type: 'button', id: 'act-signal', onclick: () => confirmAction({
          title: 'Send a signal',
          text: d.waiting_for ? `It waits on \u201c${d.waiting_for}\u201d.` : 'It waits on no channel now; the signal is kept until it does.',
          extra: h('div', {}, h('label', {}, 'Channel', channel), h('label', {}, 'Payload (JSON)', payload)),
          label: 'Send',
          danger: false,
          run: async () => {
            let data;
            try {
              data = JSON.parse(payload.value || 'null');
            } catch (e) {
              throw new Error(`The payload is not JSON: ${e.message}`);
            }
            if (!channel.value.trim()) throw new Error('Name the channel.');
            const r = await api(`/workflows/${enc}/signal/${encodeURIComponent(channel.value.trim())}`, { method: 'POST', body: data });
            toast(`Signal sent (${r.delivery.replace('_', ' ')}).`);
            await render();
          },
        }) }, 'Signal\u2026'));
      }
      if (d.status === 'failed' && !d.parent) {
        actions.append(h('button', { type: 'button', id: 'act-retry', onclick: () => confirmAction({
          title: 'Retry this execution?',
          text: `It runs again from \u201c${d.state}\u201d, the state that failed, as a new attempt.`,
          label: 'Retry', danger: false,
          run: async () => { await api(`/workflows/${enc}/resume`, { method: 'POST' }); toast('Retrying.'); await render(); },
        }) }, 'Retry'));
      }
      if (d.abandoned) {
        actions.append(h('button', { type: 'button', id: 'act-resume', onclick: () => confirmAction({
          title: 'Resume this execution?',
          text: 'No process runs it; it goes on from its last checkpoint here.',
          label: 'Resume', danger: false,
          run: async () => { await api(`/workflows/${enc}/resume`, { method: 'POST' }); toast('Resumed.'); await render(); },
        }) }, 'Resume'));
      }

      const facts = h('dl', { class: 'facts' },
        h('dt', { text: 'Status' }), h('dd', { id: 'x-status' }, statusBadge(d.status), d.abandoned ? h('span', { class: 'muted', text: ' (abandoned: no process runs it)' }) : null),
        h('dt', { text: 'Machine' }), h('dd', { text: d.machine }),
        h('dt', { text: 'State' }), h('dd', { id: 'x-state', text: `${d.state} (step ${d.step})` }),
        d.waiting_for ? [h('dt', { text: 'Waits for' }), h('dd', { text: d.waiting_for })] : null,
        d.parent ? [h('dt', { text: 'Parent' }), h('dd', { class: 'mono' }, h('a', { href: `#/executions/${encodeURIComponent(d.parent)}`, text: d.parent }))] : null,
        d.error ? [h('dt', { text: 'Error' }), h('dd', { class: 'error', id: 'x-error', text: `${d.error.kind}: ${d.error.message}` })] : null,
        h('dt', { text: 'Created' }), h('dd', { text: when(d.created_ms) }),
        h('dt', { text: 'Updated' }), h('dd', { text: when(d.updated_ms) }),
        h('dt', { text: 'Run by' }), h('dd', { text: d.owner ? `${d.owner.host} pid ${d.owner.pid}` : '—' }),
        h('dt', { text: 'Definition' }), h('dd', { class: 'mono', title: d.definition || '', text: short(d.definition) }));

      const visited = new Set(segs.map((x) => x.state));
      const marks = { visited, failed: failedStates, current: d.state };
      const drawing = graph.error
        ? h('p', { class: 'error', text: `No diagram: ${graph.error}` })
        : diagram(graph, marks);

      const t0 = segs.length ? segs[0].start : 0;
      const span = segs.length ? Math.max(1, segs[segs.length - 1].end - t0) : 1;
      const timeline = segs.length
        ? h('table', { class: 'timeline', id: 'timeline' },
          h('colgroup', {}, h('col', { class: 'c-state' }), h('col'), h('col'), h('col'), h('col'), h('col', { class: 'c-bar' })),
          h('thead', {}, h('tr', {}, ['State', 'Attempt', 'Worker', 'Started', 'Took', ''].map((t, i) => h('th', { scope: 'col', class: i === 1 || i === 4 ? 'num' : null, text: t })))),
          h('tbody', {}, segs.map((x) => {
            const fill = h('span', { class: `fill${x.error ? ' failed' : ''}` });
            fill.style.left = `${(100 * (x.start - t0)) / span}%`;
            fill.style.width = `${(100 * (x.end - x.start)) / span}%`;
            return h('tr', { 'data-state': x.state },
              h('td', { title: x.plugin ? `${x.state} (runs ${x.plugin})` : x.state, text: x.state }),
              h('td', { class: 'num', text: x.attempt || 1 }),
              h('td', { title: x.worker, text: x.worker || '—' }),
              h('td', { title: when(x.start), text: clock(x.start) }),
              h('td', { class: 'num', text: took(Math.max(0, x.end - x.start)) }),
              h('td', { class: 'bar' }, h('div', { class: 'track' }, fill)));
          })))
        : h('p', { class: 'muted', text: 'No history kept for this execution.' });

      let kids = null;
      if (d.children || children.workflows.length) {
        // The state it is in says how far its children are; once it moved
        // on, the children listed (the first 100) do.
        const listed = children.workflows;
        const tally = (st) => listed.filter((c) => c.status === st).length;
        const p = d.children || { total: listed.length, done: tally('done'), failed: tally('failed'), cancelled: tally('cancelled'), waiting: tally('waiting') };
        kids = [h('h2', { text: 'Children' }),
          h('p', { id: 'children-progress', text: `${p.done + p.failed + p.cancelled} of ${p.total} finished \u2014 ${p.done} done, ${p.failed} failed, ${p.cancelled} cancelled, ${p.waiting} waiting` }),
          progressBar(p),
          listed.length
            ? h('table', { id: 'children' }, h('tbody', {}, listed.map((c) => h('tr', { 'data-id': c.id },
              h('td', { class: 'mono' }, h('a', { href: `#/executions/${encodeURIComponent(c.id)}`, text: c.id })),
              h('td', {}, statusBadge(c.status)), h('td', { text: c.state })))))
            : null];
      }

      fill(root,
        h('div', { class: 'head' }, h('div', {}, h('h1', { class: 'mono', text: id }), facts), actions),
        h('h2', { text: 'State diagram' }),
        h('div', { class: 'diagram panel', id: 'diagram' }, drawing),
        h('div', { class: 'legend' }, h('span', { class: 'visited', text: 'visited' }), h('span', { class: 'current', text: 'current' }), h('span', { class: 'failed', text: 'failed' })),
        h('h2', { text: 'Timeline' }), timeline,
        kids,
        d.launches && d.launches.length ? [h('h2', { text: 'Launched' }), h('ul', {}, d.launches.map((l) => h('li', { class: 'mono', text: JSON.stringify(l) })))] : null,
        h('h2', { text: 'Data' }),
        jsonSection('Input', d.input, 'input', opened),
        jsonSection('Context', d.context, 'context', opened),
        jsonSection('Output', d.status === 'done' ? d.result : null, 'output', opened),
        jsonSection('Error', d.error, 'error', opened));
    };
    await render();
    const again = debounce(300, () => render().catch(failed));
    listen((msg) => {
      if (msg.reload || msg.changes.some((c) => c.id === id || c.parent === id)) again();
    });
  }

  // ------------------------------------------------------------ pools

  function sparkline(points) {
    const w = 240, hgt = 40;
    const svg = s('svg', { class: 'spark', width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, role: 'img',
      'aria-label': points.length ? `throughput, last ${points.length} samples` : 'no throughput samples yet' });
    svg.append(s('path', { class: 'base', d: `M0,${hgt - 1} L${w},${hgt - 1}` }));
    if (points.length > 1) {
      const max = Math.max(1, ...points.map((p) => p.per_second));
      const step = w / (points.length - 1);
      const d = points.map((p, i) => `${i ? 'L' : 'M'}${(i * step).toFixed(1)},${(hgt - 2 - (p.per_second / max) * (hgt - 6)).toFixed(1)}`).join(' ');
      svg.append(s('path', { d }));
    }
    return svg;
  }

  function scaleControl(view, after) {
    const input = h('input', { type: 'number', min: 0, max: view.max, value: view.fixed ?? view.running, 'aria-label': `workers for ${view.queue}`, 'data-scale': view.queue });
    const set = async (workers) => {
      try {
        await api('/workers/scale', { method: 'POST', body: { queue: view.queue, workers } });
        toast(workers === null ? `${view.queue}: follows its queue again.` : `${view.queue}: held at ${workers} worker${workers === 1 ? '' : 's'}.`);
        await after();
      } catch (e) {
        failed(e);
      }
    };
    return h('form', { class: 'scale', onsubmit: (ev) => { ev.preventDefault(); set(Number(input.value)); } },
      h('label', {}, 'Workers', input),
      h('button', { type: 'submit' }, 'Set'),
      h('button', { type: 'button', class: 'quiet', disabled: view.fixed === null || view.fixed === undefined, onclick: () => set(null) }, 'Auto'));
  }

  function poolWorkers(view) {
    if (!view) return h('p', { class: 'muted', text: 'This daemon runs no workers for it.' });
    return h('p', {}, `${view.running} running (${view.fixed !== null && view.fixed !== undefined ? `held at ${view.fixed}` : `autoscaled ${view.min}\u2013${view.max}`}), ${view.concurrency} jobs each`);
  }

  async function viewPools() {
    const root = h('section', { id: 'pools' }, h('h1', { text: 'Pools and queues' }));
    main().replaceChildren(root);
    const tabs = new Map();
    const sections = new Map();
    const load = async () => {
      const { pools } = await api('/pools');
      for (const p of pools) {
        let sec = sections.get(p.name);
        if (!sec) {
          sec = { el: h('section', { class: 'pool panel', 'data-pool': p.name }), jobs: h('div', { class: 'jobs' }) };
          sections.set(p.name, sec);
          root.append(sec.el);
          tabs.set(p.name, p.stats.poisoned > 0 ? 'poisoned' : 'pending');
        }
        const st = p.stats;
        const depth = st.pending + st.claimed;
        const last = p.throughput.points.length ? p.throughput.points[p.throughput.points.length - 1].per_second : 0;
        const focused = sec.el.contains(document.activeElement) && document.activeElement.matches('input');
        const header = h('div', {},
          h('h2', { text: p.name === 'executions' ? 'executions (the run queue)' : p.name }),
          h('div', { class: 'stats' },
            [['depth', depth], ['due now', st.due], ['oldest waiting', st.due ? took(p.oldest_waiting_seconds * 1000) : '\u2014'], ['claimed', st.claimed], ['done', st.done], ['poisoned', st.poisoned], ['jobs/s now', last.toFixed(1)]]
              .map(([k, v]) => h('div', { class: 'stat', 'data-stat': k }, h('b', { text: typeof v === 'number' ? count(v) : v }), h('span', { text: k }))),
            h('div', { class: 'stat' }, sparkline(p.throughput.points), h('span', { text: `finished per second, every ${p.throughput.interval_seconds} s` }))),
          poolWorkers(p.workers),
          p.workers && !focused ? scaleControl(p.workers, load) : null);
        if (focused) {
          // Keep the control someone is typing in.
          sec.el.firstChild.replaceWith(header);
        } else {
          fill(sec.el, header, jobTabs(p.name), sec.jobs);
        }
        await loadJobs(p.name, sec.jobs);
      }
      if (!pools.length) root.append(h('p', { class: 'empty', text: 'No pools.' }));
    };
    const jobTabs = (name) => h('div', { class: 'tabs', role: 'tablist', 'aria-label': `${name} jobs by status` },
      JOB_STATUSES.map((st) => h('button', { type: 'button', role: 'tab', 'aria-selected': tabs.get(name) === st ? 'true' : 'false', 'data-tab': st,
        onclick: async (ev) => {
          tabs.set(name, st);
          for (const b of ev.target.parentNode.children) b.setAttribute('aria-selected', b === ev.target ? 'true' : 'false');
          await loadJobs(name, sections.get(name).jobs).catch(failed);
        } }, st)));
    const requeue = (name, ids) => confirmAction({
      title: ids ? `Requeue job ${ids[0]}?` : `Requeue every poisoned job of ${name}?`,
      text: 'It goes back to pending with fresh retries.',
      label: 'Requeue', danger: false,
      run: async () => {
        const r = await api(`/pools/${encodeURIComponent(name)}/requeue`, { method: 'POST', body: ids ? { ids } : {} });
        toast(`Requeued ${r.requeued} job${r.requeued === 1 ? '' : 's'}.`);
        await load();
      },
    });
    const loadJobs = async (name, slot) => {
      const status = tabs.get(name);
      const { jobs } = await api(`/pools/${encodeURIComponent(name)}/jobs${query({ status, limit: 50 })}`);
      if (!jobs.length) {
        slot.replaceChildren(h('p', { class: 'empty', text: `No ${status} jobs.` }));
        return;
      }
      fill(slot,
        status === 'poisoned' ? h('p', {}, h('button', { type: 'button', class: 'quiet', 'data-requeue-all': name, onclick: () => requeue(name, null) }, 'Requeue all poisoned')) : null,
        h('table', { 'data-jobs': name },
          h('colgroup', {}, h('col', { class: 'c-id' }), h('col'), h('col'), h('col'), h('col', { class: 'c-wide' }), h('col')),
          h('thead', {}, h('tr', {}, ['Id', 'Status', 'Attempts', 'Updated', status === 'poisoned' ? 'Error' : 'Payload', ''].map((t) => h('th', { scope: 'col', class: t === 'Attempts' ? 'num' : null, text: t })))),
          h('tbody', {}, jobs.map((j) => h('tr', { 'data-job': j.id },
            h('td', { class: 'mono', text: j.id }),
            h('td', {}, statusBadge(j.status)),
            h('td', { class: 'num', text: `${j.attempts}/${j.max_retries + 1}` }),
            h('td', { title: when(j.updated_ms), text: ago(j.updated_ms) }),
            h('td', { class: 'mono', title: j.error || JSON.stringify(j.payload), text: j.error || JSON.stringify(j.payload) }),
            h('td', {}, j.status === 'poisoned' ? h('button', { type: 'button', class: 'quiet', 'data-requeue': j.id, onclick: () => requeue(name, [j.id]) }, 'Requeue') : null))))));
    };
    await load();
    every(5000, () => { if (!$('#confirm').open) load().catch(failed); });
  }

  // ------------------------------------------------------------ workers

  async function viewWorkers() {
    const root = h('section', { id: 'workers' });
    main().replaceChildren(root);
    const load = async () => {
      const { workers, pools } = await api('/workers');
      if (root.contains(document.activeElement) && document.activeElement.matches('input')) return;
      fill(root,
        h('h1', { text: 'Workers' }),
        h('h2', { text: 'This daemon\u2019s worker pools' }),
        pools.map((v) => h('div', { class: 'panel pool', 'data-pool': v.queue }, h('b', { text: v.queue }), poolWorkers(v), scaleControl(v, load))),
        h('h2', { text: 'Registered workers' }),
        workers.length
          ? h('table', { id: 'workers-table' },
            h('thead', {}, h('tr', {}, ['Worker', 'Pool', 'Host', 'Status', 'Last heartbeat', 'Started', 'Holds'].map((t) => h('th', { scope: 'col', text: t })))),
            h('tbody', {}, workers.map((w) => h('tr', { 'data-worker': w.id },
              h('td', { class: 'mono', title: w.id, text: w.id }),
              h('td', { text: w.pool }),
              h('td', { text: `${w.host} pid ${w.pid}` }),
              h('td', {}, statusBadge(w.status)),
              h('td', { title: when(w.heartbeat_ms), text: ago(w.heartbeat_ms) }),
              h('td', { text: when(w.started_ms) }),
              h('td', { class: 'wrap' }, w.current.length ? w.current.map((j, i) => [i ? ', ' : '', j.execution
                ? h('a', { href: `#/executions/${encodeURIComponent(j.execution)}`, class: 'mono', text: j.execution })
                : h('span', { class: 'mono', text: `job ${j.id}` })]) : h('span', { class: 'muted', text: 'idle' }))))))
          : h('p', { class: 'empty', text: 'No workers registered.' }));
    };
    await load();
    every(5000, () => load().catch(failed));
  }

  // ------------------------------------------------------------ plugins

  async function viewPlugins() {
    const root = h('section', { id: 'plugins' });
    main().replaceChildren(root);
    const load = async () => {
      const { plugins } = await api('/plugins');
      fill(root,
        h('h1', { text: 'Plugins' }),
        plugins.length
          ? h('table', { id: 'plugins-table' },
            h('thead', {}, h('tr', {}, ['Name', 'Version', 'World', 'Digest', 'Loaded', 'Reloads', 'Calls', 'Errors by kind', 'Last error'].map((t) => h('th', { scope: 'col', text: t })))),
            h('tbody', {}, plugins.map((p) => {
              const errors = Object.entries(p.errors || {});
              return h('tr', { 'data-plugin': p.name },
                h('td', { text: p.name }),
                h('td', { text: p.version || '—' }),
                h('td', { text: p.world || '—' }),
                h('td', { class: 'mono', title: p.digest, text: short(p.digest) }),
                h('td', { title: when(p.loaded_ms), text: p.loaded_ms ? ago(p.loaded_ms) : '—' }),
                h('td', { class: 'num', text: p.reloads }),
                h('td', { class: 'num', text: count(p.calls) }),
                h('td', { class: 'wrap', text: errors.length ? errors.map(([k, n]) => `${k} ${n}`).join(', ') : '—' }),
                h('td', { class: p.error ? 'wrap error' : 'wrap', text: p.error || '—' }));
            })))
          : h('p', { class: 'empty', text: 'The plugins folder is empty.' }));
    };
    await load();
    every(10000, () => load().catch(failed));
  }

  // ------------------------------------------------------------ start

  document.addEventListener('DOMContentLoaded', () => {
    $('#signout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      app.token = '';
      showLogin('Signed out.');
    });
    window.addEventListener('hashchange', () => {
      if (app.session && app.session.authorized) route();
    });
    start();
  });
})();

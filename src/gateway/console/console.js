// herd console: watches sessions live and answers them, through the gateway's public API only
// (the same routes and SSE stream the SDK uses), so everything it shows a person the API shows
// a program.
//
// Untrusted text (messages, tool input and output, titles) only ever becomes DOM text nodes:
// nothing here parses HTML (the page's Content-Security-Policy forbids it outright with
// `require-trusted-types-for 'script'`), Markdown is built as elements, links keep only
// http(s) targets and images are never loaded. The API key lives in this tab's
// sessionStorage and goes out only in the Authorization header, never in a URL.
'use strict';

(() => {
  const KEY = 'herd.console.key';
  const PAGE_SIZE = 50;
  const TRUNCATE = 4000;
  // Cards drawn at once on a timeline; earlier events are drawn on demand.
  const WINDOW = 300;
  // Every event type the stream may carry: herd's own (sandbox lifecycle, the session's
  // creation, limits) are sent only when named.
  const TYPES = [
    'session.created', 'user.message', 'user.interrupt', 'user.tool_confirmation',
    'user.custom_tool_result', 'system.message', 'agent.message', 'agent.thinking',
    'agent.tool_use', 'agent.tool_result', 'agent.custom_tool_use', 'agent.mcp_tool_use',
    'agent.mcp_tool_result', 'session.mcp_tools_listed', 'agent.thread_context_compacted',
    'session.status_running', 'session.status_idle', 'session.status_rescheduled',
    'session.status_terminated', 'session.error', 'session.usage', 'session.limit_reached',
    'session.updated', 'span.model_request_start', 'span.model_request_end',
    'sandbox.provisioned', 'sandbox.lost', 'sandbox.workspace_saved', 'sandbox.workspace_restored',
    'session.forked', 'session.schedule_set', 'session.schedule_cancelled', 'session.schedule_fired',
  ];

  // What tests and the benchmark read: counts and times, never content.
  const probe = (window.herdConsole = {
    view: 'loading', lastSeq: 0, rendered: 0, connections: 0, state: 'idle',
    renderedAt: {}, flushes: [], errors: [],
  });
  const clock = () => performance.timeOrigin + performance.now();

  // ---- DOM, text only -------------------------------------------------------------------

  /** An element: `attrs` sets properties known to be inert; children are nodes or text. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'data') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'href') el.href = v; // only ever '#…' or a checked http(s) URL
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const main = () => document.getElementById('main');
  function show(...nodes) { main().replaceChildren(...nodes); }

  // ---- Markdown, as elements --------------------------------------------------------------

  /** A link target the console will follow: absolute http(s) only, never javascript: or data:. */
  function safeUrl(raw) {
    try {
      const u = new URL(raw);
      return u.protocol === 'https:' || u.protocol === 'http:' ? u.href : null;
    } catch { return null; }
  }

  // Lines longer than this are shown as plain text: Markdown's cost must stay linear in what
  // a hostile model can write.
  const MAX_MARKDOWN_LINE = 5000;
  // Bold, italic and links, each with bounded parts (no pattern here can backtrack without end).
  const SPANS = /\*\*([^*]{1,500})\*\*|__([^_]{1,500})__|\*([^*\s][^*]{0,500})\*|_([^_\s][^_]{0,500})_|(!?)\[([^\][]{0,500})\]\(([^()\s]{0,2000})\)/g;

  /** Inline Markdown (code, bold, italic, links; images as text) as nodes. */
  function inline(text) {
    if (text.length > MAX_MARKDOWN_LINE) return [text];
    const out = [];
    // Code spans first, by a plain scan: a run of k backticks closes at the next run of k.
    let i = 0;
    while (i < text.length) {
      const open = text.indexOf('`', i);
      if (open < 0) { out.push(...spans(text.slice(i))); break; }
      let k = open;
      while (text[k] === '`') k++;
      const fence = text.slice(open, k);
      let close = text.indexOf(fence, k);
      while (close >= 0 && text[close + fence.length] === '`') {
        let j = close;
        while (text[j] === '`') j++;
        close = text.indexOf(fence, j);
      }
      if (close < 0) { out.push(...spans(text.slice(i, k))); i = k; continue; }
      out.push(...spans(text.slice(i, open)), h('code', { text: text.slice(k, close) }));
      i = close + fence.length;
    }
    return out;
  }

  function spans(text) {
    const out = [];
    let last = 0, m;
    const re = new RegExp(SPANS);
    while ((m = re.exec(text))) {
      if (m.index > last) out.push(text.slice(last, m.index));
      if (m[1] || m[2]) out.push(h('strong', {}, spans(m[1] || m[2])));
      else if (m[3] || m[4]) out.push(h('em', {}, spans(m[3] || m[4])));
      else if (m[5] === '!') out.push(`[image: ${m[6] || 'untitled'} — ${m[7]}]`);
      else {
        const url = safeUrl(m[7]);
        out.push(url ? h('a', { href: url, rel: 'noopener noreferrer nofollow', target: '_blank', title: url }, m[6] || url)
                     : `${m[6]} (${m[7]})`);
      }
      last = re.lastIndex;
    }
    if (last < text.length) out.push(text.slice(last));
    return out;
  }

  /** Block Markdown: fenced code, headings, lists, quotes, paragraphs. */
  function markdown(src, depth = 0) {
    const lines = String(src).replace(/\r\n?/g, '\n').split('\n');
    const blocks = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = /^\s*(```|~~~)/.exec(line);
      if (fence) {
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
        i++;
        blocks.push(h('pre', {}, h('code', { text: body.join('\n') })));
        continue;
      }
      const head = /^(#{1,6})\s+(.*)$/.exec(line);
      if (head) { blocks.push(h(`h${head[1].length}`, {}, inline(head[2]))); i++; continue; }
      if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) {
        const ordered = /^\s*\d/.test(line);
        const list = h(ordered ? 'ol' : 'ul');
        while (i < lines.length && /^\s*([-*+]|\d+[.)])\s+/.test(lines[i])) {
          list.append(h('li', {}, inline(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, ''))));
          i++;
        }
        blocks.push(list);
        continue;
      }
      if (/^\s*>/.test(line) && depth < 8) {
        const quote = [];
        while (i < lines.length && /^\s*>/.test(lines[i])) quote.push(lines[i++].replace(/^\s*>\s?/, ''));
        blocks.push(h('blockquote', {}, markdown(quote.join('\n'), depth + 1)));
        continue;
      }
      if (!line.trim()) { i++; continue; }
      const para = [];
      while (i < lines.length && lines[i].trim() && !/^(#{1,6}\s|\s*```|\s*~~~|\s*>|\s*([-*+]|\d+[.)])\s)/.test(lines[i])) {
        para.push(lines[i++]);
      }
      if (!para.length) para.push(lines[i++]);
      const p = h('p');
      para.forEach((l, n) => { if (n) p.append(h('br')); p.append(...inline(l).map(x => x instanceof Node ? x : document.createTextNode(x))); });
      blocks.push(p);
    }
    return blocks;
  }

  // ---- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function key() { return sessionStorage.getItem(KEY); }

  async function api(method, path, body, headers) {
    const init = { method, headers: { authorization: `Bearer ${key()}`, ...(headers || {}) }, cache: 'no-store' };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let r;
    try { r = await fetch(path, init); } catch (e) { throw new ApiError(0, `the gateway is unreachable (${e.message})`); }
    const text = await r.text();
    let v = null;
    try { v = text ? JSON.parse(text) : null; } catch { v = text; }
    if (!r.ok) {
      const msg = (v && v.error && v.error.message) || `HTTP ${r.status}`;
      if (r.status === 401) { signOut(`The gateway refused the key: ${msg}`); }
      throw new ApiError(r.status, msg);
    }
    return v;
  }

  function sendEvents(sid, events) {
    // An Idempotency-Key makes a retried click land once. (crypto.randomUUID exists only in
    // secure contexts; getRandomValues everywhere.)
    const id = [...crypto.getRandomValues(new Uint8Array(16))].map(b => b.toString(16).padStart(2, '0')).join('');
    return api('POST', `/v1/sessions/${encodeURIComponent(sid)}/events`, { events },
      { 'idempotency-key': `console-${id}` });
  }

  // ---- formatting ---------------------------------------------------------------------------

  function ago(iso) {
    if (!iso) return '—';
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
    return `${(s / 86400).toFixed(1)} d ago`;
  }
  function clockTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().slice(11, 23);
  }
  function modelOf(s) {
    const m = s && s.agent && s.agent.model;
    return (m && (m.id || m)) || '—';
  }
  function cost(c) { return c && c.amount !== undefined ? `$${(Number(c.amount) / 100).toFixed(2)}` : '—'; }
  function tokens(u) { return u ? `${u.input_tokens || 0} in / ${u.output_tokens || 0} out` : '—'; }
  function textOf(content) {
    return (content || []).map(b => (b.type === 'text' ? b.text : `[${b.type}]`)).join('\n');
  }
  function pretty(v) { try { return JSON.stringify(v, null, 2); } catch { return String(v); } }
  /** Text with every invisible or direction-changing character written out as `\u{…}`, so
   * what a person approves is exactly what they read. */
  function visible(text) {
    return text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, c => (c === '\n' || c === '\t' ? c : `\\u{${c.codePointAt(0).toString(16)}}`));
  }

  // ---- sign in ------------------------------------------------------------------------------

  function signOut(why) {
    sessionStorage.removeItem(KEY);
    stopTimeline();
    probe.view = 'login';
    renderLogin(why);
  }

  function renderLogin(why) {
    document.getElementById('signout').hidden = true;
    document.getElementById('crumb').textContent = '';
    document.getElementById('tenant').textContent = '';
    const input = h('input', { id: 'key', type: 'password', autocomplete: 'off', placeholder: 'herd_sk_…', required: true });
    const err = h('p', { class: 'error', id: 'login-error', text: why || '' });
    const form = h('form', {
      class: 'panel login', id: 'login',
      onsubmit: async (ev) => {
        ev.preventDefault();
        sessionStorage.setItem(KEY, input.value.trim());
        try {
          await api('GET', '/v1/sessions?limit=1');
          route();
        } catch (e) {
          if (e.status !== 401) err.textContent = e.message;
        }
      },
    },
    h('h2', { text: 'herd console' }),
    h('p', { class: 'muted', text: 'Paste an API key (herd keys create --tenant NAME). It stays in this tab and is sent only in the Authorization header.' }),
    input, h('button', { class: 'primary', type: 'submit', text: 'Open' }), err);
    show(form);
    input.focus();
  }

  // ---- the sessions list ---------------------------------------------------------------------

  const list = { cursors: [null], page: 0, search: '', status: '', timer: null };

  async function loadList() {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const cursor = list.cursors[list.page];
    if (cursor) q.set('page', cursor);
    if (list.search) q.set('search', list.search);
    if (list.status) q.append('statuses[]', list.status);
    return api('GET', `/v1/sessions?${q}`);
  }

  function sessionRow(s) {
    const open = () => { location.hash = `#/sessions/${s.id}`; };
    return h('tr', { class: 'row', data: { id: s.id }, onclick: open },
      h('td', { class: 'title' }, h('a', { href: `#/sessions/${s.id}` }, s.title || '(untitled)'), h('div', { class: 'sid', text: s.id })),
      h('td', {}, h('span', { class: `badge ${s.status}`, text: s.status })),
      h('td', { text: modelOf(s) }),
      h('td', { text: ago(s.created_at), title: s.created_at }),
      h('td', { text: ago(s.last_event_at || s.updated_at), title: s.last_event_at || '' }),
      h('td', { class: 'num', text: s.event_count ?? '—' }),
      h('td', { class: 'num', text: tokens(s.usage) }),
      h('td', { class: 'num', text: cost(s.usage && s.usage.list_cost) }));
  }

  async function renderList() {
    stopTimeline();
    probe.view = 'list';
    document.getElementById('crumb').textContent = 'sessions';
    const body = h('tbody', { id: 'sessions' });
    const info = h('span', { class: 'muted', id: 'list-info' });
    const prev = h('button', { id: 'prev', text: '← Newer', onclick: () => { list.page--; refresh(); } });
    const next = h('button', { id: 'next', text: 'Older →', onclick: () => { list.page++; refresh(); } });
    const err = h('p', { class: 'error', id: 'list-error' });
    let debounce;
    const search = h('input', {
      type: 'search', id: 'search', placeholder: 'Search titles and ids', value: list.search,
      oninput: () => { clearTimeout(debounce); debounce = setTimeout(() => { list.search = search.value.trim(); list.cursors = [null]; list.page = 0; refresh(); }, 250); },
    });
    search.value = list.search;
    const status = h('select', { id: 'status', onchange: () => { list.status = status.value; list.cursors = [null]; list.page = 0; refresh(); } },
      ['', 'running', 'idle', 'rescheduling', 'terminated'].map(v => h('option', { value: v, text: v || 'any status' })));
    status.value = list.status;
    show(h('div', { class: 'controls' }, search, status, info),
      h('table', {}, h('thead', {}, h('tr', {}, ['Session', 'Status', 'Model', 'Age', 'Last activity', 'Events', 'Tokens', 'Cost'].map(t => h('th', { text: t })))), body),
      h('div', { class: 'pager' }, prev, next), err);
    async function refresh() {
      try {
        const page = await loadList();
        if (probe.view !== 'list') return;
        list.cursors[list.page + 1] = page.next_page;
        body.replaceChildren(...page.data.map(sessionRow));
        if (!page.data.length) body.append(h('tr', {}, h('td', { colspan: 8, class: 'muted', text: 'No sessions here.' })));
        prev.disabled = list.page === 0;
        next.disabled = !page.next_page;
        info.textContent = `page ${list.page + 1} · ${page.data.length} shown · live`;
        err.textContent = '';
        probe.listed = page.data.map(s => s.id);
      } catch (e) {
        err.textContent = e.message;
      }
    }
    await refresh();
    // Statuses are live: the page is asked again every few seconds while it is shown.
    list.timer = setInterval(refresh, 3000);
  }

  // ---- a session's timeline -------------------------------------------------------------------

  let tl = null; // the open timeline's state

  function stopTimeline() {
    if (list.timer) { clearInterval(list.timer); list.timer = null; }
    if (tl) { tl.closed = true; if (tl.abort) tl.abort.abort(); tl = null; }
  }

  /** The event's raw JSON, written out only when opened (a replay of thousands stays cheap). */
  function rawLink(e) {
    const pre = h('pre', { class: 'raw-json' });
    const d = h('details', {
      class: 'raw',
      ontoggle: () => { if (d.open && !pre.textContent) pre.textContent = pretty(e); },
    }, h('summary', { text: 'raw JSON' }), pre);
    return d;
  }

  function clipped(text) {
    text = String(text ?? '');
    if (text.length <= TRUNCATE) return h('pre', { text });
    const pre = h('pre', { text: text.slice(0, TRUNCATE) });
    const more = h('button', { type: 'button', text: `show all ${text.length} characters`, onclick: () => { pre.textContent = text; more.remove(); } });
    return h('div', {}, pre, more);
  }

  function wholeOutput(sid, callId, ref) {
    const box = h('div', { class: 'whole-output-box' });
    const btn = h('button', {
      type: 'button', class: 'whole-output', text: `whole output (${ref.size} bytes, from the object store)`,
      onclick: async () => {
        btn.disabled = true;
        try {
          const r = await fetch(`/v1/sessions/${encodeURIComponent(sid)}/tool_outputs/${encodeURIComponent(callId)}`,
            { headers: { authorization: `Bearer ${key()}` }, cache: 'no-store' });
          const text = await r.text();
          if (!r.ok) throw new Error(text);
          box.replaceChildren(h('pre', { text }));
        } catch (e) { box.replaceChildren(h('p', { class: 'error', text: `could not fetch it: ${e.message}` })); }
      },
    });
    box.append(btn);
    return box;
  }

  /** What waits on the person: confirmations and custom tool answers, by the call's event id. */
  function askBox(sid, e) {
    const box = h('div', { class: 'ask', data: { ask: e.id } });
    if (e.type === 'agent.custom_tool_use') {
      const answer = h('textarea', { class: 'answer', placeholder: 'The tool\'s result' });
      const isError = h('input', { type: 'checkbox', class: 'is-error' });
      const send = h('button', {
        class: 'primary answer-send', type: 'button', text: 'Send result',
        onclick: async () => {
          send.disabled = true;
          try {
            await sendEvents(sid, [{ type: 'user.custom_tool_result', custom_tool_use_id: e.id, content: [{ type: 'text', text: answer.value }], is_error: isError.checked }]);
          } catch (err) { send.disabled = false; box.append(h('p', { class: 'error', text: err.message })); }
        },
      });
      box.append(h('b', { text: `The client answers ${e.name}:` }), answer,
        h('div', { class: 'actions' }, send, h('label', {}, isError, ' is an error')));
      return box;
    }
    const deny = h('input', { type: 'text', class: 'deny-message', placeholder: 'Why (sent to the model when denied)' });
    const decide = (result) => async (ev) => {
      for (const b of box.querySelectorAll('button')) b.disabled = true;
      const c = { type: 'user.tool_confirmation', tool_use_id: e.id, result };
      if (result === 'deny' && deny.value.trim()) c.deny_message = deny.value.trim();
      try { await sendEvents(sid, [c]); } catch (err) {
        for (const b of box.querySelectorAll('button')) b.disabled = false;
        box.append(h('p', { class: 'error', text: err.message }));
      }
    };
    box.append(h('b', { text: `Waiting for you: run ${e.mcp_server_name ? `${e.mcp_server_name}/` : ''}${e.name} with exactly this input?` }),
      h('pre', { class: 'approve-input', text: visible(pretty(e.input)) }),
      h('div', { class: 'note', text: `${pretty(e.input).length} characters; invisible characters are shown as \\u{…}` }),
      h('div', { class: 'actions' },
        h('button', { class: 'primary allow', type: 'button', text: 'Allow', onclick: decide('allow') }),
        h('button', { class: 'danger deny', type: 'button', text: 'Deny', onclick: decide('deny') }), deny));
    return box;
  }

  function settle(callId) {
    if (!tl) return;
    const box = tl.list.querySelector(`[data-ask="${CSS.escape(callId)}"]`);
    if (box) box.replaceWith(h('p', { class: 'note', text: 'answered' }));
  }

  /** What an event changes in the timeline's state (calls, answers, spans, usage, status):
   * run for every event, whether or not its card is drawn. */
  function track(e) {
    switch (e.type) {
      case 'agent.tool_use': case 'agent.mcp_tool_use': case 'agent.custom_tool_use':
        tl.calls.set(e.id, { name: e.name, at: e.processed_at });
        break;
      case 'agent.tool_result': case 'agent.mcp_tool_result': {
        const call = tl.calls.get(e.tool_use_id);
        tl.answered.add(e.tool_use_id); settle(e.tool_use_id);
        tl.spans.push({ label: `tool ${call ? call.name : e.tool_use_id}${e.is_error ? ' (error)' : ''}`, start: call && call.at, end: e.processed_at, tool: true, error: e.is_error });
        break;
      }
      case 'user.custom_tool_result': tl.answered.add(e.custom_tool_use_id); settle(e.custom_tool_use_id); break;
      case 'user.tool_confirmation': tl.answered.add(e.tool_use_id); settle(e.tool_use_id); break;
      case 'session.usage': tl.usage = e; break;
      case 'span.model_request_start': tl.requests.set(e.id, e); break;
      case 'span.model_request_end': {
        const start = tl.requests.get(e.model_request_start_id);
        tl.spans.push({ label: `model${start && start.model ? ` ${start.model}` : ''}`, start: start && start.processed_at, end: e.processed_at, error: e.is_error });
        break;
      }
      case 'session.status_idle': case 'session.status_running': case 'session.status_rescheduled': case 'session.status_terminated':
        tl.status = e.type.replace('session.status_', '');
        break;
      default:
    }
  }

  /** One event as a card: its sequence, time, kind, a body by type, and its raw JSON. */
  function card(sid, e) {
    let cls = 'ev', kind = e.type, body = [];
    const calls = tl.calls;
    switch (e.type) {
      case 'user.message': cls += ' user'; kind = 'user'; body = markdown(textOf(e.content)); break;
      case 'system.message': cls += ' user'; kind = 'system'; body = markdown(textOf(e.content)); break;
      case 'agent.message': cls += ' agent'; kind = 'agent'; body = markdown(textOf(e.content)); break;
      case 'agent.thinking':
        cls += ' agent'; kind = 'thinking';
        body = [h('details', {}, h('summary', { text: 'thinking' }), h('pre', { text: textOf(e.content) || '(redacted)' }))];
        break;
      case 'agent.tool_use': case 'agent.mcp_tool_use': case 'agent.custom_tool_use': {
        cls += ' tool';
        const where = e.type === 'agent.custom_tool_use' ? 'custom tool, answered by the client'
          : e.type === 'agent.mcp_tool_use' ? `MCP server ${e.mcp_server_name}` : 'tool';
        kind = `${e.name} — ${where}${e.evaluation ? ` (${e.evaluation.type})` : ''}`;
        body = [h('details', { open: true }, h('summary', { text: 'input' }), h('pre', { class: 'tool-input', text: pretty(e.input) }))];
        const asks = e.type === 'agent.custom_tool_use' || (e.evaluation && e.evaluation.type === 'always_ask');
        if (asks && !tl.answered.has(e.id)) body.push(askBox(sid, e));
        break;
      }
      case 'agent.tool_result': case 'agent.mcp_tool_result': {
        const call = calls.get(e.tool_use_id);
        cls += e.is_error ? ' bad' : ' tool';
        kind = `result of ${call ? call.name : e.tool_use_id}${e.is_error ? ' (error)' : ''}`;
        body = [h('details', { open: true }, h('summary', { text: 'output' }), clipped(textOf(e.content)))];
        if (e.output_ref) body.push(wholeOutput(sid, e.tool_use_id, e.output_ref));
        break;
      }
      case 'user.custom_tool_result':
        cls += ' user'; kind = `client answered ${e.custom_tool_use_id}${e.is_error ? ' (error)' : ''}`;
        body = [clipped(textOf(e.content))];
        break;
      case 'user.tool_confirmation':
        cls += ' user'; kind = `${e.result === 'allow' ? 'allowed' : 'denied'} ${e.tool_use_id}`;
        if (e.deny_message) body = [e.deny_message];
        break;
      case 'user.interrupt': cls += ' user'; kind = 'interrupted by the user'; break;
      case 'agent.thread_context_compacted':
        cls += ' marker'; kind = `context compacted: events up to ${e.compacted_up_to} summarised (still in the log)`;
        body = [h('details', {}, h('summary', { text: 'summary' }), h('pre', { text: e.summary }))];
        break;
      case 'session.error': {
        cls += ' bad';
        const r = e.error && e.error.retry_status;
        const retry = r ? (r.type === 'retrying' ? `retrying (attempt ${r.attempt ?? '?'}${r.delay_ms !== undefined ? `, next in ${r.delay_ms} ms` : ''})` : r.type) : '';
        kind = `error: ${e.error ? e.error.type : ''} ${retry}`;
        body = [e.error ? e.error.message : ''];
        break;
      }
      case 'session.status_running': cls += ' small'; kind = 'running'; break;
      case 'session.status_idle':
        cls += ' small'; kind = `idle: ${e.stop_reason ? e.stop_reason.type : ''}`;
        break;
      case 'session.status_rescheduled': cls += ' small'; kind = `rescheduled${e.reason ? `: ${e.reason}` : ''}`; break;
      case 'session.status_terminated': cls += ' marker'; kind = `terminated: ${e.reason}`; break;
      case 'session.deleted': cls += ' marker'; kind = 'deleted'; break;
      case 'session.usage':
        cls += ' small'; kind = `usage: ${tokens(e.usage)}${e.usage && e.usage.cache_read_input_tokens ? `, ${e.usage.cache_read_input_tokens} cached` : ''}${e.list_cost ? `, ${cost(e.list_cost)}` : ''}`;
        break;
      case 'span.model_request_start':
        cls += ' small'; kind = `model request${e.model ? ` to ${e.model}` : ''}`;
        break;
      case 'span.model_request_end': {
        const start = tl.requests.get(e.model_request_start_id);
        const ms = start ? Date.parse(e.processed_at) - Date.parse(start.processed_at) : null;
        cls += e.is_error ? ' bad' : ' small';
        kind = `model request ${e.is_error ? 'failed' : 'done'}${ms !== null ? ` in ${ms} ms` : ''}: ${tokens(e.model_usage)}`;
        break;
      }
      case 'sandbox.provisioned': cls += ' small'; kind = `sandbox ${e.container ? e.container.slice(0, 12) : ''} on ${e.host} (${e.image})`; break;
      case 'sandbox.lost': cls += ' bad'; kind = `sandbox lost on ${e.host}`; body = [e.reason]; break;
      case 'session.limit_reached': cls += ' bad'; kind = `limit reached: ${e.limit} (${e.used} of ${e.max})`; break;
      case 'session.updated': cls += ' small'; kind = `updated${e.title ? `: title "${e.title}"` : ''}`; break;
      case 'session.created': cls += ' marker'; kind = `created: ${e.agent && e.agent.model}`; break;
      case 'session.mcp_tools_listed':
        cls += e.error ? ' bad' : ' small';
        kind = `MCP ${e.mcp_server_name}: ${e.error ? `listing failed: ${e.error}` : `${(e.tools || []).length} tools listed`}`;
        break;
      case 'sandbox.workspace_saved':
        cls += e.error ? ' bad' : ' small';
        kind = e.error ? `workspace not saved: ${e.error}` : `workspace saved${e.unchanged ? ' (unchanged)' : ''}: ${e.bytes} bytes, ${e.new_chunks} of ${e.chunks} chunks new, ${e.duration_ms} ms`;
        break;
      case 'sandbox.workspace_restored':
        cls += e.error ? ' bad' : ' small';
        kind = e.error ? `workspace restore failed on ${e.host}: ${e.error}` : `workspace restored on ${e.host}: ${e.bytes} bytes from event #${e.saved_seq}`;
        break;
      case 'session.forked': cls += ' marker'; kind = `forked from ${e.parent} at #${e.at} (${e.copied} events)`; break;
      case 'session.schedule_set': cls += ' small'; kind = `schedule "${e.name}" set: ${e.spec}`; body = [e.prompt]; break;
      case 'session.schedule_cancelled': cls += ' small'; kind = `schedule "${e.name}" cancelled`; break;
      case 'session.schedule_fired': cls += ' marker'; kind = `schedule "${e.name}" fired at ${e.fired_at}${e.next ? `, next ${e.next}` : ''}`; break;
      default: kind = e.type;
    }
    return h('article', { class: cls, id: `seq-${e.sequence}`, data: { seq: String(e.sequence), type: e.type } },
      h('div', { class: 'ev-meta' },
        h('span', { class: 'seq', text: `#${e.sequence}` }),
        h('span', { class: 'time', text: clockTime(e.processed_at), title: e.processed_at }),
        h('span', { class: 'kind', text: kind }),
        rawLink(e)),
      body.length ? h('div', { class: 'ev-body' }, body) : null);
  }

  function updateFacts() {
    if (!tl || !tl.facts) return;
    const s = tl.session;
    const u = tl.usage;
    tl.facts.replaceChildren(
      h('span', {}, 'status ', h('b', { id: 'session-status', text: tl.status || s.status })),
      h('span', {}, 'model ', h('b', { text: modelOf(s) })),
      h('span', {}, 'created ', h('b', { text: ago(s.created_at), title: s.created_at })),
      h('span', {}, 'tokens ', h('b', { text: tokens(u ? u.usage : s.usage) })),
      h('span', {}, 'cost ', h('b', { text: cost(u ? u.list_cost : s.usage && s.usage.list_cost) })),
      h('span', {}, 'events ', h('b', { id: 'event-count', text: String(probe.rendered) })));
  }

  function drawWaterfall() {
    if (!tl) return;
    const spans = tl.spans.filter(s => s.start && s.end);
    if (!spans.length) { tl.waterfall.replaceChildren(h('p', { class: 'muted', text: 'No model requests or tool calls yet.' })); return; }
    let t0 = Infinity, t1 = -Infinity;
    for (const s of spans) { t0 = Math.min(t0, Date.parse(s.start)); t1 = Math.max(t1, Date.parse(s.end)); }
    const width = Math.max(1, t1 - t0);
    const rows = spans.slice(-40).map(s => {
      const a = Date.parse(s.start), b = Date.parse(s.end);
      const bar = h('div', { class: `wf-bar${s.tool ? ' tool' : ''}${s.error ? ' error' : ''}` });
      // CSSOM, not a style attribute: the policy allows the page's own script to place bars.
      bar.style.left = `${((a - t0) / width) * 100}%`;
      bar.style.width = `${Math.max(0.3, ((b - a) / width) * 100)}%`;
      return h('div', { class: 'wf-row' }, h('span', { class: 'wf-label', text: s.label }), h('div', { class: 'wf-track' }, bar), h('span', { class: 'wf-ms', text: `${b - a} ms` }));
    });
    tl.waterfall.replaceChildren(h('div', { class: 'note', text: `spans: ${spans.length}${spans.length > 40 ? ' (the last 40 drawn)' : ''} over ${width} ms` }), ...rows);
  }

  /** The cards of `events` (in order) in a fragment. */
  function cards(events) {
    const frag = document.createDocumentFragment();
    for (const e of events) {
      try { frag.append(card(tl.sid, e)); } catch (err) {
        probe.errors.push(String(err));
        frag.append(h('article', { class: 'ev bad', data: { seq: String(e.sequence), type: e.type } }, `#${e.sequence} could not be shown: ${err}`));
      }
    }
    return frag;
  }

  /** Takes what arrived in one go: every event updates the state; only the newest WINDOW of a
   * batch get cards (a replay of thousands paints about as fast as one of hundreds), earlier
   * ones on demand with the button above the timeline. */
  function flush() {
    if (!tl) return;
    const batch = tl.queue.splice(0);
    if (!batch.length) return;
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    for (const e of batch) {
      try { track(e); } catch (err) { probe.errors.push(String(err)); }
      tl.all.push(e);
    }
    const end = tl.all.length;
    const from = Math.max(tl.lastShown, end - WINDOW);
    if (from > tl.lastShown) { tl.list.replaceChildren(); tl.firstShown = from; }
    const shown = tl.all.slice(from, end);
    tl.list.append(cards(shown));
    tl.lastShown = end;
    // A long live session (or a replay that came in several chunks) keeps at most twice the
    // window in the DOM: past it, the oldest cards go (the button draws them again).
    if (tl.lastShown - tl.firstShown > 2 * WINDOW) {
      const drop = tl.lastShown - tl.firstShown - WINDOW;
      for (let i = 0; i < drop && tl.list.firstChild; i++) tl.list.firstChild.remove();
      tl.firstShown += drop;
    }
    showEarlier();
    const t = clock();
    for (const e of shown) probe.renderedAt[e.sequence] = t;
    probe.rendered = end;
    probe.cards = tl.lastShown - tl.firstShown;
    probe.flushes.push({ t, n: batch.length, lastSeq: probe.lastSeq });
    updateFacts();
    drawWaterfall();
    if (nearBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  /** The button that draws the cards before the first one shown. */
  function showEarlier() {
    const n = tl.firstShown;
    tl.earlier.hidden = n === 0;
    tl.earlier.textContent = `show ${Math.min(n, WINDOW)} earlier events (${n} not drawn)`;
  }

  function drawEarlier() {
    if (!tl || !tl.firstShown) return;
    const from = Math.max(0, tl.firstShown - WINDOW);
    tl.list.prepend(cards(tl.all.slice(from, tl.firstShown)));
    tl.firstShown = from;
    probe.cards = tl.lastShown - tl.firstShown;
    showEarlier();
  }

  function receive(e) {
    tl.queue.push(e);
  }

  /** Reads the session's SSE stream: frames `id:`/`event:`/`data:`, resumed by `Last-Event-ID`. */
  async function follow(state) {
    let delay = 250;
    while (!state.closed) {
      state.abort = new AbortController();
      let ended = false;
      try {
        const q = TYPES.map(t => `types[]=${encodeURIComponent(t)}`).join('&');
        const r = await fetch(`/v1/sessions/${encodeURIComponent(state.sid)}/events/stream?${q}`, {
          headers: { authorization: `Bearer ${key()}`, accept: 'text/event-stream', 'last-event-id': String(probe.lastSeq) },
          signal: state.abort.signal, cache: 'no-store',
        });
        if (r.status === 401) { signOut('The key was refused.'); return; }
        if (r.status === 404) { setConn('ended', 'this session is not found'); return; }
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        probe.connections++;
        probe.streamOpened = probe.streamOpened || clock();
        setConn('live');
        const reader = r.body.getReader();
        state.reader = reader;
        const dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          probe.firstChunk = probe.firstChunk || clock();
          buf += dec.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            const raw = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            const f = { id: null, event: 'message', data: [] };
            for (const line of raw.split('\n')) {
              if (!line || line.startsWith(':')) continue;
              const i = line.indexOf(':');
              const k = i < 0 ? line : line.slice(0, i);
              const v = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
              if (k === 'id') f.id = v; else if (k === 'event') f.event = v; else if (k === 'data') f.data.push(v);
            }
            if (!f.data.length) continue;
            if (f.event === 'error') { setConn('reconnecting', f.data.join('\n')); continue; }
            const seq = Number(f.id);
            // Exactly once: a frame at or below the last sequence seen was shown already
            // (the deletion frame shares its termination's sequence, so it goes by type).
            const dup = `${seq}:${f.event}`;
            if (!Number.isFinite(seq) || tl.seen.has(dup) || (seq <= probe.lastSeq && f.event !== 'session.deleted')) continue;
            // Parsed before it counts as seen: a frame that does not parse is asked for again.
            const e = JSON.parse(f.data.join('\n'));
            tl.seen.add(dup);
            probe.lastSeq = Math.max(probe.lastSeq, seq);
            if (e.sequence === undefined) e.sequence = seq;
            receive(e);
            delay = 250;
            if (f.event === 'session.status_terminated' || f.event === 'session.deleted') ended = true;
          }
          // One render per chunk read: a replay arrives in a few large chunks, a live
          // event alone in its own.
          flush();
        }
      } catch (err) {
        if (state.closed) return;
        probe.errors.push(String(err));
      } finally {
        if (state.reader) { state.reader.cancel().catch(() => {}); state.reader = null; }
      }
      if (state.closed) return;
      if (ended) { setConn('ended', 'the session has ended'); return; }
      setConn('reconnecting');
      await new Promise(res => setTimeout(res, delay));
      delay = Math.min(delay * 2, 4000);
    }
  }

  function setConn(s, why) {
    probe.state = s;
    if (!tl || !tl.conn) return;
    tl.conn.className = `badge ${s}`;
    tl.conn.textContent = why ? `${s}: ${why}` : s;
  }

  async function renderTimeline(sid) {
    stopTimeline();
    probe.view = 'timeline';
    probe.lastSeq = 0; probe.rendered = 0; probe.renderedAt = {}; probe.flushes = []; probe.connections = 0;
    probe.streamOpened = 0; probe.firstChunk = 0;
    probe.opened = clock();
    document.getElementById('crumb').textContent = `sessions / ${sid}`;
    const state = tl = {
      sid, queue: [], seen: new Set(), calls: new Map(), requests: new Map(), spans: [],
      answered: new Set(), status: null, closed: false,
      all: [], firstShown: 0, lastShown: 0,
    };
    // The stream opens at once, beside the session's own read: the replay need not wait.
    const session = api('GET', `/v1/sessions/${encodeURIComponent(sid)}`);
    session.catch(() => {});
    state.session = { id: sid, status: '…' };
    state.conn = h('span', { class: 'badge', id: 'conn', text: 'connecting' });
    state.facts = h('div', { class: 'facts' });
    state.list = h('div', { id: 'timeline' });
    state.earlier = h('button', { id: 'earlier', type: 'button', hidden: true, onclick: drawEarlier });
    state.waterfall = h('div', { class: 'waterfall', id: 'waterfall' });
    const text = h('textarea', { id: 'message', placeholder: 'Send a message to the agent (Markdown)…' });
    const send = h('button', {
      class: 'primary', id: 'send', type: 'button', text: 'Send',
      onclick: async () => {
        const t = text.value;
        if (!t.trim()) return;
        send.disabled = true;
        try { await sendEvents(sid, [{ type: 'user.message', content: [{ type: 'text', text: t }] }]); text.value = ''; }
        catch (e) { alertLine(e.message); }
        finally { send.disabled = false; }
      },
    });
    const interrupt = h('button', {
      class: 'danger', id: 'interrupt', type: 'button', text: 'Interrupt',
      onclick: async () => { try { await sendEvents(sid, [{ type: 'user.interrupt' }]); } catch (e) { alertLine(e.message); } },
    });
    const problems = h('p', { class: 'error', id: 'action-error' });
    function alertLine(m) { problems.textContent = m; }
    show(
      h('div', { class: 'panel' },
        h('div', { class: 'head' }, state.title = h('h1', { id: 'session-title', text: '…' }), h('span', { class: 'sid', text: sid }), state.conn),
        state.facts),
      h('details', { class: 'panel', open: true }, h('summary', { text: 'Waterfall: model requests and tool calls' }), state.waterfall),
      state.earlier,
      state.list,
      problems,
      h('div', { class: 'composer' }, text, send, interrupt));
    updateFacts();
    drawWaterfall();
    follow(state);
    try {
      state.session = await session;
      if (tl !== state) return;
      state.title.textContent = state.session.title || '(untitled)';
      updateFacts();
    } catch (e) {
      if (tl !== state) return;
      stopTimeline();
      probe.view = 'missing';
      show(h('div', { class: 'panel' }, h('p', { class: 'error', id: 'timeline-error', text: e.message }), h('a', { href: '#/', text: '← all sessions' })));
    }
  }

  // ---- routing --------------------------------------------------------------------------------

  function route() {
    if (!key()) { probe.view = 'login'; renderLogin(); return; }
    document.getElementById('signout').hidden = false;
    const m = /^#\/sessions\/([A-Za-z0-9_-]+)$/.exec(location.hash);
    if (m) renderTimeline(m[1]); else renderList();
  }

  window.addEventListener('hashchange', route);
  // A page left (or kept in the back/forward cache) gives its stream back: a browser holds
  // six connections per host, and a stream is one of them for as long as it is open.
  window.addEventListener('pagehide', stopTimeline);
  window.addEventListener('pageshow', (e) => { if (e.persisted) route(); });
  document.getElementById('signout').addEventListener('click', () => signOut());
  document.getElementById('home').addEventListener('click', () => { list.page = 0; list.cursors = [null]; });
  route();
})();

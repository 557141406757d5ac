/* ember web UI: a small hash-routed single-page app over the driver's REST API.
 * Each page is an async function that fetches JSON and returns an HTML string;
 * it replaces #content (only when changed) once a second. No framework. */
'use strict';
(() => {
  // ---- configuration and state ----
  const REFRESH_MS = 1000;         // live refresh period
  const FETCH_TIMEOUT_MS = 10000;  // a hung request must not stop the refresh loop
  const TOKEN = new URLSearchParams(location.search).get('token');
  const $ = (id) => document.getElementById(id);
  const content = $('content'), errorBox = $('error'), appBox = $('app');
  let seq = 0;           // bumped by every refresh; older responses are dropped
  let timer = null;      // the pending refresh
  let lastHtml = null;   // what #content shows now (identical renders are skipped)
  let appState = 0;      // header app info: 0 not loaded, 1 loading, 2 loaded
  const openDetails = new Set(); // <details> keys the user opened, kept across renders

  // ---- escaping and formatting ----
  const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  /** Escape any value for HTML text or a quoted attribute. */
  const esc = (v) => (v == null ? '' : String(v).replace(/[&<>"']/g, (c) => ESC[c]));
  /** A value as a URL path segment (escaped for an attribute). */
  const seg = (v) => esc(encodeURIComponent(String(v)));
  const DASH = '–';
  const isNum = (v) => typeof v === 'number' && isFinite(v);
  const num = (v) => (isNum(v) ? v : 0);
  const arr = (v) => (Array.isArray(v) ? v : []);
  const trunc = (s, n) => { s = s == null ? '' : String(s); return s.length > n ? s.slice(0, n - 1) + '…' : s; };
  const iso = (ms) => (isNum(ms) ? new Date(ms).toISOString() : '');

  /** 1536 -> "1.50 KB". */
  function fmtBytes(b) {
    if (!isNum(b)) return DASH;
    const u = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
    let v = b, i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(Math.abs(v) < 10 ? 2 : 1) : Math.round(v)) + ' ' + u[i];
  }
  /** Milliseconds as "12 ms", "3.40 s", "2.5 min", "1.2 h". */
  function fmtDur(ms) {
    if (!isNum(ms)) return DASH;
    if (ms < 1000) return Math.round(ms) + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
    if (ms < 3600000) return (ms / 60000).toFixed(1) + ' min';
    return (ms / 3600000).toFixed(1) + ' h';
  }
  /** Epoch ms as "5s ago", "3 min ago", ... */
  function fmtAgo(ms) {
    if (!isNum(ms)) return DASH;
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 120) return s + 's ago';
    if (s < 7200) return Math.round(s / 60) + ' min ago';
    if (s < 172800) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }
  /** Epoch ms as local time (date only when not today), full timestamp on hover. */
  function timeHtml(ms) {
    if (!isNum(ms)) return DASH;
    const d = new Date(ms), t = d.toLocaleTimeString([], { hour12: false });
    const s = d.toDateString() === new Date().toDateString() ? t : d.toLocaleDateString() + ' ' + t;
    return `<span title="${iso(ms)}">${esc(s)}</span>`;
  }
  /** Number with thousands separators. */
  const fmtNum = (v) => (isNum(v) ? v.toLocaleString('en-US', { maximumFractionDigits: 1 }) : DASH);
  /** Short number for chart labels: 12345 -> "12.3k". */
  function fmtShort(v) {
    if (!isNum(v)) return DASH;
    const a = Math.abs(v), t = (x, d) => String(parseFloat(x.toFixed(d)));
    if (a >= 1e9) return t(v / 1e9, 1) + 'G';
    if (a >= 1e6) return t(v / 1e6, 1) + 'M';
    if (a >= 1e4) return t(v / 1e3, 1) + 'k';
    return a >= 100 ? String(Math.round(v)) : t(v, a >= 10 ? 1 : 2);
  }
  /** Duration of a job/stage/query/task, growing live while it runs. */
  function liveDur(o, start) {
    if (isNum(o.duration_ms)) return o.duration_ms;
    const t = o[start || 'submitted_ms'];
    return o.status === 'running' && isNum(t) ? Math.max(0, Date.now() - t) : null;
  }

  // ---- small HTML building blocks ----
  /** Colored status badge; the CSS class comes from the sanitized status. */
  function badge(status) {
    const s = status == null ? 'unknown' : String(status);
    return `<span class="badge st-${s.replace(/[^a-z0-9_-]/gi, '')}">${esc(s)}</span>`;
  }
  /** Task progress bar: done (green) then running (blue) of total; failures beside it. */
  function bar(done, running, failed, total) {
    done = num(done); running = num(running); failed = num(failed); total = Math.max(0, num(total));
    const pct = (v) => (total ? Math.min(100, (v * 100) / total) : 0);
    const dp = pct(done), rp = Math.min(pct(running), 100 - dp);
    return `<div class="prog"><div class="bar" title="${done} done, ${running} running, ${failed} failed, ${total} total">` +
      `<span class="b-done" style="width:${dp.toFixed(1)}%"></span>` +
      `<span class="b-run" style="left:${dp.toFixed(1)}%;width:${rp.toFixed(1)}%"></span>` +
      `<span class="b-lbl">${done}/${total}${running ? ` (${running} running)` : ''}</span></div>` +
      (failed ? `<span class="fail-n">${failed} failed</span>` : '') + '</div>';
  }
  /** Header cells from labels; a label ending in '#' is a right-aligned numeric column. */
  const heads = (labels) => labels.map((l) => (l.endsWith('#') ? `<th class="n">${esc(l.slice(0, -1))}</th>` : `<th>${esc(l)}</th>`)).join('');
  /** A table, or a message when there are no rows. */
  const table = (labels, rows, empty) => (rows.length
    ? `<table><thead><tr>${heads(labels)}</tr></thead><tbody>${rows.join('')}</tbody></table>`
    : `<p class="empty">${esc(empty)}</p>`);
  /** Key/value summary; values are HTML the caller escaped; falsy pairs are skipped. */
  const kv = (pairs) => '<dl class="kv">' + pairs.filter(Boolean).map(([k, v]) => `<div><dt>${esc(k)}</dt><dd>${v}</dd></div>`).join('') + '</dl>';
  /** Page heading with a muted note. */
  const title = (html, note) => `<h1>${html}${note ? ` <small>${note}</small>` : ''}</h1>`;
  /** "3 running · 10 succeeded" for a list of objects with a status. */
  function statusCounts(list) {
    const c = {};
    list.forEach((o) => { c[o.status] = (c[o.status] || 0) + 1; });
    return Object.keys(c).map((k) => c[k] + ' ' + esc(k)).join(' · ');
  }
  /** A <details> whose open state survives re-renders (key unique on the page). */
  const details = (key, summary, body) =>
    `<details data-key="${esc(key)}"${openDetails.has(key) ? ' open' : ''}><summary>${summary}</summary>${body}</details>`;
  const pre = (text) => `<pre>${esc(text || '(none)')}</pre>`;
  const link = (href, text) => `<a href="#/${href}">${esc(text)}</a>`;
  const td = (html, cls) => `<td${cls ? ` class="${cls}"` : ''}>${html}</td>`;
  const tdn = (html) => td(html, 'n');

  // ---- REST access ----
  /** Where this application's API is: the root, or under /history/<app> in `ember history`. */
  const BASE = (location.pathname.match(/^\/history\/[^/]+/) || [''])[0];
  /** API path plus ?token=... when the page was opened with one. */
  const apiUrl = (path) => (TOKEN ? BASE + path + '?token=' + encodeURIComponent(TOKEN) : BASE + path);
  /** GET JSON; throws an Error with a readable message on any failure. */
  async function api(path) {
    const ctl = new AbortController();
    const kill = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    let res;
    try {
      res = await fetch(apiUrl(path), { cache: 'no-store', headers: { Accept: 'application/json' }, signal: ctl.signal });
    } catch (e) {
      throw new Error('cannot reach the driver: ' + ((e && e.message) || e));
    } finally {
      clearTimeout(kill);
    }
    if (!res.ok) {
      const body = await res.text().then((t) => t.trim().slice(0, 200), () => '');
      throw new Error(`the driver answered HTTP ${res.status} for ${path}${body ? ': ' + body : ''}`);
    }
    try { return await res.json(); } catch (e) { throw new Error(`bad JSON from ${path}: ${e.message}`); }
  }

  // ---- page: jobs list ----
  async function jobsPage() {
    const jobs = arr(await api('/api/v1/jobs'));
    const rows = jobs.map((j) => '<tr>' + td(link('jobs/' + seg(j.id), j.id)) +
      `<td class="desc" title="${esc(j.description)}">${esc(trunc(j.description, 100))}` +
      (j.error ? `<div class="err">${esc(trunc(j.error, 200))}</div>` : '') + '</td>' +
      td(badge(j.status)) + td(timeHtml(j.submitted_ms)) + tdn(fmtDur(liveDur(j))) +
      tdn(arr(j.stages).length) + td(bar(j.completed_tasks, 0, j.failed_tasks, j.num_tasks)) +
      tdn(fmtBytes(j.shuffle_bytes)) + '</tr>');
    return title('Jobs', statusCounts(jobs)) + table(
      ['Job', 'Description', 'Status', 'Submitted', 'Duration#', 'Stages#', 'Tasks', 'Shuffle#'], rows, 'No jobs yet.');
  }

  // ---- page: one job with its stage DAG ----
  async function jobPage(id) {
    const j = await api('/api/v1/jobs/' + encodeURIComponent(id));
    const dag = arr(j.dag);
    const rows = dag.map((s) => '<tr>' + td(link(`stages/${seg(j.id)}/${seg(s.id)}`, s.id)) + td(esc(s.name)) +
      td(badge(s.status)) + tdn(fmtNum(s.partitions)) + td(esc(s.exchange || DASH)) +
      td(esc(arr(s.parents).join(', ') || DASH)) + td(bar(s.tasks_done, s.tasks_running, s.tasks_failed, s.tasks_total)) + '</tr>');
    return title(`${link('jobs', 'Jobs')} › Job ${esc(j.id)} ${badge(j.status)}`) +
      kv([
        ['Description', `<div class="wrap clip">${esc(j.description)}</div>`],
        ['Submitted', timeHtml(j.submitted_ms)],
        ['Completed', timeHtml(j.completed_ms)],
        ['Duration', fmtDur(liveDur(j))],
        ['Tasks', bar(j.completed_tasks, 0, j.failed_tasks, j.num_tasks)],
        ['Shuffle', fmtBytes(j.shuffle_bytes)],
      ]) +
      (j.error ? `<pre class="err">${esc(j.error)}</pre>` : '') +
      `<h2>Stage DAG</h2><div class="dagwrap">${dagSvg(j.id, dag)}</div>` +
      '<h2>Stages</h2>' + table(['Stage', 'Name', 'Status', 'Partitions#', 'Exchange', 'Parents', 'Tasks'], rows, 'No stages.');
  }

  // Stage box geometry for the DAG (pixels).
  const NW = 200, NH = 94, GX = 64, GY = 22, PAD = 14;

  /** Stage DAG as inline SVG: columns by depth (longest path from a root), edges parent -> child. */
  function dagSvg(jobId, stages) {
    if (!stages.length) return '<p class="empty">No stages yet.</p>';
    const byId = new Map(stages.map((s) => [String(s.id), s]));
    const parentsOf = (s) => arr(s.parents).map(String).filter((p) => p !== String(s.id) && byId.has(p));

    // depth = longest path from a stage without parents (cycle-safe)
    const depth = new Map(), visiting = new Set();
    const depthOf = (k) => {
      if (depth.has(k)) return depth.get(k);
      if (visiting.has(k)) return 0;
      visiting.add(k);
      const ps = parentsOf(byId.get(k));
      const d = ps.length ? 1 + Math.max(...ps.map(depthOf)) : 0;
      visiting.delete(k);
      depth.set(k, d);
      return d;
    };
    const cols = [];
    byId.forEach((s, k) => { const d = depthOf(k); (cols[d] = cols[d] || []).push(s); });

    // rows in a column ordered by the mean row of their parents (fewer crossings), then id
    const row = new Map();
    const cmpId = (a, b) => (isNum(+a.id) && isNum(+b.id) ? a.id - b.id : String(a.id).localeCompare(String(b.id)));
    for (let c = 0; c < cols.length; c++) {
      const col = cols[c] || (cols[c] = []), key = new Map();
      col.forEach((s) => {
        const rs = parentsOf(s).map((p) => row.get(p)).filter(isNum);
        key.set(s, rs.length ? rs.reduce((a, b) => a + b, 0) / rs.length : 0);
      });
      col.sort((a, b) => key.get(a) - key.get(b) || cmpId(a, b));
      col.forEach((s, i) => row.set(String(s.id), i));
    }

    // positions: columns left to right, each column centered vertically
    const maxRows = Math.max(...cols.map((c) => c.length));
    const W = PAD * 2 + cols.length * NW + (cols.length - 1) * GX, H = PAD * 2 + maxRows * (NH + GY) - GY;
    const pos = new Map();
    cols.forEach((col, c) => {
      const off = ((maxRows - col.length) * (NH + GY)) / 2;
      col.forEach((s, i) => pos.set(String(s.id), { x: PAD + c * (NW + GX), y: PAD + off + i * (NH + GY) }));
    });

    // edges (bezier curves with arrowheads) first, so the boxes are drawn over them
    let edges = '', nodes = '';
    byId.forEach((s, k) => {
      const to = pos.get(k);
      parentsOf(s).forEach((p) => {
        const from = pos.get(p);
        const x1 = from.x + NW, y1 = from.y + NH / 2, x2 = to.x - 2, y2 = to.y + NH / 2, dx = Math.max(20, (x2 - x1) / 2);
        edges += `<path class="edge" data-from="${esc(p)}" data-to="${esc(k)}" d="M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}" marker-end="url(#arrow)"/>`;
      });
      nodes += stageNode(jobId, s, pos.get(k));
    });
    return `<svg id="dag" xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">` +
      '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">' +
      '<path d="M0,0 L10,5 L0,10 z"/></marker></defs>' + edges + nodes + '</svg>';
  }

  /** One stage box: title, status, name, partitions, exchange, task progress bar. */
  function stageNode(jobId, s, p) {
    const st = s.status == null ? 'unknown' : String(s.status);
    const total = Math.max(0, num(isNum(s.tasks_total) ? s.tasks_total : s.partitions));
    const done = num(s.tasks_done), run = num(s.tasks_running), fail = num(s.tasks_failed);
    const bw = NW - 20, w = (v) => (total ? Math.min(bw, (bw * v) / total) : 0);
    const dw = w(done), rw = Math.min(w(run), bw - dw), fw = Math.min(w(fail), bw - dw - rw);
    const side = [run ? run + ' running' : '', fail ? fail + ' failed' : ''].filter(Boolean).join(', ');
    const R = NW - 10; // right-aligned text column
    const pb = (cls, x, wd) => `<rect class="${cls}" x="${x.toFixed(1)}" y="80" width="${wd.toFixed(1)}" height="6"/>`;
    return `<g class="stage" data-stage="${esc(s.id)}" data-status="${esc(st)}" data-href="#/stages/${seg(jobId)}/${seg(s.id)}" ` +
      `transform="translate(${p.x},${p.y})" tabindex="0" role="link">` +
      `<title>Stage ${esc(s.id)}: ${esc(s.name)} (${esc(st)})</title>` +
      `<rect class="box" width="${NW}" height="${NH}" rx="6"/>` +
      `<text class="t-title" x="10" y="19">Stage ${esc(s.id)}</text>` +
      `<text class="t-status" x="${R}" y="19" text-anchor="end">${esc(st)}</text>` +
      `<text class="t-name" x="10" y="37">${esc(trunc(s.name, 27))}</text>` +
      `<text class="t-meta" x="10" y="54">${esc(fmtNum(s.partitions))} partitions</text>` +
      (arr(s.adaptive).length ? `<text class="t-adapt" x="${R}" y="37" text-anchor="end">adaptive<title>${esc(arr(s.adaptive).join('\n'))}</title></text>` : '') +
      `<text class="t-meta" x="${R}" y="54" text-anchor="end">${done}/${total} tasks</text>` +
      (s.exchange ? `<text class="t-exch" x="10" y="71">⇄ ${esc(trunc(s.exchange, 16))}</text>` : '') +
      (side ? `<text class="t-side" x="${R}" y="71" text-anchor="end">${esc(side)}</text>` : '') +
      `<rect class="pb-bg" x="10" y="80" width="${bw}" height="6" rx="3"/>` +
      pb('pb-done', 10, dw) + pb('pb-run', 10 + dw, rw) + pb('pb-fail', 10 + dw + rw, fw) + '</g>';
  }

  // ---- page: all stages ----
  async function stagesPage() {
    // newest job first, then stage id and attempt descending
    const stages = arr(await api('/api/v1/stages')).slice()
      .sort((a, b) => num(b.job) - num(a.job) || num(b.id) - num(a.id) || num(b.attempt) - num(a.attempt));
    const rows = stages.map((s) => '<tr>' + td(link('jobs/' + seg(s.job), s.job)) +
      td(link(`stages/${seg(s.job)}/${seg(s.id)}`, s.id) + (num(s.attempt) ? ` <small>(attempt ${esc(s.attempt)})</small>` : '')) +
      `<td class="desc" title="${esc(s.name)}">${esc(trunc(s.name, 60))}</td>` + td(badge(s.status)) +
      td(bar(s.tasks_done, s.tasks_running, s.tasks_failed, s.partitions)) + tdn(fmtNum(s.rows_out)) +
      tdn(fmtBytes(s.bytes_out)) + tdn(fmtBytes(s.shuffle_read_bytes)) + tdn(fmtBytes(s.shuffle_write_bytes)) +
      tdn(fmtDur(liveDur(s))) + '</tr>');
    return title('Stages', statusCounts(stages)) + table(['Job', 'Stage', 'Name', 'Status', 'Tasks', 'Rows out#',
      'Bytes out#', 'Shuffle read#', 'Shuffle write#', 'Duration#'], rows, 'No stages yet.');
  }

  // ---- page: one stage with its plan and tasks ----
  async function stagePage(job, id) {
    const s = await api(`/api/v1/stages/${encodeURIComponent(job)}/${encodeURIComponent(id)}`);
    const tasks = arr(s.tasks).slice().sort((a, b) => num(a.partition) - num(b.partition) || num(a.attempt) - num(b.attempt));
    const parents = arr(s.parents).map((p) => link(`stages/${seg(s.job)}/${seg(p)}`, p)).join(', ');
    const rows = tasks.map((t) => `<tr${t.status === 'failed' ? ' class="failed"' : ''}>` +
      tdn(esc(t.partition)) + tdn(esc(t.attempt)) + td(esc(t.executor || DASH)) + td(badge(t.status)) +
      td(timeHtml(t.start_ms)) + tdn(fmtDur(liveDur(t, 'start_ms'))) + tdn(fmtNum(t.rows_out)) +
      tdn(fmtBytes(t.bytes_out)) + td(esc(t.error || ''), 'err') + '</tr>');
    return title(`${link('stages', 'Stages')} › ${link('jobs/' + seg(s.job), 'Job ' + s.job)} › Stage ${esc(s.id)} ${badge(s.status)}`) +
      kv([
        ['Name', `<span class="wrap">${esc(s.name)}</span>`],
        ['Attempt', esc(s.attempt)],
        ['Partitions', fmtNum(s.partitions) + (arr(s.adaptive).length ? ` (planned ${fmtNum(s.planned_partitions)})` : '')],
        ...(arr(s.adaptive).length ? [['Adaptive execution', `<span class="wrap">${arr(s.adaptive).map(esc).join('<br>')}</span>`]] : []),
        ['Tasks', bar(s.tasks_done, s.tasks_running, s.tasks_failed, s.partitions)],
        ['Rows in (from the shuffle)', fmtNum(s.rows_in)],
        ['Rows out', fmtNum(s.rows_out)],
        ['Bytes out', fmtBytes(s.bytes_out)],
        ['Shuffle read', fmtBytes(s.shuffle_read_bytes)],
        ['Shuffle write', fmtBytes(s.shuffle_write_bytes)],
        ['Submitted', timeHtml(s.submitted_ms)],
        ['Duration', fmtDur(liveDur(s))],
        ['Parents', parents || DASH],
      ]) +
      '<h2>Plan</h2>' + pre(s.plan) +
      `<h2>Tasks <small>${statusCounts(tasks)}</small></h2>` +
      table(['Partition#', 'Attempt#', 'Executor', 'Status', 'Started', 'Duration#', 'Rows#', 'Bytes#', 'Error'], rows, 'No tasks yet.');
  }

  // ---- page: executors ----
  async function executorsPage() {
    const execs = arr(await api('/api/v1/executors'));
    let cores = 0, mem = 0;
    const rows = execs.map((e) => {
      const lost = e.status === 'lost';
      if (!lost) { cores += num(e.cores); mem += num(e.memory_bytes); }
      return `<tr${lost ? ' class="lost"' : ''}>` + td(esc(e.id)) + td(esc(e.address)) +
        td(badge(e.status) + (e.lost_reason ? ` <span class="reason">${esc(e.lost_reason)}</span>` : '')) +
        tdn(fmtNum(e.cores)) + tdn(fmtBytes(e.memory_bytes)) + tdn(fmtNum(e.active_tasks)) +
        tdn(fmtNum(e.completed_tasks)) + tdn(fmtNum(e.failed_tasks)) +
        `<td class="n" title="${iso(e.last_heartbeat_ms)}">${fmtAgo(e.last_heartbeat_ms)}</td></tr>`;
    });
    return title('Executors', statusCounts(execs) + (execs.length ? ` · ${cores} cores · ${fmtBytes(mem)}` : '')) +
      table(['Executor', 'Address', 'Status', 'Cores#', 'Memory#', 'Active#', 'Completed#', 'Failed#', 'Last heartbeat#'],
        rows, 'No executors.');
  }

  // ---- page: storage (cached frames) ----
  async function storagePage() {
    const frames = arr(await api('/api/v1/storage'));
    const rows = frames.map((f) => '<tr>' + td(esc(f.id)) +
      td(`<span title="${esc(f.name)}">${esc(trunc(f.name, 80))}</span>`, 'desc') +
      td(esc(String(f.storage_level).replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase())) +
      tdn(`${fmtNum(f.cached_partitions)} / ${fmtNum(f.partitions)}`) + tdn(fmtNum(f.rows)) +
      tdn(fmtBytes(f.memory_bytes)) + tdn(fmtBytes(f.disk_bytes)) +
      td(esc(arr(f.executors).join(', ') || DASH)) + '</tr>');
    return title('Storage', `${frames.length} cached frame${frames.length === 1 ? '' : 's'}`) +
      table(['Id#', 'Frame', 'Storage level', 'Cached partitions#', 'Rows#', 'Memory#', 'Disk#', 'Executors'],
        rows, 'No cached frames: DataFrame::cache() or persist() keeps one once an action computes it.');
  }

  // ---- page: SQL queries (expandable plans) ----
  async function sqlPage() {
    const qs = arr(await api('/api/v1/sql'));
    const rows = qs.map((q) => '<tr>' + td(esc(q.id)) +
      td(details('sql-' + q.id, `<span title="${esc(q.description)}">${esc(trunc(q.description, 100))}</span>`,
        '<div class="plans"><h3>Query</h3>' + pre(q.description) + '<h3>Logical plan</h3>' + pre(q.logical_plan) +
        '<h3>Physical plan</h3>' + pre(q.physical_plan) +
        (arr(q.adaptive).length ? '<h3>As run (adaptive execution)</h3>' + pre(arr(q.adaptive).join('\n')) : '') + '</div>'), 'desc') +
      td(badge(q.status)) + td(timeHtml(q.submitted_ms)) + tdn(fmtDur(liveDur(q))) +
      td(arr(q.jobs).map((j) => link('jobs/' + seg(j), j)).join(', ') || DASH) + '</tr>');
    return title('SQL', statusCounts(qs)) +
      table(['ID', 'Description (click for plans)', 'Status', 'Submitted', 'Duration#', 'Jobs'], rows, 'No SQL queries yet.');
  }

  // ---- page: streaming queries with metric charts ----
  // The five charts: data-metric name, title, value getter (null/undefined = no point).
  const METRICS = [
    ['input_rows_per_second', 'Input rows/s', (p) => p.input_rows_per_second],
    ['processed_rows_per_second', 'Processed rows/s', (p) => p.processed_rows_per_second],
    ['batch_duration_ms', 'Batch duration (ms)', (p) => p.duration_ms && p.duration_ms.trigger_execution],
    ['watermark_delay_s', 'Watermark delay (s)',
      (p) => (isNum(p.watermark_ms) && isNum(p.timestamp_ms) ? (p.timestamp_ms - p.watermark_ms) / 1000 : null)],
    ['state_rows', 'State rows', (p) => p.state && p.state.rows_total],
  ];

  async function streamingPage() {
    const qs = arr(await api('/api/v1/streaming'));
    return title('Streaming', `${qs.length} quer${qs.length === 1 ? 'y' : 'ies'}`) +
      (qs.length ? qs.map(streamSection).join('') : '<p class="empty">No streaming queries.</p>');
  }

  /** One streaming query: status summary and its metric charts. */
  function streamSection(q) {
    const prog = arr(q.recent_progress).filter((p) => p && typeof p === 'object');
    const last = prog[prog.length - 1], st = q.status || {};
    const yn = (v) => (v ? 'yes' : 'no');
    return `<section class="stream" data-query="${esc(q.id)}">` +
      `<h2>${esc(q.name || '(unnamed query)')} ${badge(q.active ? 'active' : 'stopped')}</h2>` +
      kv([
        ['Id', `<code>${esc(q.id)}</code>`],
        ['Run id', `<code>${esc(q.run_id)}</code>`],
        ['Status', esc(st.message || DASH)],
        ['Trigger active', yn(st.is_trigger_active)],
        ['Data available', yn(st.is_data_available)],
        ['Latest batch', last ? `${esc(last.batch_id)} <small>${fmtAgo(last.timestamp_ms)}</small>` : DASH],
        last && ['Last batch rows', fmtNum(last.num_input_rows)],
        last && last.source && ['Source', esc(last.source.description)],
        last && last.sink && ['Sink', esc(last.sink.description)],
        last && isNum(last.late_rows_dropped) && ['Late rows dropped', fmtNum(last.late_rows_dropped)],
      ]) +
      '<div class="charts">' + METRICS.map(([m, name, get]) => chart(m, name, prog, get)).join('') + '</div></section>';
  }

  // Chart geometry (pixels): size and plot-area margins.
  const CW = 210, CH = 120, CL = 42, CR = 10, CT = 26, CB = 20;

  /** Small SVG line chart of one metric over the recent progress (x = position in the list). */
  function chart(metric, name, prog, get) {
    const pts = [];
    prog.forEach((p, i) => { const v = get(p); if (isNum(v)) pts.push({ i, v, b: p.batch_id }); });
    const n = prog.length, end = pts[pts.length - 1];
    let body, lo = 0, hi = 0;
    if (end) {
      const vals = pts.map((p) => p.v);
      lo = Math.min(0, ...vals); // non-negative data starts at 0
      hi = Math.max(...vals);
      if (hi === lo) hi = lo + 1;
      const X = (i) => (n > 1 ? CL + (i * (CW - CL - CR)) / (n - 1) : (CL + CW - CR) / 2).toFixed(1);
      const Y = (v) => (CT + ((hi - v) * (CH - CT - CB)) / (hi - lo)).toFixed(1);
      body = `<polyline class="c-line" points="${pts.map((p) => X(p.i) + ',' + Y(p.v)).join(' ')}"/>` +
        `<circle class="c-dot" cx="${X(end.i)}" cy="${Y(end.v)}" r="2.5"/>` +
        `<text x="${CL}" y="${CH - 5}">#${esc(pts[0].b)}</text>` +
        `<text x="${CW - CR}" y="${CH - 5}" text-anchor="end">#${esc(end.b)}</text>` +
        `<text x="${CL - 4}" y="${CT + 4}" text-anchor="end">${fmtShort(hi)}</text>` +
        `<text x="${CL - 4}" y="${CH - CB}" text-anchor="end">${fmtShort(lo)}</text>`;
    } else {
      body = `<text class="c-none" x="${(CL + CW - CR) / 2}" y="${CH / 2 + 4}" text-anchor="middle">no data</text>`;
    }
    return `<svg class="chart" data-metric="${esc(metric)}" data-points="${pts.length}" xmlns="http://www.w3.org/2000/svg" ` +
      `width="${CW}" height="${CH}" viewBox="0 0 ${CW} ${CH}"><title>${esc(name)}</title>` +
      `<text class="c-title" x="8" y="15">${esc(name)}</text>` +
      `<text class="c-last" x="${CW - 8}" y="15" text-anchor="end">${end ? fmtShort(end.v) : DASH}</text>` +
      `<path class="c-axis" d="M${CL},${CT} V${CH - CB} H${CW - CR}"/>` + body + '</svg>';
  }

  // ---- routing and the refresh loop ----
  /** Hash route: "#/stages/3/1" -> {page: "stages", args: ["3", "1"]}. */
  function route() {
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean)
      .map((p) => { try { return decodeURIComponent(p); } catch (e) { return p; } });
    return { page: parts[0] || 'jobs', args: parts.slice(1) };
  }
  const PAGES = {
    jobs: (a) => (a.length ? jobPage(a[0]) : jobsPage()),
    stages: (a) => (a.length >= 2 ? stagePage(a[0], a[1]) : stagesPage()),
    executors: executorsPage,
    storage: storagePage,
    sql: sqlPage,
    streaming: streamingPage,
  };

  /** Show (or with null hide) the error banner; stale content is dimmed meanwhile. */
  function showError(msg) {
    errorBox.hidden = !msg;
    errorBox.textContent = msg ? `${msg} (retrying every ${REFRESH_MS / 1000} s)` : '';
    content.classList.toggle('stale', !!msg);
  }

  /** Fetch the application name/master for the header (retried until it works). */
  function loadApp() {
    if (appState) return;
    appState = 1;
    api('/api/v1/applications').then((apps) => {
      const a = arr(apps)[0];
      if (!a) { appBox.textContent = 'no application'; appState = 0; return; }
      appBox.innerHTML = `<b>${esc(a.name)}</b> <span>${esc(a.master)}</span>`;
      appBox.title = (a.id || '') + (isNum(a.start_ms) ? ' · started ' + new Date(a.start_ms).toLocaleString() : '');
      document.title = (a.name || 'ember') + ' · ember UI';
      appState = 2;
    }, () => { appState = 0; }); // connectivity errors are reported by the page fetch
  }

  /** Load the current page, render it, and schedule the next refresh. */
  async function refresh() {
    clearTimeout(timer);
    const my = ++seq;
    // hidden tab: keep polling cheap by skipping fetches (after the first render)
    if (document.visibilityState === 'hidden' && lastHtml !== null) { timer = setTimeout(refresh, REFRESH_MS); return; }
    const r = route();
    document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.nav === r.page));
    loadApp();
    try {
      const page = PAGES[r.page];
      const html = page ? await page(r.args) : `<p class="empty">Unknown page ${esc(location.hash)}.</p>`;
      if (my !== seq) return; // a newer refresh (e.g. after hashchange) owns the page now
      if (html !== lastHtml) { content.innerHTML = html; lastHtml = html; }
      showError(null);
    } catch (e) {
      if (my !== seq) return;
      showError((e && e.message) || String(e));
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  // ---- events ----
  // new route: clear the old page at once, then load the new one
  window.addEventListener('hashchange', () => {
    content.innerHTML = '<p class="muted">Loading…</p>';
    lastHtml = null;
    window.scrollTo(0, 0);
    refresh();
  });
  // a tab coming back into view refreshes immediately
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') refresh(); });
  // DAG stages act as links: click, or Enter when focused
  const followStage = (e) => {
    const g = e.target.closest && e.target.closest('g.stage[data-href]');
    if (g) location.hash = g.getAttribute('data-href');
  };
  content.addEventListener('click', followStage);
  content.addEventListener('keydown', (e) => { if (e.key === 'Enter') followStage(e); });
  // remember which <details> are open so re-renders keep them ('toggle' does not bubble)
  content.addEventListener('toggle', (e) => {
    const d = e.target;
    if (d.tagName === 'DETAILS' && d.dataset.key) openDetails[d.open ? 'add' : 'delete'](d.dataset.key);
  }, true);

  refresh(); // first fetch right away
})();

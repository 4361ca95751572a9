// Wayfinder's web UI. Plain JavaScript, no build step, no network but the collector's own
// documented query API (docs/api.md). Every piece of span data is put on the page as text,
// never as markup.
'use strict';

(function () {
  const REFRESH_MS = 5000;
  const WINDOW_SECONDS = { '1m': 60, '5m': 300, '15m': 900, '1h': 3600 };
  const COLORS = { ok: '#2e9d5b', warn: '#e0a100', bad: '#d64541', idle: '#9aa3b2' };
  const SERVICE_PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#76b7b2',
    '#edc948', '#ff9da7', '#9c755f', '#86bcb6', '#bab0ac'];

  const state = {
    window: '1m',
    cy: null,
    topology: null,
    userMoved: false,
    route: { view: 'map' },
    busy: false,
    pending: null,
  };

  // ---- small helpers ---------------------------------------------------------------------

  const $ = (selector) => document.querySelector(selector);

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === 'class') node.className = value;
      else if (key === 'style') node.setAttribute('style', value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replaceChildren(node, children) {
    node.replaceChildren(...children);
  }

  // With --query-token-file the API wants a bearer token: asked once on the first 401, kept
  // for this tab only (sessionStorage), never in the URL.
  const TOKEN_KEY = 'wayfinder.token';
  function withToken(options) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return options || {};
    const headers = Object.assign({}, (options && options.headers) || {}, {
      authorization: `Bearer ${token}`,
    });
    return Object.assign({}, options || {}, { headers });
  }

  async function getJson(url, options) {
    let response = await fetch(url, withToken(options));
    if (response.status === 401) {
      const token = window.prompt('This collector asks for a token (its --query-token-file):');
      if (token) {
        sessionStorage.setItem(TOKEN_KEY, token.trim());
        response = await fetch(url, withToken(options));
      }
    }
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  async function sql(text) {
    const answer = await getJson('/api/v1/sql', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ sql: text }),
    });
    return answer.rows.map((row) =>
      Object.fromEntries(answer.columns.map((column, i) => [column.name, row[i]])));
  }

  // A SQL string literal.
  const quote = (text) => `'${String(text).replace(/'/g, "''")}'`;

  function fmtRate(perSec) {
    if (perSec === null || perSec === undefined) return '—';
    return `${perSec < 10 ? perSec.toFixed(1) : Math.round(perSec)}/s`;
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '—';
    if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
    return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  }

  function fmtPct(ratio) {
    if (ratio === null || ratio === undefined) return '—';
    const pct = ratio * 100;
    return `${pct === 0 || pct >= 10 ? Math.round(pct) : pct.toFixed(1)}%`;
  }

  const p99Of = (sides) => (sides && ((sides.client && sides.client.p99) ?? (sides.server && sides.server.p99))) ?? null;

  function setStatus(text, isError) {
    const status = $('#status');
    status.textContent = text;
    status.classList.toggle('error', !!isError);
  }

  function serviceColor(name) {
    let hash = 0;
    for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return SERVICE_PALETTE[hash % SERVICE_PALETTE.length];
  }

  // ---- the service map -------------------------------------------------------------------

  function health(node) {
    const statuses = node.instances.map((i) => i.status);
    const errorRate = node.stats.error_rate || 0;
    if (errorRate >= 0.05 || statuses.includes('critical')) return 'bad';
    if (errorRate >= 0.01 || statuses.includes('warning')) return 'warn';
    if (!node.stats.requests) return 'idle';
    return 'ok';
  }

  function nodeData(node) {
    const rate = node.stats.rate_per_sec || 0;
    const label = node.kind === 'user' ? node.id : `${node.id}\n${fmtRate(rate)}`;
    return {
      id: node.id,
      kind: node.kind,
      label,
      size: Math.round(28 + 14 * Math.log10(1 + rate)),
      color: COLORS[health(node)],
      health: health(node),
    };
  }

  const edgeId = (edge) => `${edge.source}\u2192${edge.target}\u00a0${edge.connection_type}`;

  function edgeData(edge) {
    const errorRate = edge.requests ? edge.errors / edge.requests : 0;
    const color = errorRate >= 0.05 ? COLORS.bad : errorRate >= 0.01 ? COLORS.warn : '#7d889b';
    return {
      id: edgeId(edge),
      source: edge.source,
      target: edge.target,
      connection_type: edge.connection_type,
      label: `${fmtRate(edge.rate_per_sec)} · ${fmtPct(errorRate)} err · p99 ${fmtMs(p99Of(edge.latency_ms))}`,
      width: Math.min(1.5 + 1.5 * Math.log10(1 + edge.rate_per_sec), 8),
      color,
    };
  }

  function createGraph() {
    const cy = cytoscape({
      container: $('#graph'),
      wheelSensitivity: 0.3,
      minZoom: 0.2,
      maxZoom: 3,
      style: [
        { selector: 'node', style: {
          label: 'data(label)', 'text-wrap': 'wrap', 'text-valign': 'bottom', 'text-margin-y': 4,
          'font-size': 11, color: '#1d2430', width: 'data(size)', height: 'data(size)',
          shape: 'round-rectangle', 'background-color': 'data(color)',
          'border-width': 2, 'border-color': '#56627a',
        } },
        { selector: 'node[kind = "database"]', style: {
          shape: 'barrel', 'background-color': '#ffffff', 'border-color': 'data(color)', 'border-width': 4,
        } },
        { selector: 'node[kind = "messaging"]', style: {
          shape: 'diamond', 'background-color': '#ffffff', 'border-color': 'data(color)', 'border-width': 4,
        } },
        { selector: 'node[kind = "external"]', style: {
          shape: 'hexagon', 'background-color': '#ffffff', 'border-color': 'data(color)', 'border-width': 4,
        } },
        { selector: 'node[kind = "user"]', style: {
          shape: 'ellipse', 'background-color': '#ffffff', 'border-style': 'dashed', 'border-color': '#56627a',
        } },
        { selector: 'node:selected', style: { 'border-color': '#2f6fdf', 'border-width': 5 } },
        { selector: 'edge', style: {
          'curve-style': 'bezier', 'target-arrow-shape': 'triangle', width: 'data(width)',
          'line-color': 'data(color)', 'target-arrow-color': 'data(color)', label: 'data(label)',
          'font-size': 9, color: '#3a4352', 'text-rotation': 'autorotate',
          'text-background-color': '#ffffff', 'text-background-opacity': 0.85, 'text-background-padding': 2,
        } },
        { selector: 'edge[connection_type = "messaging"]', style: { 'line-style': 'dashed' } },
        { selector: 'edge[connection_type = "database"]', style: { 'line-style': 'dotted' } },
      ],
    });
    cy.on('tap', 'node', (event) => {
      location.hash = `#/service/${encodeURIComponent(event.target.id())}`;
    });
    cy.on('tap', (event) => {
      if (event.target === cy && state.route.view === 'map' && state.route.service) location.hash = '#/';
    });
    cy.on('dragfree', 'node', () => { state.userMoved = true; });
    return cy;
  }

  // Left to right: callers on the left, what they call on the right.
  function layoutAll() {
    const cy = state.cy;
    const roots = cy.nodes().filter((n) => n.data('kind') === 'user' || n.indegree(false) === 0);
    cy.layout({
      name: 'breadthfirst', directed: true, roots, spacingFactor: 1.05, padding: 30,
      animate: false, fit: true, avoidOverlap: true,
      transform: (_node, position) => ({ x: position.y * 2.4, y: position.x * 0.5 }),
    }).run();
    cy.fit(undefined, 30);
  }

  // A node that appears after the user arranged the map goes next to a neighbour.
  function placeNear(node) {
    const neighbour = node.neighborhood('node').filter((n) => !n.same(node) && n.data('placed'))[0];
    const base = neighbour ? neighbour.position() : { x: 0, y: 0 };
    node.position({ x: base.x + 160, y: base.y + 40 + Math.random() * 60 });
  }

  function applyTopology(topology) {
    const cy = state.cy;
    const seen = new Set();
    const added = [];
    cy.batch(() => {
      for (const node of topology.nodes) {
        const data = nodeData(node);
        seen.add(data.id);
        const existing = cy.getElementById(data.id);
        if (existing.nonempty()) existing.data(data);
        else added.push(cy.add({ group: 'nodes', data }));
      }
      for (const edge of topology.edges) {
        const data = edgeData(edge);
        seen.add(data.id);
        const existing = cy.getElementById(data.id);
        if (existing.nonempty()) existing.data(data);
        else added.push(cy.add({ group: 'edges', data }));
      }
      cy.elements().filter((element) => !seen.has(element.id())).remove();
    });
    if (added.length) {
      if (!state.userMoved) layoutAll();
      else added.filter((e) => e.isNode()).forEach(placeNear);
      cy.nodes().data('placed', true);
    }
    const selected = state.route.service;
    cy.nodes().unselect();
    if (selected) cy.getElementById(selected).select();
  }

  function renderEdgeTable(topology) {
    const rows = [...topology.edges]
      .sort((a, b) => b.rate_per_sec - a.rate_per_sec)
      .map((edge) => el('tr', {
        class: 'clickable',
        'data-edge': edgeId(edge),
        onclick: () => { location.hash = `#/service/${encodeURIComponent(edge.target)}`; },
      },
      el('td', {}, edge.source),
      el('td', {}, edge.target),
      el('td', {}, edge.connection_type),
      el('td', { class: 'num' }, fmtRate(edge.rate_per_sec)),
      el('td', { class: 'num' }, fmtPct(edge.requests ? edge.errors / edge.requests : 0)),
      el('td', { class: 'num' }, fmtMs(p99Of(edge.latency_ms)))));
    if (!rows.length) {
      rows.push(el('tr', {}, el('td', { colspan: 6, class: 'note' },
        `No traffic in the last ${state.window}: send spans to the collector's OTLP ports.`)));
    }
    replaceChildren($('#edges tbody'), rows);
  }

  async function refreshMap() {
    const topology = await getJson(`/api/v1/topology?window=${state.window}`);
    state.topology = topology;
    applyTopology(topology);
    renderEdgeTable(topology);
  }

  // ---- a service's panel -----------------------------------------------------------------

  async function weightsOf(service) {
    try {
      return await getJson(`/api/v1/weights/${encodeURIComponent(service)}`);
    } catch (error) {
      if (error.status === 404) return null;
      throw error;
    }
  }

  async function tracesOf(service) {
    const since = `now() - INTERVAL '${WINDOW_SECONDS[state.window]} seconds'`;
    const columns = 'trace_id, span_name, span_kind, status_code, duration_ns, start_time, instance_id';
    const where = `service_name = ${quote(service)} AND start_time > ${since}`;
    const [slow, failed] = await Promise.all([
      sql(`SELECT ${columns} FROM spans WHERE ${where} AND span_kind IN ('server', 'consumer') ` +
        'ORDER BY duration_ns DESC LIMIT 8'),
      sql(`SELECT ${columns} FROM spans WHERE ${where} AND status_code = 'error' ` +
        'ORDER BY start_time DESC LIMIT 8'),
    ]);
    return { slow, failed };
  }

  function traceList(target, spans, emptyText) {
    const items = spans.map((span) => el('li', {},
      el('a', { href: `#/trace/${span.trace_id}`, 'data-trace': span.trace_id }, span.span_name),
      el('span', { class: span.status_code === 'error' ? 'error-text' : 'note' },
        `${span.instance_id || span.span_kind}${span.status_code === 'error' ? ' · error' : ''}`),
      el('span', { class: 'dur' }, fmtMs(span.duration_ns / 1e6))));
    if (!items.length) items.push(el('li', { class: 'empty' }, emptyText));
    replaceChildren(target, items);
  }

  function instanceRows(node, weights, registry) {
    const byId = new Map();
    const row = (id) => {
      if (!byId.has(id)) byId.set(id, { id });
      return byId.get(id);
    };
    for (const instance of (node && node.instances) || []) {
      Object.assign(row(instance.id), { stats: instance.stats, address: instance.address, status: instance.status });
    }
    for (const endpoint of (weights && weights.endpoints) || []) {
      Object.assign(row(endpoint.instance_id), { endpoint });
    }
    for (const instance of registry) {
      const r = row(instance.instance_id);
      r.status = instance.status;
      r.address = r.address || instance.address;
    }
    const rows = [...byId.values()].sort((a, b) => a.id.localeCompare(b.id));
    const total = rows.reduce((sum, r) => sum + ((r.stats && r.stats.requests) || 0), 0);
    const maxWeight = Math.max(0, ...rows.map((r) => (r.endpoint ? r.endpoint.weight : 0)));
    return rows.map((r) => {
      const weight = r.endpoint ? r.endpoint.weight : null;
      const status = r.status || (r.endpoint && r.endpoint.health) || 'unknown';
      const p99 = (r.endpoint && r.endpoint.latency_ms && r.endpoint.latency_ms.p99) ??
        (r.stats && r.stats.latency_ms && r.stats.latency_ms.server && r.stats.latency_ms.server.p99);
      const errors = r.endpoint ? r.endpoint.error_rate : r.stats && r.stats.error_rate;
      const rate = r.stats ? r.stats.rate_per_sec : r.endpoint && r.endpoint.requests_per_sec;
      const share = total && r.stats ? r.stats.requests / total : null;
      return el('tr', { 'data-instance': r.id, title: r.address || '' },
        el('td', {}, r.id),
        el('td', { class: `health-${status}` }, status),
        el('td', { class: 'num' }, weight === null ? '—' : [
          el('span', { class: 'weight-bar', style: `width:${maxWeight ? Math.round(40 * weight / maxWeight) : 0}px` }),
          weight.toFixed(3)]),
        el('td', { class: 'wrap' }, r.endpoint ? r.endpoint.reason : '—'),
        el('td', { class: 'num' }, fmtMs(p99 ?? null)),
        el('td', { class: 'num' }, fmtPct(errors ?? null)),
        el('td', { class: 'num' }, fmtRate(rate ?? null)),
        el('td', { class: 'num' }, fmtPct(share)));
    });
  }

  async function refreshPanel(withTraces) {
    const service = state.route.service;
    if (!service) return;
    const node = state.topology && state.topology.nodes.find((n) => n.id === service);
    const kind = node ? node.kind : 'service';
    $('#panel').hidden = false;
    $('#panel-title').textContent = service;
    const stats = node ? node.stats : null;
    const latency = stats && stats.latency_ms && (stats.latency_ms.server || stats.latency_ms.client);
    $('#panel-summary').textContent = stats
      ? `${kind} · ${fmtRate(stats.rate_per_sec)} · ${fmtPct(stats.error_rate)} errors · ` +
        `p50 ${fmtMs(latency && latency.p50)} · p99 ${fmtMs(latency && latency.p99)} over ${state.window}`
      : `${kind} · no traffic in the last ${state.window}`;
    const isService = kind === 'service';
    for (const selector of ['#instances', '#weights-note', '#slow-traces', '#failed-traces']) {
      $(selector).hidden = !isService;
      const heading = $(selector).previousElementSibling;
      if (heading && heading.tagName === 'H3') heading.hidden = !isService;
    }
    if (!isService) return;
    const [weights, registry] = await Promise.all([
      weightsOf(service),
      getJson(`/api/v1/instances?service=${encodeURIComponent(service)}`).then((r) => r.instances),
    ]);
    if (state.route.service !== service) return;
    $('#weights-note').textContent = weights
      ? `Weights version ${weights.version}, computed ${weights.generated_at}. Share: of the requests it served over ${state.window}.`
      : 'No weights: the collector knows no instance of this service yet.';
    replaceChildren($('#instances tbody'), instanceRows(node, weights, registry));
    if (withTraces) {
      const traces = await tracesOf(service);
      if (state.route.service !== service) return;
      traceList($('#slow-traces'), traces.slow, `No requests in the last ${state.window}.`);
      traceList($('#failed-traces'), traces.failed, `No failed spans in the last ${state.window}.`);
    }
  }

  // ---- a trace's waterfall ---------------------------------------------------------------

  // RFC 3339 with up to nine fractional digits, as nanoseconds since the epoch (exact).
  function timeNs(text) {
    const match = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(text);
    if (!match) return BigInt(Date.parse(text)) * 1000000n;
    const fraction = (match[2] || '').padEnd(9, '0').slice(0, 9);
    return BigInt(Date.parse(match[1] + match[3])) * 1000000n + BigInt(fraction);
  }

  // Parents before children, siblings by start time; spans whose parent is missing are roots.
  function treeOrder(spans) {
    const ids = new Set(spans.map((s) => s.span_id));
    const children = new Map();
    const roots = [];
    for (const span of spans) {
      if (span.parent_span_id && ids.has(span.parent_span_id)) {
        if (!children.has(span.parent_span_id)) children.set(span.parent_span_id, []);
        children.get(span.parent_span_id).push(span);
      } else {
        roots.push(span);
      }
    }
    const byStart = (a, b) => (a.startNs < b.startNs ? -1 : a.startNs > b.startNs ? 1 : 0);
    const ordered = [];
    const visit = (span, depth) => {
      ordered.push({ span, depth });
      for (const child of (children.get(span.span_id) || []).sort(byStart)) visit(child, depth + 1);
    };
    roots.sort(byStart).forEach((root) => visit(root, 0));
    return ordered;
  }

  function keyValueTable(object) {
    const keys = Object.keys(object || {}).sort();
    if (!keys.length) return el('p', { class: 'note' }, 'none');
    return el('table', { class: 'data' },
      el('tbody', {}, keys.map((key) => el('tr', {},
        el('td', {}, key),
        el('td', {}, typeof object[key] === 'string' ? object[key] : JSON.stringify(object[key]))))));
  }

  function spanDetail(span) {
    const startNs = span.startNs;
    return el('div', { class: 'span-detail' },
      el('p', {},
        `${span.span_kind} · status ${span.status_code}`,
        span.status_message ? ` (${span.status_message})` : '',
        ` · ${fmtMs(span.duration_ns / 1e6)} · instance ${span.instance_id || '—'} · span ${span.span_id}`,
        span.parent_span_id ? ` · parent ${span.parent_span_id}` : ''),
      el('h4', {}, 'Attributes'), keyValueTable(span.attributes),
      el('h4', {}, 'Events'),
      span.events && span.events.length
        ? el('table', { class: 'data' }, el('tbody', {}, span.events.map((event) => el('tr', {},
          el('td', { class: 'num' }, `+${fmtMs(Number(timeNs(event.time) - startNs) / 1e6)}`),
          el('td', {}, event.name),
          el('td', {}, JSON.stringify(event.attributes || {}))))))
        : el('p', { class: 'note' }, 'none'),
      span.links && span.links.length
        ? [el('h4', {}, 'Links'), el('ul', {}, span.links.map((link) =>
          el('li', {}, el('a', { href: `#/trace/${link.trace_id}` }, `${link.trace_id} / ${link.span_id}`))))]
        : null,
      el('h4', {}, 'Resource'), keyValueTable(span.resource_attributes));
  }

  async function showTrace(traceId) {
    $('#trace-title').textContent = `Trace ${traceId}`;
    $('#trace-summary').textContent = 'Loading…';
    replaceChildren($('#waterfall'), []);
    let trace;
    try {
      trace = await getJson(`/api/v1/traces/${encodeURIComponent(traceId)}`);
    } catch (error) {
      $('#trace-summary').textContent = error.status === 404
        ? 'No span of this trace is stored (it may have aged out of the store).'
        : `Could not load the trace: ${error.message}`;
      return;
    }
    for (const span of trace.spans) {
      span.startNs = timeNs(span.start_time);
      span.endNs = span.startNs + BigInt(span.duration_ns);
    }
    const t0 = trace.spans.reduce((min, s) => (s.startNs < min ? s.startNs : min), trace.spans[0].startNs);
    const t1 = trace.spans.reduce((max, s) => (s.endNs > max ? s.endNs : max), trace.spans[0].endNs);
    const total = Math.max(Number(t1 - t0), 1);
    const services = new Set(trace.spans.map((s) => s.service_name));
    const ordered = treeOrder(trace.spans);
    $('#trace-summary').textContent =
      `${ordered[0].span.service_name}: ${ordered[0].span.span_name} · ${fmtMs(total / 1e6)} · ` +
      `${trace.spans.length} spans · ${services.size} services · ` +
      `${trace.spans.filter((s) => s.status_code === 'error').length} errors`;
    const rows = [];
    for (const { span, depth } of ordered) {
      const left = (Number(span.startNs - t0) / total) * 100;
      const width = Math.max((span.duration_ns / total) * 100, 0.2);
      const detailHolder = el('div', { hidden: '' });
      const row = el('div', {
        class: 'span-row',
        'data-span': span.span_id,
        onclick: () => {
          if (!detailHolder.firstChild) detailHolder.append(spanDetail(span));
          detailHolder.hidden = !detailHolder.hidden;
        },
      },
      el('div', { class: 'span-name', style: `padding-left:${8 + depth * 14}px`, title: span.span_name },
        el('span', { class: 'svc', style: `color:${serviceColor(span.service_name)}` }, span.service_name),
        span.span_name),
      el('div', { class: 'span-track' },
        el('div', {
          class: `span-bar${span.status_code === 'error' ? ' error' : ''}`,
          style: `left:${left}%;width:${width}%;background:${serviceColor(span.service_name)}`,
        }),
        el('span', { class: 'span-dur', style: left + width > 85 ? `right:${100 - left + 0.5}%` : `left:${left + width + 0.5}%` },
          fmtMs(span.duration_ns / 1e6))));
      rows.push(row, detailHolder);
    }
    replaceChildren($('#waterfall'), rows);
  }

  // ---- the SQL page ----------------------------------------------------------------------

  function cellText(value) {
    if (value === null || value === undefined) return 'null';
    return typeof value === 'object' ? JSON.stringify(value) : String(value);
  }

  async function runSql(event) {
    if (event) event.preventDefault();
    const text = $('#sql-text').value;
    const status = $('#sql-status');
    status.textContent = 'Running…';
    status.classList.remove('error-text');
    const started = performance.now();
    try {
      const answer = await getJson('/api/v1/sql', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ sql: text }),
      });
      replaceChildren($('#sql-result thead'), [el('tr', {}, answer.columns.map((column) =>
        el('th', { title: column.type }, column.name)))]);
      replaceChildren($('#sql-result tbody'), answer.rows.map((row) => el('tr', {},
        row.map((value) => el('td', { class: typeof value === 'number' ? 'num' : null }, cellText(value))))));
      status.textContent = `${answer.rows.length} rows in ${Math.round(performance.now() - started)} ms`;
    } catch (error) {
      status.textContent = error.message;
      status.classList.add('error-text');
    }
  }

  // ---- routing and the refresh loop ------------------------------------------------------

  function parseRoute() {
    const hash = location.hash.replace(/^#\/?/, '');
    const [view, ...rest] = hash.split('/');
    const arg = rest.length ? decodeURIComponent(rest.join('/')) : null;
    if (view === 'service' && arg) return { view: 'map', service: arg };
    if (view === 'trace' && arg) return { view: 'trace', traceId: arg };
    if (view === 'sql') return { view: 'sql' };
    return { view: 'map' };
  }

  async function refresh(withTraces) {
    if (state.busy) {
      // Once the running refresh is done, run again: the route may have changed meanwhile.
      state.pending = { withTraces: withTraces || (state.pending && state.pending.withTraces) };
      return;
    }
    state.busy = true;
    try {
      if (state.route.view === 'map') {
        await refreshMap();
        await refreshPanel(withTraces);
      }
      setStatus(`Updated ${new Date().toLocaleTimeString()} · window ${state.window}`);
    } catch (error) {
      setStatus(`Cannot reach the query API: ${error.message}`, true);
    } finally {
      state.busy = false;
      const pending = state.pending;
      state.pending = null;
      if (pending) refresh(pending.withTraces);
    }
  }

  function route() {
    const previous = state.route.service;
    state.route = parseRoute();
    if (state.route.service && state.route.service !== previous) {
      // Another service: nothing of the last one's may show while its figures load.
      $('#panel-title').textContent = state.route.service;
      $('#panel-summary').textContent = 'Loading…';
      for (const selector of ['#instances tbody', '#slow-traces', '#failed-traces']) {
        replaceChildren($(selector), []);
      }
      $('#weights-note').textContent = '';
    }
    for (const view of ['map', 'trace', 'sql']) $(`#view-${view}`).hidden = state.route.view !== view;
    $('#nav-map').classList.toggle('active', state.route.view !== 'sql');
    $('#nav-sql').classList.toggle('active', state.route.view === 'sql');
    if (state.route.view === 'map') {
      const panelChanged = $('#panel').hidden !== !state.route.service;
      $('#panel').hidden = !state.route.service;
      state.cy.resize();
      // The map's box changed size: fit it again unless the user has arranged it.
      if (panelChanged && !state.userMoved) state.cy.fit(undefined, 30);
      refresh(true);
    } else if (state.route.view === 'trace') {
      showTrace(state.route.traceId);
    }
  }

  function start() {
    state.cy = createGraph();
    $('#window').addEventListener('change', (event) => {
      state.window = event.target.value;
      refresh(true);
    });
    $('#relayout').addEventListener('click', () => { state.userMoved = false; layoutAll(); });
    $('#panel-close').addEventListener('click', () => { location.hash = '#/'; });
    $('#sql-form').addEventListener('submit', runSql);
    $('#sql-text').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) runSql(event);
    });
    window.addEventListener('hashchange', route);
    route();
    let tick = 0;
    setInterval(() => {
      tick += 1;
      // The traces lists run two SQL queries: every third refresh is enough.
      if (state.route.view === 'map') refresh(tick % 3 === 0);
    }, REFRESH_MS);
  }

  // For tests and the curious: the graph as drawn.
  window.wayfinder = state;
  start();
}());

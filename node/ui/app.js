// The rdbsync dashboard: polls /ui/api/overview once a second from the node that served
// the page, or from any other member when that one does not answer. No dependencies.
"use strict";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 1500;
const CHART_SECONDS = 300;
const MAX_EVENTS = 150;

const state = {
  base: window.location.origin, // the node answering now
  urls: [window.location.origin], // every member's HTTP URL, learnt from the overview
  overview: null,
  events: new Map(), // "node/seq" -> event
  failures: 0,
  browseTouched: false,
};

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clock(at) {
  if (!at) return "-";
  const d = new Date(at * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function ago(at, now) {
  if (!at) return "";
  const s = Math.max(0, now - at);
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

async function fetchJson(base, path) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  try {
    const resp = await fetch(base + path, { credentials: "include", signal: ctrl.signal, cache: "no-store" });
    if (resp.status === 401) {
      window.location.reload(); // the session is gone: the page asks for the token again
      throw new Error("unauthorized");
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    return await resp.json();
  } finally {
    clearTimeout(timer);
  }
}

// Read from the current node; on failure, from each other member in turn.
async function fetchFromAny(path) {
  const order = [state.base, ...state.urls.filter((u) => u !== state.base)];
  let lastError = null;
  for (const base of order) {
    try {
      const body = await fetchJson(base, path);
      state.base = base;
      return body;
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError || new Error("no node answers");
}

// ------------------------------------------------------------------ rendering

function nodeServing(st) {
  if (!st.reachable) return { word: "unreachable", cls: "bad" };
  const fences = st.fences || [];
  if (fences.length) return { word: "fenced: " + [...new Set(fences.map((f) => f.protocol))].sort().join(", "), cls: "warn" };
  if (!st.quorum) return { word: "no quorum", cls: "warn" };
  return { word: "serving", cls: "ok" };
}

function renderRing(ov) {
  const box = $("ring-cards");
  box.replaceChildren();
  const nodes = ov.nodes.map((v) => v.status);
  const up = nodes.filter((n) => n.reachable).length;
  $("ring-summary").textContent = `${nodes.length} nodes, ${up} reachable, leader: ${ov.leader || "none"}`;
  for (const st of nodes) {
    const isLeader = st.reachable && st.role === "leader";
    const serving = nodeServing(st);
    const rows = st.reachable
      ? [
          ["Role", st.role], ["Term", st.term], ["Commit / applied", `${st.commit_index} / ${st.applied_index}`],
          ["Revision", st.revision], ["Quorum", st.quorum ? "yes" : "NO"], ["Sees leader", st.leader || "none"],
        ]
      : [["Error", st.error || "no answer"], ["Raft", st.raft_address]];
    const dl = el("dl", {});
    for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v }));
    const card = el(
      "article",
      {
        class: `card node ${serving.cls}${isLeader ? " leader" : ""}`,
        "data-node": st.id, "data-reachable": String(!!st.reachable), "data-role": st.role || "unknown",
        tabindex: 0, "aria-label": `${st.id}: ${isLeader ? "leader, " : ""}${serving.word}`,
      },
      el("h3", {}, st.id, isLeader ? el("span", { class: "badge", text: "Leader" }) : null),
      el("p", { class: `serving ${serving.cls}`, "data-serving": serving.word }, el("strong", { text: serving.word })),
      dl,
    );
    box.append(card);
  }
}

function renderFences(ov) {
  const body = $("fences-active").tBodies[0];
  body.replaceChildren();
  const now = ov.at;
  let count = 0;
  for (const view of ov.nodes) {
    const st = view.status;
    for (const f of st.fences || []) {
      count += 1;
      body.append(el("tr", { "data-node": st.id, "data-consumer": f.protocol, class: "fence" },
        el("td", {}, f.protocol, f.kind && f.kind !== "protocol" ? ` (${f.kind})` : ""),
        el("td", { text: st.id }),
        el("td", { text: f.vservers ? f.vservers.join(", ") : "all" }),
        el("td", { text: f.table === "*" ? "node-wide" : f.table }),
        el("td", {}, el("strong", { text: f.cause })),
        el("td", { text: `${clock(f.since)} (${ago(f.since, now)})` }),
        el("td", { text: f.message || "" })));
    }
  }
  if (!count) body.append(el("tr", { class: "empty" }, el("td", { colspan: 7, text: "Nothing is fenced on any reachable node." })));

  const lifted = $("fences-lifted").tBodies[0];
  lifted.replaceChildren();
  const events = [...state.events.values()].sort((a, b) => b.at - a.at || b.seq - a.seq);
  const rows = events.filter((e) => e.type === "unfenced").slice(0, 30);
  for (const e of rows) {
    const was = e.was || {};
    lifted.append(el("tr", { "data-node": e.node, "data-consumer": e.protocol, class: "lifted" },
      el("td", { text: e.protocol }), el("td", { text: e.node }),
      el("td", { text: was.table === "*" ? "node-wide" : was.table || "-" }), el("td", { text: was.cause || "-" }),
      el("td", { text: clock(was.since) }), el("td", { text: `${clock(e.at)} (${ago(e.at, now)})` }),
      el("td", { text: whyLifted(e, events) })));
  }
  if (!rows.length) lifted.append(el("tr", { class: "empty" }, el("td", { colspan: 7, text: "No fence lifted yet." })));
}

// Why a fence was lifted: what else the policy decided in the same step on that node.
function whyLifted(e, events) {
  const sameStep = events.filter((o) => o.node === e.node && o.at === e.at && o.type !== "unfenced" && o.type !== "fenced");
  const reasons = sameStep.map((o) => o.type.replace(/_/g, " "));
  const was = e.was || {};
  if (!reasons.length) {
    if (was.table && was.table !== "*") return `${was.table} resynced (${was.cause || "failure"} cleared)`;
    return `${was.cause || "condition"} cleared`;
  }
  return reasons.join(", ");
}

function renderTables(ov) {
  const box = $("tables-nodes");
  box.replaceChildren();
  const now = ov.at;
  for (const view of ov.nodes) {
    const st = view.status;
    const card = el("article", { class: "card", "data-node": st.id }, el("h3", { text: `${st.id} blade tables` }));
    if (!st.reachable) {
      card.append(el("p", { class: "serving bad" }, el("strong", { text: "unreachable" }), ` (${st.error || "no answer"})`));
      box.append(card);
      continue;
    }
    const table = el("table", {});
    table.append(el("thead", {}, el("tr", {}, ...["Table", "Blade", "State", "Applied rev", "Lag", "Drift", "Last full resync"].map(
      (h) => el("th", { scope: "col", text: h })))));
    const tbody = el("tbody", {});
    for (const [name, t] of Object.entries(st.tables || {})) {
      const cls = t.state === "in_sync" ? "ok" : t.state === "failed" ? "bad" : "warn";
      const full = t.last_full_resync;
      tbody.append(el("tr", { "data-table": name },
        el("td", { text: name }), el("td", { text: t.blade }),
        el("td", { class: cls }, el("strong", { text: t.state.replace(/_/g, " ") })),
        el("td", { text: t.applied_revision }), el("td", { text: t.lag }), el("td", { text: t.drift_count }),
        el("td", { text: full ? `${full.kind} at rev ${full.revision}, ${ago(full.at, now)}` : "never" })));
    }
    table.append(tbody);
    card.append(el("div", { class: "scroll" }, table));
    const agents = agentTable(st.agents || {});
    if (agents) card.append(el("h4", { text: `${st.id} agents and file sinks` }), el("div", { class: "scroll" }, agents));
    box.append(card);
  }
}

// Daemons in their own process (agents) and file sinks, which the node treats like its
// blade tables: state in words, applied revision, lag, last report, failure, fences.
const AGENT_CLASS = { ok: "ok", loading: "warn", missing: "warn", lost: "bad", failed: "bad" };

function agentTable(agents) {
  const names = Object.keys(agents).sort();
  if (!names.length) return null;
  const table = el("table", { class: "agents" });
  table.append(el("thead", {}, el("tr", {}, ...["Agent", "Tables", "State", "Applied rev", "Lag", "Last report", "Error", "Fences"].map(
    (h) => el("th", { scope: "col", text: h })))));
  const tbody = el("tbody", {});
  for (const name of names) {
    const a = agents[name];
    const age = a.last_report_age;
    const fenced = a.fenced || [];
    tbody.append(el("tr", { "data-agent": name, "data-state": a.state },
      el("td", { text: name }), el("td", { text: (a.tables || []).join(", ") }),
      el("td", { class: AGENT_CLASS[a.state] || "warn" }, el("strong", { text: a.state === "ok" ? "in sync" : a.state })),
      el("td", { text: a.applied_revision }), el("td", { text: a.lag_revisions ?? "-" }),
      el("td", { text: age === null || age === undefined ? "never" : `${age.toFixed(1)} s ago` }),
      el("td", { text: a.error || "-" }),
      el("td", { class: fenced.length ? "bad" : "" }, fenced.length ? el("strong", { text: `fenced: ${fenced.join(", ")}` }) : "none")));
  }
  table.append(tbody);
  return table;
}

function renderEvents(ov) {
  for (const view of ov.nodes) {
    for (const e of view.events || []) state.events.set(`${e.node}/${e.seq}`, e);
  }
  // Keep the map bounded: the newest MAX_EVENTS * 4.
  if (state.events.size > MAX_EVENTS * 4) {
    const keep = [...state.events.entries()].sort((a, b) => b[1].at - a[1].at).slice(0, MAX_EVENTS * 2);
    state.events = new Map(keep);
  }
  const body = $("event-list").tBodies[0];
  body.replaceChildren();
  const events = [...state.events.values()].sort((a, b) => b.at - a.at || b.seq - a.seq).slice(0, MAX_EVENTS);
  for (const e of events) {
    const details = eventDetails(e);
    const bad = ["fenced", "resync_failed", "quorum_lost", "stalled", "fence_changed"].includes(e.type);
    body.append(el("tr", { "data-event": e.type, "data-node": e.node },
      el("td", { text: clock(e.at) }), el("td", { text: e.node }),
      el("td", { class: bad ? "warn" : "ok" }, el("strong", { text: e.type.replace(/_/g, " ") })),
      el("td", { class: "details", text: details })));
  }
  if (!events.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: 4, text: "No events yet." })));
}

// An event's fields as "key=value" words; a nested fence (or the one lifted) is flattened.
function eventDetails(e) {
  const parts = [];
  for (const [k, v] of Object.entries(e)) {
    if (["type", "seq", "at", "node"].includes(k)) continue;
    if ((k === "fence" || k === "was") && v && typeof v === "object") {
      for (const key of ["table", "cause", "vservers", "message"]) {
        if (v[key] !== undefined && v[key] !== null) parts.push(`${k === "was" ? "was " : ""}${key}=${v[key]}`);
      }
    } else if (v !== null && v !== undefined) {
      parts.push(`${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    }
  }
  return parts.join(" ");
}

// ------------------------------------------------------------------ charts (inline SVG)

const DASHES = ["", "6 3", "2 3", "10 3 2 3", "1 2"];

function drawChart(svg, series, { unit, now }) {
  const W = 600, H = 180, L = 52, R = 12, T = 10, B = 24;
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    return n;
  };
  const t0 = now - CHART_SECONDS;
  let ymax = 0;
  for (const s of series) for (const [, y] of s.points) ymax = Math.max(ymax, y);
  ymax = ymax > 0 ? ymax * 1.15 : 1;
  const x = (t) => L + ((t - t0) / CHART_SECONDS) * (W - L - R);
  const y = (v) => H - B - (v / ymax) * (H - T - B);
  svg.append(mk("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "plot" }));
  for (const frac of [0, 0.5, 1]) {
    const v = ymax * frac;
    svg.append(mk("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    const label = mk("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" });
    label.textContent = unit(v);
    svg.append(label);
  }
  for (const [t, text] of [[t0, "-5 min"], [now, "now"]]) {
    const label = mk("text", { x: x(t), y: H - 6, "text-anchor": t === now ? "end" : "start", class: "axis" });
    label.textContent = text;
    svg.append(label);
  }
  series.forEach((s, i) => {
    const pts = s.points.filter(([t]) => t >= t0).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    if (!pts.length) return;
    svg.append(mk("polyline", { points: pts.join(" "), class: `line line${i % 5}`, "stroke-dasharray": DASHES[i % 5] }));
    const last = s.points[s.points.length - 1];
    const label = mk("text", { x: Math.min(x(last[0]) + 2, W - R - 2), y: y(last[1]) - 4, "text-anchor": "end", class: "serieslabel" });
    label.textContent = s.name;
    svg.append(label);
  });
}

function ms(v) { return v >= 1 ? `${v.toFixed(2)} s` : `${(v * 1000).toFixed(v < 0.01 ? 2 : 1)} ms`; }

function renderCharts(ov) {
  const now = ov.at;
  // Write rate: the revision is cluster-wide; use the longest history any node has.
  let rev = [];
  for (const v of ov.nodes) {
    const r = (v.series && v.series.revision) || [];
    if (r.length > rev.length) rev = r;
  }
  const rate = [];
  for (let i = 1; i < rev.length; i++) {
    const dt = rev[i][0] - rev[i - 1][0];
    if (dt > 0) rate.push([rev[i][0], Math.max(0, rev[i][1] - rev[i - 1][1]) / dt]);
  }
  const recent = rate.filter(([t]) => t >= now - 10);
  const avg = recent.length ? recent.reduce((a, [, v]) => a + v, 0) / recent.length : 0;
  $("writes-now").textContent = `: ${avg.toFixed(1)} revisions/s over the last 10 s`;
  drawChart($("chart-writes"), [{ name: "writes/s", points: rate }], { unit: (v) => v.toFixed(v < 10 ? 1 : 0), now });

  const lat = ov.nodes
    .filter((v) => v.series && v.series.blade_latency)
    .map((v) => ({ name: v.status.id, points: v.series.blade_latency.map((p) => [p.t, p.avg]), raw: v.series.blade_latency }));
  const parts = lat.map((s) => {
    const r = s.raw.filter((p) => p.t >= now - 60);
    if (!r.length) return `${s.name}: no commits in the last minute`;
    const n = r.reduce((a, p) => a + p.count, 0);
    const mean = r.reduce((a, p) => a + p.avg * p.count, 0) / n;
    const peak = Math.max(...r.map((p) => p.max));
    return `${s.name}: mean ${ms(mean)}, max ${ms(peak)} (${n} revisions, last minute)`;
  });
  $("latency-now").textContent = ": per node, mean per second";
  $("latency-legend").textContent = parts.join("; ") || "no data yet";
  drawChart($("chart-latency"), lat, { unit: ms, now });
}

// ------------------------------------------------------------------ browse

function fillBrowseChoices(ov) {
  const nodeSel = $("browse-node"), tableSel = $("browse-table");
  const ids = ov.nodes.map((v) => v.status.id);
  if ([...nodeSel.options].map((o) => o.value).join() !== ids.join()) {
    const keep = nodeSel.value;
    nodeSel.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
    if (ids.includes(keep)) nodeSel.value = keep;
  }
  const some = ov.nodes.find((v) => v.status.reachable && v.status.tables);
  if (some && !tableSel.options.length) {
    tableSel.replaceChildren(...Object.entries(some.status.tables).map(([name, t]) => el("option", { value: name, text: `${name} (${t.blade})` })));
  }
}

function rowText(v) { return JSON.stringify(v); }

async function browse() {
  const node = $("browse-node").value, table = $("browse-table").value;
  if (!node || !table) return;
  $("browse-summary").textContent = `Loading ${table} on ${node}...`;
  let body;
  try {
    body = await fetchFromAny(`/ui/api/browse?node=${encodeURIComponent(node)}&table=${encodeURIComponent(table)}`);
  } catch (err) {
    $("browse-summary").textContent = `Cannot browse: ${err.message}`;
    return;
  }
  const m = body.management, b = body.blade;
  $("browse-mgmt-h").textContent = `Management table ${m.table} (revision ${m.revision}, ${Object.keys(m.rows).length} rows)`;
  $("browse-blade-h").textContent = b.reachable
    ? `${b.node} ${b.blade} table ${b.table} (applied revision ${b.revision}, ${b.state}, ${Object.keys(b.rows).length} rows)`
    : `${b.node} ${b.blade} table ${b.table}: unreachable (${b.error})`;
  const mbody = $("browse-mgmt").tBodies[0], bbody = $("browse-blade").tBodies[0];
  mbody.replaceChildren();
  bbody.replaceChildren();
  for (const [key, r] of Object.entries(m.rows)) {
    const onBlade = Object.prototype.hasOwnProperty.call(b.rows, key);
    mbody.append(el("tr", { "data-key": key, class: onBlade ? "" : "dim" },
      el("td", { text: key }), el("td", { text: r.mod_revision }), el("td", { class: "json", text: rowText(r.value) })));
  }
  let same = 0, differs = 0, extra = 0;
  for (const [key, row] of Object.entries(b.rows)) {
    const src = m.rows[key];
    let verdict;
    if (!src) { verdict = "not in management table"; extra += 1; }
    else if (rowText(src.value) === rowText(row)) { verdict = "same"; same += 1; }
    else { verdict = "differs (projection or drift)"; differs += 1; }
    bbody.append(el("tr", { "data-key": key, "data-verdict": verdict },
      el("td", { text: key }), el("td", { class: verdict === "same" ? "ok" : "warn", text: verdict }),
      el("td", { class: "json", text: rowText(row) })));
  }
  const absent = Object.keys(m.rows).filter((k) => !Object.prototype.hasOwnProperty.call(b.rows, k)).length;
  $("browse-summary").textContent =
    `${table} on ${node}: ${same} same, ${differs} differ, ${extra} only on the blade, ${absent} not projected to this node.`;
}

// ------------------------------------------------------------------ loop

function setConnection(ok, text) {
  const s = $("conn-state");
  s.textContent = ok ? "live" : "stale";
  s.className = ok ? "state-ok" : "state-bad";
  $("source").textContent = text;
}

async function tick() {
  const started = Date.now();
  try {
    const ov = await fetchFromAny("/ui/api/overview");
    state.overview = ov;
    state.failures = 0;
    const urls = ov.nodes.map((v) => v.status.http_url).filter(Boolean);
    state.urls = [...new Set([window.location.origin, ...urls])];
    const via = state.base === window.location.origin ? "" : " (this page's node does not answer)";
    // Back to the page's own node once the others see it answer again.
    if (ov.nodes.some((v) => v.status.http_url === window.location.origin && v.status.reachable)) {
      state.base = window.location.origin;
    }
    setConnection(true, `data from ${ov.served_by}${via}`);
    $("updated").textContent = `updated ${clock(ov.at)}`;
    $("logout").hidden = !ov.auth;
    renderEvents(ov);
    renderRing(ov);
    renderFences(ov);
    renderTables(ov);
    renderCharts(ov);
    fillBrowseChoices(ov);
    if (!state.browseTouched && $("browse-table").value) {
      state.browseTouched = true;
      browse();
    }
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (err) {
    state.failures += 1;
    setConnection(false, `no node answers (${err.message}); retrying`);
  } finally {
    // A fixed rate: one update a second even when a fetch takes a while.
    setTimeout(tick, Math.max(50, POLL_MS - (Date.now() - started)));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("browse-form").addEventListener("submit", (ev) => { ev.preventDefault(); state.browseTouched = true; browse(); });
  tick();
});

// prodsmart-edge console: polls /api/status and draws it. Every value from a PLC, a broker or
// Prodsmart goes into the page through textContent or a numeric SVG attribute, never as markup.
"use strict";

const POLL_MS = 1500;
const SVG = "http://www.w3.org/2000/svg";
const TYPE_COLOURS = ["#d04a3a", "#e08a1e", "#8e44ad", "#c0392b", "#b7950b", "#a04000", "#7d3c98"];
let updates = 0;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 120) return Math.round(seconds) + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function clock(epoch) {
  if (!epoch) return "-";
  return new Date(epoch * 1000).toLocaleTimeString([], {hour12: false});
}

function show(value) {
  if (value === null || value === undefined) return "-";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function typeColour(type) {
  let h = 0;
  for (const ch of String(type)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return TYPE_COLOURS[h % TYPE_COLOURS.length];
}

function badge(state, type) {
  const text = state === null ? "no run state" : state === "stopped" && type ? "stopped: " + type : state;
  return el("span", {class: "badge " + (state || "none")}, text);
}

function route() {
  const hash = location.hash || "#/";
  if (hash.startsWith("#/m/")) return {page: "machine", code: decodeURIComponent(hash.slice(4))};
  if (hash === "#/uplink") return {page: "uplink"};
  return {page: "overview"};
}

function lastCall(call, now) {
  const td = el("td");
  if (!call) { td.textContent = "none yet"; return td; }
  const ok = call.status >= 200 && call.status < 300;
  td.append(el("span", {class: ok ? "ok-status" : "bad-status"},
                call.status ? "HTTP " + call.status : "no answer"),
            document.createTextNode(" " + call.kind + ", " + age(now - call.at) + " ago"),
            el("div", {class: "answer"}, call.answer));
  return td;
}

function drawAlerts(data) {
  const box = clear(document.getElementById("alerts"));
  for (const text of data.alerts) box.append(el("div", {}, text));
  box.hidden = data.alerts.length === 0;
}

function stateColour(state, type) {
  return state === "running" ? "var(--run)" : state === "stopped" ? typeColour(type || "stopped") : "var(--unknown)";
}

function lastHour(shares) {
  // A stacked bar of the last hour per state and downtime type, and the share running.
  const box = el("div", {class: "share"});
  const total = shares.reduce((sum, s) => sum + s[2], 0);
  if (!total) return box;
  const bar = svg("svg", {viewBox: "0 0 100 8", preserveAspectRatio: "none", class: "share-bar"});
  let x = 0;
  for (const [state, type, secs] of shares) {
    const w = secs / total * 100;
    const rect = svg("rect", {x: x.toFixed(2), y: 0, width: w.toFixed(2), height: 8,
                              fill: stateColour(state, type), class: "share-" + state});
    rect.append(svg("title", {}, (type ? state + ": " + type : state) + ", " + age(secs)));
    bar.append(rect);
    x += w;
  }
  const running = shares.filter(s => s[0] === "running").reduce((sum, s) => sum + s[2], 0);
  box.append(bar, el("span", {class: "small"}, "last " + age(total) + ": " +
                     Math.round(running / total * 100) + "% running"));
  return box;
}

function drawOverview(data) {
  const body = clear(document.querySelector("#machines tbody"));
  for (const [code, m] of Object.entries(data.machines)) {
    const tr = el("tr", {"data-machine": code, class: m.alerts.length ? "alerting" : ""});
    const link = el("a", {href: "#/m/" + encodeURIComponent(code)}, code);
    const name = el("td"); name.append(link, el("div", {class: "small"}, m.connection));
    const state = el("td"); state.append(badge(m.run.state, m.run.type), lastHour(m.run.last_hour || []));
    const alerts = el("td"); const list = el("ul", {class: "alert-list"});
    for (const a of m.alerts) list.append(el("li", {}, a));
    alerts.append(list);
    tr.append(name, state, el("td", {class: "small"}, m.run.since ? clock(m.run.since) : "-"),
              el("td", {class: "num read"}, show(m.read)), el("td", {class: "num acked"}, show(m.acked)),
              el("td", {class: "num lag"}, m.lag === null ? "up to date" : age(m.lag)),
              el("td", {class: "num queued"}, m.queued), lastCall(m.last_call, data.now), alerts);
    body.append(tr);
  }
}

function summary(box, items) {
  clear(box);
  for (const [label, value] of items) {
    const d = el("div"); d.append(el("b", {}, value), document.createTextNode(label)); box.append(d);
  }
}

function drawTimeline(detail, now) {
  const box = clear(document.getElementById("timeline"));
  const legend = clear(document.getElementById("timeline-legend"));
  const W = 1000, H = 60, segs = detail.timeline;
  box.setAttribute("viewBox", "0 0 " + W + " " + H);
  box.setAttribute("preserveAspectRatio", "none");
  if (!segs.length) { box.append(svg("text", {x: 10, y: 30}, "no run state recorded yet")); return; }
  const from = Math.max(segs[0][0], now - 4 * 3600), span = Math.max(now - from, 60);
  const seen = new Map();
  for (const [start, end, state, type] of segs) {
    const x = (Math.max(start, from) - from) / span * W;
    const w = Math.max(((Math.min(end, now) - Math.max(start, from)) / span) * W, 1.5);
    const colour = stateColour(state, type);
    const rect = svg("rect", {x: x.toFixed(2), y: 4, width: w.toFixed(2), height: H - 18, fill: colour,
                              class: "seg seg-" + state});
    const label = state === "stopped" && type ? "stopped: " + type : state;
    rect.append(svg("title", {}, label + ", " + clock(start) + " to " + clock(end)));
    box.append(rect);
    seen.set(label, colour);
  }
  box.append(svg("text", {x: 2, y: H - 2}, clock(from)), svg("text", {x: W - 60, y: H - 2}, clock(now)));
  for (const [label, colour] of seen) {
    const key = el("span", {class: "key"}); key.style.background = colour;
    legend.append(key, document.createTextNode(label));
  }
}

function bars(id, rows, series, limit) {
  const box = clear(document.getElementById(id));
  const W = 1000, H = 140, pad = 18;
  box.setAttribute("viewBox", "0 0 " + W + " " + H);
  box.setAttribute("preserveAspectRatio", "none");
  const shown = rows.slice(-90);
  let top = limit || 1;
  for (const r of shown) for (const s of series) top = Math.max(top, r[s.col]);
  box.append(svg("line", {x1: 0, y1: H - pad, x2: W, y2: H - pad, class: "axis"}));
  box.append(svg("text", {x: 2, y: 11}, Math.round(top) + " /min"));
  if (!shown.length) { box.append(svg("text", {x: 10, y: H / 2}, "no minutes recorded yet")); return; }
  const slot = W / Math.max(shown.length, 30), width = slot / series.length * 0.8;
  shown.forEach((r, i) => {
    series.forEach((s, j) => {
      const h = (r[s.col] / top) * (H - pad - 14);
      const rect = svg("rect", {x: (i * slot + j * width).toFixed(2), y: (H - pad - h).toFixed(2),
                                width: width.toFixed(2), height: Math.max(h, 0).toFixed(2), class: s.cls});
      rect.append(svg("title", {}, clock(r[0]) + ": " + r[s.col] + " " + s.label));
      box.append(rect);
    });
  });
  if (limit) {
    const y = (H - pad - (limit / top) * (H - pad - 14)).toFixed(2);
    box.append(svg("line", {x1: 0, y1: y, x2: W, y2: y, class: "budget-line"}));
  }
  box.append(svg("text", {x: 2, y: H - 3}, clock(shown[0][0])),
             svg("text", {x: W - 60, y: H - 3}, clock(shown[shown.length - 1][0])));
}

function drawMachine(data, code) {
  const m = data.machines[code], d = data.detail;
  document.getElementById("m-code").textContent = code;
  const state = document.getElementById("m-state");
  state.replaceWith(Object.assign(badge(m ? m.run.state : null, m ? m.run.type : null), {id: "m-state"}));
  if (!m || !d) { summary(document.getElementById("m-summary"), [["not in the configuration", code]]); return; }
  summary(document.getElementById("m-summary"), [
    ["count read", show(m.read)], ["acked by Prodsmart", show(m.acked)],
    ["lag", m.lag === null ? "up to date" : age(m.lag)], ["queued calls", m.queued],
    ["queued parameters", m.queued_parameters], ["dead letters", m.dead_letters],
    ["since", m.run.since ? clock(m.run.since) : "-"], ["operator offset", m.offset]]);
  drawTimeline(d, data.now);
  bars("counts", d.counts, [{col: 1, cls: "bar-read", label: "read"},
                            {col: 2, cls: "bar-delivered", label: "delivered"}], 0);
  const tags = clear(document.querySelector("#tags tbody"));
  for (const [role, t] of Object.entries(m.tags)) {
    const tr = el("tr", {"data-role": role});
    tags.append(tr);
    tr.append(el("td", {}, role), el("td", {class: "answer"}, t.tag),
                          el("td", {class: "answer value"}, t.quality === null ? "no reading yet" : show(t.value)),
                          el("td", {}, t.quality === null ? "-" : t.quality + (t.error ? ": " + t.error : "")),
                          el("td", {}, t.source_time ? clock(t.source_time) : "-"),
                          el("td", {}, t.age === null ? "-" : age(t.age) + " ago"));
  }
  const counters = clear(document.querySelector("#counters tbody"));
  for (const [role, c] of Object.entries(d.counters)) {
    const tr = el("tr");
    tr.append(el("td", {}, role), el("td", {class: "answer"}, c.tag), el("td", {}, c.mode),
              el("td", {class: "num"}, c.total), el("td", {class: "num"}, show(c.baseline)),
              el("td", {class: "num"}, show(c.pending_reset)), el("td", {class: "num"}, c.resets),
              el("td", {class: "num"}, c.wraps), el("td", {class: "num"}, c.jumps_refused));
    counters.append(tr);
  }
  const call = m.last_call;
  document.getElementById("m-call").textContent = call
    ? "POST " + call.kind + " " + JSON.stringify(call.body) + "\n-> " +
      (call.status ? "HTTP " + call.status : "no answer") + ": " + call.answer + "  (" + clock(call.at) + ")"
    : "no call sent since the agent started";
}

function drawUplink(data) {
  const conns = clear(document.querySelector("#connections tbody"));
  for (const [name, c] of Object.entries(data.connections)) {
    const tr = el("tr", {"data-connection": name}), st = el("td");
    st.append(el("span", {class: "badge " + (c.up ? "up" : "down")}, c.up ? "up" : "down"));
    tr.append(el("td", {}, name), el("td", {}, show(c.protocol)), st,
              el("td", {}, clock(c.since) + " (" + age(data.now - c.since) + ")"), el("td", {}, c.reason || "-"));
    conns.append(tr);
  }
  const u = data.uplink;
  summary(document.getElementById("u-summary"), [
    ["budget (calls a minute)", u.budget],
    ["paused", u.paused ? u.paused + " (" + age(u.pause_left) + " left)" : "no"],
    ["rate-limit pauses (429)", u.rate_limit_pauses], ["refused credentials (401/403)", u.auth_failures],
    ["dead letters", u.dead_letter_count]]);
  bars("calls", u.calls_per_minute, [{col: 1, cls: "bar-calls", label: "calls"}], u.budget);
  const dead = clear(document.querySelector("#dead tbody"));
  for (const x of u.dead_letters.slice().reverse()) {
    const tr = el("tr");
    tr.append(el("td", {}, x.id), el("td", {}, x.machine), el("td", {}, x.kind),
              el("td", {class: "bad-status"}, x.status), el("td", {class: "answer"}, x.response),
              el("td", {class: "answer"}, JSON.stringify(x.body)), el("td", {}, clock(x.failed_at)));
    dead.append(tr);
  }
}

async function refresh() {
  const r = route();
  for (const p of ["overview", "machine", "uplink"]) document.getElementById("page-" + p).hidden = p !== r.page;
  const live = document.getElementById("live");
  try {
    const url = "/api/status" + (r.page === "machine" ? "?machine=" + encodeURIComponent(r.code) : "");
    const response = await fetch(url, {cache: "no-store", credentials: "same-origin"});
    if (response.status === 401) { location.assign("/login"); return; }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    drawAlerts(data);
    if (r.page === "overview") drawOverview(data);
    else if (r.page === "machine") drawMachine(data, r.code);
    else drawUplink(data);
    updates += 1;
    document.body.dataset.updates = String(updates);
    live.className = "live ok";
    live.textContent = "live, " + clock(data.now);
    document.getElementById("footer").textContent = "prodsmart-edge " + data.version + ", up since " +
      clock(data.started) + (data.dry_run ? " (dry run: nothing is sent)" : "");
  } catch (err) {
    live.className = "live lost";
    live.textContent = "no answer from the agent (" + err.message + ")";
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, POLL_MS);
}

window.addEventListener("hashchange", refresh);
loop();

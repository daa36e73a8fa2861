// The ccproxyd status page: one request a second at most (/admin/status, and every 15th one /admin/usage
// instead), and PUT /admin/active-group to switch. With [[keys]] configured, open it as /ui?key=<an admin key>.
"use strict";

const KEY = new URLSearchParams(location.search).get("key");
const POLL_EVERY = 1000;
const USAGE_EVERY_NTH = 15;
const COLORS = ["#2e5bda", "#12805c", "#b54708", "#9e3bd1", "#0e7490", "#b42318", "#4d7c0f", "#7a5af8", "#667085"];

const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (KEY) headers["Authorization"] = "Bearer " + KEY;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { ...options, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const message = (data.error && (data.error.message || data.error)) || resp.statusText;
    throw new Error(`${resp.status}: ${message}`);
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "className") node.className = value; else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

function fill(tbody, rows, columns, empty) {
  const fresh = rows.length ? rows : [null];
  tbody.replaceChildren(...fresh.map((row) => row === null
    ? el("tr", { className: "empty" }, el("td", { colspan: String(columns) }, empty))
    : row));
}

const pad = (n) => String(n).padStart(2, "0");
const clock = (t) => { const d = new Date(t * 1000); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };
const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
const ms = (v) => (v >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms");

function duration(seconds) {
  seconds = Math.floor(seconds);
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function route(r) {
  const alias = r.alias || "–";
  return r.target ? `${alias} → ${r.target}` : alias;
}

// ---------------------------------------------------------------- status

let lastGroups = "";

function showStatus(s) {
  $("version").textContent = s.version;
  $("uptime").textContent = duration(s.uptime_s);
  $("workers").textContent = `${s.workers.ready}/${s.workers.configured}` + (s.workers.restarts ? ` (${s.workers.restarts} restarts)` : "");
  $("config").textContent = s.config;
  $("active-group").textContent = s.active_group;

  const groups = s.groups.map((g) => g.name).join("\n");
  if (groups !== lastGroups) {  // rebuild only on change, so an open dropdown is not reset every second
    lastGroups = groups;
    $("group-select").replaceChildren(...s.groups.map((g) => el("option", { value: g.name }, g.name)));
    $("group-select").value = s.active_group;
  }

  $("in-flight-count").textContent = String(s.in_flight.length);
  fill($("in-flight").tBodies[0], s.in_flight.map((r) => el("tr", { "data-request-id": r.request_id },
    el("td", {}, clock(r.time)), el("td", {}, r.protocol || r.action), el("td", {}, r.group || "–"),
    el("td", {}, route(r)), el("td", { className: "num" }, ms(r.duration_ms)))), 5, "nothing in flight");

  fill($("recent").tBodies[0], s.recent.map((r) => el("tr", { "data-request-id": r.request_id },
    el("td", {}, clock(r.time)), el("td", {}, r.protocol || r.action), el("td", {}, r.group || "–"), el("td", {}, route(r)),
    el("td", { className: r.status >= 400 || r.error ? "status-bad" : "status-ok" },
      String(r.status) + (r.failovers ? ` (${r.failovers} failover${r.failovers > 1 ? "s" : ""})` : "") + (r.error && r.status < 400 ? ` ${r.error}` : "")),
    el("td", { className: "num" }, ms(r.duration_ms)),
    el("td", { className: "num" }, `${num(r.input_tokens)} / ${num(r.output_tokens)}`),
    el("td", { className: "mono" }, r.request_id))), 8, "no requests yet");

  fill($("targets").tBodies[0], s.targets.map((t) => {
    const cooling = t.cooldowns.map((c) => `${Math.ceil(c.seconds_left)}s left (${c.reason}${c.key ? `, key #${c.key}` : ""}${c.model ? "" : ", whole provider"})`).join("; ");
    return el("tr", { "data-target": t.target },
      el("td", {}, t.target), el("td", {}, t.protocol || "–"),
      el("td", {}, el("span", { className: `pill ${t.health}` }, t.health)),
      el("td", { className: "cooldown" }, cooling || "–"),
      el("td", { className: "num" }, num(t.requests)), el("td", { className: "num" }, num(t.errors)),
      el("td", { className: "num" }, num(t.failovers)),
      el("td", { className: "num" }, `${num(t.input_tokens)} / ${num(t.output_tokens)}`));
  }), 8, "no targets configured");

  fill($("mcp").tBodies[0], s.mcp.map((m) => el("tr", { "data-server": m.name },
    el("td", {}, m.name), el("td", { title: m.error || "" }, m.state), el("td", { className: "num" }, m.tools === null ? "–" : String(m.tools)))),
    3, "no MCP servers configured");
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
  $("live").classList.toggle("stale", Boolean(message));
}

async function loadStatus() {
  try {
    showStatus(await api("/admin/status"));
    showError("");
  } catch (e) {
    showError(`cannot read the status: ${e.message}`);
  }
}

// ---------------------------------------------------------------- usage chart

let chart = null;

function chartWidth() {
  return Math.max(320, $("usage-chart").clientWidth);
}

async function loadUsage() {
  const metric = $("usage-metric").value;
  let usage;
  try {
    usage = await api(`/admin/usage?window=${$("usage-window").value}&by=${$("usage-by").value}`);
  } catch (e) {
    $("usage-note").textContent = e.message;
    return;
  }
  $("usage-note").textContent = usage.note || (usage.series.length ? "" : "no usage recorded in this window");
  const data = [usage.times, ...usage.series.map((s) => s[metric])];
  const points = usage.series.reduce((n, s) => n + s[metric].filter((v) => v > 0).length, 0);
  const opts = {
    width: chartWidth(),
    height: 260,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [{}, { label: metric, size: 60 }],
    series: [{}, ...usage.series.map((s, i) => ({
      label: s.name, stroke: COLORS[i % COLORS.length], width: 2, fill: COLORS[i % COLORS.length] + "22",
      points: { show: true, size: 5 },
    }))],
  };
  if (chart) chart.destroy();
  chart = new uPlot(opts, data, $("usage-chart"));
  $("usage-chart").dataset.points = String(points);
  $("usage-chart").dataset.series = usage.series.map((s) => s.name).join(",");
}

let tick = 0;

async function poll() {
  await (tick++ % USAGE_EVERY_NTH === 1 ? loadUsage() : loadStatus());
  setTimeout(poll, POLL_EVERY);
}

// ---------------------------------------------------------------- controls

$("switch-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const group = $("group-select").value;
  $("switch-group").disabled = true;
  $("switch-result").textContent = `switching to ${group}…`;
  try {
    const r = await api("/admin/active-group", { method: "PUT", body: { group } });
    $("active-group").textContent = r.active_group;
    $("switch-result").textContent = `active group is now ${r.active_group} (saved to ${r.config})`;
  } catch (e) {
    $("switch-result").textContent = `not switched: ${e.message}`;
  } finally {
    $("switch-group").disabled = false;
  }
});

$("reload").addEventListener("click", async () => {
  $("reload").disabled = true;
  try {
    await api("/admin/reload", { method: "POST", body: {} });
    $("switch-result").textContent = "config reloaded";
    lastGroups = "";
  } catch (e) {
    $("switch-result").textContent = `reload failed: ${e.message}`;
  } finally {
    $("reload").disabled = false;
  }
});

for (const id of ["usage-metric", "usage-by", "usage-window"]) $(id).addEventListener("change", loadUsage);
window.addEventListener("resize", () => { if (chart) chart.setSize({ width: chartWidth(), height: 260 }); });

poll();

/* meterhub page: a small single-page app over /api/v1, live via Server-Sent Events.
 * Views are functions that fetch what they show and build DOM with h() (never innerHTML, so
 * a meter id or a comment can never inject markup). The hash is the route: #/meter/ID etc. */
"use strict";

const API = "/api/v1";
const state = { user: null, live: null, view: null, onLive: {} };
const RANK = { customer: -1, viewer: 0, engineer: 1, operator: 2, admin: 3 };

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {  // the server refuses a change that is not JSON (no form posts)
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body === undefined ? {} : body);
  }
  const resp = await fetch(API + path, opts);
  let data = null;
  try { data = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok) {
    const message = (data && data.error && data.error.message) || `${resp.status} ${resp.statusText}`;
    if (resp.status === 401 && path !== "/session") showLogin();
    throw new ApiError(resp.status, message);
  }
  return data;
}

function toast(message, bad) {
  const t = h("div", { class: bad ? "toast bad" : "toast" }, message);
  document.getElementById("toasts").appendChild(t);
  setTimeout(() => t.remove(), bad ? 7000 : 3500);
}

function can(role) { return state.user && RANK[state.user.role] >= RANK[role]; }

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
function when(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }
function num(v, digits) {
  if (v === null || v === undefined) return "—";
  return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits ?? 3 });
}
function money(v) {
  if (v === null || v === undefined) return "—";
  const n = Number(v);
  const text = Math.abs(n).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  return `${n < 0 ? "−" : ""}¥${text}`;
}

/** One health figure as a person reads it: numbers and flat objects inline, deeper objects
 * (per-meter or per-bus maps) as a count with the details in the tooltip. */
function healthValue(v) {
  if (v === null || typeof v !== "object") return h("span", {}, String(v));
  const entries = Object.entries(v);
  if (entries.every(([, x]) => x === null || typeof x !== "object")) {
    return h("span", {}, entries.map(([k, x]) => `${k.replace(/_/g, " ")} ${x}`).join(" · "));
  }
  const bad = entries.filter(([, x]) => x && typeof x === "object" && (x.state && x.state !== "ok")).length;
  return h("span", { title: JSON.stringify(v, null, 1) }, `${entries.length}`, bad ? h("span", { class: "error" }, ` (${bad} not ok)`) : "");
}
function badge(text, cls) { return h("span", { class: `badge ${cls || text}` }, text); }
function relayBadge(relay) {
  if (relay === "open") return badge("open", "bad");
  if (relay === "closed") return badge("closed", "ok");
  return badge(relay || "unknown", "neutral");
}
function val(values, q) { return values && values[q] ? values[q].value : null; }

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty || "nothing here");
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith("#") ? "num" : "" }, x.replace(/#$/, ""))))),
    h("tbody", {}, rows)));
}

function section(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
}

// ------------------------------------------------------------------ session

function showLogin() {
  state.user = null;
  stopLive();
  document.getElementById("login").hidden = false;
  document.getElementById("view").replaceChildren();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("login-name").focus();
}

async function start() {
  try {
    const me = await api("GET", "/me");
    signedIn(me.user);
  } catch (e) {
    if (e.status !== 401) toast(e.message, true);
    showLogin();
  }
}

function signedIn(user) {
  state.user = user;
  document.getElementById("login").hidden = true;
  const customer = user.role === "customer";  // their own page only (customer.js)
  document.getElementById("nav").hidden = customer;
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = `${user.name} · ${user.role}`;
  document.getElementById("nav-admin").hidden = !can("admin");
  document.getElementById("live-state").hidden = customer;
  if (!customer) startLive();
  route();
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("login-error");
  err.hidden = true;
  try {
    const out = await api("POST", "/session", {
      name: document.getElementById("login-name").value,
      password: document.getElementById("login-password").value,
    });
    document.getElementById("login-password").value = "";
    signedIn(out.user);
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
});

document.getElementById("logout").addEventListener("click", async () => {
  await api("DELETE", "/session").catch(() => null);
  showLogin();
});

// ------------------------------------------------------------------ live feed

function startLive() {
  stopLive();
  const es = new EventSource(`${API}/live`);
  const mark = document.getElementById("live-state");
  const setMark = (on, text) => {
    mark.className = `live ${on ? "on" : "off"}`;
    mark.querySelector(".label").textContent = text;
  };
  es.onopen = () => setMark(true, "live");
  es.onerror = () => setMark(false, "reconnecting");
  es.addEventListener("unavailable", () => setMark(false, "database unreachable"));
  for (const kind of ["snapshot", "gateway", "meter", "review"]) {
    es.addEventListener(kind, (ev) => {
      const data = JSON.parse(ev.data);
      if (kind === "snapshot" || kind === "review") {
        setReviewCount(kind === "snapshot" ? data.open_reviews : data.open);
      }
      const handler = state.onLive[kind];
      if (handler) handler(data);
    });
  }
  state.live = es;
}

function stopLive() {
  if (state.live) state.live.close();
  state.live = null;
}

function setReviewCount(n) {
  const pill = document.getElementById("review-count");
  pill.textContent = n;
  pill.hidden = !n;
}

// ------------------------------------------------------------------ router

const routes = [
  [/^#\/fleet$/, viewFleet, "fleet"],
  [/^#\/meter\/(.+)$/, viewMeter, "fleet"],
  [/^#\/gateway\/(.+)$/, viewGateway, "fleet"],
  [/^#\/review$/, viewReview, "review"],
  [/^#\/accounts$/, viewAccounts, "accounts"],
  [/^#\/account\/(.+)$/, viewAccount, "accounts"],
  [/^#\/commands$/, viewCommands, "commands"],
  [/^#\/dead-letters$/, viewDeadLetters, "dead-letters"],
  [/^#\/admin$/, viewAdmin, "admin"],
];

async function route() {
  if (!state.user) return;
  if (state.user.role === "customer") return viewCustomer(document.getElementById("view"));
  const hash = location.hash || "#/fleet";
  state.onLive = {};
  if (state.cleanup) { state.cleanup(); state.cleanup = null; }
  for (const [re, view, nav] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === nav);
    const target = document.getElementById("view");
    try {
      await view(target, ...m.slice(1).map(decodeURIComponent));
    } catch (e) {
      if (e.status !== 401) target.replaceChildren(section("Something went wrong", h("p", { class: "error" }, e.message)));
    }
    return;
  }
  location.hash = "#/fleet";
}
window.addEventListener("hashchange", route);

// ------------------------------------------------------------------ fleet

async function viewFleet(target) {
  const [gws, meters, reviews] = await Promise.all([
    api("GET", "/gateways"), api("GET", "/meters?limit=500"), api("GET", "/review-items?limit=1"),
  ]);
  const gateways = new Map(gws.gateways.map((g) => [g.gateway, g]));
  const online = () => [...gateways.values()].filter((g) => g.status === "online").length;
  const statOnline = h("div", { class: "n", "data-testid": "stat-online" }, online());
  const statOffline = h("div", { class: "n", "data-testid": "stat-offline" }, gateways.size - online());
  const gwGrid = h("div", { class: "grid" });
  const drawGateways = () => {
    gwGrid.replaceChildren(...[...gateways.values()].map(gatewayCard));
    statOnline.textContent = online();
    statOffline.textContent = gateways.size - online();
  };
  drawGateways();

  const rows = new Map();
  const meterRow = (m) => {
    const row = h("tr", { class: "click", "data-meter": m.meter, onclick: () => { location.hash = `#/meter/${encodeURIComponent(m.meter)}`; } },
      h("td", {}, h("a", { href: `#/meter/${encodeURIComponent(m.meter)}` }, m.meter)),
      h("td", { class: "muted" }, m.gateway || "—"),
      h("td", { class: "num", "data-q": "power_active_total" }, num(val(m.values, "power_active_total"))),
      h("td", { class: "num", "data-q": "voltage_a" }, num(val(m.values, "voltage_a"), 1)),
      h("td", { class: "num", "data-q": "energy_import_total" }, num(val(m.values, "energy_import_total"), 2)),
      h("td", {}, m.relay ? relayBadge(m.relay) : "—"),
      h("td", { class: "muted", "data-q": "last_seen" }, ago(m.last_seen)),
      h("td", {}, m.open_reviews ? badge(`${m.open_reviews} open`, "open") : ""));
    rows.set(m.meter, row);
    return row;
  };
  const meterTable = table(["Meter", "Gateway", "Power kW#", "Voltage V#", "Energy kWh#", "Relay", "Last read", "Review"],
    meters.meters.map(meterRow), "no meters have reported yet");

  target.replaceChildren(
    h("div", { class: "spread" }, h("h1", {}, "Fleet"), h("span", { class: "muted" }, `${meters.total} meters`)),
    h("div", { class: "stats" },
      h("div", { class: "stat" }, statOnline, h("div", { class: "k" }, "gateways online")),
      h("div", { class: "stat" }, statOffline, h("div", { class: "k" }, "gateways offline")),
      h("div", { class: "stat" }, h("div", { class: "n" }, meters.total), h("div", { class: "k" }, "meters")),
      h("div", { class: "stat" }, h("div", { class: "n" }, reviews.total), h("div", { class: "k" }, "open review items"))),
    section("Gateways", gws.gateways.length ? gwGrid : h("p", { class: "empty" }, "no gateway has been heard from yet")),
    section("Meters", meterTable));

  state.onLive.gateway = (g) => {
    gateways.set(g.gateway, { ...(gateways.get(g.gateway) || {}), ...g });
    drawGateways();
  };
  state.onLive.meter = (m) => {
    const row = rows.get(m.meter);
    if (!row) return;
    for (const [q, digits] of [["power_active_total", 3], ["voltage_a", 1], ["energy_import_total", 2]]) {
      const cell = row.querySelector(`[data-q="${q}"]`);
      const v = val(m.values, q);
      if (v !== null && cell.textContent !== num(v, digits)) {
        cell.textContent = num(v, digits);
        cell.classList.remove("flash"); void cell.offsetWidth; cell.classList.add("flash");
      }
    }
    row.querySelector('[data-q="last_seen"]').textContent = ago(m.last_seen);
  };
  const tick = setInterval(() => { if (gateways.size) drawGateways(); }, 5000);
  state.cleanup = () => clearInterval(tick);
}

function gatewayCard(g) {
  const health = Object.entries(g.health || {}).slice(0, 8);
  return h("article", { class: "card", "data-gateway": g.gateway },
    h("div", { class: "spread" }, h("a", { href: `#/gateway/${encodeURIComponent(g.gateway)}` }, h("strong", {}, g.gateway)), badge(g.status, g.status)),
    h("dl", { class: "kv" },
      h("dt", {}, "site"), h("dd", {}, g.site || "—"),
      h("dt", {}, "last seen"), h("dd", {}, ago(g.last_seen)),
      h("dt", {}, "meters"), h("dd", {}, g.meters ?? "—"),
      g.offline_reason ? [h("dt", {}, "why"), h("dd", {}, g.offline_reason)] : null,
      health.map(([k, v]) => [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, healthValue(v))])));
}

async function viewGateway(target, name) {
  const enc = encodeURIComponent(name);
  const [g, meters] = await Promise.all([api("GET", `/gateways/${enc}?events=100`), api("GET", `/meters?gateway=${enc}&limit=500`)]);
  const card = h("div");
  const draw = (gw) => card.replaceChildren(gatewayCard(gw));
  draw(g);
  target.replaceChildren(
    h("div", { class: "spread" }, h("h1", {}, name), h("a", { href: "#/fleet" }, "← fleet")),
    h("div", { class: "grid wide" }, card,
      section("Sequence", h("dl", { class: "kv" },
        h("dt", {}, "highest seq"), h("dd", {}, g.max_seq ?? "—"),
        h("dt", {}, "batches"), h("dd", {}, g.batches),
        h("dt", {}, "duplicate batches"), h("dd", {}, g.duplicate_batches),
        h("dt", {}, "clock offset"), h("dd", {}, g.clock_offset_s === null ? "—" : `${num(g.clock_offset_s, 2)} s`)),
        g.gaps.length ? table(["Missing from#", "to#", "Noticed"], g.gaps.map((x) => h("tr", {}, h("td", { class: "num" }, x.from_seq), h("td", { class: "num" }, x.to_seq), h("td", {}, when(x.noticed_after)))))
          : h("p", { class: "muted" }, "no gaps in the sequence"))),
    section("Meters", table(["Meter", "Power kW#", "Voltage V#", "Last read"], meters.meters.map((m) => h("tr", {},
      h("td", {}, h("a", { href: `#/meter/${encodeURIComponent(m.meter)}` }, m.meter)),
      h("td", { class: "num" }, num(val(m.values, "power_active_total"))), h("td", { class: "num" }, num(val(m.values, "voltage_a"), 1)),
      h("td", { class: "muted" }, ago(m.last_seen)))), "no meters")),
    section("Events", table(["When", "Source", "Kind", "Meter", "Detail"], g.events.map((e) => h("tr", {},
      h("td", {}, when(e.at)), h("td", {}, e.source), h("td", {}, badge(e.kind, "warn")), h("td", {}, e.meter || ""), h("td", { class: "wrap" }, e.detail))),
      "no events")));
  state.onLive.gateway = (gw) => { if (gw.gateway === name) { Object.assign(g, gw); draw(g); } };
}

// ------------------------------------------------------------------ meter page

const RANGES = { "1h": 3600e3, "6h": 6 * 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };

async function viewMeter(target, meterId) {
  const enc = encodeURIComponent(meterId);
  let rangeKey = "1h";
  const meter = await api("GET", `/meters/${enc}`);
  const tiles = h("div", { class: "tiles" });
  const drawTiles = (values, lastSeen) => {
    const order = ["power_active_total", "voltage_a", "current_a", "energy_import_total", "power_factor_total", "frequency"];
    const keys = Object.keys(values).sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
    tiles.replaceChildren(...keys.map((q) => h("div", { class: "tile", "data-q": q },
      h("div", { class: "k" }, q.replace(/_/g, " ")),
      h("div", {}, h("span", { class: "v" }, num(values[q].value)), h("span", { class: "u" }, values[q].unit)))),
    h("div", { class: "tile" }, h("div", { class: "k" }, "last read"), h("div", { class: "v", "data-testid": "last-read" }, ago(lastSeen))));
  };
  drawTiles(meter.values, meter.last_seen);

  const powerSvg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  powerSvg.setAttribute("class", "chart"); powerSvg.setAttribute("data-testid", "chart-power");
  const voltSvg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  voltSvg.setAttribute("class", "chart"); voltSvg.setAttribute("data-testid", "chart-voltage");
  const barSvg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  barSvg.setAttribute("class", "chart"); barSvg.setAttribute("data-testid", "chart-intervals");
  const series = { power: [], volt: [] };
  let liveAppend = true;  // raw points only: a live reading does not belong in a bucket chart
  let span = { from: 0, to: 0 };
  const anomaliesBox = h("div");
  const commandsBox = h("div");

  const drawLines = () => {
    Charts.line(powerSvg, series.power, { kind: "power", unit: "kW", ...span });
    Charts.line(voltSvg, series.volt, { kind: "volt", unit: "V", ...span });
  };
  const load = async () => {
    const to = new Date(), from = new Date(to - RANGES[rangeKey]);
    const q = `from=${from.toISOString()}&to=${to.toISOString()}`;
    const [p, v, iv] = await Promise.all([
      api("GET", `/meters/${enc}/history?quantity=power_active_total&${q}`),
      api("GET", `/meters/${enc}/history?quantity=voltage_a&${q}`),
      api("GET", `/meters/${enc}/intervals?${rangeKey === "1h" || rangeKey === "6h" ? `from=${new Date(to - 86400e3).toISOString()}&to=${to.toISOString()}` : q}`),
    ]);
    span = { from: +from, to: +to };
    liveAppend = p.resolution === "raw";
    series.power = p.points.map((x) => ({ t: Date.parse(x.t), v: x.value }));
    series.volt = v.points.map((x) => ({ t: Date.parse(x.t), v: x.value }));
    drawLines();
    const ivFrom = Date.parse(iv.from), ivTo = Date.parse(iv.to);
    Charts.bars(barSvg, iv.intervals.map((b) => ({ start: Date.parse(b.start), end: Date.parse(b.end), kwh: Number(b.kwh), quality: b.quality, held: b.held, flags: b.flags })),
      iv.anomalies.map((a) => ({ t: Date.parse(a.at), rule: a.rule, reason: a.reason })), { from: ivFrom, to: ivTo });
    anomaliesBox.replaceChildren(table(["When", "Rule", "Reason", "Value#", "Expected#", "Review"],
      iv.anomalies.map((a) => h("tr", {}, h("td", {}, when(a.at)), h("td", {}, badge(a.rule, "warn")), h("td", { class: "wrap" }, a.reason),
        h("td", { class: "num" }, num(a.value)), h("td", { class: "num" }, num(a.expected)),
        h("td", {}, a.review_item_id ? h("a", { href: "#/review" }, `#${a.review_item_id}`) : ""))),
      "no anomalies in this range"));
  };
  const loadCommands = async () => {
    try {
      const cmds = await api("GET", `/commands?meter=${enc}&limit=20`);
      commandsBox.replaceChildren(commandTable(cmds.commands));
    } catch (e) {
      commandsBox.replaceChildren(h("p", { class: "muted" }, e.message));
    }
  };

  const seg = h("div", { class: "seg", role: "group", "aria-label": "time range" },
    Object.keys(RANGES).map((k) => h("button", { type: "button", class: k === rangeKey ? "on" : "", onclick: (ev) => {
      rangeKey = k;
      for (const b of seg.children) b.classList.toggle("on", b === ev.currentTarget);
      load().catch((e) => toast(e.message, true));
    } }, k)));

  // An operator's manual hold (billing keeps the relay there against its policy): shown with
  // who set it and until when, and a Release button for operators.
  const holdBox = h("div", { class: "hold-box" });
  const drawHold = (billing) => {
    const hold = billing && billing.hold;
    holdBox.replaceChildren(hold ? holdNote(hold, async () => {
      await releaseHold(meterId);
      await refreshRelay();
    }) : "");
  };
  const refreshRelay = async () => {
    try {
      const m = await api("GET", `/meters/${enc}`);
      drawHold(m.billing);
    } catch (e) { toast(e.message, true); }
    await loadCommands();
  };
  drawHold(meter.billing);

  const relayActions = can("operator") ? h("div", { class: "row" },
    h("button", { type: "button", class: "danger", onclick: () => sendCommand(meterId, "cutoff", refreshRelay) }, "Cut off"),
    h("button", { type: "button", onclick: () => sendCommand(meterId, "restore", refreshRelay) }, "Restore")) : null;

  target.replaceChildren(
    h("div", { class: "spread" },
      h("div", {}, h("h1", { "data-testid": "meter-title" }, meterId),
        h("div", { class: "muted" }, `gateway ${meter.gateway || "—"}${meter.protocol ? ` · ${meter.protocol}` : ""} · relay `,
          relayBadge(meter.relay || (meter.billing && meter.billing.relay_reported)),
          meter.billing ? [" · account ", h("a", { href: `#/account/${encodeURIComponent(meter.billing.account)}` }, meter.billing.account)] : null,
          meter.billing && meter.billing.customer_action_needed ? [" ", badge("customer must press the button", "warn")] : null)),
      seg),
    tiles,
    h("div", { class: "grid wide" },
      section("Active power (kW)", powerSvg),
      section("Voltage (V)", voltSvg)),
    section("Interval consumption (kWh)", barSvg,
      h("div", { class: "legend" }, h("span", {}, h("i", { class: "l-bar" }), "actual"), h("span", {}, h("i", { class: "l-est" }), "estimated / substituted"),
        h("span", {}, h("i", { class: "l-flag" }), "flagged or held for review (▲ anomaly)"))),
    section("Anomalies", anomaliesBox),
    section("Relay commands", holdBox, relayActions, commandsBox));
  await Promise.all([load(), loadCommands()]);

  state.onLive.meter = (m) => {
    if (m.meter !== meterId) return;
    drawTiles(m.values, m.last_seen);
    const now = Date.now();
    span = { from: now - RANGES[rangeKey], to: now };
    for (const [key, q] of [["power", "power_active_total"], ["volt", "voltage_a"]]) {
      const v = m.values[q];
      if (!v || !liveAppend) continue;
      const t = Date.parse(v.at);
      const s = series[key];
      if (!s.length || s[s.length - 1].t < t) s.push({ t, v: v.value });
      while (s.length && s[0].t < span.from) s.shift();
    }
    drawLines();
  };
  const onResize = () => drawLines();
  window.addEventListener("resize", onResize);
  state.cleanup = () => window.removeEventListener("resize", onResize);
}

async function sendCommand(meterId, action, after) {
  const reason = prompt(`${action === "cutoff" ? "Cut off" : "Restore"} ${meterId}: reason (kept in the audit trail)`, "");
  if (reason === null) return;
  try {
    const cmd = await api("POST", "/commands", { meter: meterId, action, reason });
    toast(`${action} queued as ${cmd.id}`);
    if (after) await after();
  } catch (e) { toast(e.message, true); }
}

/** "manual hold until … by …" with, for operators, a Release button calling release(). */
function holdNote(hold, release) {
  const held = hold.wanted === "open" ? "cut off" : "restored";
  return h("p", { class: "hold-note", "data-testid": "hold-note", "data-meter": hold.meter },
    badge(`held ${held}`, hold.wanted === "open" ? "bad" : "ok"), " ",
    `manual hold until ${hold.until ? when(hold.until) : "released"} by ${hold.by || "—"}`,
    hold.reason ? h("span", { class: "muted" }, ` (${hold.reason})`) : "",
    release && can("operator") ? [" ", h("button", { type: "button", onclick: release }, "Release")] : null);
}

async function releaseHold(meterId) {
  const reason = prompt(`Release the manual hold on ${meterId}: reason (kept in the audit trail)`, "");
  if (reason === null) return;
  try {
    const out = await api("POST", `/meters/${encodeURIComponent(meterId)}/hold/release`, { reason });
    toast(`manual hold on ${meterId} released; billing wants the relay ${out.relay_wanted}`);
  } catch (e) { toast(e.message, true); }
}

function commandTable(cmds) {
  return table(["Created", "Meter", "Account", "Purpose", "Action", "State", "Attempt#", "Relay read back", "Reason"],
    cmds.map((c) => h("tr", { "data-command": c.id },
      h("td", {}, when(c.created_at)),
      h("td", {}, h("a", { href: `#/meter/${encodeURIComponent(c.meter)}` }, c.meter)),
      h("td", {}, h("a", { href: `#/account/${encodeURIComponent(c.account)}` }, c.account)),
      h("td", {}, c.purpose), h("td", { class: "mono" }, c.action), h("td", {}, badge(c.state)),
      h("td", { class: "num" }, `${c.attempt}/${c.max_attempts}`), h("td", {}, c.relay_reported || "—"),
      h("td", { class: "wrap" }, c.reason || ""))),
    "no commands yet");
}

// ------------------------------------------------------------------ review queue

async function viewReview(target) {
  let status = "open";
  const box = h("div");
  const load = async () => {
    const out = await api("GET", `/review-items?status=${status}&limit=200`);
    box.replaceChildren(out.review_items.length ? h("div", { class: "grid wide" }, out.review_items.map(reviewCard)) : h("p", { class: "empty" }, status === "open" ? "The queue is empty. Nothing waits for a decision." : "nothing here"));
  };
  const reviewCard = (r) => {
    const comment = h("textarea", { rows: 2, placeholder: "comment (why)", "aria-label": "comment", maxlength: 2000 });
    const decide = async (verb) => {
      try {
        await api("POST", `/review-items/${r.id}/${verb}`, { comment: comment.value });
        toast(`review item #${r.id} ${verb === "confirm" ? "confirmed" : "dismissed"}`);
        await load();
      } catch (e) { toast(e.message, true); }
    };
    return h("article", { class: "card", "data-review": r.id },
      h("div", { class: "spread" }, h("strong", {}, `#${r.id} · `, h("a", { href: `#/meter/${encodeURIComponent(r.meter)}` }, r.meter)), badge(r.status)),
      h("p", {}, badge(r.rule, "warn"), " ", r.reason),
      h("dl", { class: "kv" }, h("dt", {}, "period"), h("dd", {}, `${when(r.period_start)} – ${new Date(r.period_end).toLocaleTimeString()}`),
        h("dt", {}, "opened"), h("dd", {}, ago(r.opened_at)),
        r.decided_by ? [h("dt", {}, "decided"), h("dd", {}, `${r.decided_by}, ${ago(r.decided_at)}`), h("dt", {}, "comment"), h("dd", {}, r.comment || "—")] : null),
      r.status === "open" && can("engineer") ? h("div", { class: "row decide" }, comment,
        h("button", { type: "button", class: "primary", onclick: () => decide("confirm") }, "Confirm fault"),
        h("button", { type: "button", onclick: () => decide("dismiss") }, "Dismiss")) : null);
  };
  const seg = h("div", { class: "seg" }, ["open", "confirmed", "dismissed", "all"].map((s) => h("button", { type: "button", class: s === status ? "on" : "", onclick: (ev) => {
    status = s;
    for (const b of seg.children) b.classList.toggle("on", b === ev.currentTarget);
    load().catch((e) => toast(e.message, true));
  } }, s)));
  target.replaceChildren(h("div", { class: "spread" }, h("h1", {}, "Review queue"), seg),
    h("p", { class: "muted" }, "Sudden surges, drops and suspected faults. A decision releases the held intervals to billing."), box);
  await load();
  state.onLive.review = () => { if (status === "open") load().catch(() => null); };
}

// ------------------------------------------------------------------ accounts

async function viewAccounts(target) {
  const search = h("input", { type: "search", placeholder: "account, name or meter", "aria-label": "search accounts" });
  const box = h("div");
  const load = async () => {
    const out = await api("GET", `/accounts?limit=200&q=${encodeURIComponent(search.value)}`);
    box.replaceChildren(table(["Account", "Name", "Balance#", "Days left#", "Risk", "Phase", "Meters", "Status"],
      out.accounts.map((a) => h("tr", { class: "click", "data-account": a.account, onclick: () => { location.hash = `#/account/${encodeURIComponent(a.account)}`; } },
        h("td", {}, h("a", { href: `#/account/${encodeURIComponent(a.account)}` }, a.account)),
        h("td", {}, a.name || "—"),
        h("td", { class: "num", "data-testid": "balance" }, money(a.balance)),
        h("td", { class: "num" }, a.days_of_credit === null ? "—" : a.days_of_credit),
        h("td", {}, badge(a.risk.grade)),
        h("td", {}, badge(a.phase, a.phase === "normal" ? "neutral" : a.phase)),
        h("td", { class: "muted" }, a.meters.join(", ")),
        h("td", {}, a.cut_off ? badge("cut off", "bad") : "", a.awaiting_approval ? badge("awaiting approval", "warn") : "", a.hold_reason ? h("span", { class: "muted" }, a.hold_reason) : ""))),
      "no accounts"));
  };
  let timer = null;
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => load().catch((e) => toast(e.message, true)), 250); });
  let alerts = [], approvals = [];
  try {
    [alerts, approvals] = await Promise.all([
      api("GET", "/alerts?limit=10").then((x) => x.alerts),
      api("GET", "/cutoff-approvals").then((x) => x.approvals)]);
  } catch { /* billing not migrated: the table below says so */ }
  const approve = async (group) => {
    try {
      await api("POST", "/cutoff-approvals", { group });
      toast(`mass cut-off of ${group} approved for 4 hours`);
      await viewAccounts(target);
    } catch (e) { toast(e.message, true); }
  };
  target.replaceChildren(h("div", { class: "spread" }, h("h1", {}, "Accounts"), search),
    approvals.length ? section("Mass cut-offs waiting for approval", table(["Group", "Households#", "Accounts waiting#", "Requested", ""],
      approvals.map((p) => h("tr", { "data-approval": p.group }, h("td", {}, p.group), h("td", { class: "num" }, p.households),
        h("td", { class: "num" }, p.accounts_waiting), h("td", {}, ago(p.requested_at)),
        h("td", {}, can("operator") ? h("button", { type: "button", class: "danger", onclick: () => approve(p.group) }, "Approve cut-off") : ""))))) : null,
    section(null, box),
    section("Latest alerts", alertTable(alerts)));
  await load();
}

const ALERT_CLASS = { cutoff: "bad", restored: "ok", final_warning: "bad" };

function alertTable(alerts) {
  return table(["When", "Account", "Kind", "Balance#", "Message"],
    alerts.map((a) => h("tr", {}, h("td", {}, when(a.created_at)),
      h("td", {}, h("a", { href: `#/account/${encodeURIComponent(a.account)}` }, a.account)),
      h("td", {}, badge(a.kind, ALERT_CLASS[a.kind] || "warn")), h("td", { class: "num" }, money(a.balance)), h("td", { class: "wrap" }, a.message))),
    "no alerts");
}

async function viewAccount(target, accountId) {
  const enc = encodeURIComponent(accountId);
  const [a, ledger, cmds] = await Promise.all([
    api("GET", `/accounts/${enc}`), api("GET", `/accounts/${enc}/ledger?limit=50`), api("GET", `/commands?account=${enc}&limit=20`),
  ]);
  const topupForm = can("operator") ? (() => {
    const amount = h("input", { name: "amount", inputmode: "decimal", placeholder: "50.00", required: true, "aria-label": "amount", pattern: "\\d+(\\.\\d{1,2})?" });
    const channel = h("select", { name: "channel", "aria-label": "channel" }, ["counter", "wechat", "alipay", "bank"].map((c) => h("option", { value: c }, c)));
    const reference = h("input", { name: "reference", placeholder: "payment reference", required: true, "aria-label": "payment reference" });
    reference.value = `web-${Date.now().toString(36)}`;
    return h("form", { class: "row", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const out = await api("POST", `/accounts/${enc}/topups`, { amount: amount.value.trim(), channel: channel.value, reference: reference.value.trim() });
        toast(`topped up ${money(out.entry.amount)}; balance ${money(out.balance)}`);
        await viewAccount(target, accountId);
      } catch (e) { toast(e.message, true); }
    } }, h("label", {}, "Amount (¥)", amount), h("label", {}, "Channel", channel), h("label", {}, "Reference", reference),
      h("button", { type: "submit", class: "primary" }, "Top up"));
  })() : null;
  target.replaceChildren(
    h("div", { class: "spread" }, h("h1", {}, a.name || a.account), h("a", { href: "#/accounts" }, "← all accounts")),
    h("div", { class: "grid wide" },
      section("Balance",
        h("div", { class: `balance ${Number(a.balance) < 0 ? "neg" : ""}`, "data-testid": "account-balance" }, money(a.balance)),
        h("dl", { class: "kv" },
          h("dt", {}, "days of credit"), h("dd", {}, a.days_of_credit === null ? "no usage yet" : `${a.days_of_credit} days`),
          h("dt", {}, "risk grade"), h("dd", {}, badge(a.risk.grade), ` score ${a.risk.score}`),
          h("dt", {}, "phase"), h("dd", {}, badge(a.phase, a.phase === "normal" ? "neutral" : a.phase), a.hold_reason ? ` ${a.hold_reason}` : ""),
          h("dt", {}, "tariff"), h("dd", {}, a.tariff),
          h("dt", {}, "meters"), h("dd", {}, a.meters.map((m) => h("a", { href: `#/meter/${encodeURIComponent(m)}` }, m, " "))),
          Number(a.arrears) ? [h("dt", {}, "arrears"), h("dd", {}, money(a.arrears))] : null,
          a.customer_action_needed ? [h("dt", {}, "customer"), h("dd", {}, badge("press the meter's button to restore", "warn"))] : null,
          (a.holds || []).map((x) => [h("dt", {}, x.meter), h("dd", {}, holdNote(x, async () => {
            await releaseHold(x.meter);
            await viewAccount(target, accountId);
          }))]))),
      section("Top up", topupForm || h("p", { class: "muted" }, "Top-ups need the operator role."))),
    section("Alerts", alertTable(a.alerts || [])),
    section("Ledger", table(["When", "Kind", "Amount#", "Balance after#", "Channel", "Reference", "By"],
      ledger.entries.map((e) => h("tr", {}, h("td", {}, when(e.created_at)), h("td", {}, e.kind),
        h("td", { class: "num" }, money(e.amount)), h("td", { class: "num" }, money(e.balance_after)),
        h("td", {}, e.channel || ""), h("td", { class: "mono" }, e.reference || (e.interval_start ? when(e.interval_start) : "")), h("td", { class: "muted" }, e.actor || ""))),
      "no entries")),
    section("Commands", commandTable(cmds.commands)));
}

// ------------------------------------------------------------------ commands, dead letters

async function viewCommands(target) {
  const states = ["", "queued", "sent", "accepted", "confirmed", "verified", "rejected", "timed_out", "expired", "cancelled", "failed"];
  const stateSel = h("select", { "aria-label": "state" }, states.map((s) => h("option", { value: s }, s || "any state")));
  const meter = h("input", { type: "search", placeholder: "meter id", "aria-label": "meter" });
  const count = h("p", { class: "muted" });
  const box = h("div");
  const load = async () => {
    const q = new URLSearchParams({ limit: "200" });
    if (stateSel.value) q.set("state", stateSel.value);
    if (meter.value.trim()) q.set("meter", meter.value.trim());
    const out = await api("GET", `/commands?${q}`);
    count.textContent = `${out.total} commands; newest first`;
    box.replaceChildren(commandTable(out.commands));
  };
  const reload = () => load().catch((e) => toast(e.message, true));
  stateSel.addEventListener("change", reload);
  meter.addEventListener("change", reload);
  target.replaceChildren(h("div", { class: "spread" }, h("h1", {}, "Command history"), h("div", { class: "row" }, meter, stateSel)),
    count, section(null, box));
  await load();
}

async function viewDeadLetters(target) {
  const out = await api("GET", "/dead-letters?limit=200");
  target.replaceChildren(h("h1", {}, "Dead letters"), h("p", { class: "muted" }, "Messages the collector refused, with the reason. The good readings beside them were stored."),
    section(null, table(["Received", "Gateway", "Reason", "Topic", "Payload"],
      out.dead_letters.map((d) => h("tr", {}, h("td", {}, when(d.received_at)), h("td", {}, d.gateway || "—"),
        h("td", { class: "wrap" }, d.reason), h("td", { class: "mono" }, d.topic),
        h("td", { class: "mono wrap" }, d.payload.length > 160 ? `${d.payload.slice(0, 160)}…` : d.payload))),
      "no dead letters")));
}

// ------------------------------------------------------------------ admin

async function viewAdmin(target) {
  if (!can("admin")) { target.replaceChildren(section("Admin", h("p", {}, "This needs the admin role."))); return; }
  const [users, tokens, audit] = await Promise.all([api("GET", "/users"), api("GET", "/tokens"), api("GET", "/audit?limit=50")]);
  const name = h("input", { placeholder: "name", "aria-label": "new user name", required: true });
  const role = h("select", { "aria-label": "role" }, ["viewer", "engineer", "operator", "admin"].map((r) => h("option", { value: r }, r)));
  const secret = h("p", { class: "mono" });
  const reload = () => viewAdmin(target);
  const userForm = h("form", { class: "row", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const out = await api("POST", "/users", { name: name.value.trim(), role: role.value });
      await reload();
      toast(`created ${out.user.name}; password: ${out.password} (shown once)`);
    } catch (e) { toast(e.message, true); }
  } }, name, role, h("button", { class: "primary", type: "submit" }, "Create user"));
  const tokenUser = h("select", { "aria-label": "token user" }, users.users.map((u) => h("option", { value: u.name }, u.name)));
  const label = h("input", { placeholder: "label (what uses it)", "aria-label": "token label" });
  const tokenForm = h("form", { class: "row", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const out = await api("POST", "/tokens", { user: tokenUser.value, label: label.value });
      secret.textContent = `token for ${out.user}: ${out.token} — copy it now, it is not shown again`;
    } catch (e) { toast(e.message, true); }
  } }, tokenUser, label, h("button", { class: "primary", type: "submit" }, "Create token"));
  target.replaceChildren(h("h1", {}, "Admin"),
    section("Users", userForm, table(["Name", "Role", "Disabled", "Created", "By"],
      users.users.map((u) => h("tr", {}, h("td", {}, u.name), h("td", {}, u.role), h("td", {}, u.disabled ? "yes" : ""), h("td", {}, when(u.created_at)), h("td", { class: "muted" }, u.created_by || ""))))),
    section("API tokens", tokenForm, secret, table(["#", "User", "Label", "Created", "Last used", "Revoked", ""],
      tokens.tokens.map((t) => h("tr", {}, h("td", {}, t.id), h("td", {}, t.user), h("td", {}, t.label), h("td", {}, when(t.created_at)),
        h("td", {}, ago(t.last_used_at)), h("td", {}, t.revoked_at ? when(t.revoked_at) : ""),
        h("td", {}, t.revoked_at ? "" : h("button", { type: "button", onclick: async () => {
          try { await api("DELETE", `/tokens/${t.id}`); await reload(); } catch (e) { toast(e.message, true); }
        } }, "Revoke")))))),
    section("Audit log", table(["When", "User", "Role", "Action", "Target", "Detail"],
      audit.entries.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.user), h("td", {}, e.role), h("td", { class: "mono" }, e.action),
        h("td", { class: "mono" }, e.target), h("td", { class: "mono wrap" }, JSON.stringify(e.detail)))))));
}

start();

/* meterhub page: a small single-page app over /api/v1, live via Server-Sent Events.
 * Views are functions that fetch what they show and build DOM with h() (never innerHTML, so
 * a meter id or a comment can never inject markup). The hash is the route: #/meter/ID etc.
 * Every word shown goes through t("key") (i18n.js); a screen in its own file registers its
 * route with addRoute(). */
"use strict";

const API = "/api/v1";
const state = { user: null, live: null, view: null, onLive: {}, openReviews: null };
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

/** Replace what a view shows; absent parts (null, false) are left out, never shown as
 * the word "null" (Element.replaceChildren would stringify them). */
function render(target, ...children) {
  target.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  // the server answers in the page's language (its error messages)
  const opts = { method, credentials: "same-origin", headers: { "Accept-Language": I18n.lang } };
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
  const node = h("div", { class: bad ? "toast bad" : "toast" }, message);
  document.getElementById("toasts").appendChild(node);
  setTimeout(() => node.remove(), bad ? 7000 : 3500);
}

function can(role) { return state.user && RANK[state.user.role] >= RANK[role]; }

const ago = Fmt.ago, when = Fmt.when, num = Fmt.num, money = Fmt.money;

/** A value of a closed set (a state, a grade, a rule) in the page's language; a value this
 * page does not know yet is shown as it is. */
function label(group, value) {
  if (value === null || value === undefined || value === "") return "—";
  const key = `${group}.${value}`;
  return I18n.has(key) ? t(key) : String(value).replace(/_/g, " ");
}

function badge(value, cls, group) {
  return h("span", { class: `badge ${cls || value}` }, group ? label(group, value) : value);
}
function relayBadge(relay) {
  if (relay === "open") return badge("open", "bad", "relay");
  if (relay === "closed") return badge("closed", "ok", "relay");
  if (relay === "none") return badge("none", "neutral", "relay");
  return badge(relay || "unknown", "neutral", "relay");
}
// "cut" only when every meter's relay was read back open; otherwise what was ordered and why
function phaseBadge(a) {
  if (a.phase !== "cut" || a.supply === "off") return badge(a.phase, a.phase === "normal" ? "neutral" : a.phase, "phase");
  return badge(t(a.site_visit_needed ? "supply.ordered_site_visit" : "supply.ordered_unknown"), "warn");
}
function supplyBadge(a) {
  if (!a.cut_off) return a.site_visit_needed ? badge(t("supply.site_visit"), "warn") : "";
  return a.supply === "off" ? badge(t("accounts.cut_off"), "bad") : phaseBadge({ ...a, phase: "cut" });
}
function val(values, q) { return values && values[q] ? values[q].value : null; }

/** headers: catalogue keys; a trailing # right-aligns a numeric column. */
function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty || t("common.nothing"));
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith("#") ? "num" : "" }, x ? t(x.replace(/#$/, "")) : "")))),
    h("tbody", {}, rows)));
}

function section(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
}

// ------------------------------------------------------------------ quantities and health

/** A meter quantity's name in the page's language, with its unit: "Active power (kW)". */
function quantityLabel(q, unit) {
  const name = label("q", q);
  return unit ? t("q.with_unit", { name, unit }) : name;
}

/** One health figure of a gateway's status as a person reads it. Keys ending in _s or _ms
 * are durations; flat objects are "label value" pairs; maps (per meter, per bus, per task)
 * are a count with the details in the tooltip. */
function healthValue(key, v) {
  if (v === null || v === undefined) return h("span", {}, "—");
  if (typeof v === "number" && /_s$/.test(key)) return h("span", {}, Fmt.duration(v));
  if (typeof v === "number" && /_ms$/.test(key)) return h("span", {}, t("unit.ms", { n: num(v, 1) }));
  if (typeof v === "number") return h("span", {}, num(v));
  if (typeof v === "boolean") return h("span", {}, t(v ? "common.yes" : "common.no"));
  if (typeof v !== "object") return h("span", {}, String(v));
  const entries = Object.entries(v);
  if (entries.every(([, x]) => x === null || typeof x !== "object")) {
    return h("span", {}, entries.map(([k, x]) => `${healthLabel(k)} ${healthValue(k, x).textContent}`).join(" · "));
  }
  const bad = entries.filter(([, x]) => x && typeof x === "object" && (x.state && x.state !== "ok")).length;
  return h("span", { title: JSON.stringify(v, null, 1) }, num(entries.length),
    bad ? h("span", { class: "error" }, t("health.not_ok", { n: bad })) : "");
}

function healthLabel(key) {
  return label("health", key.replace(/_m?s$/, ""));
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
  await I18n.ready.catch((e) => console.error(e));
  setupLanguageSwitch();
  try {
    const me = await api("GET", "/me");
    signedIn(me.user);
  } catch (e) {
    if (e.status !== 401) toast(e.message, true);
    showLogin();
  }
}

/** The header's language switch: remembered, and the view drawn again in the new language. */
function setupLanguageSwitch() {
  const select = document.getElementById("lang");
  select.replaceChildren(...Object.entries(I18n.languages).map(([code, name]) => h("option", { value: code }, name)));
  select.value = I18n.lang;
  select.addEventListener("change", async () => {
    await I18n.choose(select.value);
    if (state.user) {
      document.getElementById("who-name").textContent = whoText(state.user);
      setReviewCount(state.openReviews);
      await route();
    }
  });
}

function whoText(user) { return `${user.name} · ${label("role", user.role)}`; }

function signedIn(user) {
  state.user = user;
  document.getElementById("login").hidden = true;
  const customer = user.role === "customer";  // their own page only (customer.js)
  document.getElementById("nav").hidden = customer;
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = whoText(user);
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
  const setMark = (on, key) => {
    mark.className = `live ${on ? "on" : "off"}`;
    const text = mark.querySelector(".label");
    text.dataset.i18n = key;
    text.textContent = t(key);
  };
  es.onopen = () => setMark(true, "live.on");
  es.onerror = () => setMark(false, "live.reconnecting");
  es.addEventListener("unavailable", () => setMark(false, "live.database_down"));
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

/** The open review count: the nav pill and the fleet's stat card show the same number,
 * updated together from the live feed. */
function setReviewCount(n) {
  if (n === null || n === undefined) return;
  state.openReviews = n;
  const pill = document.getElementById("review-count");
  pill.textContent = num(n);
  pill.hidden = !n;
  for (const node of document.querySelectorAll("[data-review-count]")) node.textContent = num(n);
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

/** A screen from its own file: addRoute(/^#\/things$/, viewThings, "things"); the last
 * argument names the nav link (data-view) shown as active. */
function addRoute(pattern, view, nav) { routes.push([pattern, view, nav]); }

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
      if (e.status !== 401) render(target, section(t("common.went_wrong"), h("p", { class: "error" }, e.message)));
    }
    return;
  }
  location.hash = "#/fleet";
}
window.addEventListener("hashchange", route);

// ------------------------------------------------------------------ fleet

const FLEET_COLUMNS = [["power_active_total", 3], ["voltage_a", 1], ["energy_import_total", 2]];

async function viewFleet(target) {
  const [gws, meters, reviews] = await Promise.all([
    api("GET", "/gateways"), api("GET", "/meters?limit=500"), api("GET", "/review-items?status=open&limit=1"),
  ]);
  const gateways = new Map(gws.gateways.map((g) => [g.gateway, g]));
  const online = () => [...gateways.values()].filter((g) => g.status === "online").length;
  const statOnline = h("div", { class: "n", "data-testid": "stat-online" }, num(online()));
  const statOffline = h("div", { class: "n", "data-testid": "stat-offline" }, num(gateways.size - online()));
  const gwGrid = h("div", { class: "grid" });
  const drawGateways = () => {
    gwGrid.replaceChildren(...[...gateways.values()].map(gatewayCard));
    statOnline.textContent = num(online());
    statOffline.textContent = num(gateways.size - online());
  };
  drawGateways();

  const rows = new Map();
  const meterRow = (m) => {
    const row = h("tr", { class: "click", "data-meter": m.meter, onclick: () => { location.hash = `#/meter/${encodeURIComponent(m.meter)}`; } },
      h("td", {}, h("a", { href: `#/meter/${encodeURIComponent(m.meter)}` }, m.meter)),
      h("td", { class: "muted" }, m.gateway || "—"),
      FLEET_COLUMNS.map(([q, digits]) => h("td", { class: "num", "data-q": q }, num(val(m.values, q), digits))),
      h("td", { "data-q": "relay" }, relayBadge(m.relay)),
      h("td", { class: "muted", "data-q": "last_seen" }, ago(m.last_seen)),
      h("td", {}, m.open_reviews ? badge(t("review.n_open", { n: m.open_reviews }), "open") : ""));
    rows.set(m.meter, row);
    return row;
  };
  const meterTable = table(["col.meter", "col.gateway", "col.power_kw#", "col.voltage_v#", "col.energy_kwh#", "col.relay", "col.last_read", "col.review"],
    meters.meters.map(meterRow), t("fleet.no_meters"));

  render(target,
    h("div", { class: "spread" }, h("h1", {}, t("fleet.title")), h("span", { class: "muted" }, t("fleet.n_meters", { n: meters.total }))),
    h("div", { class: "stats" },
      h("div", { class: "stat" }, statOnline, h("div", { class: "k" }, t("fleet.gateways_online"))),
      h("div", { class: "stat" }, statOffline, h("div", { class: "k" }, t("fleet.gateways_offline"))),
      h("div", { class: "stat" }, h("div", { class: "n" }, num(meters.total)), h("div", { class: "k" }, t("fleet.meters"))),
      h("div", { class: "stat" }, h("div", { class: "n", "data-testid": "stat-reviews", "data-review-count": "" }, num(reviews.total)),
        h("div", { class: "k" }, t("fleet.open_reviews")))),
    section(t("fleet.gateways"), gws.gateways.length ? gwGrid : h("p", { class: "empty" }, t("fleet.no_gateways"))),
    section(t("fleet.meters"), meterTable));
  setReviewCount(reviews.total);

  state.onLive.gateway = (g) => {
    gateways.set(g.gateway, { ...(gateways.get(g.gateway) || {}), ...g });
    drawGateways();
  };
  state.onLive.meter = (m) => {
    const row = rows.get(m.meter);
    if (!row) return;
    for (const [q, digits] of FLEET_COLUMNS) {
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

// the card's own rows; "meters" is the count the database knows (the health map of the
// same name only adds how many of them are not answering)
const CARD_KEYS = new Set(["meters"]);

function gatewayCard(g) {
  const health = g.health || {};
  const meterHealth = health.meters && typeof health.meters === "object" ? Object.values(health.meters) : [];
  const failing = meterHealth.filter((x) => x && x.state && x.state !== "ok").length;
  const figures = Object.entries(health).filter(([k]) => !CARD_KEYS.has(k)).slice(0, 8);
  return h("article", { class: "card", "data-gateway": g.gateway },
    h("div", { class: "spread" }, h("a", { href: `#/gateway/${encodeURIComponent(g.gateway)}` }, h("strong", {}, g.gateway)), badge(g.status, g.status, "gw")),
    h("dl", { class: "kv" },
      h("dt", {}, t("gw.site")), h("dd", {}, g.site || "—"),
      h("dt", {}, t("gw.last_seen")), h("dd", {}, ago(g.last_seen)),
      h("dt", {}, t("gw.meters")), h("dd", { "data-testid": "gw-meters" }, g.meters === null || g.meters === undefined ? "—" : num(g.meters),
        failing ? h("span", { class: "error", title: JSON.stringify(health.meters, null, 1) }, t("health.not_ok", { n: failing })) : ""),
      g.offline_reason ? [h("dt", {}, t("gw.why")), h("dd", { title: g.offline_reason }, offlineReason(g))] : null,
      figures.map(([k, v]) => [h("dt", {}, healthLabel(k)), h("dd", {}, healthValue(k, v))])));
}

/** Why a gateway shows offline (the server's reason, collector read model), in the page's
 * language: it said so (or its will fired), never heard from, or silent too long. */
function offlineReason(g) {
  if (g.reported_state === "offline") return t("gw.reason_reported");
  if (!g.last_seen) return t("gw.reason_never");
  return t("gw.reason_silent", { span: Fmt.duration((Date.now() - Date.parse(g.last_seen)) / 1000) });
}

async function viewGateway(target, name) {
  const enc = encodeURIComponent(name);
  const [g, meters] = await Promise.all([api("GET", `/gateways/${enc}?events=100`), api("GET", `/meters?gateway=${enc}&limit=500`)]);
  const card = h("div");
  const draw = (gw) => card.replaceChildren(gatewayCard(gw));
  draw(g);
  render(target,
    h("div", { class: "spread" }, h("h1", {}, name), h("a", { href: "#/fleet" }, t("gw.back"))),
    h("div", { class: "grid wide" }, card,
      section(t("gw.sequence"), h("dl", { class: "kv" },
        h("dt", {}, t("gw.max_seq")), h("dd", {}, g.max_seq === null ? "—" : num(g.max_seq, 0)),
        h("dt", {}, t("gw.batches")), h("dd", {}, num(g.batches, 0)),
        h("dt", {}, t("gw.duplicates")), h("dd", {}, num(g.duplicate_batches, 0)),
        h("dt", {}, t("gw.clock_offset")), h("dd", {}, g.clock_offset_s === null ? "—" : t("unit.s", { n: num(g.clock_offset_s, 2) }))),
        g.gaps.length ? table(["gw.missing_from#", "gw.missing_to#", "gw.noticed"], g.gaps.map((x) => h("tr", {}, h("td", { class: "num" }, x.from_seq), h("td", { class: "num" }, x.to_seq), h("td", {}, when(x.noticed_after)))))
          : h("p", { class: "muted" }, t("gw.no_gaps")))),
    section(t("fleet.meters"), table(["col.meter", "col.power_kw#", "col.voltage_v#", "col.last_read"], meters.meters.map((m) => h("tr", {},
      h("td", {}, h("a", { href: `#/meter/${encodeURIComponent(m.meter)}` }, m.meter)),
      h("td", { class: "num" }, num(val(m.values, "power_active_total"))), h("td", { class: "num" }, num(val(m.values, "voltage_a"), 1)),
      h("td", { class: "muted" }, ago(m.last_seen)))), t("gw.no_meters"))),
    section(t("gw.events"), table(["col.when", "col.source", "col.kind", "col.meter", "col.detail"], g.events.map((e) => h("tr", {},
      h("td", {}, when(e.at)), h("td", {}, e.source), h("td", {}, badge(e.kind, "warn")), h("td", {}, e.meter || ""), h("td", { class: "wrap" }, e.detail))),
      t("gw.no_events"))));
  state.onLive.gateway = (gw) => { if (gw.gateway === name) { Object.assign(g, gw); draw(g); } };
}

// ------------------------------------------------------------------ meter page

const RANGES = { "1h": 3600e3, "6h": 6 * 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
const TILE_ORDER = ["power_active_total", "voltage_a", "current_a", "energy_import_total", "power_factor_total", "frequency"];

async function viewMeter(target, meterId) {
  const enc = encodeURIComponent(meterId);
  let rangeKey = "1h";
  const meter = await api("GET", `/meters/${enc}`);
  const tiles = h("div", { class: "tiles" });
  const drawTiles = (values, lastSeen) => {
    const keys = Object.keys(values).sort((a, b) => (TILE_ORDER.indexOf(a) + 1 || 99) - (TILE_ORDER.indexOf(b) + 1 || 99));
    tiles.replaceChildren(...keys.map((q) => h("div", { class: "tile", "data-q": q },
      h("div", { class: "k" }, label("q", q)),
      h("div", {}, h("span", { class: "v" }, num(values[q].value)), h("span", { class: "u" }, values[q].unit)))),
    h("div", { class: "tile" }, h("div", { class: "k" }, t("meter.last_read")), h("div", { class: "v", "data-testid": "last-read" }, ago(lastSeen))));
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
      iv.anomalies.map((a) => ({ t: Date.parse(a.at), rule: label("rule", a.rule), reason: a.reason })), { from: ivFrom, to: ivTo });
    const withUnit = (v, unit) => (v === null || v === undefined ? "—" : unit ? `${num(v)} ${unit}` : num(v));
    anomaliesBox.replaceChildren(table(["col.when", "col.rule", "col.reason", "col.value#", "col.expected#", "col.review"],
      iv.anomalies.map((a) => h("tr", { "data-anomaly": a.id }, h("td", {}, when(a.at)), h("td", {}, badge(a.rule, "warn", "rule")), h("td", { class: "wrap" }, a.reason),
        h("td", { class: "num" }, withUnit(a.value, a.value_unit)), h("td", { class: "num" }, withUnit(a.expected, a.expected_unit)),
        h("td", {}, a.review_item_id ? h("a", { href: "#/review" }, `#${a.review_item_id}`) : ""))),
      t("meter.no_anomalies")));
  };
  const loadCommands = async () => {
    try {
      const cmds = await api("GET", `/commands?meter=${enc}&limit=20`);
      commandsBox.replaceChildren(commandTable(cmds.commands));
    } catch (e) {
      commandsBox.replaceChildren(h("p", { class: "muted" }, e.message));
    }
  };

  const seg = h("div", { class: "seg", role: "group", "aria-label": t("meter.range") },
    Object.keys(RANGES).map((k) => h("button", { type: "button", class: k === rangeKey ? "on" : "", onclick: (ev) => {
      rangeKey = k;
      for (const b of seg.children) b.classList.toggle("on", b === ev.currentTarget);
      load().catch((e) => toast(e.message, true));
    } }, t(`range.${k}`))));

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
    h("button", { type: "button", class: "danger", onclick: () => sendCommand(meterId, "cutoff", refreshRelay) }, t("meter.cut_off")),
    h("button", { type: "button", onclick: () => sendCommand(meterId, "restore", refreshRelay) }, t("meter.restore"))) : null;

  render(target,
    h("div", { class: "spread" },
      h("div", {}, h("h1", { "data-testid": "meter-title" }, meterId),
        h("div", { class: "muted" }, t("meter.gateway", { gateway: meter.gateway || "—" }), meter.protocol ? ` · ${meter.protocol}` : "", ` · ${t("meter.relay")} `,
          relayBadge(meter.relay || (meter.billing && meter.billing.relay_reported)),
          meter.billing ? [` · ${t("meter.account")} `, h("a", { href: `#/account/${encodeURIComponent(meter.billing.account)}` }, meter.billing.account)] : null,
          meter.billing && meter.billing.customer_action_needed ? [" ", badge(t("meter.press_button"), "warn")] : null)),
      seg),
    tiles,
    h("div", { class: "grid wide" },
      section(quantityLabel("power_active_total", "kW"), powerSvg),
      section(quantityLabel("voltage_a", "V"), voltSvg)),
    section(t("meter.intervals"), barSvg,
      h("div", { class: "legend" }, h("span", {}, h("i", { class: "l-bar" }), t("meter.legend_actual")), h("span", {}, h("i", { class: "l-est" }), t("meter.legend_estimated")),
        h("span", {}, h("i", { class: "l-flag" }), t("meter.legend_flagged")))),
    section(t("meter.anomalies"), anomaliesBox),
    section(t("meter.commands"), holdBox, relayActions, commandsBox));
  await Promise.all([load(), loadCommands()]);

  state.onLive.meter = (m) => {
    if (m.meter !== meterId) return;
    drawTiles(m.values, m.last_seen);
    const now = Date.now();
    span = { from: now - RANGES[rangeKey], to: now };
    for (const [key, q] of [["power", "power_active_total"], ["volt", "voltage_a"]]) {
      const v = m.values[q];
      if (!v || !liveAppend) continue;
      const at = Date.parse(v.at);
      const s = series[key];
      if (!s.length || s[s.length - 1].t < at) s.push({ t: at, v: v.value });
      while (s.length && s[0].t < span.from) s.shift();
    }
    drawLines();
  };
  const onResize = () => drawLines();
  window.addEventListener("resize", onResize);
  state.cleanup = () => window.removeEventListener("resize", onResize);
}

async function sendCommand(meterId, action, after) {
  const reason = prompt(t(action === "cutoff" ? "meter.cutoff_reason" : "meter.restore_reason", { meter: meterId }), "");
  if (reason === null) return;
  try {
    const cmd = await api("POST", "/commands", { meter: meterId, action, reason });
    toast(t("meter.queued", { action: label("action", action), id: cmd.id }));
    if (after) await after();
  } catch (e) { toast(e.message, true); }
}

/** "manual hold until … by …" with, for operators, a Release button calling release(). */
function holdNote(hold, release) {
  const cut = hold.wanted === "open";
  return h("p", { class: "hold-note", "data-testid": "hold-note", "data-meter": hold.meter },
    badge(t(cut ? "hold.held_cut" : "hold.held_restored"), cut ? "bad" : "ok"), " ",
    t("hold.until_by", { until: hold.until ? when(hold.until) : t("hold.released"), by: hold.by || "—" }),
    hold.reason ? h("span", { class: "muted" }, ` (${hold.reason})`) : "",
    release && can("operator") ? [" ", h("button", { type: "button", onclick: release }, t("hold.release"))] : null);
}

async function releaseHold(meterId) {
  const reason = prompt(t("hold.release_reason", { meter: meterId }), "");
  if (reason === null) return;
  try {
    const out = await api("POST", `/meters/${encodeURIComponent(meterId)}/hold/release`, { reason });
    toast(t("hold.released_toast", { meter: meterId, relay: label("relay", out.relay_wanted) }));
  } catch (e) { toast(e.message, true); }
}

function commandTable(cmds) {
  return table(["col.created", "col.meter", "col.account", "col.purpose", "col.action", "col.state", "col.attempt#", "col.relay_read_back", "col.reason"],
    cmds.map((c) => h("tr", { "data-command": c.id },
      h("td", {}, when(c.created_at)),
      h("td", {}, h("a", { href: `#/meter/${encodeURIComponent(c.meter)}` }, c.meter)),
      h("td", {}, h("a", { href: `#/account/${encodeURIComponent(c.account)}` }, c.account)),
      h("td", {}, label("purpose", c.purpose)), h("td", { class: "mono" }, label("action", c.action)), h("td", {}, badge(c.state, c.state, "cmd")),
      h("td", { class: "num" }, `${c.attempt}/${c.max_attempts}`), h("td", {}, c.relay_reported ? label("relay", c.relay_reported) : "—"),
      h("td", { class: "wrap" }, c.reason || ""))),
    t("cmd.none"));
}

// ------------------------------------------------------------------ review queue

const REVIEW_STATUSES = ["open", "confirmed", "dismissed", "rejected", "corrected", "estimated", "all"];

async function viewReview(target) {
  let status = "open";
  const box = h("div");
  const load = async () => {
    const out = await api("GET", `/review-items?status=${status}&limit=200`);
    if (status === "open") setReviewCount(out.total);
    box.replaceChildren(out.review_items.length ? h("div", { class: "grid wide" }, out.review_items.map(reviewCard)) : h("p", { class: "empty" }, status === "open" ? t("review.empty") : t("common.nothing")));
  };
  const reviewCard = (r) => {
    const comment = h("textarea", { rows: 2, placeholder: t("review.comment_placeholder"), "aria-label": t("review.comment"), maxlength: 2000 });
    const decide = async (verb) => {
      try {
        await api("POST", `/review-items/${r.id}/${verb}`, { comment: comment.value });
        toast(t(verb === "confirm" ? "review.confirmed_toast" : "review.dismissed_toast", { id: r.id }));
        await load();
      } catch (e) { toast(e.message, true); }
    };
    return h("article", { class: "card", "data-review": r.id },
      h("div", { class: "spread" }, h("strong", {}, `#${r.id} · `, h("a", { href: `#/meter/${encodeURIComponent(r.meter)}` }, r.meter)), badge(r.status, r.status, "review")),
      h("p", {}, badge(r.rule, "warn", "rule"), " ", r.reason),
      h("dl", { class: "kv" }, h("dt", {}, t("review.period")), h("dd", {}, `${when(r.period_start)} – ${Fmt.time(Date.parse(r.period_end))}`),
        h("dt", {}, t("review.opened")), h("dd", {}, ago(r.opened_at)),
        r.decided_by ? [h("dt", {}, t("review.decided")), h("dd", {}, `${r.decided_by}, ${ago(r.decided_at)}`), h("dt", {}, t("review.comment")), h("dd", {}, r.comment || "—")] : null),
      r.status === "open" && can("engineer") ? h("div", { class: "row decide" }, comment,
        h("button", { type: "button", class: "primary", onclick: () => decide("confirm") }, t("review.confirm")),
        h("button", { type: "button", onclick: () => decide("dismiss") }, t("review.dismiss"))) : null,
      can("engineer") ? reviewActions(r, load) : null);
  };
  const seg = h("div", { class: "seg" }, REVIEW_STATUSES.map((s) => h("button", { type: "button", class: s === status ? "on" : "", onclick: (ev) => {
    status = s;
    for (const b of seg.children) b.classList.toggle("on", b === ev.currentTarget);
    load().catch((e) => toast(e.message, true));
  } }, label("review", s))));
  render(target, h("div", { class: "spread" }, h("h1", {}, t("review.title")), seg),
    h("p", { class: "muted" }, t("review.intro")), box);
  await load();
  state.onLive.review = () => { if (status === "open") load().catch(() => null); };
}

// ------------------------------------------------------------------ accounts

function daysLeft(days) { return days === null || days === undefined ? "—" : t("unit.days", { n: days, v: num(days, 1) }); }

async function viewAccounts(target) {
  const search = h("input", { type: "search", placeholder: t("accounts.search_placeholder"), "aria-label": t("accounts.search") });
  const box = h("div");
  const load = async () => {
    const out = await api("GET", `/accounts?limit=200&q=${encodeURIComponent(search.value)}`);
    box.replaceChildren(table(["col.account", "col.name", "col.balance#", "col.days_left#", "col.risk", "col.phase", "col.meters", "col.status"],
      out.accounts.map((a) => h("tr", { class: "click", "data-account": a.account, onclick: () => { location.hash = `#/account/${encodeURIComponent(a.account)}`; } },
        h("td", {}, h("a", { href: `#/account/${encodeURIComponent(a.account)}` }, a.account)),
        h("td", {}, a.name || "—"),
        h("td", { class: "num", "data-testid": "balance" }, money(a.balance)),
        h("td", { class: "num" }, daysLeft(a.days_of_credit)),
        h("td", {}, badge(a.risk.grade, a.risk.grade, "risk")),
        h("td", {}, phaseBadge(a)),
        h("td", { class: "muted" }, a.meters.join(", ")),
        h("td", {}, supplyBadge(a), a.awaiting_approval ? badge(t("accounts.awaiting_approval"), "warn") : "", a.hold_reason ? h("span", { class: "muted" }, a.hold_reason) : ""))),
      t("accounts.none")));
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
      toast(t("accounts.approved_toast", { group }));
      await viewAccounts(target);
    } catch (e) { toast(e.message, true); }
  };
  render(target, h("div", { class: "spread" }, h("h1", {}, t("accounts.title")), search),
    approvals.length ? section(t("accounts.approvals"), table(["col.group", "col.households#", "col.accounts_waiting#", "col.requested", ""],
      approvals.map((p) => h("tr", { "data-approval": p.group }, h("td", {}, p.group), h("td", { class: "num" }, num(p.households, 0)),
        h("td", { class: "num" }, num(p.accounts_waiting, 0)), h("td", {}, ago(p.requested_at)),
        h("td", {}, can("operator") ? h("button", { type: "button", class: "danger", onclick: () => approve(p.group) }, t("accounts.approve")) : ""))))) : null,
    section(null, box),
    section(t("accounts.latest_alerts"), alertTable(alerts)));
  await load();
}

const ALERT_CLASS = { cutoff: "bad", restored: "ok", final_warning: "bad" };

function alertTable(alerts) {
  return table(["col.when", "col.account", "col.kind", "col.balance#", "col.message"],
    alerts.map((a) => h("tr", {}, h("td", {}, when(a.created_at)),
      h("td", {}, h("a", { href: `#/account/${encodeURIComponent(a.account)}` }, a.account)),
      h("td", {}, badge(a.kind, ALERT_CLASS[a.kind] || "warn", "alert")), h("td", { class: "num" }, money(a.balance)), h("td", { class: "wrap" }, a.message))),
    t("accounts.no_alerts"));
}

const CHANNELS = ["counter", "wechat", "alipay", "bank"];

async function viewAccount(target, accountId) {
  const enc = encodeURIComponent(accountId);
  const [a, ledger, cmds] = await Promise.all([
    api("GET", `/accounts/${enc}`), api("GET", `/accounts/${enc}/ledger?limit=50`), api("GET", `/commands?account=${enc}&limit=20`),
  ]);
  const topupForm = can("operator") ? (() => {
    const amount = h("input", { name: "amount", inputmode: "decimal", placeholder: "50.00", required: true, "aria-label": t("topup.amount_aria"), pattern: "\\d+(\\.\\d{1,2})?" });
    const channel = h("select", { name: "channel", "aria-label": t("topup.channel_aria") }, CHANNELS.map((c) => h("option", { value: c }, label("channel", c))));
    const reference = h("input", { name: "reference", placeholder: t("topup.reference_placeholder"), required: true, "aria-label": t("topup.reference_placeholder") });
    reference.value = `web-${Date.now().toString(36)}`;
    return h("form", { class: "row", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const out = await api("POST", `/accounts/${enc}/topups`, { amount: amount.value.trim(), channel: channel.value, reference: reference.value.trim() });
        toast(t("topup.done", { amount: money(out.entry.amount), balance: money(out.balance) }));
        await viewAccount(target, accountId);
      } catch (e) { toast(e.message, true); }
    } }, h("label", {}, t("topup.amount"), amount), h("label", {}, t("topup.channel"), channel), h("label", {}, t("topup.reference"), reference),
      h("button", { type: "submit", class: "primary" }, t("topup.submit")));
  })() : null;
  render(target,
    h("div", { class: "spread" }, h("h1", {}, a.name || a.account), h("a", { href: "#/accounts" }, t("account.back"))),
    h("div", { class: "grid wide" },
      section(t("account.balance"),
        h("div", { class: `balance ${Number(a.balance) < 0 ? "neg" : ""}`, "data-testid": "account-balance" }, money(a.balance)),
        h("dl", { class: "kv" },
          h("dt", {}, t("account.days_of_credit")), h("dd", {}, a.days_of_credit === null ? t("account.no_usage") : daysLeft(a.days_of_credit)),
          h("dt", {}, t("account.risk_grade")), h("dd", {}, badge(a.risk.grade, a.risk.grade, "risk"), ` ${t("account.score", { score: num(a.risk.score) })}`),
          h("dt", {}, t("col.phase")), h("dd", {}, phaseBadge(a), a.hold_reason ? ` ${a.hold_reason}` : ""),
          h("dt", {}, t("account.tariff")), h("dd", {}, a.tariff),
          h("dt", {}, t("col.meters")), h("dd", {}, a.meters.map((m) => h("a", { href: `#/meter/${encodeURIComponent(m)}` }, m, " "))),
          Number(a.arrears) ? [h("dt", {}, t("account.arrears")), h("dd", {}, money(a.arrears))] : null,
          a.customer_action_needed ? [h("dt", {}, t("account.customer")), h("dd", {}, badge(t("account.press_button"), "warn"))] : null,
          (a.holds || []).map((x) => [h("dt", {}, x.meter), h("dd", {}, holdNote(x, async () => {
            await releaseHold(x.meter);
            await viewAccount(target, accountId);
          }))]))),
      section(t("topup.title"), topupForm || h("p", { class: "muted" }, t("topup.needs_operator")))),
    section(t("account.alerts"), alertTable(a.alerts || [])),
    section(t("account.ledger"), table(["col.when", "col.kind", "col.amount#", "col.balance_after#", "col.channel", "col.reference", "col.by"],
      ledger.entries.map((e) => h("tr", {}, h("td", {}, when(e.created_at)), h("td", {}, label("entry", e.kind)),
        h("td", { class: "num" }, money(e.amount)), h("td", { class: "num" }, money(e.balance_after)),
        h("td", {}, e.channel ? label("channel", e.channel) : ""), h("td", { class: "mono" }, e.reference || (e.interval_start ? when(e.interval_start) : "")), h("td", { class: "muted" }, e.actor || ""))),
      t("account.no_entries"))),
    section(t("account.commands"), commandTable(cmds.commands)));
}

// ------------------------------------------------------------------ commands, dead letters

const COMMAND_STATES = ["queued", "sent", "accepted", "confirmed", "verified", "rejected", "timed_out", "expired", "cancelled", "failed"];

async function viewCommands(target) {
  const stateSel = h("select", { "aria-label": t("col.state") }, h("option", { value: "" }, t("cmd.any_state")),
    COMMAND_STATES.map((s) => h("option", { value: s }, label("cmd", s))));
  const meter = h("input", { type: "search", placeholder: t("cmd.meter_placeholder"), "aria-label": t("col.meter") });
  const count = h("p", { class: "muted" });
  const box = h("div");
  const load = async () => {
    const q = new URLSearchParams({ limit: "200" });
    if (stateSel.value) q.set("state", stateSel.value);
    if (meter.value.trim()) q.set("meter", meter.value.trim());
    const out = await api("GET", `/commands?${q}`);
    count.textContent = t("cmd.count", { n: out.total, v: num(out.total, 0) });
    box.replaceChildren(commandTable(out.commands));
  };
  const reload = () => load().catch((e) => toast(e.message, true));
  stateSel.addEventListener("change", reload);
  meter.addEventListener("change", reload);
  render(target, h("div", { class: "spread" }, h("h1", {}, t("cmd.title")), h("div", { class: "row" }, meter, stateSel)),
    count, section(null, box));
  await load();
}

async function viewDeadLetters(target) {
  const out = await api("GET", "/dead-letters?limit=200");
  render(target, h("h1", {}, t("dead.title")), h("p", { class: "muted" }, t("dead.intro")),
    section(null, table(["col.received", "col.gateway", "col.reason", "col.topic", "col.payload"],
      out.dead_letters.map((d) => h("tr", {}, h("td", {}, when(d.received_at)), h("td", {}, d.gateway || "—"),
        h("td", { class: "wrap" }, d.reason), h("td", { class: "mono" }, d.topic),
        h("td", { class: "mono wrap" }, d.payload.length > 160 ? `${d.payload.slice(0, 160)}…` : d.payload))),
      t("dead.none"))));
}

// ------------------------------------------------------------------ admin

async function viewAdmin(target) {
  if (!can("admin")) { render(target, section(t("admin.title"), h("p", {}, t("admin.needs_admin")))); return; }
  const [users, tokens, audit] = await Promise.all([api("GET", "/users"), api("GET", "/tokens"), api("GET", "/audit?limit=50")]);
  const name = h("input", { placeholder: t("admin.name_placeholder"), "aria-label": t("admin.new_user_name"), required: true });
  const role = h("select", { "aria-label": t("col.role") }, Object.keys(RANK).map((r) => h("option", { value: r }, label("role", r))));
  const secret = h("p", { class: "mono" });
  const reload = () => viewAdmin(target);
  const userForm = h("form", { class: "row", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const out = await api("POST", "/users", { name: name.value.trim(), role: role.value });
      await reload();
      toast(t("admin.user_created", { name: out.user.name, password: out.password }));
    } catch (e) { toast(e.message, true); }
  } }, name, role, h("button", { class: "primary", type: "submit" }, t("admin.create_user")));
  const tokenUser = h("select", { "aria-label": t("admin.token_user") }, users.users.map((u) => h("option", { value: u.name }, u.name)));
  const tokenLabel = h("input", { placeholder: t("admin.token_label_placeholder"), "aria-label": t("admin.token_label") });
  const tokenForm = h("form", { class: "row", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const out = await api("POST", "/tokens", { user: tokenUser.value, label: tokenLabel.value });
      secret.textContent = t("admin.token_created", { user: out.user, token: out.token });
    } catch (e) { toast(e.message, true); }
  } }, tokenUser, tokenLabel, h("button", { class: "primary", type: "submit" }, t("admin.create_token")));
  render(target, h("h1", {}, t("admin.title")),
    section(t("admin.users"), userForm, table(["col.name", "col.role", "col.disabled", "col.created", "col.by", ""],
      users.users.map((u) => h("tr", { "data-user": u.name }, h("td", {}, u.name), h("td", {}, label("role", u.role)), h("td", {}, u.disabled ? t("common.yes") : ""), h("td", {}, when(u.created_at)), h("td", { class: "muted" }, u.created_by || ""),
        h("td", {}, h("button", { type: "button", onclick: async () => {
          try {
            const out = await api("DELETE", `/users/${u.id}/sessions`);
            toast(t("me.sessions_ended", { n: out.sessions_ended }));
          } catch (e) { toast(e.message, true); }
        } }, t("admin.end_sessions"))))))),
    section(t("admin.tokens"), tokenForm, secret, table(["col.number", "col.user", "col.label", "col.created", "col.last_used", "col.revoked", ""],
      tokens.tokens.map((tk) => h("tr", {}, h("td", {}, tk.id), h("td", {}, tk.user), h("td", {}, tk.label), h("td", {}, when(tk.created_at)),
        h("td", {}, ago(tk.last_used_at)), h("td", {}, tk.revoked_at ? when(tk.revoked_at) : ""),
        h("td", {}, tk.revoked_at ? "" : h("button", { type: "button", onclick: async () => {
          try { await api("DELETE", `/tokens/${tk.id}`); await reload(); } catch (e) { toast(e.message, true); }
        } }, t("admin.revoke"))))))),
    section(t("admin.audit"), table(["col.when", "col.user", "col.role", "col.action", "col.target", "col.detail"],
      audit.entries.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.user), h("td", {}, label("role", e.role)), h("td", { class: "mono" }, e.action),
        h("td", { class: "mono" }, e.target), h("td", { class: "mono wrap" }, JSON.stringify(e.detail)))))));
}

// every script of the page has run by now (screens in their own files have called addRoute)
document.addEventListener("DOMContentLoaded", start);

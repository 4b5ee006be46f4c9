/* The page's languages: t("key", {params}) looks a message up in the catalogue of the chosen
 * language (web/static/i18n/<lang>.json, English as the fallback), and Fmt formats numbers,
 * money, dates and durations for that language. The choice comes from the switch in the
 * header (remembered in localStorage), else from the browser's languages (its
 * Accept-Language); the API is asked in the same language, so server errors match.
 * Any screen's own JS file may call t() once I18n.ready has resolved (app.js waits for it
 * before the first view). */
"use strict";

const I18n = (() => {
  const LANGS = { en: "English", "zh-CN": "中文" };
  const STORE = "meterhub.lang";
  let lang = "en";
  let messages = {}, fallback = {};

  /** The supported language closest to one tag ("zh", "zh-Hans-CN", "zh-TW" -> zh-CN). */
  function match(tag) {
    const low = String(tag || "").toLowerCase();
    if (low.startsWith("zh")) return "zh-CN";
    if (low.startsWith("en")) return "en";
    return null;
  }

  function preferred() {
    let saved = null;
    try { saved = localStorage.getItem(STORE); } catch { /* storage disabled */ }
    if (saved && LANGS[saved]) return saved;
    for (const tag of navigator.languages || [navigator.language]) {
      const m = match(tag);
      if (m) return m;
    }
    return "en";
  }

  async function fetchCatalogue(code) {
    const resp = await fetch(`/static/i18n/${code}.json`, { credentials: "same-origin" });
    if (!resp.ok) throw new Error(`catalogue ${code}: ${resp.status}`);
    return resp.json();
  }

  async function use(code) {
    const next = LANGS[code] ? code : "en";
    const [cat, en] = await Promise.all([fetchCatalogue(next), next === "en" ? null : fetchCatalogue("en")]);
    messages = cat;
    fallback = en || cat;
    lang = next;
    document.documentElement.lang = next;
    apply(document);
  }

  async function choose(code) {
    try { localStorage.setItem(STORE, code); } catch { /* not remembered, still used */ }
    await use(code);
  }

  /** A message with {name} placeholders filled; a plural message is {one, other}. */
  function t(key, params) {
    let text = key in messages ? messages[key] : fallback[key];
    if (text === undefined) {
      console.warn(`i18n: no message ${key}`);
      return key;
    }
    if (typeof text === "object") {
      const n = params && typeof params.n === "number" ? params.n : 0;
      text = text[new Intl.PluralRules(lang).select(n)] ?? text.other;
    }
    if (!params) return text;
    return text.replace(/\{(\w+)\}/g, (all, name) => (name in params ? String(params[name]) : all));
  }

  /** Static markup: data-i18n (text), data-i18n-placeholder|title|aria-label (attributes). */
  function apply(root) {
    for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const attr of ["placeholder", "title", "aria-label"]) {
      for (const node of root.querySelectorAll(`[data-i18n-${attr}]`)) {
        node.setAttribute(attr, t(node.getAttribute(`data-i18n-${attr}`)));
      }
    }
  }

  const ready = use(preferred());
  const has = (key) => key in messages || key in fallback;
  return { ready, choose, t, has, apply, languages: LANGS, get lang() { return lang; } };
})();

const t = I18n.t;

/** Numbers, money, times and durations as the chosen language writes them. */
const Fmt = {
  num(v, digits) {
    if (v === null || v === undefined || v === "") return "—";
    return Number(v).toLocaleString(I18n.lang, { maximumFractionDigits: digits ?? 3 });
  },
  money(v) {
    if (v === null || v === undefined) return "—";
    const n = Number(v);
    const text = Math.abs(n).toLocaleString(I18n.lang, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return `${n < 0 ? "−" : ""}¥${text}`;
  },
  when(iso) {
    return iso ? new Date(iso).toLocaleString(I18n.lang, { dateStyle: "medium", timeStyle: "medium" }) : "—";
  },
  time(ms) { return new Date(ms).toLocaleTimeString(I18n.lang); },
  /** "3 min ago" for a past moment; "never" when there is none. */
  ago(iso) {
    if (!iso) return t("time.never");
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    return t("time.ago", { span: Fmt.duration(s) });
  },
  /** A span of seconds in its largest sensible unit: "45 s", "12 min", "3.5 h", "2 d". */
  duration(s) {
    const n = Number(s);
    if (n < 60) return t("unit.s", { n: Fmt.num(Math.round(n), 0) });
    if (n < 3600) return t("unit.min", { n: Fmt.num(Math.round(n / 60), 0) });
    if (n < 86400) return t("unit.h", { n: Fmt.num(n / 3600, n < 36000 ? 1 : 0) });
    return t("unit.d", { n: Fmt.num(n / 86400, n < 864000 ? 1 : 0) });
  },
};

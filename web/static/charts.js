/* Small SVG charts for the meter page: a time line (power, voltage) and interval bars with
 * anomaly markers. Our own code so the page loads nothing from elsewhere; enough for a few
 * thousand points, redrawn whole on each update (cheaper than diffing at this size). */
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PAD = { l: 44, r: 10, t: 10, b: 22 };

  function el(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  /** Round values from lo to hi, about count of them, and the decimals that tell them apart. */
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(v);
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (step / mag === 2.5 ? 1 : 0));
    return { ticks, decimals };
  }

  const SECOND = 1e3, MINUTE = 60e3, HOUR = 3600e3, DAY = 86400e3;
  const TIME_STEPS = [1, 2, 5, 10, 15, 30].map((n) => n * SECOND)
    .concat([1, 2, 5, 10, 15, 30].map((n) => n * MINUTE), [1, 2, 3, 6, 12].map((n) => n * HOUR),
      [1, 2, 7].map((n) => n * DAY));

  /** Time ticks on round local times (every 5 min, every hour...), at most count of them,
   * each labelled as finely as its step needs, so no two labels read the same. */
  function timeTicks(x0, x1, count) {
    const step = TIME_STEPS.find((s) => (x1 - x0) / s <= count) || TIME_STEPS[TIME_STEPS.length - 1];
    const offset = new Date(x0).getTimezoneOffset() * MINUTE;  // align on local midnight
    const ticks = [];
    for (let v = Math.ceil((x0 - offset) / step) * step + offset; v <= x1; v += step) ticks.push(v);
    return { ticks, step };
  }

  function fmtTime(t, step) {
    const d = new Date(t);
    if (step >= DAY) return d.toLocaleDateString(I18n.lang, { month: "short", day: "numeric" });
    if (step < MINUTE) return d.toLocaleTimeString(I18n.lang, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return d.toLocaleTimeString(I18n.lang, { hour: "2-digit", minute: "2-digit" });
  }

  function frame(svg, x0, x1, y0, y1) {
    const w = svg.clientWidth || 600;
    const h = svg.clientHeight || 220;
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const sx = (t) => PAD.l + ((t - x0) / Math.max(x1 - x0, 1)) * (w - PAD.l - PAD.r);
    const sy = (v) => h - PAD.b - ((v - y0) / Math.max(y1 - y0, 1e-9)) * (h - PAD.t - PAD.b);
    const y = niceTicks(y0, y1, 4);
    for (const v of y.ticks) {
      el("line", { x1: PAD.l, x2: w - PAD.r, y1: sy(v), y2: sy(v), class: "grid-line" }, svg);
      const label = el("text", { x: PAD.l - 6, y: sy(v) + 4, "text-anchor": "end" }, svg);
      label.textContent = v.toLocaleString(I18n.lang, { minimumFractionDigits: y.decimals, maximumFractionDigits: y.decimals });
    }
    const x = timeTicks(x0, x1, Math.max(2, Math.floor((w - PAD.l) / 90)));
    for (const t of x.ticks) {
      const label = el("text", { x: sx(t), y: h - 6, "text-anchor": "middle" }, svg);
      label.textContent = fmtTime(t, x.step);
    }
    return { sx, sy, w, h };
  }

  /** Where the x axis starts: the requested range, or just before the first point when the
   * data covers only the end of it (a demo that started two minutes ago fills the chart
   * instead of a sliver at its right edge); a span of at least a minute. */
  function fitStart(from, to, first) {
    if (first === undefined || first <= from) return from;
    const minSpan = Math.min(to - from, MINUTE);
    return Math.min(to - minSpan, Math.max(from, first - (to - first) * 0.05));
  }

  /** points: [{t: ms, v: number}], sorted. opts: {kind: "power"|"volt", from, to, unit} */
  function line(svg, points, opts) {
    const x0 = fitStart(opts.from, opts.to, points.length ? points[0].t : undefined);
    const x1 = opts.to;
    const vals = points.map((p) => p.v);
    let y0 = vals.length ? Math.min(...vals) : 0;
    let y1 = vals.length ? Math.max(...vals) : 1;
    if (opts.kind === "power") y0 = Math.min(0, y0);
    const pad = (y1 - y0) * 0.1 || Math.abs(y1) * 0.02 || 1;
    y1 += pad; if (opts.kind !== "power") y0 -= pad;
    const f = frame(svg, x0, x1, y0, y1);
    if (!points.length) {
      const t = el("text", { x: f.w / 2, y: f.h / 2, "text-anchor": "middle" }, svg);
      t.textContent = I18n.t("chart.no_readings");
      return;
    }
    const d = points.map((p, i) => `${i ? "L" : "M"}${f.sx(p.t).toFixed(1)},${f.sy(p.v).toFixed(1)}`).join("");
    const base = f.sy(Math.max(y0, Math.min(0, y1)));
    const first = points[0], last = points[points.length - 1];
    el("path", { d: `${d}L${f.sx(last.t)},${base}L${f.sx(first.t)},${base}Z`, class: `area-${opts.kind}` }, svg);
    el("path", { d, class: `line-${opts.kind}` }, svg);
    el("circle", { cx: f.sx(last.t), cy: f.sy(last.v), r: 3.5, class: "now-dot" }, svg);
    hover(svg, f, points, opts.unit);
  }

  function hover(svg, f, points, unit) {
    const guide = el("line", { y1: PAD.t, y2: f.h - PAD.b, class: "hover-line", visibility: "hidden" }, svg);
    const tip = el("text", { y: PAD.t + 10, visibility: "hidden" }, svg);
    svg.onpointermove = (ev) => {
      const r = svg.getBoundingClientRect();
      const x = ((ev.clientX - r.left) / r.width) * f.w;
      let best = points[0];
      for (const p of points) if (Math.abs(f.sx(p.t) - x) < Math.abs(f.sx(best.t) - x)) best = p;
      const bx = f.sx(best.t);
      guide.setAttribute("x1", bx); guide.setAttribute("x2", bx);
      guide.setAttribute("visibility", "visible");
      tip.textContent = `${Fmt.num(best.v, 3)} ${unit} · ${Fmt.time(best.t)}`;
      tip.setAttribute("x", Math.min(bx + 6, f.w - 160));
      tip.setAttribute("visibility", "visible");
    };
    svg.onpointerleave = () => {
      guide.setAttribute("visibility", "hidden"); tip.setAttribute("visibility", "hidden");
    };
  }

  /** bars: [{start, end (ms), kwh, quality, held, flags}], markers: [{t, rule, reason}] */
  function bars(svg, intervals, markers, opts) {
    const vals = intervals.map((b) => b.kwh);
    const y1 = (vals.length ? Math.max(...vals) : 1) * 1.12 || 1;
    const f = frame(svg, fitStart(opts.from, opts.to, intervals.length ? intervals[0].start : undefined), opts.to, 0, y1);
    if (!intervals.length) {
      const t = el("text", { x: f.w / 2, y: f.h / 2, "text-anchor": "middle" }, svg);
      t.textContent = I18n.t("chart.no_intervals");
      return;
    }
    for (const b of intervals) {
      const x = f.sx(b.start), w = Math.max(1, f.sx(b.end) - x - 1);
      const flagged = b.held || b.flags.length > 0;
      const cls = flagged ? "bar flag" : (b.quality === "A" ? "bar" : "bar est");
      const rect = el("rect", { x, y: f.sy(b.kwh), width: w, height: Math.max(0, f.sy(0) - f.sy(b.kwh)), class: cls }, svg);
      const title = el("title", {}, rect);
      title.textContent = I18n.t("chart.interval_tip", { when: Fmt.when(b.start), kwh: Fmt.num(b.kwh, 4), quality: b.quality }) +
        (b.flags.length ? ` — ${b.flags.join(", ")}` : "") + (b.held ? ` — ${I18n.t("chart.held")}` : "");
    }
    for (const m of markers) {
      const x = f.sx(m.t);
      const tri = el("path", { d: `M${x},${PAD.t + 1}l5,9h-10z`, class: "marker" }, svg);
      const title = el("title", {}, tri);
      title.textContent = `${m.rule}: ${m.reason}`;
    }
  }

  return { line, bars };
})();

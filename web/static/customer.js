/* The customer's own page (role customer): balance and supply state of their accounts, a
 * chart of daily consumption, their postpaid bills (e-bill pages) and the notices sent to them. Uses app.js's helpers (h, api,
 * section, money, when, table) and charts.js; every word through t() (cust.* keys); builds DOM with h(), never innerHTML. */
"use strict";

async function viewCustomer(target) {
  const mine = await api("GET", "/my/accounts");
  const notices = await api("GET", "/my/notices?limit=50");
  const bills = await api("GET", "/my/bills?limit=24");
  const cards = mine.accounts.map((a) => h("div", { class: "card" },
    h("h2", {}, a.name || a.account),
    h("p", { class: "big" }, money(a.balance)),
    h("p", {}, a.cut_off ? badge(t("cust.supply_off"), "cut") : badge(t("cust.supply_on"), "normal"),
      a.customer_action_needed ? h("span", { class: "muted" }, " — ", t("cust.press_button")) : null),
    h("p", { class: "muted" }, t("cust.meters", { meters: a.meters.join(", ") }))));
  const chartBox = h("div", {});
  const picker = h("select", { "aria-label": t("cust.account") },
    mine.accounts.map((a) => h("option", { value: a.account }, a.account)));
  const draw = async () => {
    const usage = await api("GET", `/my/usage?days=30&account=${encodeURIComponent(picker.value)}`);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "chart"); svg.setAttribute("data-testid", "chart-usage");
    const day = 86400000;
    const bars = usage.days.map((d) => {
      const start = Date.parse(`${d.date}T00:00:00+08:00`);
      return { start, end: start + day, kwh: Number(d.kwh), quality: "A", held: false, flags: [] };
    });
    chartBox.replaceChildren(svg);
    Charts.bars(svg, bars, [], { from: bars.length ? bars[0].start : Date.now() - 30 * day, to: Date.now() });
  };
  picker.addEventListener("change", draw);
  target.replaceChildren(
    section(t("cust.welcome", { name: mine.customer.name }), ...(cards.length ? cards : [h("p", { class: "muted" }, t("cust.no_account"))])),
    mine.accounts.length ? section(t("cust.daily_usage"), picker, chartBox) : null,
    bills.bills.length ? section(t("cust.bills"), table(["cust.period", "cust.account_col", "cust.due", "cust.kwh#", "cust.amount_due#", ""],
      bills.bills.map((b) => h("tr", {}, h("td", {}, `${b.period_start} – ${b.period_end}`), h("td", { class: "mono" }, b.account),
        h("td", {}, b.due_date), h("td", { class: "num" }, b.kwh), h("td", { class: "num" }, money(b.amount_due)),
        h("td", {}, h("a", { href: `/api/v1/my/bills/${b.bill_id}`, target: "_blank", rel: "noopener" }, t("cust.ebill"))))))) : null,
    section(t("cust.notices"), table(["cust.when", "cust.account_col", "cust.subject", "cust.message", "cust.delivered"],
      notices.notices.map((n) => h("tr", {}, h("td", {}, when(n.at)), h("td", { class: "mono" }, n.account),
        h("td", {}, n.subject), h("td", { class: "wrap" }, n.body), h("td", {}, t(n.delivered ? "common.yes" : "cust.not_yet")))),
      t("cust.no_notices"))));
  if (mine.accounts.length) await draw();
}

/* The customer's own page (role customer): balance and supply state of their accounts, a
 * chart of daily consumption, their postpaid bills (e-bill pages) and the notices sent to them. Uses app.js's helpers (h, api,
 * section, money, when, table) and charts.js; builds DOM with h(), never innerHTML. */
"use strict";

async function viewCustomer(target) {
  const mine = await api("GET", "/my/accounts");
  const notices = await api("GET", "/my/notices?limit=50");
  const bills = await api("GET", "/my/bills?limit=24");
  const cards = mine.accounts.map((a) => h("div", { class: "card" },
    h("h2", {}, a.name || a.account),
    h("p", { class: "big" }, money(a.balance)),
    h("p", {}, a.cut_off ? badge("supply cut off", "cut") : badge("supply on", "normal"),
      a.customer_action_needed ? h("span", { class: "muted" }, " — press the button on your meter to switch it on") : null),
    h("p", { class: "muted" }, `meters: ${a.meters.join(", ")}`)));
  const chartBox = h("div", {});
  const picker = h("select", { "aria-label": "account" },
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
    section(`Welcome, ${mine.customer.name}`, ...(cards.length ? cards : [h("p", { class: "muted" }, "No account is linked to you yet.")])),
    mine.accounts.length ? section("Daily consumption (kWh, last 30 days)", picker, chartBox) : null,
    bills.bills.length ? section("Bills", table(["Period", "Account", "Due", "kWh", "Amount due", ""],
      bills.bills.map((b) => h("tr", {}, h("td", {}, `${b.period_start} – ${b.period_end}`), h("td", { class: "mono" }, b.account),
        h("td", {}, b.due_date), h("td", { class: "num" }, b.kwh), h("td", { class: "num" }, money(b.amount_due)),
        h("td", {}, h("a", { href: `/api/v1/my/bills/${b.bill_id}`, target: "_blank", rel: "noopener" }, "e-bill")))))) : null,
    section("Notices", table(["When", "Account", "Subject", "Message", "Delivered"],
      notices.notices.map((n) => h("tr", {}, h("td", {}, when(n.at)), h("td", { class: "mono" }, n.account),
        h("td", {}, n.subject), h("td", { class: "wrap" }, n.body), h("td", {}, n.delivered ? "yes" : "not yet"))),
      "No notices.")));
  if (mine.accounts.length) await draw();
}

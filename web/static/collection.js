/* meterhub page, postpaid collection: arrears and ageing, collection rates, instalment plans,
 * and per account its bills (with e-bills), ladder notices and penalty lines.
 * Uses app.js's helpers (h, api, table, section, badge, money, when, toast, can) and adds
 * its routes to app.js's route table; like app.js it never builds markup from strings. */
"use strict";

const STAGE_CLASS = { clear: "ok", billed: "neutral", reminding: "neutral", collecting: "warn",
  cut_planned: "bad", cut_due: "bad", protected: "ok" };

function stageBadge(stage) { return stage ? badge(stage.replace("_", " "), STAGE_CLASS[stage] || "neutral") : "—"; }

async function viewCollection(target) {
  const [rep, rates, plans] = await Promise.all([
    api("GET", "/collection/arrears"), api("GET", "/collection/rates"),
    api("GET", "/collection/plans")]);
  const accountLink = (id) => h("a", { href: `#/collection/${encodeURIComponent(id)}` }, id);
  const flags = (r) => [r.escalated ? badge("escalated", "bad") : "", r.large ? badge("large", "warn") : "",
    r.good_payer ? badge("good payer", "ok") : ""];
  const t = rep.ageing_totals;
  const ageing = table(["Account", "Class", "Compound", "Unpaid#", "0-30#", "31-60#", "61-90#", ">90#", "Stage", "Next step", "Cut from", "Flags"],
    rep.accounts.map((r) => h("tr", { "data-account": r.account_id },
      h("td", {}, accountLink(r.account_id)), h("td", {}, r.customer_class), h("td", {}, r.group || "—"),
      h("td", { class: "num" }, money(r.unpaid)),
      ["0-30", "31-60", "61-90", ">90"].map((b) => h("td", { class: "num" }, money(r.ageing[b]))),
      h("td", {}, stageBadge(r.stage)),
      h("td", {}, r.next_step ? `${r.next_step.replace("_", " ")} ${when(r.next_at)}` : (r.hold || "—")),
      h("td", {}, when(r.cut_at)), h("td", {}, flags(r)))),
    "no postpaid accounts");
  const rateTable = (dim, label) => table([label, "Billed#", "Collected#", "Arrears#", "Rate#"],
    rates[dim].map((r) => h("tr", {}, h("td", {}, r[dim] || "—"), h("td", { class: "num" }, money(r.billed)),
      h("td", { class: "num" }, money(r.collected)), h("td", { class: "num" }, money(r.arrears)),
      h("td", { class: "num" }, `${(Number(r.rate) * 100).toFixed(1)} %`))), "no bills yet");
  target.replaceChildren(h("h1", {}, "Collection"),
    section("Arrears and ageing", ageing,
      h("p", { class: "muted" }, `Totals: 0-30 ${money(t["0-30"])} · 31-60 ${money(t["31-60"])} · 61-90 ${money(t["61-90"])} · >90 ${money(t[">90"])}`),
      rep.large.length ? h("p", {}, "Very large arrears: ", rep.large.map((id) => [accountLink(id), " "])) : null),
    section("Collection rate per month", rateTable("month", "Bill month")),
    section("Collection rate per compound", rateTable("group", "Compound")),
    section("Instalment plans", planTable(plans.plans)));
}

function planTable(plans) {
  return table(["Plan#", "Account", "State", "Covered#", "Instalments", "Agreed by", "Penalty"],
    plans.map((p) => h("tr", { "data-plan": p.plan_id }, h("td", { class: "num" }, p.plan_id),
      h("td", {}, h("a", { href: `#/collection/${encodeURIComponent(p.account_id)}` }, p.account_id)),
      h("td", {}, badge(p.state, p.state === "missed" ? "bad" : p.state === "kept" ? "ok" : "neutral")),
      h("td", { class: "num" }, money(p.covered)),
      h("td", {}, p.instalments.map((i) => `${i.due} ${money(i.amount)}`).join(", ")),
      h("td", {}, `${p.created_by}: ${p.reason}`), h("td", {}, p.waive_penalty ? "waived" : "charged"))),
    "no instalment plans");
}

async function viewCollectionAccount(target, accountId) {
  const id = encodeURIComponent(accountId);
  const [bills, ladder, plans] = await Promise.all([
    api("GET", `/accounts/${id}/bills`), api("GET", `/accounts/${id}/collection`),
    api("GET", `/collection/plans?account=${id}`)]);
  const billRows = bills.bills.map((b) => h("tr", { "data-bill": b.bill_id },
    h("td", { class: "num" }, b.bill_id), h("td", {}, `${b.period_start} – ${b.period_end}`),
    h("td", {}, b.due_date), h("td", { class: "num" }, num(b.kwh, 2)),
    h("td", { class: "num" }, money(b.charges)), h("td", { class: "num" }, money(b.corrections)),
    h("td", { class: "num" }, money(b.penalties)), h("td", { class: "num" }, money(b.payments)),
    h("td", { class: "num" }, money(b.amount_due)),
    h("td", {}, h("a", { href: `${API}/bills/${b.bill_id}/ebill`, target: "_blank", rel: "noopener" }, "HTML"), " ",
      h("a", { href: `${API}/bills/${b.bill_id}/ebill?format=pdf`, target: "_blank", rel: "noopener" }, "PDF"))));
  const notices = table(["When", "Notice", "Required", "Delivery", "Text"],
    ladder.notices.map((n) => h("tr", { "data-notice": n.kind }, h("td", {}, when(n.not_before)),
      h("td", {}, n.kind.replace(/_/g, " ")), h("td", {}, n.required ? "yes" : ""),
      h("td", {}, n.last_outcome ? badge(n.last_outcome, n.last_outcome === "delivered" || n.last_outcome === "posted" ? "ok" : "warn") : badge("waiting", "neutral")),
      h("td", { class: "wrap" }, n.texts["zh-CN"].body))), "no notices");
  const penalties = table(["Bill#", "Through", "Exact", "Total#", "Posted#"],
    ladder.penalties.map((p) => h("tr", {}, h("td", { class: "num" }, p.bill_id), h("td", {}, p.through),
      h("td", {}, p.exact), h("td", { class: "num" }, money(p.total)), h("td", { class: "num" }, money(p.posted)))),
    "no penalties");
  target.replaceChildren(
    h("div", { class: "spread" }, h("h1", {}, `${ladder.name || accountId} (${ladder.customer_class})`),
      h("a", { href: "#/collection" }, "← collection")),
    section("Ladder", h("p", {}, stageBadge(ladder.stage), " unpaid ", money(ladder.unpaid), " · overdue ", money(ladder.overdue),
      " · next: ", ladder.next_step ? `${ladder.next_step.replace("_", " ")} ${when(ladder.next_at)}` : "—",
      ladder.cut_at ? ` · cut from ${when(ladder.cut_at)}` : "", ladder.hold ? h("span", { class: "muted" }, ` (${ladder.hold})`) : ""),
      notices),
    section("Bills", table(["Bill#", "Period", "Due", "kWh#", "Charges#", "Corrections#", "Penalties#", "Paid#", "Amount due#", "E-bill"], billRows, "no bills yet")),
    section("Penalty lines", penalties),
    section("Instalment plans", planTable(plans.plans), can("operator") ? planForm(accountId, target) : null));
}

function planForm(accountId, target) {
  const rows = h("div");
  const addRow = () => rows.appendChild(h("div", { class: "row" },
    h("input", { type: "date", required: true, "aria-label": "instalment date" }),
    h("input", { inputmode: "decimal", required: true, placeholder: "amount (yuan)", "aria-label": "instalment amount" })));
  addRow(); addRow();
  const reason = h("input", { required: true, placeholder: "reason (hardship ...)", "aria-label": "reason" });
  const waive = h("input", { type: "checkbox" });
  const submit = async (ev) => {
    ev.preventDefault();
    const instalments = [...rows.children].map((r) => ({ due: r.children[0].value, amount: r.children[1].value }));
    try {
      await api("POST", `/accounts/${encodeURIComponent(accountId)}/instalment-plans`, { instalments, reason: reason.value, waive_penalty: waive.checked });
      toast("instalment plan agreed");
      await viewCollectionAccount(target, accountId);
    } catch (e) { toast(e.message, true); }
  };
  return h("form", { class: "stack", onsubmit: submit }, h("h3", {}, "Agree an instalment plan"), rows,
    h("button", { type: "button", class: "ghost", onclick: addRow }, "+ instalment"),
    reason, h("label", {}, waive, " waive the late-payment penalty"),
    h("button", { type: "submit", class: "primary" }, "Agree plan"));
}

routes.push([/^#\/collection$/, viewCollection, "collection"],
  [/^#\/collection\/(.+)$/, viewCollectionAccount, "collection"]);

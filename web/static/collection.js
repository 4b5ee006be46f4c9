/* meterhub page, postpaid collection: arrears and ageing, collection rates, instalment plans,
 * and per account its bills (with e-bills), ladder notices, penalty lines, the escalation
 * flag (an operator clears it with a reason) and high-voltage in-month settlement schedules.
 * Uses app.js's helpers (h, api, table, section, badge, label, money, when, toast, can) and
 * adds its routes with addRoute(); every word goes through t() (i18n/<lang>.json, keys
 * coll.*, coll_stage.*, coll_state.*); like app.js it never builds markup from strings. */
"use strict";

const STAGE_CLASS = { clear: "ok", billed: "neutral", reminding: "neutral", collecting: "warn",
  cut_planned: "bad", cut_due: "bad", protected: "ok" };
const PLAN_CLASS = { kept: "ok", missed: "bad", completed: "neutral", settled: "neutral", cancelled: "neutral" };

function stageBadge(stage) {
  return stage ? h("span", { class: `badge ${STAGE_CLASS[stage] || "neutral"}`, "data-stage": stage }, label("coll_stage", stage)) : "—";
}
function stateBadge(state) { return h("span", { class: `badge ${PLAN_CLASS[state] || "neutral"}` }, label("coll_state", state)); }
function nextStep(r) {
  return r.next_step ? `${label("coll_step", r.next_step)} ${when(r.next_at)}` : (r.hold || "—");
}
const accountLink = (id) => h("a", { href: `#/collection/${encodeURIComponent(id)}` }, id);

async function viewCollection(target) {
  const [rep, rates, plans] = await Promise.all([
    api("GET", "/collection/arrears"), api("GET", "/collection/rates"),
    api("GET", "/collection/plans")]);
  const flags = (r) => [r.escalated ? badge(t("coll.escalated"), "bad") : "", r.large ? badge(t("coll.large"), "warn") : "",
    r.good_payer ? badge(t("coll.good_payer"), "ok") : ""];
  const tot = rep.ageing_totals;
  const ageing = table(["coll.account", "coll.class", "coll.compound", "coll.unpaid#", "coll.age_0_30#", "coll.age_31_60#",
    "coll.age_61_90#", "coll.age_over_90#", "coll.stage", "coll.next_step", "coll.cut_from", "coll.flags"],
    rep.accounts.map((r) => h("tr", { "data-account": r.account_id },
      h("td", {}, accountLink(r.account_id)), h("td", {}, label("coll_class", r.customer_class)), h("td", {}, r.group || "—"),
      h("td", { class: "num" }, money(r.unpaid)),
      ["0-30", "31-60", "61-90", ">90"].map((b) => h("td", { class: "num" }, money(r.ageing[b]))),
      h("td", {}, stageBadge(r.stage)), h("td", {}, nextStep(r)),
      h("td", {}, when(r.cut_at)), h("td", {}, flags(r)))),
    t("coll.no_accounts"));
  const rateTable = (dim, head) => table([head, "coll.billed#", "coll.collected#", "coll.arrears#", "coll.rate#"],
    rates[dim].map((r) => h("tr", {}, h("td", {}, r[dim] || "—"), h("td", { class: "num" }, money(r.billed)),
      h("td", { class: "num" }, money(r.collected)), h("td", { class: "num" }, money(r.arrears)),
      h("td", { class: "num" }, `${num(Number(r.rate) * 100, 1)} %`))), t("coll.no_bills"));
  render(target, h("h1", {}, t("coll.title")),
    section(t("coll.arrears_ageing"), ageing,
      h("p", { class: "muted" }, t("coll.totals", { a: money(tot["0-30"]), b: money(tot["31-60"]), c: money(tot["61-90"]), d: money(tot[">90"]) })),
      rep.large.length ? h("p", {}, t("coll.very_large"), " ", rep.large.map((id) => [accountLink(id), " "])) : null),
    section(t("coll.rate_month"), rateTable("month", "coll.bill_month")),
    section(t("coll.rate_compound"), rateTable("group", "coll.compound")),
    section(t("coll.plans"), planTable(plans.plans)));
}

function planTable(plans) {
  return table(["coll.plan#", "coll.account", "coll.state", "coll.covered#", "coll.instalments", "coll.agreed_by", "coll.penalty"],
    plans.map((p) => h("tr", { "data-plan": p.plan_id }, h("td", { class: "num" }, p.plan_id),
      h("td", {}, accountLink(p.account_id)), h("td", {}, stateBadge(p.state)),
      h("td", { class: "num" }, money(p.covered)),
      h("td", {}, p.instalments.map((i) => `${i.due} ${money(i.amount)}`).join(", ")),
      h("td", {}, `${p.created_by}: ${p.reason}`), h("td", {}, t(p.waive_penalty ? "coll.waived" : "coll.charged")))),
    t("coll.no_plans"));
}

function scheduleTable(schedules) {
  return table(["coll.month", "coll.expected#", "coll.state", "coll.instalments", "coll.bill_part#", "coll.missed", "coll.agreed_by"],
    schedules.map((s) => h("tr", { "data-schedule": s.schedule_id }, h("td", {}, s.month),
      h("td", { class: "num" }, money(s.expected)), h("td", {}, stateBadge(s.state)),
      h("td", {}, s.instalments.map((i) => t("coll.instalment_part", { due: i.due, share: num(Number(i.share) * 100, 2), amount: money(i.amount) })).join(", ")),
      h("td", { class: "num" }, money(s.bill_amount)),
      h("td", {}, s.missed_due ? t("coll.missed_short", { due: s.missed_due, amount: money(s.missed) }) : "—"),
      h("td", {}, `${s.created_by}: ${s.reason}`))),
    t("coll.no_schedules"));
}

async function viewCollectionAccount(target, accountId) {
  const id = encodeURIComponent(accountId);
  const [bills, ladder, plans, settlements] = await Promise.all([
    api("GET", `/accounts/${id}/bills`), api("GET", `/accounts/${id}/collection`),
    api("GET", `/collection/plans?account=${id}`), api("GET", `/accounts/${id}/settlement-schedules`)]);
  const lang = I18n.lang === "zh-CN" ? "zh-CN" : "en";
  const billRows = bills.bills.map((b) => h("tr", { "data-bill": b.bill_id },
    h("td", { class: "num" }, b.bill_id), h("td", {}, `${b.period_start} – ${b.period_end}`),
    h("td", {}, b.due_date), h("td", { class: "num" }, num(b.kwh, 2)),
    h("td", { class: "num" }, money(b.charges)), h("td", { class: "num" }, money(b.corrections)),
    h("td", { class: "num" }, money(b.penalties)), h("td", { class: "num" }, money(b.payments)),
    h("td", { class: "num" }, money(b.amount_due)),
    h("td", {}, h("a", { href: `${API}/bills/${b.bill_id}/ebill`, target: "_blank", rel: "noopener" }, "HTML"), " ",
      h("a", { href: `${API}/bills/${b.bill_id}/ebill?format=pdf`, target: "_blank", rel: "noopener" }, "PDF"))));
  const delivered = (o) => o === "delivered" || o === "posted";
  const notices = table(["coll.when", "coll.notice", "coll.required", "coll.delivery", "coll.text"],
    ladder.notices.map((n) => h("tr", { "data-notice": n.kind }, h("td", {}, when(n.not_before)),
      h("td", {}, label("coll_notice", n.kind)), h("td", {}, n.required ? t("common.yes") : ""),
      h("td", {}, n.last_outcome ? badge(n.last_outcome, delivered(n.last_outcome) ? "ok" : "warn", "coll_outcome") : badge(t("coll.waiting"), "neutral")),
      h("td", { class: "wrap" }, (n.texts[lang] || n.texts["zh-CN"]).body))), t("coll.no_notices"));
  const penalties = table(["coll.bill#", "coll.through", "coll.exact", "coll.total#", "coll.posted#"],
    ladder.penalties.map((p) => h("tr", {}, h("td", { class: "num" }, p.bill_id), h("td", {}, p.through),
      h("td", {}, p.exact), h("td", { class: "num" }, money(p.total)), h("td", { class: "num" }, money(p.posted)))),
    t("coll.no_penalties"));
  const reload = () => viewCollectionAccount(target, accountId);
  const hv = ladder.customer_class === "high_voltage";
  render(target,
    h("div", { class: "spread" }, h("h1", {}, `${ladder.name || accountId} (${label("coll_class", ladder.customer_class)})`),
      h("a", { href: "#/collection" }, t("coll.back"))),
    section(t("coll.ladder"), h("p", { "data-testid": "ladder-state" }, stageBadge(ladder.stage), " ",
      t("coll.ladder_line", { unpaid: money(ladder.unpaid), overdue: money(ladder.overdue), next: nextStep(ladder) }),
      ladder.cut_at ? ` · ${t("coll.cut_from_at", { at: when(ladder.cut_at) })}` : "",
      ladder.hold && ladder.next_step ? h("span", { class: "muted" }, ` (${ladder.hold})`) : ""),
      escalation(ladder, accountId, reload),
      notices),
    section(t("coll.bills"), table(["coll.bill#", "coll.period", "coll.due", "coll.kwh#", "coll.charges#", "coll.corrections#",
      "coll.penalties#", "coll.paid#", "coll.amount_due#", "coll.ebill"], billRows, t("coll.no_bills"))),
    section(t("coll.penalty_lines"), penalties),
    hv || settlements.schedules.length ? section(t("coll.settlement"), h("p", { class: "muted" }, t("coll.settlement_intro")),
      scheduleTable(settlements.schedules), hv && can("operator") ? settlementForm(accountId, reload) : null) : null,
    section(t("coll.plans"), planTable(plans.plans), can("operator") ? planForm(accountId, reload) : null));
}

/** The escalation flag: why it is set, who cleared it last, and the operator's Clear. */
function escalation(ladder, accountId, reload) {
  const cleared = ladder.escalation_cleared;
  const clear = async () => {
    const reason = prompt(t("coll.clear_reason", { account: accountId }), "");
    if (reason === null) return;
    try {
      await api("POST", `/accounts/${encodeURIComponent(accountId)}/escalation/clear`, { reason });
      toast(t("coll.cleared_toast"));
      await reload();
    } catch (e) { toast(e.message, true); }
  };
  return h("div", { class: "row", "data-testid": "escalation" },
    ladder.escalated ? [badge(t("coll.escalated"), "bad"), " ", ladder.escalation_reason || ""] : h("span", { class: "muted" }, t("coll.not_escalated")),
    cleared ? h("span", { class: "muted" }, " ", t("coll.cleared_by", { by: cleared.by, at: when(cleared.at), reason: cleared.reason })) : null,
    ladder.escalated && can("operator") ? h("button", { type: "button", onclick: clear }, t("coll.clear_escalation")) : null);
}

function settlementForm(accountId, reload) {
  const month = h("input", { type: "month", required: true, "aria-label": t("coll.month") });
  const expected = h("input", { inputmode: "decimal", placeholder: t("coll.expected_placeholder"), "aria-label": t("coll.expected") });
  const reason = h("input", { required: true, placeholder: t("coll.reason_placeholder"), "aria-label": t("coll.reason") });
  const submit = async (ev) => {
    ev.preventDefault();
    const body = { month: month.value, reason: reason.value };
    if (expected.value.trim()) body.expected = expected.value.trim();
    try {
      await api("POST", `/accounts/${encodeURIComponent(accountId)}/settlement-schedules`, body);
      toast(t("coll.settlement_agreed"));
      await reload();
    } catch (e) { toast(e.message, true); }
  };
  return h("form", { class: "stack", onsubmit: submit }, h("h3", {}, t("coll.agree_settlement")),
    h("p", { class: "muted" }, t("coll.settlement_default")), month, expected, reason,
    h("button", { type: "submit", class: "primary" }, t("coll.agree_settlement")));
}

function planForm(accountId, reload) {
  const rows = h("div");
  const addRow = () => rows.appendChild(h("div", { class: "row" },
    h("input", { type: "date", required: true, "aria-label": t("coll.instalment_date") }),
    h("input", { inputmode: "decimal", required: true, placeholder: t("coll.amount_placeholder"), "aria-label": t("coll.instalment_amount") })));
  addRow(); addRow();
  const reason = h("input", { required: true, placeholder: t("coll.hardship_placeholder"), "aria-label": t("coll.reason") });
  const waive = h("input", { type: "checkbox" });
  const submit = async (ev) => {
    ev.preventDefault();
    const instalments = [...rows.children].map((r) => ({ due: r.children[0].value, amount: r.children[1].value }));
    try {
      await api("POST", `/accounts/${encodeURIComponent(accountId)}/instalment-plans`, { instalments, reason: reason.value, waive_penalty: waive.checked });
      toast(t("coll.plan_agreed"));
      await reload();
    } catch (e) { toast(e.message, true); }
  };
  return h("form", { class: "stack", onsubmit: submit }, h("h3", {}, t("coll.agree_plan")), rows,
    h("button", { type: "button", class: "ghost", onclick: addRow }, t("coll.add_instalment")),
    reason, h("label", {}, waive, " ", t("coll.waive")),
    h("button", { type: "submit", class: "primary" }, t("coll.agree_plan_button")));
}

addRoute(/^#\/collection$/, viewCollection, "collection");
addRoute(/^#\/collection\/(.+)$/, viewCollectionAccount, "collection");

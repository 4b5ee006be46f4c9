/* Review decisions that change a value (reject: an estimate replaces it; correct: the
   engineer's kWh), a site visit, and the item's history. Loaded after app.js, which calls
   reviewActions() on each review card for engineers. */
"use strict";

function reviewActions(r, reload) {
  const reason = h("input", { type: "text", maxlength: 2000, placeholder: t("review.reason_placeholder"), "aria-label": t("review.reason") });
  const kwh = h("input", { type: "text", inputmode: "decimal", size: 8, placeholder: "0.2500", "aria-label": t("review.kwh") });
  const history = h("ol", { class: "history", hidden: true });
  const run = async (path, body, toastKey) => {
    try {
      await api("POST", `/review-items/${r.id}/${path}`, body);
      toast(t(toastKey, { id: r.id }));
      await reload();
    } catch (e) { toast(e.message, true); }
  };
  const showHistory = async () => {
    const out = await api("GET", `/review-items/${r.id}/history`);
    history.replaceChildren(...out.history.map((s) => h("li", {},
      `${when(s.at)} · ${s.by} · ${label("history", s.action)}`,
      s.detail && s.detail.decision ? ` · ${label("review", s.detail.decision)}` : "",
      s.comment ? ` — ${s.comment}` : "")));
    history.hidden = false;
  };
  return h("div", { class: "decide-more" },
    h("div", { class: "row" }, reason,
      r.status === "open" ? h("button", { type: "button", onclick: () => run("reject", { comment: reason.value }, "review.rejected_toast") }, t("review.reject")) : null,
      kwh,
      h("button", { type: "button", onclick: () => run("correct", { reason: reason.value, values: [{ interval_start: r.period_start, kwh: kwh.value }] }, "review.corrected_toast") }, t("review.correct")),
      h("button", { type: "button", onclick: () => run("work-orders", { instructions: reason.value }, "review.visit_toast") }, t("review.site_visit")),
      h("button", { type: "button", onclick: () => showHistory().catch((e) => toast(e.message, true)) }, t("review.history"))),
    history);
}

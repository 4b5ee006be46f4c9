/* "My account" (#/me): one's own sessions (where one is logged in, ending any of them or all)
 * and the password change; the API had both (GET /sessions, DELETE /sessions/{id},
 * POST /me/logout-all, POST /me/password), the page had neither. */
"use strict";

async function viewMe(target) {
  const out = await api("GET", "/sessions");
  const sessions = table(["col.session", "col.signed_in", "col.last_active", "col.expires", "col.from", "col.browser", ""],
    out.sessions.map((s) => h("tr", { "data-session": s.id },
      h("td", {}, `#${s.id}`, s.current ? [" ", badge(t("me.this_session"), "ok")] : null),
      h("td", {}, when(s.created_at)), h("td", {}, ago(s.last_seen_at)), h("td", {}, when(s.expires_at)),
      h("td", { class: "mono" }, s.source || "—"), h("td", { class: "wrap muted" }, s.user_agent || "—"),
      h("td", {}, s.current ? "" : h("button", { type: "button", onclick: () => endSession(s.id, target) }, t("me.end"))))),
    t("me.no_sessions"));
  const logoutAll = h("button", { type: "button", class: "danger", onclick: async () => {
    if (!confirm(t("me.logout_all_confirm"))) return;
    try {
      await api("POST", "/me/logout-all");
    } catch (e) { toast(e.message, true); return; }
    showLogin();
  } }, t("me.logout_all"));
  render(target,
    h("div", { class: "spread" }, h("h1", {}, t("me.title")), h("span", { class: "muted" }, whoText(state.user))),
    h("div", { class: "grid wide" },
      section(t("me.password"), passwordForm()),
      section(t("me.sessions"), h("p", { class: "muted" }, t("me.sessions_intro")), sessions, h("div", { class: "row" }, logoutAll))));
}

async function endSession(id, target) {
  try {
    await api("DELETE", `/sessions/${id}`);
    toast(t("me.session_ended", { id }));
    await viewMe(target);
  } catch (e) { toast(e.message, true); }
}

/** Current password, the new one twice; the server ends every other session on success. */
function passwordForm() {
  const field = (key, auto) => h("input", { type: "password", autocomplete: auto, required: true, "aria-label": t(key) });
  const current = field("me.current_password", "current-password");
  const fresh = field("me.new_password", "new-password");
  const again = field("me.repeat_password", "new-password");
  fresh.minLength = 12;
  const message = h("p", { role: "alert", hidden: true });
  const say = (text, bad) => { message.textContent = text; message.className = bad ? "error" : "muted"; message.hidden = false; };
  return h("form", { class: "stack", "data-testid": "password-form", onsubmit: async (ev) => {
    ev.preventDefault();
    if (fresh.value !== again.value) { say(t("me.mismatch"), true); return; }
    try {
      const res = await api("POST", "/me/password", { current: current.value, new: fresh.value });
      for (const f of [current, fresh, again]) f.value = "";
      say(t("me.password_changed", { n: res.sessions_ended }), false);
    } catch (e) { say(e.message, true); }
  } },
  h("label", {}, t("me.current_password"), current),
  h("label", {}, t("me.new_password"), fresh),
  h("label", {}, t("me.repeat_password"), again),
  h("p", { class: "muted" }, t("me.password_rule")),
  h("button", { type: "submit", class: "primary" }, t("me.change_password")),
  message);
}

addRoute(/^#\/me$/, viewMe, "me");

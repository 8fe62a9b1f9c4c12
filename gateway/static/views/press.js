// How a press reads next to its button: sending, waiting for the connection,
// done (briefly), or refused with the server's reason, message and details.

import { h, patch } from "../dom.js";
import { explain, fieldProblem } from "../explain.js";
import { words } from "../format.js";
import { changed, pressState, state } from "../store.js";

export const SUCCESS_MS = 4000;

/**
 * Render the state of the presses on `control` into `el` (and on `button`, if given).
 * success(outcome) → text for a success; details(error) → extra nodes for a refusal.
 */
export function renderPress(el, control, { success = () => "Done", details = () => [], button = null, fieldsBeside = false } = {}) {
  const pending = pressState(control);
  if (button) {
    // Busy, not disabled: the next press (another lead, another text) may follow at once.
    button.classList.toggle("is-busy", pending === "sending");
    button.classList.toggle("is-queued", pending === "queued");
    if (pending) button.setAttribute("aria-busy", "true");
    else button.removeAttribute("aria-busy");
  }
  if (pending === "sending") {
    patch(el, h("span", { class: "press press-sending", role: "status" },
      h("span", { class: "spinner", "aria-hidden": "true" }), "Sending…"));
    return;
  }
  if (pending === "queued") {
    patch(el, h("span", { class: "press press-queued", role: "status" },
      h("span", { class: "dot dot-warn", "aria-hidden": "true" }),
      "Waiting for the connection · it will be sent once, automatically"));
    return;
  }
  const outcome = state.outcomes.get(control);
  if (!outcome) {
    patch(el);
    return;
  }
  if (outcome.ok) {
    if (Date.now() - outcome.at > SUCCESS_MS) {
      patch(el);
      return;
    }
    patch(el, h("span", { class: "press press-ok", role: "status" },
      h("span", { class: "tick", "aria-hidden": "true" }, "✓"), success(outcome),
      outcome.already ? h("span", { class: "muted" }, " · it had already been done") : null));
    return;
  }
  patch(el, errorBox(outcome.error, {
    control,
    intent: outcome.intent,
    fieldsBeside,
    details: details(outcome.error),
    onDismiss: () => {
      state.outcomes.delete(control);
      changed();
    },
  }));
}

/**
 * A refusal in words (explain.js): what happened, what to do, any details the
 * caller adds, and, for support, the reason code and the server's message.
 * Field violations are shown next to their fields (showFieldErrors), not here.
 */
export function errorBox(error, { control = "", intent = {}, details = [], onDismiss = null, fieldsBeside = false } = {}) {
  const { title, hint } = explain(error, intent ?? {});
  // A text the breaker held back waits for texting to resume (the Send now button), not a clock.
  const wait = error.reason === "PROVIDER_CIRCUIT_OPEN" ? null : retryLeft(error);
  const violations = fieldsBeside ? [] : error.fieldViolations ?? [];
  return h("div", { class: "alert alert-error", role: "alert" },
    h("div", { class: "alert-body" },
      h("p", { class: "alert-title" }, title),
      hint ? h("p", { class: "alert-hint" }, hint) : null,
      violations.length ? h("ul", { class: "violations" }, violations.map((v) => h("li", {},
        `${words(v.field)} ${fieldProblem(v)}`))) : null,
      details,
      wait !== null && wait > 0 ? h("p", { class: "retry" }, `You can try again in ${wait} s.`) : null,
      supportLine(error)),
    onDismiss ? h("button", {
      class: "alert-close", type: "button", title: "Dismiss", "aria-label": "Dismiss",
      dataset: { control }, onclick: onDismiss,
    }, "×") : null);
}

/** The reason code for support, with the server's own words folded away. */
export function supportLine(error) {
  return h("details", { class: "alert-details" },
    h("summary", {}, "Details for support: ", h("code", { class: "reason" }, error.reason || "ERROR")),
    h("p", { class: "support-message" }, error.message || "", error.httpStatus ? ` (HTTP ${error.httpStatus})` : ""));
}

function retryLeft(error) {
  if (error.retryAfter === null || error.retryAfter === undefined) return null;
  const since = error.receivedAt ? (Date.now() - error.receivedAt) / 1000 : 0;
  return Math.max(0, Math.ceil(error.retryAfter - since));
}

const camel = (name) => String(name).replace(/_([a-z])/g, (_, c) => c.toUpperCase());

/** Put each field violation next to its field; the rest stay in the error box. */
export function showFieldErrors(form, error) {
  for (const slot of form.querySelectorAll(".field-error")) slot.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const violation of error?.fieldViolations ?? []) {
    const name = camel(violation.field);
    const slot = form.querySelector(`.field-error[data-for="${CSS.escape(name)}"]`);
    if (!slot) continue;
    slot.textContent = fieldProblem(violation);
    form.querySelector(`[name="${CSS.escape(name)}"]`)?.setAttribute("aria-invalid", "true");
  }
}

export function clearFieldErrors(form) {
  showFieldErrors(form, null);
}

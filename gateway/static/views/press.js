// How a press reads next to its button: sending, waiting for the connection,
// done (briefly), or refused with the server's reason, message and details.

import { h, patch } from "../dom.js";
import { changed, pressState, state } from "../store.js";

export const SUCCESS_MS = 4000;

/**
 * Render the state of the presses on `control` into `el` (and on `button`, if given).
 * success(outcome) → text for a success; details(error) → extra nodes for a refusal.
 */
export function renderPress(el, control, { success = () => "Done", details = () => [], button = null } = {}) {
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
      outcome.replayed ? h("span", { class: "muted" }, " · confirmed by the server's stored answer") : null));
    return;
  }
  patch(el, errorBox(outcome.error, {
    control,
    details: details(outcome.error),
    onDismiss: () => {
      state.outcomes.delete(control);
      changed();
    },
  }));
}

/** The refusal: reason and message, field and precondition violations, retry time. */
export function errorBox(error, { control = "", details = [], onDismiss = null } = {}) {
  const violations = [
    ...(error.fieldViolations ?? []).map((v) => [v.field, v.description]),
  ];
  const wait = retryLeft(error);
  return h("div", { class: "alert alert-error", role: "alert" },
    h("div", { class: "alert-body" },
      h("div", { class: "alert-title" },
        h("code", { class: "reason" }, error.reason || "ERROR"),
        h("span", { class: "alert-message" }, humanize(error.message))),
      violations.length ? h("ul", { class: "violations" },
        violations.map(([field, description]) => h("li", {},
          h("code", {}, field), " ", humanize(description)))) : null,
      details,
      wait !== null ? h("p", { class: "retry" }, wait > 0 ? `Retry in ${wait} s` : "You can retry now") : null),
    onDismiss ? h("button", {
      class: "alert-close", type: "button", title: "Dismiss", "aria-label": "Dismiss",
      dataset: { control }, onclick: onDismiss,
    }, "×") : null);
}

function retryLeft(error) {
  if (error.retryAfter === null || error.retryAfter === undefined) return null;
  const since = error.receivedAt ? (Date.now() - error.receivedAt) / 1000 : 0;
  return Math.max(0, Math.ceil(error.retryAfter - since));
}

const ID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;

/** A server message with the ids of leads this screen knows replaced by their names. */
export function humanize(text) {
  return String(text ?? "").replace(ID, (id) => state.leads.get(id)?.name ?? id);
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
    slot.textContent = violation.description;
    form.querySelector(`[name="${CSS.escape(name)}"]`)?.setAttribute("aria-invalid", "true");
  }
}

export function clearFieldErrors(form) {
  showFieldErrors(form, null);
}

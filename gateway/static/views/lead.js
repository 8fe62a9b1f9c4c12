// The selected lead: who it is, where it stands in the pipeline, a button for
// every move the rules allow, and the audit trail of its status.

import * as actions from "../actions.js";
import { $, h, patch } from "../dom.js";
import { ago, exact, initials, phoneOf, when } from "../format.js";
import { LEAD_FLOW, LEAD_LABELS, LOST, isFinal, nextStatuses } from "../pipeline.js";
import { overlay, state } from "../store.js";
import { badge } from "./leads.js";
import { renderPress } from "./press.js";

export function renderLead() {
  const id = state.selectedId;
  const view = overlay();
  const lead = id ? view.leads.get(id) : null;
  $("#detail-empty").hidden = Boolean(lead);
  $("#lead").hidden = !lead;
  if (!lead) {
    if (id && state.detail.error) {
      patch($("#detail-empty"), h("p", { class: "empty-title" }, "This lead could not be loaded"),
        h("p", { class: "muted" }, state.detail.error.reason ?? "", " ", state.detail.error.message ?? ""));
    } else if (id) {
      patch($("#detail-empty"), h("p", { class: "empty-title" }, "Loading…"));
    }
    return null;
  }
  const pending = view.pending.get(id);
  renderHead(lead, pending);
  renderPipeline(lead, pending);
  renderAudit(lead);
  return lead;
}

function renderHead(lead, pending) {
  patch($("#lead-head"),
    h("span", { class: `avatar avatar-large avatar-${lead.status}`, "aria-hidden": "true" }, initials(lead.name)),
    h("div", { class: "lead-title" },
      h("h2", { class: "lead-heading" }, lead.name),
      h("div", { class: "lead-meta" },
        h("a", { href: `tel:${lead.phone}`, class: "meta-item phone" }, phoneOf(lead)),
        lead.email ? h("a", { href: `mailto:${lead.email}`, class: "meta-item" }, lead.email) : null,
        h("span", { class: "meta-item muted", title: exact(lead.createdAt) },
          `Added by ${lead.createdBy || "—"} · ${when(lead.createdAt)}`))),
    badge(lead.status, pending, "badge-large"));
  const updated = $("#lead-updated");
  updated.textContent = lead.updatedAt ? `Updated ${ago(lead.updatedAt)}` : "";
  updated.title = exact(lead.updatedAt);
  updated.dataset.version = String(lead.version ?? "");
}

function renderPipeline(lead, pending) {
  const lost = lead.status === LOST;
  const at = LEAD_FLOW.indexOf(lead.status);
  patch($("#stepper"), LEAD_FLOW.map((status, i) => h("li", {
    class: ["step", !lost && i < at && "done", !lost && i === at && "current", lost && "muted"],
    "aria-current": !lost && i === at ? "step" : false,
  }, h("span", { class: "step-bar", "aria-hidden": "true" }),
  h("span", { class: "step-label" }, LEAD_LABELS[status]))),
  lost ? h("li", { class: "step lost current", "aria-current": "step" },
    h("span", { class: "step-bar", "aria-hidden": "true" }),
    h("span", { class: "step-label" }, "Lost")) : null);

  const moves = nextStatuses(lead.status);
  const forward = moves.filter((s) => s !== LOST);
  const control = `lead:${lead.leadId}`;
  const press = (status) => () => actions.moveLead(state.leads.get(lead.leadId) ?? lead, status);
  patch($("#status-actions"),
    isFinal(lead.status)
      ? h("p", { class: "muted final-note" },
        `${LEAD_LABELS[lead.status]} is final: this lead does not move any more.`)
      : [
        h("span", { class: "actions-label" }, "Move to"),
        forward.map((status, i) => h("button", {
          type: "button", class: ["btn", i === 0 ? "btn-primary" : "btn-secondary"],
          dataset: { key: `move:${status}`, status, leadId: lead.leadId },
          title: `Move ${lead.name} to ${LEAD_LABELS[status]}`,
          onclick: press(status),
        }, LEAD_LABELS[status])),
        h("span", { class: "actions-spacer" }),
        moves.includes(LOST) ? h("button", {
          type: "button", class: "btn btn-danger-outline",
          dataset: { key: `move:${LOST}`, status: LOST, leadId: lead.leadId },
          title: `Mark ${lead.name} as lost`, onclick: press(LOST),
        }, "Mark lost") : null,
      ]);
  renderPress($("#status-press"), control, {
    success: (outcome) => `Moved to ${LEAD_LABELS[outcome.data?.status] ?? outcome.data?.status}`,
  });
  $("#status-press").dataset.pending = pending ?? "";
}

function renderAudit(lead) {
  const trail = state.changes.get(lead.leadId);
  const body = $("#audit");
  if (!trail) {
    patch(body, h("tr", {}, h("td", { colspan: "4", class: "muted" }, "Loading…")));
    return;
  }
  if (!trail.length) {
    patch(body, h("tr", {}, h("td", { colspan: "4", class: "muted" }, "No status changes yet.")));
    return;
  }
  patch(body, [...trail].reverse().map((change) => h("tr", {},
    h("td", { class: "nowrap", title: exact(change.changedAt) }, when(change.changedAt)),
    h("td", { class: "nowrap" }, badge(change.fromStatus), h("span", { class: "arrow" }, "→"), badge(change.toStatus)),
    h("td", {}, change.actor),
    h("td", {}, h("code", { class: "key", title: `Idempotency key ${change.idempotencyKey}` }, change.idempotencyKey.slice(0, 8))))));
}

// The left column: create a lead, filter and search, pick leads for a bulk
// status change, and the list itself.

import * as actions from "../actions.js";
import { $, h, patch } from "../dom.js";
import { ago, exact, initials, phone, plural } from "../format.js";
import { LEAD_LABELS, LEAD_STATUSES, batchEffect } from "../pipeline.js";
import { changed, leadName, overlay, state } from "../store.js";
import { clearFieldErrors, humanize, renderPress, showFieldErrors } from "./press.js";

let onOpen = () => {};

export function setupLeads({ open }) {
  onOpen = open;
  const filters = $("#filters");
  patch(filters, [["", "All"], ...LEAD_STATUSES.map((s) => [s, LEAD_LABELS[s]])].map(([status, label]) =>
    h("button", {
      type: "button", class: "chip", dataset: { status, key: `filter:${status}` },
      "aria-pressed": String(state.listed.status === status),
      onclick: () => {
        if (state.listed.status === status) return;
        state.listed.status = status;
        state.listed.nextPageToken = "";
        actions.loadLeads();
      },
    }, status ? h("span", { class: `swatch swatch-${status}`, "aria-hidden": "true" }) : null, label)));

  $("#search").addEventListener("input", (event) => {
    state.search = event.target.value;
    changed();
  });

  const select = $("#bulk-status");
  patch(select, h("option", { value: "" }, "Move to…"),
    LEAD_STATUSES.map((s) => h("option", { value: s }, LEAD_LABELS[s])));
  select.addEventListener("change", changed);
  $("#bulk-apply").addEventListener("click", () => {
    const status = select.value;
    const ids = [...state.checked];
    if (!status || !ids.length) return;
    actions.moveLeads(ids, status);
  });
  $("#bulk-clear").addEventListener("click", () => {
    state.checked.clear();
    changed();
  });
  $("#check-all").addEventListener("change", (event) => {
    for (const lead of visibleLeads(overlay()).leads) {
      if (event.target.checked) state.checked.add(lead.leadId);
      else state.checked.delete(lead.leadId);
    }
    changed();
  });

  const form = $("#lead-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(form));
    const lead = { name: fields.name.trim(), phone: fields.phone.trim(), email: fields.email.trim() };
    clearFieldErrors(form);
    const missing = [["name", lead.name], ["phone", lead.phone]].filter(([, v]) => !v);
    if (missing.length) {
      showFieldErrors(form, { fieldViolations: missing.map(([field]) => ({ field, description: "is required" })) });
      return;
    }
    actions.createLead(lead);
    form.reset();
  });
}

function visibleLeads(view) {
  const wanted = state.listed.status;
  const needle = state.search.trim().toLowerCase();
  const matches = (lead) => (!wanted || lead.status === wanted) && (!needle
    || [lead.name, lead.phone, lead.email].some((v) => String(v ?? "").toLowerCase().includes(needle)));
  const leads = [...view.leads.values()].filter(matches)
    .sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
  const creating = view.creating.leads.filter(matches);
  return { leads, creating };
}

export function renderLeads() {
  const view = overlay();
  const { leads, creating } = visibleLeads(view);

  for (const chip of $("#filters").children) {
    chip.setAttribute("aria-pressed", String(chip.dataset.status === state.listed.status));
  }

  // Checked leads that are filtered out stay checked: the bulk bar counts them.
  const rows = [
    ...creating.map((lead) => ghostRow(lead)),
    ...leads.map((lead) => leadRow(lead, view.pending.get(lead.leadId))),
  ];
  const list = $("#lead-list");
  if (!rows.length) {
    const listed = state.listed;
    const text = listed.loading ? "Loading leads…"
      : listed.error ? "Could not load leads."
        : state.search ? "No lead matches the search." : "No leads here yet.";
    patch(list, h("li", { class: "list-empty" }, text));
  } else {
    patch(list, rows);
  }
  $("#list-count").textContent = state.listed.loading && !leads.length ? "" : plural(leads.length, "lead");
  const all = $("#check-all");
  const checkedShown = leads.filter((lead) => state.checked.has(lead.leadId)).length;
  all.checked = leads.length > 0 && checkedShown === leads.length;
  all.indeterminate = checkedShown > 0 && checkedShown < leads.length;

  const footer = $("#list-footer");
  if (state.listed.error) {
    patch(footer, h("p", { class: "alert alert-error" }, h("code", { class: "reason" }, state.listed.error.reason ?? "OFFLINE"),
      " ", state.listed.error.message, " ",
      h("button", { type: "button", class: "btn btn-small", onclick: () => actions.loadLeads() }, "Retry")));
  } else if (state.listed.nextPageToken) {
    patch(footer, h("button", {
      type: "button", class: "btn btn-ghost btn-block", disabled: state.listed.loading,
      onclick: () => actions.loadLeads({ more: true }),
    }, state.listed.loading ? "Loading…" : "Load more"));
  } else {
    patch(footer);
  }
  renderBulk(view);
}

function leadRow(lead, pending) {
  const id = lead.leadId;
  const selected = state.selectedId === id;
  return h("li", { class: ["lead-row", selected && "selected", pending && "is-pending"], dataset: { leadId: id } },
    h("input", {
      type: "checkbox", class: "row-check", checked: state.checked.has(id),
      "aria-label": `Select ${lead.name}`, dataset: { key: `check:${id}` },
      onchange: (event) => {
        if (event.target.checked) state.checked.add(id);
        else state.checked.delete(id);
        changed();
      },
    }),
    h("button", {
      type: "button", class: "lead-link", "aria-current": selected ? "true" : false,
      dataset: { key: `open:${id}` }, onclick: () => onOpen(id),
    },
    h("span", { class: `avatar avatar-${lead.status}`, "aria-hidden": "true" }, initials(lead.name)),
    h("span", { class: "lead-main" },
      h("span", { class: "lead-line" }, h("span", { class: "lead-name" }, lead.name), badge(lead.status, pending)),
      h("span", { class: "lead-line lead-sub" },
        h("span", { class: "lead-phone" }, phone(lead.phone)),
        h("span", { class: "lead-when", title: `Updated ${exact(lead.updatedAt)}` }, ago(lead.updatedAt))))));
}

function ghostRow(lead) {
  return h("li", { class: "lead-row ghost", dataset: { pressId: lead.pressId } },
    h("span", { class: "row-check" }),
    h("span", { class: "lead-link" },
      h("span", { class: "avatar avatar-NEW", "aria-hidden": "true" }, initials(lead.name)),
      h("span", { class: "lead-main" },
        h("span", { class: "lead-line" }, h("span", { class: "lead-name" }, lead.name),
          h("span", { class: "badge badge-pending" }, lead.pending === "queued" ? "Waiting to send" : "Creating…")),
        h("span", { class: "lead-line lead-sub" }, lead.phone))));
}

/** A lead status badge; a press not yet answered shows as pending on it. */
export function badge(status, pending, extra = "") {
  const title = pending === "queued" ? "Waiting for the connection"
    : pending === "sending" ? "Saving…" : undefined;
  return h("span", {
    class: ["badge", `badge-${status}`, pending && "badge-unsaved", extra], title,
    dataset: { status, pending: pending || false },
  }, LEAD_LABELS[status] ?? status, pending ? pendingFlag(pending) : null);
}

/** A small mark on a badge whose press is not answered yet: paused, or spinning. */
export function pendingFlag(pending) {
  return h("span", { class: ["badge-flag", pending === "queued" ? "flag-queued" : "flag-sending"], "aria-hidden": "true" });
}

function renderBulk(view) {
  const ids = [...state.checked];
  const bulk = $("#bulk");
  bulk.hidden = ids.length === 0;
  const status = $("#bulk-status").value;
  const effects = { move: 0, unchanged: 0, refused: 0 };
  if (status) {
    for (const id of ids) {
      const lead = view.leads.get(id);
      if (lead) effects[batchEffect(lead.status, status)] += 1;
    }
  }
  const preview = status && ids.length
    ? [effects.move && `${effects.move} will move`, effects.unchanged && `${effects.unchanged} unchanged`,
      effects.refused && `${effects.refused} cannot move there`].filter(Boolean).join(" · ")
    : "";
  patch($("#bulk-count"), `${plural(ids.length, "lead")} selected`,
    preview ? h("span", { class: ["bulk-preview", effects.refused && "warn"] }, preview) : null);
  $("#bulk-apply").disabled = !status || !ids.length;

  renderPress($("[data-control=bulk]"), "bulk", {
    button: $("#bulk-apply"),
    success: (outcome) => batchSummary(outcome),
    details: (error) => offenders(error),
  });
  renderPress($("[data-control=create-lead]"), "create-lead", {
    button: $("#lead-form button[type=submit]"),
    success: (outcome) => `Created ${outcome.data?.name ?? "the lead"}`,
  });
}

function batchSummary(outcome) {
  const moved = outcome.data?.updatedLeads ?? [];
  const unchanged = outcome.data?.unchangedLeadIds ?? [];
  const status = LEAD_LABELS[outcome.intent.status];
  const parts = [`Moved ${plural(moved.length, "lead")} to ${status}`];
  if (unchanged.length) {
    parts.push(`unchanged (already ${status}): ${unchanged.map(leadName).join(", ")}`);
  }
  return parts.join(" · ");
}

function offenders(error) {
  const violations = error.preconditionViolations ?? [];
  if (!violations.length) return [];
  return h("ul", { class: "offenders" }, violations.map((v) => {
    const id = String(v.subject ?? "").replace(/^leads\//, "");
    // "lead '…' cannot move from won to qualified: …": the name is already in bold.
    const why = humanize(v.description).replace(/^lead '[^']*' /, "");
    return h("li", {},
      h("strong", {}, leadName(id)), " ",
      h("code", {}, v.type), h("br"),
      h("span", { class: "why" }, why));
  }));
}

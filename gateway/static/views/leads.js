// The left column: create a lead, filter and search, pick leads for a bulk
// status change, and the list itself.

import * as actions from "../actions.js";
import { $, h, patch } from "../dom.js";
import { ago, digits, exact, initials, phoneOf, plural } from "../format.js";
import { LEAD_FLOW, LEAD_LABELS, LEAD_STATUSES, batchEffect } from "../pipeline.js";
import { changed, leadName, overlay, state } from "../store.js";
import { whyNotMove } from "../explain.js";
import { clearFieldErrors, renderPress, showFieldErrors } from "./press.js";

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
  let checking = false;
  form.elements.phone.addEventListener("input", () => warnDuplicate(form, null));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (checking) return;
    const fields = Object.fromEntries(new FormData(form));
    const lead = { name: fields.name.trim(), phone: fields.phone.trim(), email: fields.email.trim() };
    clearFieldErrors(form);
    const missing = [["name", lead.name, "Who is it?"], ["phone", lead.phone, "A number to call and text"]]
      .filter(([, v]) => !v);
    if (missing.length) {
      showFieldErrors(form, { fieldViolations: missing.map(([field, , description]) => ({ field, description })) });
      return;
    }
    // A number that already belongs to a lead: say whose, and create only on
    // a second, deliberate press.
    if (form.dataset.duplicateOf !== lead.phone) {
      checking = true;
      try {
        const owners = await actions.leadsWithPhone(lead.phone);
        if (owners.length) {
          warnDuplicate(form, { phone: lead.phone, owners });
          return;
        }
      } finally {
        checking = false;
      }
    }
    warnDuplicate(form, null);
    actions.createLead(lead);
    form.reset();
  });
}

function warnDuplicate(form, found) {
  const box = $("#duplicate-phone");
  const submit = form.querySelector("button[type=submit]");
  if (!found) {
    delete form.dataset.duplicateOf;
    box.hidden = true;
    patch(box);
    submit.textContent = "Create lead";
    return;
  }
  form.dataset.duplicateOf = found.phone;
  box.hidden = false;
  const [first, ...others] = found.owners;
  patch(box, h("div", { class: "alert-body" },
    h("p", { class: "alert-title" },
      `${first.name}${others.length ? ` and ${plural(others.length, "other lead")}` : ""} already ${others.length ? "have" : "has"} this number (${phoneOf(first)}).`),
    h("p", { class: "alert-hint" }, "Press “Create anyway” to add another lead with it, or open theirs: ",
      found.owners.slice(0, 3).map((owner, i) => [i ? ", " : "", h("button", {
        type: "button", class: "link link-inline", dataset: { key: `duplicate:${owner.leadId}` },
        onclick: () => onOpen(owner.leadId, { reveal: true }),
      }, owner.name)]), ".")));
  submit.textContent = "Create anyway";
}

function visibleLeads(view) {
  const wanted = state.listed.status;
  const needle = state.search.trim().toLowerCase();
  // A number is found however it is written: "+1 415-555-0123", "(415) 555 0123", "5550123".
  const number = /^[\d\s()+.\-]+$/.test(needle) ? digits(needle) : "";
  const matches = (lead) => (!wanted || lead.status === wanted) && (!needle
    || [lead.name, lead.phone, phoneOf(lead), lead.email].some((v) => String(v ?? "").toLowerCase().includes(needle))
    || (number.length >= 3 && digits(lead.phone).includes(number.replace(/^0(?=\d{4})/, ""))));
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
      type: "checkbox", class: "row-check", "data-writes": true, checked: state.checked.has(id),
      "aria-label": `Select ${lead.name}`, dataset: { key: `check:${id}` },
      onchange: (event) => {
        if (event.target.checked) state.checked.add(id);
        else state.checked.delete(id);
        changed();
      },
    }),
    h("button", {
      type: "button", class: "lead-link", "aria-current": selected ? "true" : false,
      dataset: { key: `open:${id}` }, onclick: () => onOpen(id, { reveal: true }),
    },
    h("span", { class: `avatar avatar-${lead.status}`, "aria-hidden": "true" }, initials(lead.name)),
    h("span", { class: "lead-main" },
      h("span", { class: "lead-line" }, h("span", { class: "lead-name" }, lead.name), badge(lead.status, pending)),
      h("span", { class: "lead-line lead-sub" },
        h("span", { class: "lead-phone" }, phoneOf(lead)),
        h("span", { class: "lead-when", title: `Updated ${exact(lead.updatedAt)}` }, ago(lead.updatedAt))))));
}

function ghostRow(lead) {
  return h("li", { class: "lead-row ghost", dataset: { pressId: lead.pressId } },
    h("span", { class: "row-check" }),
    h("span", { class: "lead-link" },
      h("span", { class: `avatar avatar-${LEAD_FLOW[0]}`, "aria-hidden": "true" }, initials(lead.name)),
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
  const effects = { move: [], unchanged: [], refused: [] };
  if (status) {
    for (const id of ids) {
      const lead = view.leads.get(id);
      if (lead) effects[batchEffect(lead.status, status)].push(lead);
    }
  }
  const preview = status && ids.length
    ? [effects.move.length && `${effects.move.length} will move`,
      effects.unchanged.length && `${effects.unchanged.length} unchanged`,
      effects.refused.length && `${effects.refused.length} cannot move there`].filter(Boolean).join(" · ")
    : "";
  patch($("#bulk-count"), `${plural(ids.length, "lead")} selected`,
    preview ? h("span", { class: ["bulk-preview", effects.refused.length && "warn"] }, preview) : null);
  // All or nothing: a batch with a lead that cannot move would move none.
  patch($("#bulk-blocked"), effects.refused.length ? [
    h("p", {}, `Unselect ${effects.refused.length === 1 ? "this lead" : "these leads"} to apply:`),
    h("ul", { class: "offenders" }, effects.refused.map((lead) => h("li", {},
      h("strong", {}, lead.name), " ", whyNotMove(lead, status)))),
  ] : null);
  const apply = $("#bulk-apply");
  apply.disabled = !status || !ids.length || effects.refused.length > 0 || effects.move.length === 0;
  apply.title = !status ? "Choose a status first"
    : effects.refused.length ? "Some selected leads cannot move there"
      : effects.move.length === 0 ? "Every selected lead is already there" : `Move ${plural(effects.move.length, "lead")}`;

  renderPress($("[data-control=bulk]"), "bulk", {
    button: apply,
    success: (outcome) => batchSummary(outcome),
    details: (error) => offenders(error),
  });
  renderPress($("[data-control=create-lead]"), "create-lead", {
    button: $("#lead-form button[type=submit]"),
    fieldsBeside: true,
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

/** The leads a refused batch names, each with why (as this screen knows it now). */
function offenders(error) {
  const violations = error.preconditionViolations ?? [];
  if (!violations.length) return [];
  const target = state.outcomes.get("bulk")?.intent?.status;
  return h("ul", { class: "offenders" }, violations.map((v) => {
    const id = String(v.subject ?? "").replace(/^leads\//, "");
    return h("li", {}, h("strong", {}, leadName(id)), " ", whyNotMove(state.leads.get(id), target));
  }));
}

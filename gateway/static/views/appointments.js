// The selected lead's appointments: book, confirm, cancel (with a reason), complete.

import * as actions from "../actions.js";
import { $, h, patch } from "../dom.js";
import * as flow from "../flow.js";
import { exact, span, when, words } from "../format.js";
import { APPOINTMENT_MOVES, CANCELLED, COMPLETED, CONFIRMED } from "../pipeline.js";
import { leadName, overlay, state } from "../store.js";
import { renderFlow } from "./flow.js";
import { pendingFlag } from "./leads.js";
import { clearFieldErrors, renderPress, showFieldErrors } from "./press.js";

const AGENT_KEY = "closed-loop:agent";
let cancelling = null;

export function setupAppointments() {
  const form = $("#appointment-form");
  const agent = form.elements.agentId;
  agent.value = localStorage.getItem(AGENT_KEY) || "";
  form.elements.startTime.value = localInput(nextHalfHour());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const lead = state.leads.get(state.selectedId);
    if (!lead) return;
    clearFieldErrors(form);
    const start = new Date(form.elements.startTime.value);
    const minutes = Number(form.elements.duration.value);
    const problems = [];
    if (!agent.value.trim()) problems.push({ field: "agentId", description: "Who meets the lead?" });
    if (Number.isNaN(start.getTime())) problems.push({ field: "startTime", description: "Pick a day and time" });
    else if (start.getTime() < Date.now()) problems.push({ field: "startTime", description: "That time has already passed" });
    if (problems.length) {
      showFieldErrors(form, { fieldViolations: problems });
      return;
    }
    localStorage.setItem(AGENT_KEY, agent.value.trim());
    actions.bookAppointment({
      leadId: lead.leadId,
      agentId: agent.value.trim(),
      startTime: start.toISOString(),
      endTime: new Date(start.getTime() + minutes * 60000).toISOString(),
      notes: form.elements.notes.value.trim(),
    }, lead.name);
    form.elements.notes.value = "";
  });

  const dialog = $("#cancel-dialog");
  dialog.addEventListener("close", () => {
    const reason = $("#cancel-form").elements.reason.value.trim();
    if (dialog.returnValue === "cancel" && cancelling) {
      actions.moveAppointment(cancelling, CANCELLED, leadName(cancelling.leadId), reason);
    }
    cancelling = null;
  });
}

export function defaultAgent(principal) {
  const agent = $("#appointment-form").elements.agentId;
  if (!agent.value) agent.value = principal ?? "";
}

function nextHalfHour() {
  const date = new Date(Date.now() + 60 * 60000);
  date.setMinutes(date.getMinutes() < 30 ? 30 : 60, 0, 0);
  return date;
}

function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function askReason(appointment) {
  cancelling = appointment;
  const form = $("#cancel-form");
  form.elements.reason.value = "";
  $("#cancel-what").textContent = `${leadName(appointment.leadId)} with ${appointment.agentId}, ${span(appointment.startTime, appointment.endTime)}`;
  $("#cancel-dialog").showModal();
}

export function renderAppointments(lead) {
  const view = overlay();
  const mine = [...view.appointments.values()].filter((a) => a.leadId === lead.leadId)
    .sort((a, b) => String(a.startTime).localeCompare(String(b.startTime)));
  const creating = view.creating.appointments.filter((a) => a.leadId === lead.leadId);
  const list = $("#appointments");
  if (!mine.length && !creating.length) {
    patch(list, h("li", { class: "list-empty" }, "No appointments yet."));
  } else {
    patch(list,
      mine.map((appointment) => appointmentItem(appointment, view.pending.get(appointment.appointmentId))),
      creating.map((appointment) => h("li", { class: "appointment ghost" },
        h("div", { class: "appointment-main" },
          h("span", { class: "appointment-time" }, span(appointment.startTime, appointment.endTime)),
          h("span", { class: "appointment-agent" }, `with ${appointment.agentId}`)),
        h("span", { class: "badge badge-pending" }, appointment.pending === "queued" ? "Waiting to send" : "Booking…"))));
  }
  renderFlow(lead);
  renderPress($("#appointment-press"), `book:${lead.leadId}`, {
    button: $("#appointment-form button[type=submit]"),
    fieldsBeside: true,
    success: (outcome) => `Booked ${span(outcome.data?.startTime, outcome.data?.endTime)}`,
  });
}

function appointmentItem(appointment, pending) {
  const id = appointment.appointmentId;
  const moves = APPOINTMENT_MOVES[appointment.status] ?? [];
  const name = leadName(appointment.leadId);
  const control = `appointment:${id}`;
  const status = h("div", { class: "press-status" });
  renderPress(status, control, {
    success: (outcome) => words(outcome.data?.status ?? outcome.intent?.status),
    details: (error) => conflict(error),
  });
  return h("li", { class: ["appointment", `appointment-${appointment.status}`], dataset: { appointmentId: id } },
    h("div", { class: "appointment-row" },
      h("div", { class: "appointment-main" },
        h("span", { class: "appointment-time", title: exact(appointment.startTime) }, span(appointment.startTime, appointment.endTime)),
        h("span", { class: "appointment-agent" }, `with ${appointment.agentId}`),
        appointment.notes ? h("span", { class: "appointment-notes" }, appointment.notes) : null,
        trail(appointment)),
      h("span", {
        class: ["badge", `badge-${appointment.status}`, pending && "badge-unsaved"],
        dataset: { status: appointment.status, pending: pending || false },
        title: pending === "queued" ? "Waiting for the connection" : pending ? "Saving…" : undefined,
      }, words(appointment.status), pending ? pendingFlag(pending) : null)),
    moves.length ? h("div", { class: "appointment-actions", "data-writes": true },
      moves.includes(CONFIRMED) ? h("button", {
        type: "button", class: "btn btn-small btn-primary", dataset: { key: `confirm:${id}` },
        onclick: () => flow.confirm(appointment),
      }, "Confirm") : null,
      moves.includes(COMPLETED) ? h("button", {
        type: "button", class: "btn btn-small btn-secondary", dataset: { key: `complete:${id}` },
        onclick: () => actions.moveAppointment(appointment, COMPLETED, name),
      }, "Complete") : null,
      moves.includes(CANCELLED) ? h("button", {
        type: "button", class: "btn btn-small btn-ghost-danger", dataset: { key: `cancel:${id}` },
        onclick: () => askReason(appointment),
      }, "Cancel…") : null) : null,
    status);
}

function trail(appointment) {
  const parts = [];
  const at = (value) => (value ? ` · ${when(value)}` : "");
  if (appointment.confirmedBy) {
    parts.push(h("span", { class: "trail-item", title: exact(appointment.confirmedAt) },
      `Confirmed by ${appointment.confirmedBy}${at(appointment.confirmedAt)}`));
  }
  if (appointment.completedBy) {
    parts.push(h("span", { class: "trail-item", title: exact(appointment.completedAt) },
      `Completed by ${appointment.completedBy}${at(appointment.completedAt)}`));
  }
  if (appointment.cancelledBy) {
    parts.push(h("span", { class: "trail-item", title: exact(appointment.cancelledAt) },
      `Cancelled by ${appointment.cancelledBy}${at(appointment.cancelledAt)}${appointment.cancelReason ? `: “${appointment.cancelReason}”` : ""}`));
  }
  return parts.length ? h("span", { class: "appointment-trail" }, parts) : null;
}

/** SLOT_TAKEN names the confirmed appointment this one would overlap. */
function conflict(error) {
  const id = error.metadata?.conflicting_appointment_id;
  if (error.reason !== "SLOT_TAKEN" || !id) return [];
  const other = state.appointments.get(id);
  return h("p", { class: "conflict" }, "It would overlap ",
    other
      ? h("strong", {}, `${leadName(other.leadId)} · ${other.agentId} · ${span(other.startTime, other.endTime)}`)
      : "another confirmed appointment",
    other ? ` (${words(other.status).toLowerCase()})` : "", ".");
}

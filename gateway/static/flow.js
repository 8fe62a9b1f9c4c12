// The guided follow-up of a confirmed appointment: confirm → text the lead →
// move the lead on. Each step is its own press with its own idempotency key,
// chosen when the step is first pressed and kept with the flow in
// localStorage, so a step interrupted (a reload, a lost connection) resumes
// with the same key and takes effect once. Every tab sees the same flows.
//
//   flow = {appointmentId, leadId, principal, startedAt,
//           confirm: "pending" | "done",
//           text:  {state: "todo" | "sending" | "done" | "held" | "skipped" | "refused",
//                   key?, body?, templateId?},
//           move:  {state: "todo" | "sending" | "done" | "skipped" | "refused", key?, status?},
//           closed: bool}

import * as actions from "./actions.js";
import { currentSession, newKey } from "./api.js";
import { CONFIRMED } from "./pipeline.js";
import { changed, leadName, state } from "./store.js";

const STORAGE_KEY = "closed-loop:flows:v1";
const KEEP_MS = 7 * 24 * 3600 * 1000;

function read() {
  try {
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "{}");
    return stored && typeof stored === "object" && !Array.isArray(stored) ? stored : {};
  } catch {
    return {};
  }
}

function write(flows) {
  const now = Date.now();
  for (const [id, flow] of Object.entries(flows)) {
    if (now - Date.parse(flow.startedAt ?? 0) > KEEP_MS) delete flows[id];
  }
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(flows));
  } catch {
    // Storage full or disabled: the flow lasts as long as this page.
  }
  changed();
}

function update(appointmentId, change) {
  const flows = read();
  const flow = flows[appointmentId];
  if (!flow) return null;
  change(flow);
  write(flows);
  return flow;
}

window.addEventListener("storage", (event) => {
  if (event.key === STORAGE_KEY || event.key === null) changed();
});

const mine = (flow) => flow.principal === (currentSession()?.principal ?? "");

/** The open flow of one of this lead's appointments, the latest first. */
export function activeFor(leadId) {
  return Object.values(read()).filter((flow) => flow.leadId === leadId && !flow.closed && mine(flow))
    .sort((a, b) => String(b.startedAt).localeCompare(String(a.startedAt)))[0] ?? null;
}

/** Confirm, and start the follow-up. A second press of Confirm joins the first. */
export function confirm(appointment) {
  const flows = read();
  if (!flows[appointment.appointmentId] || flows[appointment.appointmentId].closed) {
    flows[appointment.appointmentId] = {
      appointmentId: appointment.appointmentId, leadId: appointment.leadId,
      principal: currentSession()?.principal ?? "", startedAt: new Date().toISOString(),
      confirm: "pending", text: { state: "todo" }, move: { state: "todo" }, closed: false,
    };
    write(flows);
  }
  return actions.moveAppointment(appointment, CONFIRMED, leadName(appointment.leadId));
}

/** Step 2: text the lead. The key is the step's own, kept until the answer is final. */
export function sendText(appointmentId, body, templateId = "") {
  const flow = update(appointmentId, (f) => {
    // A different text is a different press; the same text again keeps its key.
    if (!f.text.key || f.text.body !== body) f.text.key = newKey();
    Object.assign(f.text, { state: "sending", body, templateId });
  });
  if (!flow) return null;
  return actions.sendText(flow.leadId, body, leadName(flow.leadId), flow.text.key);
}

/** Step 3: move the lead on, with the step's own key. */
export function moveLead(appointmentId, status) {
  const flow = update(appointmentId, (f) => {
    if (!f.move.key || f.move.status !== status) f.move.key = newKey();
    Object.assign(f.move, { state: "sending", status });
  });
  if (!flow) return null;
  const lead = state.leads.get(flow.leadId);
  if (!lead) return null;
  return actions.moveLead(lead, status, flow.move.key);
}

export function skip(appointmentId, step) {
  update(appointmentId, (f) => {
    f[step].state = "skipped";
  });
}

export function close(appointmentId) {
  update(appointmentId, (f) => {
    f.closed = true;
  });
}

/** Every answer, in every tab: advance the flow whose step it answers. */
export function onOutcome(outcome) {
  const intent = outcome.intent ?? {};
  const flows = read();
  let touched = false;
  for (const flow of Object.values(flows)) {
    if (intent.kind === "appointment.status" && intent.status === CONFIRMED
        && intent.appointmentId === flow.appointmentId && flow.confirm === "pending") {
      if (outcome.ok || actions.alreadyDone(intent, outcome.error)) flow.confirm = "done";
      else flow.closed = true; // not confirmed: nothing to follow up
      touched = true;
    }
    if (intent.kind === "message.send" && outcome.key === flow.text.key) {
      const held = !outcome.ok && outcome.error?.reason === "PROVIDER_CIRCUIT_OPEN";
      flow.text.state = outcome.ok ? "done" : held ? "held" : "refused";
      // Refused for good: the key keeps that refusal, so a new try needs a new key.
      if (!outcome.ok && !held) delete flow.text.key;
      touched = true;
    }
    if (intent.kind === "lead.status" && outcome.key === flow.move.key) {
      const done = outcome.ok || actions.alreadyDone(intent, outcome.error);
      flow.move.state = done ? "done" : "refused";
      if (!done) delete flow.move.key;
      touched = true;
    }
  }
  if (touched) write(flows);
}

/** The flow's current step: "confirm", "text", "move" or "done". */
export function stepOf(flow) {
  if (flow.confirm !== "done") return "confirm";
  if (["todo", "sending", "refused"].includes(flow.text.state)) return "text";
  if (["todo", "sending", "refused"].includes(flow.move.state)) return "move";
  return "done";
}

// What the console knows: the server's entities as last seen (from answers, lists
// and events), and what the user is looking at. Entities only move forward:
// an answer or event older than what is held (a lower version) is ignored, so
// lists, answers and the event stream can arrive in any order.
//
// What the screen shows is that, with the presses not yet answered applied on
// top (see `overlay`): the optimistic state is derived from the press queue, so
// it survives a reload exactly as the queue does.

import { LEAD_FLOW, OUTBOUND, PENDING, canAppointment, canMove } from "./pipeline.js";
import { presses, sendingId } from "./queue.js";

export const state = {
  session: null,
  connection: "connecting", // "connecting" | "live" | "reconnecting"
  leads: new Map(), // leadId → Lead
  listed: { status: "", nextPageToken: "", loading: false, error: null, loaded: false },
  search: "",
  selectedId: null,
  checked: new Set(),
  appointments: new Map(), // appointmentId → Appointment
  messages: new Map(), // messageId → Message
  changes: new Map(), // leadId → StatusChange[] (only for leads whose trail was loaded)
  detail: { leadId: null, loading: false, error: null },
  provider: null,
  maxSegments: 1, // the server's CRM_SMS_MAX_SEGMENTS as far as we know
  feed: [],
  outcomes: new Map(), // control → the last outcome of a press on it
  templates: { list: [], loaded: false, error: null }, // message templates, by name
};

const listeners = new Set();
let scheduled = false;

export function subscribe(listener) {
  listeners.add(listener);
}

/** Something changed: render once, soon, however many changes came in. */
export function changed() {
  if (scheduled) return;
  scheduled = true;
  setTimeout(() => {
    scheduled = false;
    for (const listener of listeners) listener(state);
  }, 0);
}

const version = (entity) => Number(entity?.version ?? 0);

export function mergeLead(lead) {
  if (!lead?.leadId) return;
  const held = state.leads.get(lead.leadId);
  if (!held || version(lead) >= version(held)) state.leads.set(lead.leadId, lead);
  changed();
}

export function mergeAppointment(appointment) {
  if (!appointment?.appointmentId) return;
  const held = state.appointments.get(appointment.appointmentId);
  if (!held || version(appointment) >= version(held)) {
    state.appointments.set(appointment.appointmentId, appointment);
  }
  changed();
}

export function mergeMessage(message) {
  if (!message?.messageId) return;
  const held = state.messages.get(message.messageId);
  const newer = !held || Date.parse(message.updatedAt ?? 0) >= Date.parse(held.updatedAt ?? 0);
  if (newer) state.messages.set(message.messageId, message);
  changed();
}

export function mergeChange(change) {
  const trail = state.changes.get(change?.leadId);
  if (!trail) return; // not loaded: it will be, whole, when the lead is opened
  if (!trail.some((c) => c.version === change.version)) {
    trail.push(change);
    trail.sort((a, b) => version(a) - version(b));
  }
  changed();
}

export function mergeProvider(provider) {
  if (!provider) return;
  state.provider = provider;
  if (Number(provider.maxSegments) > 0) state.maxSegments = Number(provider.maxSegments);
  changed();
}

export function mergeTemplate(template) {
  if (!template?.templateId) return;
  const list = state.templates.list.filter((t) => t.templateId !== template.templateId);
  const held = state.templates.list.find((t) => t.templateId === template.templateId);
  list.push(held && version(held) > version(template) ? held : template);
  list.sort((a, b) => String(a.name).localeCompare(String(b.name)));
  state.templates.list = list;
  changed();
}

export function dropTemplate(templateId) {
  state.templates.list = state.templates.list.filter((t) => t.templateId !== templateId);
  changed();
}

export function setOutcome(control, outcome) {
  state.outcomes.set(control, outcome);
  changed();
}

// -- what the screen shows: the server's state with unanswered presses on top --

/**
 * {leads, appointments, messages, creating, pending} where `pending` maps an
 * entity id to "sending" (on the wire) or "queued" (waiting for the connection).
 */
export function overlay() {
  const leads = new Map(state.leads);
  const appointments = new Map(state.appointments);
  const pending = new Map();
  const creating = { leads: [], appointments: [], messages: [] };
  const onWire = sendingId();
  for (const item of presses()) {
    const how = item.held && item.id !== onWire ? "queued" : "sending";
    const intent = item.intent ?? {};
    switch (intent.kind) {
      case "lead.create":
        creating.leads.push({ ...intent.lead, pressId: item.id, pending: how, status: LEAD_FLOW[0] });
        break;
      case "lead.status":
      case "lead.batch":
        for (const leadId of intent.leadIds ?? [intent.leadId]) {
          const lead = leads.get(leadId);
          if (lead && canMove(lead.status, intent.status)) {
            leads.set(leadId, { ...lead, status: intent.status });
            pending.set(leadId, how);
          }
        }
        break;
      case "appointment.create":
        creating.appointments.push({ ...intent.appointment, pressId: item.id, pending: how, status: PENDING });
        break;
      case "appointment.status": {
        const appointment = appointments.get(intent.appointmentId);
        if (appointment && canAppointment(appointment.status, intent.status)) {
          appointments.set(intent.appointmentId, { ...appointment, status: intent.status });
          pending.set(intent.appointmentId, how);
        }
        break;
      }
      case "message.send":
        creating.messages.push({
          leadId: intent.leadId, body: intent.body, pressId: item.id, key: item.key, pending: how,
          direction: OUTBOUND, status: how === "queued" ? "WAITING" : "MESSAGE_STATUS_SENDING", createdAt: item.pressedAt,
        });
        break;
      default:
        break;
    }
  }
  return { leads, appointments, creating, pending };
}

/** The press state of a control: "queued", "sending" or null. */
export function pressState(control) {
  const onWire = sendingId();
  let found = null;
  for (const item of presses()) {
    if (item.control !== control) continue;
    if (item.held && item.id !== onWire) return "queued";
    found = "sending";
  }
  return found;
}

export function leadName(leadId) {
  return state.leads.get(leadId)?.name ?? `lead ${String(leadId).slice(0, 8)}`;
}

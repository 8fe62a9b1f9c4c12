// The presses: each becomes one queued request with its own idempotency key
// (queue.js), shown at once as its expected effect (store.overlay), and
// reconciled with the answer here and with the event stream (app.js).

import { get, segment, url } from "./api.js";
import { CANCELLED, COMPLETED, CONFIRMED, LEAD_LABELS } from "./pipeline.js";
import * as queue from "./queue.js";
import * as stranded from "./stranded.js";
import {
  changed, dropTemplate, leadName, mergeAppointment, mergeLead, mergeMessage, mergeProvider, mergeTemplate,
  setOutcome, state,
} from "./store.js";
import { digits, words } from "./format.js";

// A press says "move the lead I see at version N": if someone else changed it
// meanwhile, the server refuses it (VERSION_MISMATCH) rather than override them.
// A press queued behind another press of the same lead cannot know the version
// it will meet, so it goes without one and the pipeline rules alone guard it
// (as does a press made before this tab has read the queue: one may be ahead).
function expectedVersion(lead) {
  if (!queue.known()) return undefined;
  const ahead = queue.presses().some((item) => {
    const intent = item.intent ?? {};
    return (intent.kind === "lead.status" && intent.leadId === lead.leadId)
      || (intent.kind === "lead.batch" && intent.leadIds.includes(lead.leadId));
  });
  return ahead ? undefined : String(lead.version);
}

/** `key`: the flow's own key for this step (flow.js), so an interrupted step resumes. */
export function moveLead(lead, status, key = undefined) {
  return queue.press({
    key,
    control: `lead:${lead.leadId}`,
    label: `Move ${lead.name} to ${LEAD_LABELS[status]}`,
    intent: { kind: "lead.status", leadId: lead.leadId, status },
    method: "POST",
    path: `/v1/leads/${segment(lead.leadId)}:updateStatus`,
    body: { status, expectedVersion: expectedVersion(state.leads.get(lead.leadId) ?? lead) },
  });
}

export function moveLeads(leadIds, status) {
  return queue.press({
    control: "bulk",
    label: `Move ${leadIds.length} lead${leadIds.length === 1 ? "" : "s"} to ${LEAD_LABELS[status]}`,
    intent: { kind: "lead.batch", leadIds: [...leadIds], status },
    method: "POST",
    path: "/v1/leads:batchUpdateStatus",
    body: { leadIds: [...leadIds], status },
  });
}

/**
 * The leads that already have this number, however it is written: the leads
 * service reads `phone` as it reads a new lead's (ListLeads' `phone` filter).
 * Offline, or for a number it refuses, the leads this screen knows.
 */
export async function leadsWithPhone(phone) {
  try {
    const answer = await get(url("/v1/leads", { phone, pageSize: 5 }));
    return answer.leads ?? [];
  } catch (error) {
    if (error?.reason === "INVALID_ARGUMENT" || error?.fieldViolations?.length) return [];
    const wanted = digits(phone);
    if (wanted.length < 7) return [];
    return [...state.leads.values()].filter((lead) => digits(lead.phone).endsWith(wanted.replace(/^0/, "")));
  }
}

export function createLead(lead) {
  return queue.press({
    control: "create-lead",
    repeatable: true,
    label: `Create lead ${lead.name}`,
    intent: { kind: "lead.create", lead },
    method: "POST",
    path: "/v1/leads",
    body: lead,
  });
}

export function bookAppointment(appointment, leadName) {
  return queue.press({
    control: `book:${appointment.leadId}`,
    repeatable: true,
    label: `Book ${leadName} with ${appointment.agentId}`,
    intent: { kind: "appointment.create", appointment },
    method: "POST",
    path: "/v1/appointments",
    body: appointment,
  });
}

const APPOINTMENT_VERBS = { [CONFIRMED]: "confirm", [CANCELLED]: "cancel", [COMPLETED]: "complete" };

export function moveAppointment(appointment, status, leadName, reason = "") {
  const verb = APPOINTMENT_VERBS[status];
  return queue.press({
    control: `appointment:${appointment.appointmentId}`,
    label: `${words(verb)} ${leadName}'s appointment`,
    intent: {
      kind: "appointment.status", appointmentId: appointment.appointmentId,
      leadId: appointment.leadId, status,
    },
    method: "POST",
    path: `/v1/appointments/${segment(appointment.appointmentId)}:${verb}`,
    body: status === CANCELLED ? { reason } : {},
  });
}

/** `key`: the key of a refused attempt at this very text, to send it once. */
export function sendText(leadId, body, leadName, key = undefined) {
  return queue.press({
    key,
    repeatable: true,
    control: `sms:${leadId}`,
    label: `Text ${leadName}`,
    intent: { kind: "message.send", leadId, body },
    method: "POST",
    path: "/v1/messages",
    body: { leadId, body },
  });
}

/** Create (no templateId) or change a message template. */
export function saveTemplate({ templateId = "", name, body }) {
  return queue.press({
    control: "template",
    repeatable: true,
    label: `Save template “${name}”`,
    intent: { kind: "template.save", templateId, name, body },
    method: "POST",
    path: "/v1/messageTemplates",
    body: { templateId, name, body },
  });
}

export function deleteTemplate(template) {
  return queue.press({
    control: "template",
    label: `Delete template “${template.name}”`,
    intent: { kind: "template.delete", templateId: template.templateId },
    method: "POST",
    path: `/v1/messageTemplates/${segment(template.templateId)}:delete`,
    body: {},
  });
}

export async function loadTemplates() {
  try {
    const answer = await get(url("/v1/messageTemplates", { pageSize: 200 }));
    for (const template of answer.templates ?? []) mergeTemplate(template);
    state.templates.loaded = true;
    state.templates.error = null;
  } catch (error) {
    state.templates.error = error;
  }
  changed();
}

// -- answers ----------------------------------------------------------------------

/** Every tab hears every answer: keep what it says, then fetch what it refused. */
export async function settle(outcome) {
  const intent = outcome.intent ?? {};
  if (intent.kind === "message.send") {
    if (!outcome.ok && outcome.error?.reason === "PROVIDER_CIRCUIT_OPEN") {
      stranded.remember({ key: outcome.key, leadId: intent.leadId, body: intent.body, pressedAt: outcome.at });
    } else {
      stranded.settled(outcome.key);
    }
  }
  if (outcome.ok) {
    applyAnswer(intent, outcome.data);
    setOutcome(outcome.control, outcome);
    return outcome;
  }
  learnFrom(outcome.error);
  let settled = alreadyDone(intent, outcome.error) ? asDone(outcome) : outcome;
  setOutcome(outcome.control, settled);
  await reconcile(intent, outcome.error);
  // Refused, yet the lead or appointment now stands where the press wanted it:
  // someone (or this very press, sent twice) already did it.
  if (!settled.ok && standsAsWanted(intent, outcome.error)) {
    settled = asDone(outcome);
    setOutcome(outcome.control, settled);
  }
  return settled;
}

function standsAsWanted(intent, error) {
  if (intent.kind === "lead.status") {
    return error?.reason === "VERSION_MISMATCH" && state.leads.get(intent.leadId)?.status === intent.status;
  }
  if (intent.kind === "appointment.status") {
    return state.appointments.get(intent.appointmentId)?.status === intent.status;
  }
  return false;
}

// Refusals that only say "this already happened": the press got what it wanted.
const ALREADY = {
  "lead.status": new Set(["STATUS_UNCHANGED"]),
  "appointment.status": new Set(["ALREADY_CONFIRMED", "ALREADY_CANCELLED"]),
};
const ALREADY_STATUS = { ALREADY_CONFIRMED: CONFIRMED, ALREADY_CANCELLED: CANCELLED };

export function alreadyDone(intent, error) {
  const reason = error?.reason;
  if (!ALREADY[intent.kind]?.has(reason)) return false;
  return intent.kind !== "appointment.status" || ALREADY_STATUS[reason] === intent.status;
}

function asDone(outcome) {
  return { ...outcome, ok: true, already: true, data: null, refusal: outcome.error, error: undefined };
}

function applyAnswer(intent, data) {
  switch (intent.kind) {
    case "lead.create":
    case "lead.status":
      mergeLead(data);
      break;
    case "lead.batch":
      for (const lead of data?.updatedLeads ?? []) mergeLead(lead);
      break;
    case "appointment.create":
    case "appointment.status":
      mergeAppointment(data);
      break;
    case "template.save":
      mergeTemplate(data);
      break;
    case "template.delete":
      dropTemplate(intent.templateId);
      break;
    case "message.send":
      mergeMessage(data);
      if (Number(data?.segments) > state.maxSegments) state.maxSegments = Number(data.segments);
      break;
    default:
      break;
  }
}

/**
 * The key to send `body` to `leadId` with again, if an attempt at exactly this
 * text never reached the provider (its breaker was open): the service recorded
 * that message, and its key makes the retry take it over instead of recording,
 * or texting, a second one. Kept across reloads (stranded.js).
 */
export function retryKey(leadId, body) {
  const kept = stranded.keyFor(leadId, body);
  if (kept) return kept;
  const last = state.outcomes.get(`sms:${leadId}`);
  const transient = last && !last.ok && last.error?.httpStatus === 503;
  return transient && last.intent?.body === body ? last.key : undefined;
}

/** Send every text the breaker stranded, each with its own key: each goes out once. */
export function sendStranded() {
  return Promise.all(stranded.waiting().map((entry) => sendText(entry.leadId, entry.body, leadName(entry.leadId), entry.key)));
}

function learnFrom(error) {
  if (error?.reason === "MESSAGE_TOO_LONG" && Number(error.metadata?.max_segments) > 0) {
    state.maxSegments = Number(error.metadata.max_segments);
    changed();
  }
  if (error?.reason === "PROVIDER_CIRCUIT_OPEN") refreshProvider();
}

// A refusal means the screen guessed wrong: fetch the truth (the stream would
// bring it too, but only if something changed since).
async function reconcile(intent, error) {
  try {
    switch (intent.kind) {
      case "lead.status":
        mergeLead(await get(`/v1/leads/${segment(intent.leadId)}`));
        break;
      case "lead.batch":
        await Promise.all(intent.leadIds.map(async (id) => mergeLead(await get(`/v1/leads/${segment(id)}`))));
        break;
      case "appointment.status":
        mergeAppointment(await get(`/v1/appointments/${segment(intent.appointmentId)}`));
        break;
      default:
        break;
    }
    const conflict = error?.metadata?.conflicting_appointment_id;
    if (error?.reason === "SLOT_TAKEN" && conflict) {
      const other = await get(`/v1/appointments/${segment(conflict)}`);
      mergeAppointment(other);
      if (!state.leads.has(other.leadId)) mergeLead(await get(`/v1/leads/${segment(other.leadId)}`));
    }
  } catch {
    // Offline or gone: the event stream reconciles once it is back.
  }
}

export async function refreshProvider() {
  try {
    mergeProvider(await get("/v1/messaging/provider"));
  } catch {
    // Shown as unknown until the stream or the next poll says otherwise.
  }
}

// -- loading ------------------------------------------------------------------------

const PAGE = 100;

/** The lead list (first page, or the next one), filtered by status on the server. */
export async function loadLeads({ more = false } = {}) {
  const listed = state.listed;
  const status = listed.status;
  listed.loading = true;
  listed.error = null;
  changed();
  try {
    const answer = await get(url("/v1/leads", {
      status, pageSize: PAGE, pageToken: more ? listed.nextPageToken : "",
    }));
    if (state.listed.status !== status) return; // the filter changed meanwhile
    for (const lead of answer.leads ?? []) mergeLead(lead);
    listed.nextPageToken = answer.nextPageToken ?? "";
    listed.loaded = true;
  } catch (error) {
    listed.error = error;
  } finally {
    listed.loading = false;
    changed();
  }
}

/** Everything the detail pane shows about one lead. */
export async function loadLead(leadId) {
  const detail = state.detail;
  detail.leadId = leadId;
  detail.loading = true;
  detail.error = null;
  changed();
  const id = segment(leadId);
  try {
    const [lead, appointments, messages, changes] = await Promise.all([
      get(`/v1/leads/${id}`),
      get(url("/v1/appointments", { leadId, pageSize: 200 })),
      get(url(`/v1/leads/${id}/messages`, { pageSize: 100 })),
      get(url(`/v1/leads/${id}/statusChanges`, { pageSize: 200 })),
    ]);
    mergeLead(lead);
    for (const appointment of appointments.appointments ?? []) mergeAppointment(appointment);
    for (const message of messages.messages ?? []) mergeMessage(message);
    const trail = state.changes.get(leadId) ?? [];
    state.changes.set(leadId, trail);
    for (const change of changes.statusChanges ?? []) {
      if (!trail.some((c) => c.version === change.version)) trail.push(change);
    }
    trail.sort((a, b) => Number(a.version) - Number(b.version));
  } catch (error) {
    if (state.detail.leadId === leadId) detail.error = error;
  } finally {
    if (state.detail.leadId === leadId) detail.loading = false;
    changed();
  }
}

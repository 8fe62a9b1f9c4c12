// Refusals in the words of the person who pressed: what happened and what to
// do, from the reason code and what this screen knows (names, statuses,
// local times). The server's own message stays available for support.

import { phone, when, words } from "./format.js";
import { LEAD_LABELS, isFinal } from "./pipeline.js";
import { leadName, state } from "./store.js";

const label = (status) => LEAD_LABELS[status] ?? words(status);

/** Why one lead cannot move to `to`, in a few words. */
export function whyNotMove(lead, to) {
  if (!lead) return `cannot move to ${label(to)}`;
  if (lead.status === to) return `is already ${label(to)}`;
  if (isFinal(lead.status)) return `is ${label(lead.status)}, which is final`;
  return `is at ${label(lead.status)}, past ${label(to)}: leads only move forward`;
}

function appointmentPhrase(intent) {
  const appointment = state.appointments.get(intent.appointmentId);
  return appointment ? `${leadName(appointment.leadId)}'s appointment` : "This appointment";
}

/**
 * {title, hint}: the refusal as a sentence, and what to do next (or "").
 * `intent` is the press's intent, when the refusal answers a press.
 */
export function explain(error, intent = {}) {
  const reason = error?.reason ?? "";
  const who = intent.leadId ? leadName(intent.leadId) : "This lead";
  switch (reason) {
    case "OFFLINE":
    case "HTTP_0":
      return { title: "The server could not be reached.", hint: "It is kept and sent once the connection is back." };
    case "INVALID_TOKEN":
    case "UNAUTHENTICATED":
      return { title: "That token was not accepted.", hint: "Check that you pasted the whole token, then try again." };
    case "SESSION_EXPIRED":
    case "SESSION_ENDED":
    case "SESSION_REVOKED":
    case "HTTP_401":
      return { title: "Your session has ended.", hint: "Sign in again; nothing you pressed is lost." };
    case "ROLE_FORBIDS":
      if (error?.metadata?.role === "service" && !error?.metadata?.required_role) {
        return { title: "A service's token cannot sign in to the console.", hint: "Sign in with your own token." };
      }
      return { title: "Your account can look but not change things.", hint: "Ask an admin for an agent account." };
    case "PERMISSION_DENIED":
      return { title: "Your account can look but not change things.", hint: "Ask an admin for an agent account." };
    case "LEAD_NOT_FOUND":
      return { title: "This lead no longer exists.", hint: "" };
    case "APPOINTMENT_NOT_FOUND":
      return { title: "This appointment no longer exists.", hint: "" };
    case "INVALID_STATUS_TRANSITION": {
      if (intent.kind === "lead.batch") {
        return { title: `No lead was moved: some cannot move to ${label(intent.status)}.`, hint: "Unselect them and apply again." };
      }
      if (intent.kind === "appointment.status") {
        const appointment = state.appointments.get(intent.appointmentId);
        return { title: `${appointmentPhrase(intent)} is ${label(appointment?.status).toLowerCase() || "closed"}, so it cannot be ${label(intent.status).toLowerCase()}.`, hint: "" };
      }
      const lead = state.leads.get(intent.leadId);
      return { title: `${who} ${whyNotMove(lead, intent.status)}.`, hint: "" };
    }
    case "VERSION_MISMATCH":
      return { title: `Someone else changed ${who} a moment ago.`, hint: "The screen now shows their change; press again if you still want yours." };
    case "BATCH_REFUSED":
      return { title: `No lead was moved: some cannot move to ${label(intent.status)}.`, hint: "Unselect them and apply again." };
    case "ALREADY_CONFIRMED":
      return { title: `${appointmentPhrase(intent)} was already confirmed, so it cannot be ${label(intent.status).toLowerCase()} now.`, hint: "" };
    case "ALREADY_CANCELLED":
      return { title: `${appointmentPhrase(intent)} was cancelled, so it cannot be ${label(intent.status).toLowerCase()}.`, hint: "" };
    case "SLOT_TAKEN":
      return { title: "The agent already has a confirmed appointment at that time.", hint: "Pick another time, or cancel one of the two." };
    case "MESSAGE_TOO_LONG": {
      const max = Number(error.metadata?.max_segments) || state.maxSegments;
      return { title: `This text is too long: at most ${max === 1 ? "one SMS" : `${max} SMS parts`}.`, hint: "Shorten it and send again." };
    }
    case "RECIPIENT_OPTED_OUT":
      return { title: `${who} replied STOP, so they are not texted any more.`, hint: "They can be texted again once they reply START." };
    case "PROVIDER_CIRCUIT_OPEN":
      return {
        title: "Not sent: texting is paused because the SMS provider is failing.",
        hint: "It waits in the history; send it once texting resumes, and it goes out once.",
      };
    case "PROVIDER_UNAVAILABLE":
      return { title: "The SMS provider did not answer.", hint: "Try again in a moment; it goes out once." };
    case "PROVIDER_REJECTED":
      return {
        title: `The SMS provider refused this text${error.metadata?.provider_error_code === "21211" ? ": the number cannot receive texts" : ""}.`,
        hint: "Check the number; the details below are for support.",
      };
    case "TEMPLATE_NOT_FOUND":
      return { title: "This template no longer exists.", hint: "" };
    case "IDEMPOTENCY_KEY_IN_USE":
      return { title: "Still working on it.", hint: "" };
    default:
      if (error?.fieldViolations?.length) {
        return { title: "Some details need fixing.", hint: "See the highlighted fields." };
      }
      if (error?.httpStatus >= 500) {
        return { title: "Something went wrong on the server.", hint: "Try again; it takes effect once." };
      }
      return { title: "This did not go through.", hint: "If it keeps happening, send support the details below." };
  }
}

const ISO_TIME = /\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)?/g;

/** A field violation in plain words, for the slot next to its field: local times, not ISO. */
export function fieldProblem(violation) {
  const text = String(violation.description ?? "");
  return text.replace(ISO_TIME, (iso) => when(iso) || iso).replace(/\+\d{8,15}/g, (number) => phone(number));
}

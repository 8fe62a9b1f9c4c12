// Message templates: "See you {appointment_time}, {first_name}!" filled in for
// one lead. The messaging service accepts the same placeholders and refuses
// any other when a template is saved (services/messaging/templates.py).

import { LEAD_LABELS } from "./pipeline.js";

export const PLACEHOLDERS = {
  first_name: "the lead's first name",
  last_name: "the lead's last name",
  name: "the lead's full name",
  appointment_time: "the appointment's day and time, e.g. “Tue 25 Nov at 14:00”",
  appointment_date: "the appointment's day, e.g. “Tue 25 Nov”",
  agent: "who meets the lead",
  status: "the lead's status",
};

const PATTERN = /\{([a-z_]+)\}/g;

/** The template every console offers, until the team saves its own. */
export const BUILT_IN = Object.freeze({
  templateId: "",
  name: "Appointment confirmed",
  body: "See you {appointment_time}, {first_name}!",
  builtIn: true,
});

const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
const hourFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });

function parts(name) {
  const words = String(name ?? "").trim().split(/\s+/).filter(Boolean);
  return { first: words[0] ?? "", last: words.length > 1 ? words[words.length - 1] : "" };
}

/** The values of every placeholder for a lead (and an appointment, if any). */
export function valuesFor({ lead, appointment = null }) {
  const { first, last } = parts(lead?.name);
  const start = appointment?.startTime ? new Date(appointment.startTime) : null;
  const valid = start && !Number.isNaN(start.getTime());
  return {
    first_name: first,
    last_name: last,
    name: lead?.name ?? "",
    appointment_time: valid ? `${dayFormat.format(start)} at ${hourFormat.format(start)}` : null,
    appointment_date: valid ? dayFormat.format(start) : null,
    agent: appointment?.agentId ?? null,
    status: lead ? LEAD_LABELS[lead.status] ?? "" : "",
  };
}

/** The template's text for this lead; a placeholder with no value stays as written. */
export function fill(body, values) {
  return String(body ?? "").replace(PATTERN, (whole, name) => {
    const value = values[name];
    return value === null || value === undefined ? whole : value;
  });
}

/** The placeholders a body uses that nobody fills in, e.g. ["{frist_name}"]. */
export function unknown(body) {
  return [...String(body ?? "").matchAll(PATTERN)].map((m) => m[1])
    .filter((name) => !(name in PLACEHOLDERS)).map((name) => `{${name}}`);
}

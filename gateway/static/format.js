// How times, statuses and ids read on screen.

const clock = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const hm = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });
const day = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
const dayOfYear = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short", year: "numeric" });

function dayOf(date) {
  return (date.getFullYear() === new Date().getFullYear() ? day : dayOfYear).format(date);
}
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function asDate(value) {
  if (!value) return null;
  const date = value instanceof Date ? value : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "14:03:22" */
export function time(value) {
  const date = asDate(value);
  return date ? clock.format(date) : "";
}

/** "Tue 25 Nov, 14:03" */
export function when(value) {
  const date = asDate(value);
  return date ? `${dayOf(date)}, ${hm.format(date)}` : "";
}

/** "Tue 25 Nov · 14:00–14:30" */
export function span(start, end) {
  const from = asDate(start);
  const to = asDate(end);
  if (!from) return "";
  const sameDay = to && from.toDateString() === to.toDateString();
  const until = to ? (sameDay ? hm.format(to) : `${dayOf(to)} ${hm.format(to)}`) : "";
  return `${dayOf(from)} · ${hm.format(from)}${until ? `–${until}` : ""}`;
}

/** "Nov 25, 2025, 2:03:22 PM": for tooltips. */
export function exact(value) {
  const date = asDate(value);
  return date ? full.format(date) : "";
}

/** "now", "5m ago", "3h ago", "Tue 25 Nov" */
export function ago(value, now = Date.now()) {
  const date = asDate(value);
  if (!date) return "";
  const seconds = Math.round((now - date.getTime()) / 1000);
  if (seconds < 45) return "now";
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
  return dayOf(date);
}

/**
 * A phone number as its own country writes it. The leads service formats it
 * (`phoneDisplay`, from libphonenumber's metadata); an E.164 number without
 * one (an event from an older service) is shown as stored.
 */
export function phoneOf(lead) {
  return lead?.phoneDisplay || phone(lead?.phone);
}

/** "+14155550123" → "+1 415 555 0123" where nothing better is known. */
export function phone(e164) {
  const nanp = /^\+1(\d{3})(\d{3})(\d{4})$/.exec(e164 ?? "");
  return nanp ? `+1 ${nanp[1]}-${nanp[2]}-${nanp[3]}` : (e164 ?? "");
}

/** The digits of a phone number as written, for search: "+1 (415) 555-0123" → "14155550123". */
export function digits(text) {
  return String(text ?? "").replace(/\D/g, "");
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

// The contract's enum values start with their enum's name ("LEAD_STATUS_WON").
const ENUM_PREFIX = /^(LEAD_STATUS|APPOINTMENT_STATUS|MESSAGE_STATUS|BREAKER_STATE|DIRECTION|ENCODING)_/;

/** "LEAD_STATUS_PROPOSAL_SENT" (or "PROPOSAL_SENT") → "Proposal sent" */
export function words(name) {
  if (!name) return "";
  const text = String(name).replace(ENUM_PREFIX, "").replaceAll("_", " ").toLowerCase();
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

export function initials(name) {
  const words = String(name || "?").trim().split(/\s+/).filter(Boolean);
  const lettered = words.filter((word) => /^\p{L}/u.test(word));
  const parts = lettered.length ? lettered : words;
  return (parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2))
    .toUpperCase();
}

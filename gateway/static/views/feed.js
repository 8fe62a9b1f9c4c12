// The live activity feed: the latest events from every service, in words.

import { $, h, patch } from "../dom.js";
import { exact, phone, span, time, words } from "../format.js";
import { BREAKER, INBOUND, LEAD_LABELS } from "../pipeline.js";
import { changed, leadName, state } from "../store.js";

const KEEP = 100;
let onOpen = () => {};

export function setupFeed({ open }) {
  onOpen = open;
}

const quote = (text, room = 60) => `“${text.length > room ? `${text.slice(0, room - 1)}…` : text}”`;

/** One event in words: [category, text]. */
export function describe(type, event) {
  const who = event.actor || "someone";
  const name = leadName(event.leadId);
  const appointment = event.appointment;
  const message = event.message;
  switch (type) {
    case "lead.created":
      return ["lead", `${who} added ${event.lead?.name ?? name}`];
    case "lead.status_changed": {
      const change = event.statusChange;
      const from = LEAD_LABELS[change?.fromStatus] ?? change?.fromStatus;
      const to = LEAD_LABELS[change?.toStatus ?? event.lead?.status] ?? "";
      return ["lead", `${who} moved ${event.lead?.name ?? name} ${from ? `from ${from} ` : ""}to ${to}`];
    }
    case "appointment.created":
      return ["appointment", `${who} booked ${name} with ${appointment?.agentId} · ${span(appointment?.startTime, appointment?.endTime)}`];
    case "appointment.confirmed":
      return ["appointment", `${who} confirmed ${name}'s appointment · ${span(appointment?.startTime, appointment?.endTime)}`];
    case "appointment.cancelled":
      return ["appointment", `${who} cancelled ${name}'s appointment${appointment?.cancelReason ? ` · ${quote(appointment.cancelReason, 40)}` : ""}`];
    case "appointment.completed":
      return ["appointment", `${who} completed ${name}'s appointment`];
    case "message.created":
      return message?.direction === INBOUND
        ? ["message", `${name} texted ${quote(message.body ?? "")}`]
        : ["message", `${who} texted ${name}: ${quote(message?.body ?? "")}`];
    case "message.status_changed":
      return ["message", `Text to ${name}: ${words(message?.status).toLowerCase()}`];
    case "recipient.opted_out":
      return ["warn", `${consentWho(event)} replied STOP: no more texts until they reply START`];
    case "recipient.opted_in":
      return ["message", `${consentWho(event)} replied START: texts allowed again`];
    case "provider.state_changed": {
      const provider = event.provider;
      if (provider?.state === BREAKER.CLOSED) return ["ok", "Texting works again"];
      if (provider?.state === BREAKER.OPEN && provider.closesAt) {
        return ["warn", `Texting paused until ${time(provider.closesAt)}: the SMS provider is failing`];
      }
      return ["warn", "Texting is resuming: the next text tries the SMS provider again"];
    }
    case "template.saved":
      return ["message", `${who} saved the template “${event.template?.name ?? ""}”`];
    case "template.deleted":
      return ["message", `${who} deleted the template “${event.template?.name ?? ""}”`];
    default:
      return ["lead", type];
  }
}

function consentWho(event) {
  if (event.leadId && state.leads.has(event.leadId)) return leadName(event.leadId);
  return event.consent?.phoneDisplay || phone(event.consent?.phone) || "Someone";
}

export function addToFeed(type, event) {
  const [category, text] = describe(type, event);
  state.feed.unshift({ type, category, text, at: event.occurredAt, leadId: event.leadId, cursor: event.cursor });
  state.feed.length = Math.min(state.feed.length, KEEP);
  changed();
}

export function renderFeed() {
  const list = $("#feed");
  $("#feed-count").textContent = state.feed.length ? `${state.feed.length}` : "";
  if (!state.feed.length) {
    patch(list, h("li", { class: "list-empty" }, "Changes made by anyone appear here as they happen."));
    return;
  }
  patch(list, state.feed.map((entry, i) => h("li", { class: `feed-item feed-${entry.category}`, dataset: { type: entry.type } },
    h("span", { class: "feed-dot", "aria-hidden": "true" }),
    h("div", { class: "feed-body" },
      entry.leadId && state.leads.has(entry.leadId)
        ? h("button", { type: "button", class: "feed-text link", dataset: { key: `feed:${entry.cursor ?? i}` }, onclick: () => onOpen(entry.leadId, { reveal: true }) }, entry.text)
        : h("span", { class: "feed-text" }, entry.text),
      h("span", { class: "feed-time", title: exact(entry.at) }, time(entry.at))))));
}

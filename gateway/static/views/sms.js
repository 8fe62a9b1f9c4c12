// Texting the selected lead: a live segment counter (the server's algorithm,
// segments.js), the provider's breaker on the Send button, and the history.

import * as actions from "../actions.js";
import { $, h, patch } from "../dom.js";
import { exact, phoneOf, time, when, words } from "../format.js";
import { INBOUND, OUTBOUND } from "../pipeline.js";
import { measure } from "../segments.js";
import * as stranded from "../stranded.js";
import { overlay, state } from "../store.js";
import { clearFieldErrors, renderPress } from "./press.js";
import { providerView } from "./topbar.js";

const CAPACITY = { GSM_7: [160, 153], UCS_2: [70, 67] };
// The counter's encodings (segments.js) and the contract's (a stored message).
const ENCODING = { GSM_7: "GSM-7", UCS_2: "UCS-2", ENCODING_GSM_7: "GSM-7", ENCODING_UCS_2: "UCS-2" };

export function setupSms() {
  const form = $("#sms-form");
  const body = $("#sms-body");
  body.addEventListener("input", renderCounter);
  body.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const lead = state.leads.get(state.selectedId);
    const text = body.value;
    if (!lead || !text.trim() || $("#sms-send").disabled) return;
    clearFieldErrors(form);
    actions.sendText(lead.leadId, text, lead.name, actions.retryKey(lead.leadId, text));
    body.value = "";
    renderCounter();
  });
}

/**
 * "161 / 160 · 2 segments · GSM-7": the units typed against the room the
 * limit allows (one segment: 160 GSM-7 characters or 70 UCS-2 units; N
 * segments: N parts of 153 or 67), and whether it is over the limit.
 */
export function counterText(text, maxSegments) {
  const { encoding, units, segments } = measure(text);
  const [single, part] = CAPACITY[encoding];
  const room = maxSegments <= 1 ? single : part * maxSegments;
  const over = segments > maxSegments;
  return {
    encoding, units, segments, over,
    text: `${units} / ${room} · ${segments} ${segments === 1 ? "segment" : "segments"} · ${ENCODING[encoding]}`,
    warning: over ? `too long: at most ${maxSegments === 1 ? "1 segment" : `${maxSegments} segments`}` : "",
  };
}

function renderCounter() {
  const counter = counterText($("#sms-body").value, state.maxSegments);
  const el = $("#sms-counter");
  el.dataset.segments = String(counter.segments);
  el.dataset.encoding = counter.encoding;
  el.dataset.over = String(counter.over);
  el.classList.toggle("counter-over", counter.over);
  el.classList.toggle("counter-ucs", counter.encoding === "UCS_2");
  patch(el, h("span", { class: "counter-text" }, counter.text),
    counter.warning ? h("span", { class: "counter-warning" }, ` · ${counter.warning}`) : null);
  renderSendButton(counter);
}

function renderSendButton(counter) {
  const button = $("#sms-send");
  const paused = providerView(state.provider);
  const empty = !$("#sms-body").value.trim();
  button.disabled = empty || paused.paused || counter.over;
  button.textContent = paused.paused ? "Texting paused" : "Send text";
  button.title = paused.paused
    ? `The SMS provider is failing; texting resumes at ${time(paused.until)}`
    : empty ? "Write a message first"
      : counter.over ? "Too long to send: shorten it first" : "Send (Ctrl+Enter)";
  const note = $("#sms-paused");
  note.hidden = !paused.paused;
  if (paused.paused) {
    const seconds = Math.max(0, Math.ceil((paused.until - Date.now()) / 1000));
    note.textContent = `Texting is paused until ${time(paused.until)} (${seconds} s) because the SMS provider is failing. Everything else works.`;
  }
}

export function renderSms(lead) {
  $("#sms-to").textContent = `to ${phoneOf(lead)}`;
  renderCounter();
  renderPress($("#sms-press"), `sms:${lead.leadId}`, {
    button: $("#sms-send"),
    fieldsBeside: true,
    success: (outcome) => (outcome.data
      ? `Sent · ${words(outcome.data.status).toLowerCase()} · ${outcome.data.segments ?? 1} segment${Number(outcome.data.segments) > 1 ? "s" : ""}`
      : "Sent"),
  });
  const view = overlay();
  const sent = [...state.messages.values()].filter((m) => m.leadId === lead.leadId)
    .sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
  const creating = view.creating.messages.filter((m) => m.leadId === lead.leadId).reverse();
  const waiting = stranded.matchMessages(lead.leadId, sent);
  const list = $("#messages");
  if (!sent.length && !creating.length) {
    patch(list, h("li", { class: "list-empty" }, "No texts yet."));
    return;
  }
  const sendingNow = new Set(view.creating.messages.map((m) => m.key));
  patch(list, creating.map((m) => messageItem(m)), sent.map((m) => {
    const entry = waiting.get(m.messageId);
    return messageItem(m, entry && !sendingNow.has(entry.key) ? entry : null, lead);
  }));
}

// WAITING is the console's own: a text held until the connection is back.
const STATUS_TONE = {
  MESSAGE_STATUS_QUEUED: "muted", MESSAGE_STATUS_SENDING: "muted", WAITING: "warn",
  MESSAGE_STATUS_SENT: "info", MESSAGE_STATUS_DELIVERED: "ok", MESSAGE_STATUS_UNDELIVERED: "bad",
  MESSAGE_STATUS_FAILED: "bad", MESSAGE_STATUS_RECEIVED: "violet", NOT_SENT: "warn",
};

// A recorded text the provider never got: no provider id, a while after it was made.
const NOT_SENT_AFTER_MS = 30000;

function statusOf(message, waitingEntry) {
  if (message.status === "WAITING") return ["WAITING", "Waiting for the connection"];
  if (message.status === "MESSAGE_STATUS_SENDING" && message.pressId) return ["MESSAGE_STATUS_SENDING", "Sending…"];
  const unsent = message.direction === OUTBOUND && message.status === "MESSAGE_STATUS_QUEUED"
    && !message.providerMessageId
    && (waitingEntry || Date.now() - Date.parse(message.createdAt ?? 0) > NOT_SENT_AFTER_MS);
  if (unsent) return ["NOT_SENT", "Not sent yet"];
  return [message.status, words(message.status)];
}

function messageItem(message, waitingEntry = null, lead = null) {
  const inbound = message.direction === INBOUND;
  const ghost = Boolean(message.pressId);
  const [tone, label] = statusOf(message, waitingEntry);
  const paused = providerView(state.provider).paused;
  return h("li", {
    class: ["message", inbound ? "inbound" : "outbound", ghost && "ghost"],
    dataset: { messageId: message.messageId ?? "", status: message.status, waiting: waitingEntry ? "true" : false },
  },
  h("p", { class: "bubble" }, message.body),
  h("p", { class: "message-meta" },
    h("span", { class: `status status-${STATUS_TONE[tone] ?? "muted"}` }, label),
    h("span", { title: exact(message.createdAt) }, when(message.createdAt)),
    message.segments ? h("span", {}, `${message.segments} seg · ${ENCODING[message.encoding] ?? ""}`) : null,
    !inbound && message.createdBy ? h("span", {}, message.createdBy) : null,
    message.errorCode ? h("span", { class: "status status-bad" }, `error ${message.errorCode}${message.errorMessage ? `: ${message.errorMessage}` : ""}`) : null),
  waitingEntry ? h("p", { class: "message-actions", "data-writes": true },
    h("button", {
      type: "button", class: "btn btn-small btn-secondary", disabled: paused,
      dataset: { key: `send-now:${waitingEntry.key}` },
      title: paused ? "Texting is paused; this text waits until it resumes" : "Send this text now: it goes out once",
      onclick: () => actions.sendText(waitingEntry.leadId, waitingEntry.body, lead?.name ?? "", waitingEntry.key),
    }, "Send now"),
    paused ? h("span", { class: "muted small" }, " waits until texting resumes") : null) : null);
}

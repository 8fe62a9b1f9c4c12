// Texting the selected lead: a live segment counter (the server's algorithm,
// segments.js), the provider's breaker on the Send button, and the history.

import * as actions from "../actions.js";
import { $, h, patch } from "../dom.js";
import { exact, phone, time, when, words } from "../format.js";
import { measure } from "../segments.js";
import { overlay, state } from "../store.js";
import { clearFieldErrors, renderPress } from "./press.js";
import { providerView } from "./topbar.js";

const CAPACITY = { GSM_7: [160, 153], UCS_2: [70, 67] };
const ENCODING = { GSM_7: "GSM-7", UCS_2: "UCS-2" };

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

/** "160 / 160 · 1 segment · GSM-7", and whether it is over the limit. */
export function counterText(text, maxSegments) {
  const { encoding, units, segments } = measure(text);
  const [single, part] = CAPACITY[encoding];
  const capacity = segments <= 1 ? single : part * segments;
  const over = segments > maxSegments;
  return {
    encoding, units, segments, over,
    text: `${units} / ${capacity} · ${segments} ${segments === 1 ? "segment" : "segments"} · ${ENCODING[encoding]}`,
    warning: over ? `over the ${maxSegments}-segment limit` : "",
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
  renderSendButton();
}

function renderSendButton() {
  const button = $("#sms-send");
  const paused = providerView(state.provider);
  const empty = !$("#sms-body").value.trim();
  button.disabled = empty || paused.paused;
  button.textContent = paused.paused ? "Sending paused" : "Send text";
  button.title = paused.paused
    ? `The SMS provider is failing; its circuit breaker lets texts through again at ${time(paused.until)}`
    : empty ? "Write a message first" : "Send (Ctrl+Enter)";
  const note = $("#sms-paused");
  note.hidden = !paused.paused;
  if (paused.paused) {
    const seconds = Math.max(0, Math.ceil((paused.until - Date.now()) / 1000));
    note.textContent = `Texting is paused until ${time(paused.until)} (${seconds} s): the SMS provider is failing, so its circuit breaker is open. Everything else works.`;
  }
}

export function renderSms(lead) {
  $("#sms-to").textContent = `to ${phone(lead.phone)}`;
  renderCounter();
  renderPress($("#sms-press"), `sms:${lead.leadId}`, {
    button: $("#sms-send"),
    success: (outcome) => `Sent · ${words(outcome.data?.status)} · ${outcome.data?.segments ?? 1} segment${Number(outcome.data?.segments) > 1 ? "s" : ""}`,
    details: (error) => {
      if (error.reason === "RECIPIENT_OPTED_OUT") {
        return h("p", { class: "muted" }, "They will be texted again once they text START.");
      }
      if (error.httpStatus === 503) {
        return h("p", { class: "muted" }, "Not sent. Send it again once texting resumes: it keeps its idempotency key, so it goes out once.");
      }
      return [];
    },
  });
  const view = overlay();
  const sent = [...state.messages.values()].filter((m) => m.leadId === lead.leadId)
    .sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
  const creating = view.creating.messages.filter((m) => m.leadId === lead.leadId).reverse();
  const list = $("#messages");
  if (!sent.length && !creating.length) {
    patch(list, h("li", { class: "list-empty" }, "No texts yet."));
    return;
  }
  patch(list, creating.map(messageItem), sent.map(messageItem));
}

const STATUS_TONE = {
  QUEUED: "muted", SENDING: "muted", WAITING: "warn", SENT: "info", DELIVERED: "ok",
  UNDELIVERED: "bad", FAILED: "bad", RECEIVED: "violet",
};

function messageItem(message) {
  const inbound = message.direction === "INBOUND";
  const ghost = Boolean(message.pressId);
  const label = message.status === "WAITING" ? "Waiting to send" : words(message.status);
  return h("li", {
    class: ["message", inbound ? "inbound" : "outbound", ghost && "ghost"],
    dataset: { messageId: message.messageId ?? "", status: message.status },
  },
  h("p", { class: "bubble" }, message.body),
  h("p", { class: "message-meta" },
    h("span", { class: `status status-${STATUS_TONE[message.status] ?? "muted"}` }, label),
    h("span", { title: exact(message.createdAt) }, when(message.createdAt)),
    message.segments ? h("span", {}, `${message.segments} seg · ${ENCODING[message.encoding] ?? ""}`) : null,
    !inbound && message.createdBy ? h("span", {}, message.createdBy) : null,
    message.errorCode ? h("span", { class: "status status-bad" }, `error ${message.errorCode}${message.errorMessage ? `: ${message.errorMessage}` : ""}`) : null));
}

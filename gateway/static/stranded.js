// Texts that never left: the SMS provider's breaker was open when they were
// sent. The messaging service recorded each one (status QUEUED, no provider
// id) and keeps it under its idempotency key, so sending it again with that
// key takes the recorded message over: one text, however often it is pressed.
//
// The keys live in localStorage (they outlive a reload, and every tab sees
// them), per principal, until an answer for the key is final.

import { currentSession } from "./api.js";
import { OUTBOUND } from "./pipeline.js";

const QUEUED = "MESSAGE_STATUS_QUEUED";

const STORAGE_KEY = "closed-loop:stranded:v1";
const MAX_KEPT = 200;
const listeners = new Set();

function read() {
  try {
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "[]");
    return Array.isArray(stored) ? stored : [];
  } catch {
    return [];
  }
}

function write(entries) {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(entries.slice(-MAX_KEPT)));
  } catch {
    // Storage full or disabled: the text stays in the history, without "Send now".
  }
  for (const listener of listeners) listener();
}

export function onChange(listener) {
  listeners.add(listener);
  window.addEventListener("storage", (event) => {
    if (event.key === STORAGE_KEY || event.key === null) listener();
  });
}

const mine = (entry) => entry.principal === (currentSession()?.principal ?? "");

/** The texts this user pressed that the provider never got, oldest first. */
export function waiting() {
  return read().filter(mine);
}

/** Remember a text refused because the breaker was open. */
export function remember({ key, leadId, body, pressedAt }) {
  const entries = read();
  if (entries.some((entry) => entry.key === key)) return;
  write([...entries, { key, leadId, body, pressedAt, principal: currentSession()?.principal ?? "" }]);
}

/** An answer for the key was final (sent, or refused for good): nothing waits. */
export function settled(key) {
  const entries = read();
  if (entries.some((entry) => entry.key === key)) write(entries.filter((entry) => entry.key !== key));
}

/** The key of a waiting text with exactly this body, to send it rather than a copy. */
export function keyFor(leadId, body) {
  return waiting().find((entry) => entry.leadId === leadId && entry.body === body)?.key;
}

/**
 * The waiting texts matched to the messages of one lead's history, as
 * messageId → entry: a recorded message that has no provider id yet, with the
 * same body, made by this user.
 */
export function matchMessages(leadId, messages) {
  const found = new Map();
  const entries = waiting().filter((entry) => entry.leadId === leadId);
  const candidates = messages
    .filter((m) => m.leadId === leadId && m.direction === OUTBOUND && m.status === QUEUED
      && !m.providerMessageId && m.createdBy === (currentSession()?.principal ?? ""))
    .sort((a, b) => String(a.createdAt).localeCompare(String(b.createdAt)));
  for (const entry of entries) {
    const message = candidates.find((m) => m.body === entry.body && !found.has(m.messageId));
    if (message) found.set(message.messageId, entry);
  }
  return found;
}

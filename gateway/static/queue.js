// Presses, sent in order, each exactly once, even across lost connections and reloads.
//
// A press gets its idempotency key the moment it is pressed and is written to
// IndexedDB before anything is sent. It leaves the queue only when the server
// has answered it for good. Until then it is sent again (the `online` event, a
// periodic retry, a timer) with the same key, so a request that did reach the
// server before the connection dropped is answered from the server's stored
// outcome (Idempotent-Replayed) instead of running twice.
//
//   answer                                        what happens to the press
//   2xx (replayed or not)                         done: success
//   a final refusal (400, 404, 409 conflict …)    done: shown as refused
//   503 PROVIDER_CIRCUIT_OPEN                     done: refused; the text is not re-sent
//                                                 by itself (it may be stale by then):
//                                                 stranded.js keeps its key, and Send now
//                                                 (or one press for all, once texting
//                                                 resumes) reuses it, so the service takes
//                                                 over the message it recorded
//   network error, 502/503/504, 408, 429          kept; sent again after a backoff
//   409 IDEMPOTENCY_KEY_IN_USE                    kept; the first is still running:
//                                                 asked again shortly
//   401                                           kept until the user signs in again
//
// A press of an intent already waiting joins it (see `press`), so a double press
// is one press with one key.
//
// A press is only ever sent by the principal who made it: if someone else signs
// in on this browser, it waits for its owner.
//
// Tabs of one browser share the queue. Every read-modify-write of it is one
// IndexedDB transaction, and a Web Lock lets one tab at a time send, so presses
// keep their order. IndexedDB rather than localStorage because it is the same
// store for every tab at once: a press the last sender took out of the queue is
// gone for the next sender, while a tab's copy of localStorage learns of another
// tab's write only a moment later (so two tabs woken by `online` could each send
// it). Each tab keeps a copy of the queue in memory for drawing the screen; a
// change is announced to the other tabs, and the answers go to every tab, over
// BroadcastChannels.

import { ApiError, NetworkError, currentSession, newKey, request } from "./api.js";

const DATABASE = "closed-loop";
const STORE = "presses";
const RECORD = "queue"; // the whole queue is one record: a change to it is one put
const STORE_VERSION = 1;
const OLD_STORAGE_KEY = "closed-loop:presses:v1"; // where earlier versions kept the queue,
const OLD_QUEUE_LOCK = "closed-loop:presses"; // changing it under this lock
const SEND_LOCK = "closed-loop:sending";
const RETRY_EVERY_MS = 5000;
const IN_USE_RETRY_MS = 300;
const MAX_BACKOFF_MS = 30000;

const changeListeners = new Set();
const outcomeListeners = new Set();
const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel("closed-loop:outcomes") : null;
const changes = typeof BroadcastChannel === "function" ? new BroadcastChannel("closed-loop:presses") : null;

let cache = []; // the queue as last read or written, for drawing the screen
let loaded = false; // whether `cache` has been read from the store yet
let database = null; // a promise of the IndexedDB connection, or of null without one
let sending = null; // the id of the press this tab has on the wire
let draining = false;
let again = false;
let timer = null;

// A tab that meets the store at a newer version than its own code knows
// reloads (once a minute at most) to get the newer console.
const RELOADED_AT = "closed-loop:reloaded-for-store";

function connect() {
  database ??= new Promise((resolve) => {
    let opening;
    try {
      opening = indexedDB.open(DATABASE, STORE_VERSION);
    } catch {
      resolve(null); // no IndexedDB here: the queue lives in this tab's memory
      return;
    }
    opening.onupgradeneeded = () => {
      if (!opening.result.objectStoreNames.contains(STORE)) opening.result.createObjectStore(STORE);
    };
    opening.onsuccess = () => {
      const db = opening.result;
      if (!db.objectStoreNames.contains(STORE)) {
        db.close(); // made by something else, without the store: not ours to change
        resolve(null);
        return;
      }
      // A newer console, in another tab, upgrades the store: this code may not
      // read it right, so this tab makes way and reloads as the newer console.
      db.onversionchange = () => {
        db.close();
        location.reload();
      };
      db.onclose = () => {
        database = null; // closed by the browser (its data cleared): open it afresh
      };
      resolve(db);
    };
    opening.onerror = () => {
      if (opening.error?.name === "VersionError" && reloadForNewerStore()) return;
      resolve(null);
    };
  });
  return database;
}

function reloadForNewerStore() {
  try {
    const last = Number(sessionStorage.getItem(RELOADED_AT) ?? 0);
    if (Date.now() - last < 60_000) return false;
    sessionStorage.setItem(RELOADED_AT, String(Date.now()));
  } catch {
    return false;
  }
  location.reload();
  return true;
}

/** One transaction on the queue: `change` (synchronous) maps it to what is stored. */
async function transact(mode, change = null, retry = true) {
  const db = await connect();
  if (!db) {
    if (change) cache = change(cache);
    loaded = true;
    return cache;
  }
  try {
    return await inTransaction(db, mode, change);
  } catch (error) {
    if (!retry || error?.name !== "InvalidStateError") throw error;
    database = null; // the connection was closed under us: once more on a new one
    return transact(mode, change, false);
  }
}

function inTransaction(db, mode, change) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const store = tx.objectStore(STORE);
    let queue = [];
    store.get(RECORD).onsuccess = (event) => {
      queue = Array.isArray(event.target.result) ? event.target.result : [];
      if (change) {
        queue = change(queue);
        store.put(queue, RECORD);
      }
    };
    tx.oncomplete = () => {
      cache = queue;
      loaded = true;
      resolve(queue);
    };
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("the queue's transaction was aborted"));
  });
}

/** The queue as every tab sees it now. */
function load() {
  return transact("readonly");
}

async function mutate(change) {
  await transact("readwrite", change);
  changes?.postMessage(null);
  notify();
}

function withLock(name, task) {
  return navigator.locks ? navigator.locks.request(name, task) : task();
}

/**
 * Presses an earlier version of the console kept in localStorage join the
 * queue, ahead of newer ones; the old copy goes only once they are stored.
 * Taken under the locks that version sent and changed its queue under, so a
 * press it still has on the wire, or is writing, is not taken mid-way.
 */
function adoptOld() {
  return withLock(SEND_LOCK, () => withLock(OLD_QUEUE_LOCK, async () => {
    let old;
    try {
      old = JSON.parse(localStorage.getItem(OLD_STORAGE_KEY) ?? "null");
    } catch {
      return;
    }
    if (!Array.isArray(old) || !(await connect())) return; // nowhere better to keep them
    if (old.length) {
      await mutate((queue) => [...old.filter((item) => !queue.some((q) => q.id === item.id)),
                               ...queue]);
    }
    localStorage.removeItem(OLD_STORAGE_KEY);
  }));
}

function notify() {
  for (const listener of changeListeners) listener();
}

/** Every press not yet answered, oldest first (as this tab last read the queue). */
export function presses() {
  return cache;
}

/** False until this tab has first read the queue (`presses()` is empty until then). */
export function known() {
  return loaded;
}

/** The press this tab is sending right now, if any. */
export function sendingId() {
  return sending;
}

/** True when presses wait for the connection (rather than just being on the wire). */
export function waiting() {
  const queue = cache;
  return queue.length > 0 && (!navigator.onLine || queue.some((item) => item.held));
}

export function onChange(listener) {
  changeListeners.add(listener);
}

/** listener({id, control, intent, label, ok, data, replayed, error}) in every tab. */
export function onOutcome(listener) {
  outcomeListeners.add(listener);
}

/** Two presses mean the same thing when they ask the same control for the same intent. */
export function signature(spec) {
  return `${spec.control}\n${JSON.stringify(spec.intent ?? null)}`;
}

// Presses being recorded right now (the lock is async): a second click that
// arrives meanwhile joins the first instead of becoming a second press.
const recording = new Map();
// Intents pressed lately that succeeded or are still unanswered: pressing one
// again reuses its key and request, so the server answers with the stored
// outcome (a replay) and nothing happens twice.
const recent = new Map();
const RECENT_MS = 10 * 60 * 1000;

/**
 * Record a press and send it as soon as it can be sent.
 * spec: {control, label, intent, method, path, body, key?}: `key` only to send
 * again a press the server did not carry out for a transient reason.
 * `repeatable: false` (the default for status moves and confirmations) makes a
 * second press of the same intent reuse the first one's key; texts and new
 * records pass `repeatable: true` only to opt out of joining a recent press.
 *
 * Resolves the press as recorded; a press of an intent already waiting in the
 * queue resolves that one, and nothing new is queued.
 */
export function press(spec) {
  const sig = signature(spec);
  const joining = recording.get(sig);
  if (joining) return joining;
  const recorded = record(spec, sig).finally(() => recording.delete(sig));
  recording.set(sig, recorded);
  return recorded;
}

async function record(spec, sig) {
  const again = spec.repeatable || spec.key ? null : recent.get(sig);
  const reuse = again && Date.now() - again.at < RECENT_MS ? again : null;
  const item = {
    ...spec,
    ...(reuse ? { method: reuse.method, path: reuse.path, body: reuse.body } : {}),
    id: newKey(),
    key: spec.key ?? reuse?.key ?? newKey(),
    signature: sig,
    principal: currentSession()?.principal ?? "",
    pressedAt: new Date().toISOString(),
    attempts: 0,
    held: false,
    problem: null,
  };
  let existing = null;
  try {
    await mutate((queue) => {
      existing = queue.find((other) => other.signature === sig) ?? null;
      if (existing) return queue;
      item.held = !navigator.onLine || queue.some((other) => other.held);
      return [...queue, item];
    });
  } catch (error) {
    // Not kept, so not sent: a press is only ever sent once it is stored.
    publish({
      id: item.id, key: item.key, control: item.control, intent: item.intent, label: item.label,
      signature: sig, ok: false, at: Date.now(),
      error: new ApiError(0, {
        message: "this browser could not keep the change, so it was not sent "
          + `(${error?.name ?? "storage error"}); try again`,
        details: [{ "@type": "type.googleapis.com/google.rpc.ErrorInfo", reason: "NOT_KEPT" }],
      }).plain(),
    });
    return item;
  }
  if (existing) return existing;
  if (!spec.repeatable) {
    recent.set(sig, { key: item.key, method: item.method, path: item.path, body: item.body, at: Date.now() });
  }
  drain();
  return item;
}

/** A press of this intent was refused: the next press of it is a new one. */
function forget(outcome) {
  if (!outcome.ok && outcome.signature) recent.delete(outcome.signature);
}

/** Send what is queued, in order, one at a time across all tabs. */
export function drain() {
  if (draining) {
    again = true;
    return;
  }
  draining = true;
  clearTimeout(timer);
  timer = null;
  withLock(SEND_LOCK, sendInOrder)
    .catch(() => later(RETRY_EVERY_MS))
    .finally(() => {
      draining = false;
      sending = null;
      if (again) {
        again = false;
        drain();
      }
    });
}

async function sendInOrder() {
  for (;;) {
    const [head] = await load(); // not the copy: another tab may have sent it
    if (!head) return;
    if (!navigator.onLine) {
      if (!head.held) await hold(head, { reason: "OFFLINE", message: "this browser is offline" }, true, false);
      return; // the `online` event sends it
    }
    const session = currentSession();
    if (!session) return; // signing in again sends it
    if (head.principal && head.principal !== session.principal) return; // theirs, not ours
    sending = head.id;
    notify();
    const verdict = await attempt(head);
    sending = null;
    if ("retryIn" in verdict) {
      await hold(head, verdict.problem, verdict.held);
      if (verdict.retryIn !== null) later(verdict.retryIn);
      else notify();
      return;
    }
    // Answer first, then forget: every screen shows the result before the
    // optimistic overlay goes, so nothing flickers back.
    publish({
      id: head.id, key: head.key, control: head.control, intent: head.intent,
      label: head.label, signature: head.signature, ...verdict, at: Date.now(),
    });
    await mutate((queue) => queue.filter((item) => item.id !== head.id));
  }
}

async function attempt(item) {
  try {
    const answer = await request(item.method, item.path, { body: item.body, key: item.key });
    return { ok: true, data: answer.data, replayed: answer.replayed };
  } catch (error) {
    if (error instanceof NetworkError) {
      return { retryIn: backoff(item.attempts), held: true,
               problem: { reason: "OFFLINE", message: "the server could not be reached" } };
    }
    if (!(error instanceof ApiError)) throw error;
    if (error.reason === "IDEMPOTENCY_KEY_IN_USE") {
      return { retryIn: IN_USE_RETRY_MS, held: item.held, problem: error.plain() };
    }
    if (error.httpStatus === 401) return { retryIn: null, held: true, problem: error.plain() };
    if (isTransient(error)) {
      const wait = Math.max(backoff(item.attempts), (error.retryAfter ?? 0) * 1000);
      return { retryIn: wait, held: true, problem: error.plain() };
    }
    return { ok: false, error: error.plain() };
  }
}

// Outcomes the server does not store: the same key runs again, still only once.
function isTransient(error) {
  if ([408, 429, 499, 502, 504].includes(error.httpStatus)) return true;
  return error.httpStatus === 503 && error.reason !== "PROVIDER_CIRCUIT_OPEN";
}

function backoff(attempts) {
  const ceiling = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** attempts);
  return 500 + Math.random() * ceiling;
}

async function hold(head, problem, held, tried = true) {
  await mutate((queue) => queue.map((item) => (item.id === head.id
    ? { ...item, attempts: item.attempts + (tried ? 1 : 0), held: item.held || Boolean(held), problem }
    : item)));
}

function later(ms) {
  clearTimeout(timer);
  timer = setTimeout(drain, ms);
}

function publish(outcome) {
  forget(outcome);
  for (const listener of outcomeListeners) listener(outcome);
  channel?.postMessage(outcome);
}

/** Start sending: now, when the browser comes back online, and every few seconds. */
export function start() {
  channel?.addEventListener("message", (message) => {
    for (const listener of outcomeListeners) listener({ ...message.data, remote: true });
  });
  changes?.addEventListener("message", () => load().then(notify, () => {}));
  window.addEventListener("online", () => drain());
  window.addEventListener("offline", () => notify());
  setInterval(() => {
    if (cache.length) drain();
  }, RETRY_EVERY_MS);
  adoptOld()
    .then(load)
    .then(notify, () => {})
    .finally(drain);
}

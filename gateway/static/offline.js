// The console when the network is gone: a service worker (/sw.js) keeps the
// app shell, so a reload still opens the console; this module remembers who
// was signed in (the principal's name only: the session itself is an HttpOnly
// cookie) and the last leads seen, so the queued presses show against them
// until the connection returns and they are sent.

import { state } from "./store.js";

const SESSION_KEY = "closed-loop:session:v1";
const SNAPSHOT_KEY = "closed-loop:snapshot:v1";
const SNAPSHOT_EVERY_MS = 2000;
const SNAPSHOT_LEADS = 500;

export function registerWorker() {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => {
    // Without it the console still works online; a reload offline fails as any page would.
  });
}

function load(key) {
  try {
    return JSON.parse(localStorage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

function save(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: offline, the console shows less.
  }
}

export function rememberSession(session) {
  save(SESSION_KEY, { principal: session.principal, org: session.org, role: session.role });
}

export function forgetSession() {
  save(SESSION_KEY, null);
}

/** {principal} of the last session this browser had, or null. */
export function knownSession() {
  const known = load(SESSION_KEY);
  return known && typeof known.principal === "string" && known.principal ? known : null;
}

let lastSaved = 0;
let timer = null;

/** Keep the leads seen lately, a few seconds behind, for a reload offline. */
export function keepSnapshot() {
  if (!state.session || state.session.offline || timer) return;
  const wait = Math.max(0, lastSaved + SNAPSHOT_EVERY_MS - Date.now());
  timer = setTimeout(() => {
    timer = null;
    lastSaved = Date.now();
    const leads = [...state.leads.values()]
      .sort((a, b) => String(b.updatedAt).localeCompare(String(a.updatedAt))).slice(0, SNAPSHOT_LEADS);
    save(SNAPSHOT_KEY, { principal: state.session?.principal, savedAt: new Date().toISOString(), leads });
  }, wait);
}

export function restoreSnapshot() {
  const snapshot = load(SNAPSHOT_KEY);
  if (!snapshot || snapshot.principal !== state.session?.principal || !Array.isArray(snapshot.leads)) return;
  for (const lead of snapshot.leads) {
    if (lead?.leadId && !state.leads.has(lead.leadId)) state.leads.set(lead.leadId, lead);
  }
  state.listed.loaded = true;
}

export function forgetSnapshot() {
  clearTimeout(timer);
  timer = null;
  save(SNAPSHOT_KEY, null);
}

// The top bar: realtime connection, the SMS provider's breaker, the presses
// waiting for the connection, and who is signed in.

import { $, h, patch } from "../dom.js";
import { time } from "../format.js";
import { BREAKER } from "../pipeline.js";
import * as queue from "../queue.js";
import * as stranded from "../stranded.js";
import { leadName, state } from "../store.js";

const CONNECTION = {
  connecting: ["Connecting…", "dot-muted", "Connecting to live updates"],
  live: ["Live", "dot-ok", "Every change made anywhere shows here as it happens"],
  reconnecting: ["Reconnecting…", "dot-warn", "Live updates resume where they stopped, missing nothing"],
};

export function renderTopbar() {
  renderConnection();
  renderProvider();
  renderQueue();
  renderStranded();
  $("#principal").textContent = state.session?.principal ?? "";
  $("#identity").textContent = identityLabel(state.session);
}

/** "in acme", and "· read-only" for a viewer: where the signed-in principal acts, and how. */
export function identityLabel(session) {
  if (!session?.org) return "";
  const role = session.role && session.role !== "agent"
    ? ` · ${session.role === "viewer" ? "viewer, read-only" : session.role}` : "";
  return `in ${session.org}${role}`;
}

function renderConnection() {
  const el = $("#connection");
  const offline = !navigator.onLine;
  const [label, dot, title] = offline
    ? ["Offline", "dot-bad", "This browser is offline; presses are kept and sent when it is back"]
    : CONNECTION[state.connection] ?? CONNECTION.connecting;
  el.dataset.state = offline ? "offline" : state.connection;
  el.title = title;
  el.setAttribute("aria-label", `${label}: ${title}`);
  patch(el, h("span", { class: `dot ${dot}`, "aria-hidden": "true" }), label);
}

/** {state, label, tone, paused, until}: how texting reads now, in the user's words;
 *  `state` is CLOSED, OPEN, HALF_OPEN or UNKNOWN (the contract's BreakerState without its prefix). */
export function providerView(provider, now = Date.now()) {
  if (!provider) return { state: "UNKNOWN", label: "checking…", tone: "dot-muted", paused: false };
  const closesAt = provider.closesAt ? Date.parse(provider.closesAt) : NaN;
  switch (provider.state) {
    case BREAKER.CLOSED:
      return { state: "CLOSED", label: "on", tone: "dot-ok", paused: false };
    case BREAKER.HALF_OPEN:
      return { state: "HALF_OPEN", label: "resuming", tone: "dot-warn", paused: false };
    case BREAKER.OPEN:
      if (Number.isFinite(closesAt) && closesAt > now) {
        return { state: "OPEN", label: `paused until ${time(closesAt)}`, tone: "dot-bad", paused: true, until: closesAt };
      }
      return { state: "OPEN", label: "resuming", tone: "dot-warn", paused: false };
    default:
      return { state: provider.state ?? "UNKNOWN", label: "checking…", tone: "dot-muted", paused: false };
  }
}

function renderProvider() {
  const el = $("#provider");
  const view = providerView(state.provider);
  const provider = state.provider;
  el.dataset.state = view.state;
  el.title = !provider ? "Texting: not known yet"
    : view.paused ? "The SMS provider is failing, so texts are held back for a while; everything else works"
      : view.state === "CLOSED" ? "Texts go out normally"
        : "The next text tries the SMS provider again";
  patch(el, h("span", { class: `dot ${view.tone}`, "aria-hidden": "true" }),
    h("span", { class: "pill-label" }, "Texting"), view.label);
}

function renderQueue() {
  const items = queue.presses();
  const waiting = queue.waiting();
  const pill = $("#queue-pill");
  const panel = $("#queue-panel");
  const title = `${items.length} ${items.length === 1 ? "change" : "changes"} waiting to send`;
  pill.hidden = !waiting;
  panel.hidden = !waiting;
  if (!waiting) return;
  patch(pill, h("span", { class: "dot dot-warn", "aria-hidden": "true" }), title);
  $("#queue-title").textContent = title;
  patch($("#queue-list"), items.map((item) => h("li", { class: "queue-item" },
    h("span", { class: "queue-label" }, item.label),
    h("span", { class: "queue-meta" },
      `pressed ${time(item.pressedAt)}`,
      item.problem?.reason === "OFFLINE" ? " · offline" : item.problem ? " · the server is busy" : "",
      item.attempts ? ` · ${item.attempts} ${item.attempts === 1 ? "try" : "tries"}` : ""))));
}

/** Texts the breaker held back: once texting resumes, one press sends them all. */
function renderStranded() {
  const waiting = stranded.waiting();
  const inQueue = new Set(queue.presses().map((item) => item.key));
  const left = waiting.filter((entry) => !inQueue.has(entry.key));
  const paused = providerView(state.provider).paused;
  const panel = $("#stranded-panel");
  panel.hidden = left.length === 0 || paused || !state.provider;
  if (panel.hidden) return;
  const leads = [...new Set(left.map((entry) => leadName(entry.leadId)))];
  $("#stranded-title").textContent = left.length === 1
    ? "1 text was not sent while texting was paused"
    : `${left.length} texts were not sent while texting was paused`;
  $("#stranded-note").textContent = `To ${leads.join(", ")}. Texting works again; each goes out once.`;
  $("#stranded-send").textContent = left.length === 1 ? "Send it now" : `Send all ${left.length} now`;
}

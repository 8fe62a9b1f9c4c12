// The top bar: realtime connection, the SMS provider's breaker, the presses
// waiting for the connection, and who is signed in.

import { $, h, patch } from "../dom.js";
import { time } from "../format.js";
import * as queue from "../queue.js";
import { state } from "../store.js";

const CONNECTION = {
  connecting: ["Connecting…", "dot-muted", "Opening the live event stream"],
  live: ["Live", "dot-ok", "Every change made anywhere shows here as it happens"],
  reconnecting: ["Reconnecting…", "dot-warn", "The event stream will resume exactly where it stopped"],
};

export function renderTopbar() {
  renderConnection();
  renderProvider();
  renderQueue();
  $("#principal").textContent = state.session?.principal ?? "";
}

function renderConnection() {
  const el = $("#connection");
  const offline = !navigator.onLine;
  const [label, dot, title] = offline
    ? ["Offline", "dot-bad", "This browser is offline; presses are kept and sent when it is back"]
    : CONNECTION[state.connection] ?? CONNECTION.connecting;
  el.dataset.state = offline ? "offline" : state.connection;
  el.title = title;
  patch(el, h("span", { class: `dot ${dot}`, "aria-hidden": "true" }), label);
}

/** {state, label, tone, until}: how the breaker reads now. */
export function providerView(provider, now = Date.now()) {
  if (!provider) return { state: "UNKNOWN", label: "unknown", tone: "dot-muted", paused: false };
  const closesAt = provider.closesAt ? Date.parse(provider.closesAt) : NaN;
  switch (provider.state) {
    case "CLOSED":
      return { state: "CLOSED", label: "closed", tone: "dot-ok", paused: false };
    case "HALF_OPEN":
      return { state: "HALF_OPEN", label: "half-open · trying one text", tone: "dot-warn", paused: false };
    case "OPEN":
      if (Number.isFinite(closesAt) && closesAt > now) {
        return { state: "OPEN", label: `open until ${time(closesAt)}`, tone: "dot-bad", paused: true, until: closesAt };
      }
      return { state: "OPEN", label: "open · next text is a trial", tone: "dot-warn", paused: false };
    default:
      return { state: provider.state ?? "UNKNOWN", label: "unknown", tone: "dot-muted", paused: false };
  }
}

function renderProvider() {
  const el = $("#provider");
  const view = providerView(state.provider);
  const provider = state.provider;
  el.dataset.state = view.state;
  el.title = provider
    ? `SMS provider “${provider.provider}”: circuit breaker ${provider.state}, ` +
      `${provider.failureCount}/${provider.failMax} failures` +
      (provider.openedAt ? `, last opened ${time(provider.openedAt)}` : "")
    : "SMS provider: state not known yet";
  patch(el, h("span", { class: `dot ${view.tone}`, "aria-hidden": "true" }),
    h("span", { class: "pill-label" }, "SMS breaker"), view.label);
}

function renderQueue() {
  const items = queue.presses();
  const waiting = queue.waiting();
  const pill = $("#queue-pill");
  const panel = $("#queue-panel");
  const title = `${items.length} ${items.length === 1 ? "press" : "presses"} waiting to send`;
  pill.hidden = !waiting;
  panel.hidden = !waiting;
  if (!waiting) return;
  patch(pill, h("span", { class: "dot dot-warn", "aria-hidden": "true" }), title);
  $("#queue-title").textContent = title;
  patch($("#queue-list"), items.map((item) => h("li", { class: "queue-item" },
    h("span", { class: "queue-label" }, item.label),
    h("span", { class: "queue-meta" },
      `pressed ${time(item.pressedAt)}`,
      item.problem?.reason ? ` · ${item.problem.reason === "OFFLINE" ? "offline" : item.problem.reason}` : "",
      item.attempts ? ` · ${item.attempts} ${item.attempts === 1 ? "try" : "tries"}` : ""),
    h("code", { class: "queue-key", title: `Idempotency-Key ${item.key}` }, item.key.slice(0, 8)))));
}

// The web console: signs in, keeps every screen live from /v1/events, and turns
// presses into queued, idempotent requests (queue.js) shown optimistically.

import * as actions from "./actions.js";
import * as api from "./api.js";
import { $ } from "./dom.js";
import { follow } from "./events.js";
import * as queue from "./queue.js";
import {
  changed, mergeAppointment, mergeChange, mergeLead, mergeMessage, mergeProvider, state, subscribe,
} from "./store.js";
import { defaultAgent, renderAppointments, setupAppointments } from "./views/appointments.js";
import { addToFeed, renderFeed, setupFeed } from "./views/feed.js";
import { renderLead } from "./views/lead.js";
import { renderLeads, setupLeads } from "./views/leads.js";
import { setupLogin, showLogin } from "./views/login.js";
import { SUCCESS_MS, showFieldErrors } from "./views/press.js";
import { renderSms, setupSms } from "./views/sms.js";
import { providerView, renderTopbar } from "./views/topbar.js";

let stream = null;
let queueStarted = false;

function render() {
  renderTopbar();
  renderLeads();
  const lead = renderLead();
  if (lead) {
    renderAppointments(lead);
    renderSms(lead);
  }
  renderFeed();
}

// Countdowns ("open until", "retry in N s") and fading success notes need a clock.
function tick() {
  const now = Date.now();
  const countingDown = providerView(state.provider, now).state === "OPEN";
  const recent = [...state.outcomes.values()].some((o) => (o.ok && now - o.at < SUCCESS_MS + 1500)
    || (!o.ok && o.error?.retryAfter && now - o.at < (o.error.retryAfter + 2) * 1000));
  if (countingDown || recent) changed();
}

// -- the event stream ----------------------------------------------------------------

function onEvent(type, event) {
  if (event.lead) mergeLead(event.lead);
  if (event.statusChange) mergeChange(event.statusChange);
  if (event.appointment) mergeAppointment(event.appointment);
  if (event.message) mergeMessage(event.message);
  if (event.provider) mergeProvider(event.provider);
  if (event.leadId && !state.leads.has(event.leadId)) fetchLead(event.leadId);
  addToFeed(type, event);
}

const fetching = new Set();
async function fetchLead(leadId) {
  if (fetching.has(leadId)) return;
  fetching.add(leadId);
  try {
    mergeLead(await api.get(`/v1/leads/${api.segment(leadId)}`));
  } catch {
    // Named by its id until it can be fetched.
  } finally {
    fetching.delete(leadId);
  }
}

function reloadAll() {
  actions.loadLeads();
  actions.refreshProvider();
  if (state.selectedId) actions.loadLead(state.selectedId);
}

function startStream() {
  stream?.stop();
  stream = follow({
    event: onEvent,
    state: (connection) => {
      if (state.connection === connection) return; // bookmarks arrive every few seconds
      state.connection = connection;
      changed();
    },
    fresh: reloadAll,
    reset: reloadAll,
    closed: async () => {
      try {
        if (!(await api.loadSession())) {
          signedOut("Your session has ended. Sign in again; presses not yet sent are kept.");
          return false;
        }
      } catch {
        // The gateway is unreachable: keep trying.
      }
      return true;
    },
  });
}

// -- answers to presses ----------------------------------------------------------------

function formOf(control) {
  if (control === "create-lead") return $("#lead-form");
  if (control === `book:${state.selectedId}`) return $("#appointment-form");
  if (control === `sms:${state.selectedId}`) return $("#sms-form");
  return null;
}

function onOutcome(outcome) {
  if (outcome.error) outcome.error.receivedAt = outcome.at;
  actions.settle(outcome);
  const form = formOf(outcome.control);
  if (form) showFieldErrors(form, outcome.ok ? null : outcome.error);
  if (outcome.remote) return;
  const intent = outcome.intent ?? {};
  if (outcome.control === "create-lead") {
    if (outcome.ok) open(outcome.data.leadId);
    else restore($("#lead-form"), intent.lead);
  }
  if (outcome.control === "bulk" && outcome.ok) state.checked.clear();
  if (intent.kind === "message.send" && !outcome.ok && intent.leadId === state.selectedId) {
    const body = $("#sms-body");
    if (!body.value) {
      body.value = intent.body;
      body.dispatchEvent(new Event("input"));
    }
  }
}

// A refused form comes back as it was typed, unless the user started anew.
function restore(form, values = {}) {
  const untouched = [...form.elements].every((el) => !("value" in el) || el.type === "submit" || !el.value);
  if (!untouched) return;
  for (const [name, value] of Object.entries(values)) {
    if (form.elements[name]) form.elements[name].value = value ?? "";
  }
  form.closest("details")?.setAttribute("open", "");
}

// -- navigation ------------------------------------------------------------------------

function open(leadId) {
  if (!leadId) return;
  state.selectedId = leadId;
  const hash = `#lead=${encodeURIComponent(leadId)}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
  for (const form of [$("#appointment-form"), $("#sms-form")]) showFieldErrors(form, null);
  actions.loadLead(leadId);
  changed();
}

function fromHash() {
  const match = /^#lead=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

// -- session -------------------------------------------------------------------------------

function signedIn(session) {
  state.session = session;
  $("#booting").hidden = true;
  $("#login").hidden = true;
  $("#app").hidden = false;
  defaultAgent(session.principal);
  if (!queueStarted) {
    queueStarted = true;
    queue.start();
  } else {
    queue.drain();
  }
  startStream();
  reloadAll();
  const leadId = fromHash();
  if (leadId) open(leadId);
  changed();
}

function signedOut(message) {
  stream?.stop();
  stream = null;
  state.session = null;
  showLogin(message);
}

async function logOut() {
  try {
    await api.logout();
  } catch {
    // The cookie is cleared at its expiry anyway; the screen signs out now.
  }
  state.leads.clear();
  state.appointments.clear();
  state.messages.clear();
  state.changes.clear();
  state.checked.clear();
  state.feed.length = 0;
  state.selectedId = null;
  history.replaceState(null, "", location.pathname);
  signedOut("");
}

async function boot() {
  setupLogin({ signedIn });
  setupLeads({ open });
  setupAppointments();
  setupSms();
  setupFeed({ open });
  $("#logout").addEventListener("click", logOut);
  $("#queue-retry").addEventListener("click", () => queue.drain());
  $("#queue-pill").addEventListener("click", () => $("#queue-panel").scrollIntoView({ block: "nearest" }));
  api.whenSignedOut(() => signedOut("Your session has ended. Sign in again; presses not yet sent are kept."));
  queue.onChange(changed);
  queue.onOutcome(onOutcome);
  subscribe(render);
  window.addEventListener("hashchange", () => {
    const leadId = fromHash();
    if (leadId && leadId !== state.selectedId) open(leadId);
  });
  window.addEventListener("online", () => {
    if (state.listed.error) actions.loadLeads();
    if (state.detail.error && state.selectedId) actions.loadLead(state.selectedId);
    changed();
  });
  window.addEventListener("offline", changed);
  setInterval(tick, 1000);

  let session = null;
  try {
    session = await api.loadSession();
  } catch {
    showLogin("The gateway could not be reached. Reload the page to try again.");
    return;
  }
  if (session) signedIn(session);
  else showLogin();
}

boot();

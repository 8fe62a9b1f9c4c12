// The web console: signs in, keeps every screen live from /v1/events, and turns
// presses into queued, idempotent requests (queue.js) shown optimistically.

import * as actions from "./actions.js";
import * as api from "./api.js";
import { $ } from "./dom.js";
import { follow } from "./events.js";
import * as flow from "./flow.js";
import * as offline from "./offline.js";
import * as queue from "./queue.js";
import * as stranded from "./stranded.js";
import * as templates from "./views/templates.js";
import {
  changed, dropTemplate, mergeAppointment, mergeChange, mergeLead, mergeMessage, mergeProvider, mergeTemplate,
  state, subscribe,
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
const RESUME_EVERY_MS = 5000;

function render() {
  renderTopbar();
  renderLeads();
  const lead = renderLead();
  if (lead) {
    renderAppointments(lead);
    renderSms(lead);
  }
  templates.renderTemplates();
  renderFeed();
  offline.keepSnapshot();
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
  if (type === "template.saved") mergeTemplate(event.template);
  if (type === "template.deleted") dropTemplate(event.template?.templateId);
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
          signedOut("Your session has ended. Sign in again; changes not yet sent are kept.");
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
  if (control === "template") return $("#template-form");
  return null;
}

function onOutcome(outcome) {
  if (outcome.error) outcome.error.receivedAt = outcome.at;
  actions.settle(outcome);
  flow.onOutcome(outcome);
  const form = formOf(outcome.control);
  if (form) showFieldErrors(form, outcome.ok ? null : outcome.error);
  if (outcome.remote) return;
  const intent = outcome.intent ?? {};
  if (outcome.control === "create-lead") {
    if (outcome.ok) open(outcome.data.leadId);
    else restore($("#lead-form"), intent.lead);
  }
  if (outcome.control === "bulk" && outcome.ok) state.checked.clear();
  // A text refused for good comes back to edit. One the breaker held back
  // waits in the history instead, with its key, to be sent as it is.
  if (intent.kind === "message.send" && !outcome.ok && intent.leadId === state.selectedId
      && outcome.error?.reason !== "PROVIDER_CIRCUIT_OPEN") {
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

const ONE_COLUMN = window.matchMedia("(max-width: 760px)");

/** Show a lead; `reveal`: the user chose it, so bring it into view. */
function open(leadId, { reveal = false } = {}) {
  if (!leadId) return;
  const other = state.selectedId !== leadId;
  state.selectedId = leadId;
  const hash = `#lead=${encodeURIComponent(leadId)}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
  if (other) for (const form of [$("#appointment-form"), $("#sms-form")]) showFieldErrors(form, null);
  actions.loadLead(leadId);
  changed();
  // On one column the detail is below the list: take the user there.
  if (reveal && ONE_COLUMN.matches) {
    setTimeout(() => {
      const detail = $("#detail");
      detail.scrollIntoView({ block: "start" });
      detail.focus({ preventScroll: true });
    }, 0);
  }
}

function fromHash() {
  const match = /^#lead=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

// -- session -------------------------------------------------------------------------------

function signedIn(session, { focus = false } = {}) {
  state.session = session;
  readOnly(session);
  offline.rememberSession(session);
  $("#booting").hidden = true;
  $("#login").hidden = true;
  $("#app").hidden = false;
  // Keyboard focus starts at the top of the console, not on <body>.
  if (focus) $("#app-title").focus();
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
  templates.load();
  changed();
}

// A viewer may read and follow everything, and may press nothing that changes data:
// every control that would (marked data-writes) is hidden, not just refused.
function readOnly(session) {
  document.body.classList.toggle("read-only", session?.role === "viewer");
}

function signedOut(message) {
  stream?.stop();
  stream = null;
  state.session = null;
  offline.forgetSession();
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
  offline.forgetSnapshot();
  history.replaceState(null, "", location.pathname);
  signedOut("");
}

// A double-click is one press: the second click of it never reaches a button
// (the first may already have re-drawn the buttons under the pointer).
function ignoreSecondClicks(event) {
  if (event.detail > 1 && event.target instanceof Element && event.target.closest("button, summary")) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}

async function boot() {
  document.addEventListener("click", ignoreSecondClicks, true);
  offline.registerWorker();
  setupLogin({ signedIn: (session) => signedIn(session, { focus: true }) });
  setupLeads({ open });
  setupAppointments();
  setupSms();
  templates.setup();
  setupFeed({ open });
  $("#logout").addEventListener("click", logOut);
  $("#queue-retry").addEventListener("click", () => queue.drain());
  $("#stranded-send").addEventListener("click", () => actions.sendStranded());
  stranded.onChange(changed);
  $("#queue-pill").addEventListener("click", () => $("#queue-panel").scrollIntoView({ block: "nearest" }));
  api.whenSignedOut(() => signedOut("Your session has ended. Sign in again; changes not yet sent are kept."));
  queue.onChange(changed);
  queue.onOutcome(onOutcome);
  subscribe(render);
  window.addEventListener("hashchange", () => {
    const leadId = fromHash();
    if (leadId && leadId !== state.selectedId) open(leadId);
  });
  window.addEventListener("online", () => {
    if (state.session?.offline) {
      resume();
      return;
    }
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
    // Offline (the service worker opened the console from its cache): show
    // what was known and the presses still queued, and send them once back.
    const known = offline.knownSession();
    if (known) {
      openOffline(known);
      return;
    }
    showLogin("The server could not be reached. Reload the page to try again.");
    return;
  }
  if (session) signedIn(session);
  else showLogin();
}

function openOffline(known) {
  state.session = { ...known, offline: true };
  readOnly(known);
  defaultAgent(known.principal);
  offline.restoreSnapshot();
  $("#booting").hidden = true;
  $("#login").hidden = true;
  $("#app").hidden = false;
  if (!queueStarted) {
    queueStarted = true;
    queue.start();
  }
  state.connection = "reconnecting";
  const leadId = fromHash();
  if (leadId) state.selectedId = leadId;
  changed();
  // The browser may think it is online while the server is down: ask again now and then.
  const retry = setInterval(() => {
    if (!state.session?.offline) clearInterval(retry);
    else if (navigator.onLine) resume();
  }, RESUME_EVERY_MS);
}

// Back online after opening offline: a real session first, then everything.
async function resume() {
  try {
    const session = await api.loadSession();
    if (session) signedIn(session);
    else signedOut("Your session has ended. Sign in again; changes not yet sent are kept.");
  } catch {
    // Still unreachable: the next `online`, or a reload, tries again.
  }
}

boot();

// The guided follow-up on the appointments card (flow.js keeps its state):
// after Confirm, a text from a template, then the lead's next status. The
// panel is drawn anew only when its step changes, so what the user is typing
// stays as typed while the rest of the screen updates around it.

import * as flow from "../flow.js";
import { $, h, patch } from "../dom.js";
import { span } from "../format.js";
import { CONFIRMED, LEAD_LABELS, nextStatuses } from "../pipeline.js";
import { BUILT_IN, fill, valuesFor } from "../placeholders.js";
import * as queue from "../queue.js";
import { leadName, state } from "../store.js";
import { renderPress } from "./press.js";

let drawn = "";

function templates() {
  return state.templates.list.length ? state.templates.list : [BUILT_IN];
}

/** The template a flow's text starts from: one named like "confirm…", else the first. */
function defaultTemplate() {
  const list = templates();
  return list.find((t) => /confirm/i.test(t.name)) ?? list[0];
}

function inQueue(key) {
  return Boolean(key) && queue.presses().some((item) => item.key === key);
}

export function renderFlow(lead) {
  const panel = $("#flow");
  const current = flow.activeFor(lead.leadId);
  const appointment = current ? state.appointments.get(current.appointmentId) : null;
  if (!current || !appointment) {
    panel.hidden = true;
    drawn = "";
    patch(panel);
    return;
  }
  const confirmed = current.confirm === "done" || appointment.status === CONFIRMED;
  const step = confirmed && current.confirm !== "done" ? flow.stepOf({ ...current, confirm: "done" }) : flow.stepOf(current);
  const busy = (step === "text" && inQueue(current.text.key)) || (step === "move" && inQueue(current.move.key));
  const signature = JSON.stringify([current.appointmentId, step, current.text.state, current.move.state,
    busy, step === "move" ? lead.status : "", state.templates.list.map((t) => [t.templateId, t.version])]);
  panel.hidden = false;
  if (signature !== drawn) {
    drawn = signature;
    panel.replaceChildren(...draw(current, appointment, lead, step, busy));
  }
  const press = panel.querySelector(".flow-press");
  if (press && step === "text") renderPress(press, `sms:${lead.leadId}`, { fieldsBeside: false });
  if (press && step === "move") renderPress(press, `lead:${lead.leadId}`);
}

function stepList(current, step) {
  const marks = {
    confirm: step === "confirm" ? "current" : "done",
    text: { done: "done", held: "held", skipped: "skipped" }[current.text.state] ?? (step === "text" ? "current" : "todo"),
    move: { done: "done", skipped: "skipped" }[current.move.state] ?? (step === "move" ? "current" : "todo"),
  };
  const words = { done: "done", held: "waiting for texting to resume", skipped: "skipped", current: "now", todo: "next" };
  const item = (name, text) => h("li", { class: ["flow-step", `flow-${marks[name]}`], "aria-current": marks[name] === "current" ? "step" : false },
    h("span", { class: "flow-mark", "aria-hidden": "true" }), text, h("span", { class: "sr-only" }, ` (${words[marks[name]]})`));
  return h("ol", { class: "flow-steps" },
    item("confirm", "Confirm"), item("text", "Text the lead"), item("move", "Move the lead on"));
}

function draw(current, appointment, lead, step, busy) {
  const id = current.appointmentId;
  const head = h("div", { class: "flow-head" },
    h("h4", { id: "flow-title", class: "flow-title" }, `Follow up · ${span(appointment.startTime, appointment.endTime)}`),
    h("button", { type: "button", class: "btn btn-ghost btn-small", dataset: { key: `flow-close:${id}` }, onclick: () => flow.close(id) },
      step === "done" ? "Close" : "Not now"));
  const nodes = [head, stepList(current, step)];
  if (step === "confirm") {
    nodes.push(h("p", { class: "muted" }, "Confirming…"));
  } else if (step === "text") {
    nodes.push(textStep(current, appointment, lead, busy));
  } else if (step === "move") {
    nodes.push(moveStep(current, lead, busy));
  } else {
    nodes.push(h("p", { class: "flow-summary", role: "status" }, summary(current)));
  }
  return nodes;
}

function textStep(current, appointment, lead, busy) {
  const list = templates();
  const chosen = list.find((t) => t.templateId === current.text.templateId) ?? defaultTemplate();
  const values = valuesFor({ lead, appointment });
  const body = h("textarea", { id: "flow-text", class: "flow-text", rows: "3", dataset: { key: "flow-text" } });
  body.value = current.text.body && current.text.state !== "todo" ? current.text.body : fill(chosen.body, values);
  const select = h("select", { id: "flow-template", dataset: { key: "flow-template" } },
    list.map((t) => h("option", { value: t.templateId, selected: t === chosen }, t.builtIn ? `${t.name} (suggested)` : t.name)));
  select.value = chosen.templateId;
  select.addEventListener("change", () => {
    const template = list.find((t) => t.templateId === select.value) ?? chosen;
    body.value = fill(template.body, values);
  });
  const send = () => {
    const text = body.value.trim();
    if (text) flow.sendText(current.appointmentId, text, select.value);
  };
  return h("div", { class: "flow-body" },
    h("div", { class: "row-flow" },
      h("label", { class: "field-label", for: "flow-template" }, "Template"), select),
    h("label", { class: "sr-only", for: "flow-text" }, `Text to ${lead.name}`),
    body,
    h("div", { class: "form-actions" },
      h("button", { type: "button", class: "btn btn-ghost", dataset: { key: `flow-skip-text:${current.appointmentId}` },
        onclick: () => flow.skip(current.appointmentId, "text") }, "Skip"),
      h("button", { type: "button", class: "btn btn-primary", disabled: busy, dataset: { key: `flow-send:${current.appointmentId}` },
        onclick: send }, busy ? "Sending…" : `Text ${leadName(lead.leadId).split(/\s+/)[0]}`)),
    h("div", { class: "press-status flow-press" }));
}

function moveStep(current, lead, busy) {
  const moves = nextStatuses(lead.status);
  if (!moves.length) {
    return h("div", { class: "flow-body" },
      h("p", { class: "muted" }, `${LEAD_LABELS[lead.status]} is final: nothing to move.`),
      h("div", { class: "form-actions" }, h("button", {
        type: "button", class: "btn btn-primary", dataset: { key: `flow-skip-move:${current.appointmentId}` },
        onclick: () => flow.skip(current.appointmentId, "move"),
      }, "Finish")));
  }
  const suggested = current.move.status && moves.includes(current.move.status) ? current.move.status : moves[0];
  const select = h("select", { id: "flow-status", dataset: { key: "flow-status" } },
    moves.map((s) => h("option", { value: s, selected: s === suggested }, LEAD_LABELS[s])));
  select.value = suggested;
  return h("div", { class: "flow-body" },
    h("div", { class: "row-flow" },
      h("label", { class: "field-label", for: "flow-status" }, `Move ${lead.name} from ${LEAD_LABELS[lead.status]} to`), select),
    h("div", { class: "form-actions" },
      h("button", { type: "button", class: "btn btn-ghost", dataset: { key: `flow-skip-move:${current.appointmentId}` },
        onclick: () => flow.skip(current.appointmentId, "move") }, "Skip"),
      h("button", { type: "button", class: "btn btn-primary", disabled: busy, dataset: { key: `flow-move:${current.appointmentId}` },
        onclick: () => flow.moveLead(current.appointmentId, select.value) }, busy ? "Moving…" : "Move")),
    h("div", { class: "press-status flow-press" }));
}

function summary(current) {
  const parts = ["Confirmed"];
  parts.push({ done: "texted", held: "text waiting for texting to resume", skipped: "no text" }[current.text.state] ?? "");
  parts.push(current.move.state === "done" ? `moved to ${LEAD_LABELS[current.move.status]}` : "status unchanged");
  return `✓ ${parts.filter(Boolean).join(" · ")}.`;
}

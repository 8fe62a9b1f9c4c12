// Message templates: managed in a dialog, stored by the messaging service
// (GET/POST /v1/messageTemplates), offered in the text box and in the guided
// follow-up of a confirmed appointment.

import * as actions from "../actions.js";
import { $, h, patch } from "../dom.js";
import { BUILT_IN, PLACEHOLDERS, fill, unknown, valuesFor } from "../placeholders.js";
import { CONFIRMED, PENDING } from "../pipeline.js";
import { state } from "../store.js";
import { clearFieldErrors, renderPress, showFieldErrors } from "./press.js";

const SAMPLE_LEAD = { name: "Ada Lovelace", status: "LEAD_STATUS_QUALIFIED" };

export function setup() {
  const dialog = $("#templates-dialog");
  const form = $("#template-form");
  $("#templates-open").addEventListener("click", () => {
    edit(null);
    dialog.showModal();
    actions.loadTemplates();
  });
  $("#templates-close").addEventListener("click", () => dialog.close());
  $("#template-new").addEventListener("click", () => edit(null));
  patch($("#placeholder-list"), Object.entries(PLACEHOLDERS).flatMap(([name, meaning], i) => [
    i ? ", " : "", h("code", { title: meaning }, `{${name}}`)]));
  form.elements.body.addEventListener("input", preview);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const name = form.elements.name.value.trim();
    const body = form.elements.body.value.trim();
    const problems = [];
    if (!name) problems.push({ field: "name", description: "Give it a name" });
    if (!body) problems.push({ field: "body", description: "Write the text" });
    const strange = unknown(body);
    if (strange.length) problems.push({ field: "body", description: `Unknown placeholder ${strange.join(", ")}` });
    if (problems.length) {
      showFieldErrors(form, { fieldViolations: problems });
      return;
    }
    actions.saveTemplate({ templateId: form.elements.templateId.value, name, body });
    edit(null);
  });

  const select = $("#sms-template");
  select.addEventListener("change", () => {
    const template = list().find((t) => (t.templateId || "built-in") === select.value);
    const lead = state.leads.get(state.selectedId);
    if (!template || !lead) return;
    const body = $("#sms-body");
    body.value = fill(template.body, valuesFor({ lead, appointment: nextAppointment(lead.leadId) }));
    body.dispatchEvent(new Event("input"));
    select.value = "";
    body.focus();
  });
}

export function load() {
  actions.loadTemplates();
}

function list() {
  return state.templates.list.length ? state.templates.list : [BUILT_IN];
}

/** The lead's next appointment that is not over, for {appointment_time}. */
function nextAppointment(leadId) {
  const now = new Date().toISOString();
  return [...state.appointments.values()]
    .filter((a) => a.leadId === leadId && [PENDING, CONFIRMED].includes(a.status) && String(a.endTime) > now)
    .sort((a, b) => String(a.startTime).localeCompare(String(b.startTime)))[0] ?? null;
}

function edit(template) {
  const form = $("#template-form");
  clearFieldErrors(form);
  form.elements.templateId.value = template?.templateId ?? "";
  form.elements.name.value = template?.name ?? "";
  form.elements.body.value = template?.body ?? "";
  $("#template-form-title").textContent = template ? `Change “${template.name}”` : "New template";
  preview();
  if (template) form.elements.name.focus();
}

function preview() {
  const body = $("#template-form").elements.body.value;
  const start = new Date(Date.now() + 86400000);
  start.setHours(15, 0, 0, 0);
  const text = fill(body, valuesFor({ lead: SAMPLE_LEAD, appointment: { startTime: start.toISOString(), agentId: state.session?.principal ?? "you" } }));
  $("#template-preview").textContent = body.trim() ? `Ada Lovelace would get: “${text}”` : "";
}

export function renderTemplates() {
  const select = $("#sms-template");
  patch(select, h("option", { value: "" }, "Insert a template…"),
    list().map((t) => h("option", { value: t.templateId || "built-in" }, t.builtIn ? `${t.name} (suggested)` : t.name)));
  if (!$("#templates-dialog").open) return;
  const stored = state.templates.list;
  patch($("#templates-list"), stored.length
    ? stored.map((t) => h("li", { class: "template-item", dataset: { templateId: t.templateId } },
      h("div", { class: "template-main" },
        h("strong", {}, t.name),
        h("span", { class: "template-body" }, t.body)),
      h("div", { class: "template-actions" },
        h("button", { type: "button", class: "btn btn-small", dataset: { key: `template-edit:${t.templateId}` },
          "aria-label": `Change ${t.name}`, onclick: () => edit(t) }, "Change"),
        h("button", { type: "button", class: "btn btn-small btn-ghost-danger", dataset: { key: `template-delete:${t.templateId}` },
          "aria-label": `Delete ${t.name}`, onclick: () => actions.deleteTemplate(t) }, "Delete"))))
    : h("li", { class: "list-empty" }, state.templates.error
      ? "Templates could not be loaded."
      : `No templates yet. Until there are, the console suggests “${BUILT_IN.body}”.`));
  renderPress($("[data-control=template]"), "template", {
    fieldsBeside: true,
    success: (outcome) => (outcome.intent?.kind === "template.delete" ? "Deleted" : `Saved “${outcome.data?.name ?? ""}”`),
  });
}

/**
 * A typed client of the Closed Loop gateway.
 *
 * `schema.d.ts` is generated from the gateway's /openapi.json by openapi-typescript
 * (`npm run generate`); nothing in it is written by hand. Every request and answer
 * below is typed by it, so a change of the document that breaks this client fails
 * `tsc` (tests/e2e/test_typescript_client.py regenerates the types from a running
 * gateway and type-checks this file against them).
 *
 *     const crm = new ClosedLoopClient({ baseUrl: "http://127.0.0.1:8080", token });
 *     const lead = await crm.createLead({ name: "Ada", phone: "+14155550123" });
 *     await crm.updateLeadStatus(lead.leadId!, { status: "LEAD_STATUS_CONTACTED" });
 *
 * Every call that changes something sends an Idempotency-Key: a new one per
 * logical call unless the caller passes its own (pass the same key again to
 * retry that call safely). A refusal throws ApiError with the google.rpc.Status
 * (or the original API's error body). The Twilio webhooks are Twilio's to call,
 * not a client's, and are left out.
 */
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type Status = Schemas["google.rpc.Status"];
export type LegacyError = Schemas["gateway.LegacyError"];
export type Lead = Schemas["crm.leads.v1.Lead"];
export type Appointment = Schemas["crm.bookings.v1.Appointment"];
export type Message = Schemas["crm.messaging.v1.Message"];
export type MessageTemplate = Schemas["crm.messaging.v1.MessageTemplate"];
/** One message of GET /v1/events, its `data` parsed. */
export type StreamEvent = NonNullable<
  paths["/v1/events"]["get"]["responses"][200]["content"]["text/event-stream"]
>[number];

type Method = "get" | "post";
type Op<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;
type PathParams<O> = O extends { parameters: { path: infer X } } ? X : never;
type Query<O> = O extends { parameters: { query?: infer X } } ? NonNullable<X> : never;
type Body<O> = O extends { requestBody: { content: { "application/json": infer B } } }
  ? B
  : never;
type Answer<O> = O extends { responses: { 200: { content: { "application/json": infer R } } } }
  ? R
  : void;

export type RequestOf<P extends keyof paths, M extends Method> = Body<Op<P, M>>;
export type QueryOf<P extends keyof paths, M extends Method> = Query<Op<P, M>>;
export type AnswerOf<P extends keyof paths, M extends Method> = Answer<Op<P, M>>;

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: Status | LegacyError | undefined,
  ) {
    super(body && "message" in body ? body.message ?? `HTTP ${status}` : `HTTP ${status}`);
  }
}

export interface ClientOptions {
  baseUrl: string;
  /** A token of CRM_API_TOKENS, sent as `Authorization: Bearer …`. */
  token?: string;
  /** With a session cookie instead (the console): the CSRF token of POST /auth/login. */
  csrfToken?: string;
  fetch?: typeof fetch;
}

interface Call {
  path?: Record<string, string>;
  query?: object;
  body?: unknown;
  key?: string;
  legacy?: boolean;
}

/** A fresh idempotency key: one per logical call, reused on its retries. */
export function newKey(): string {
  return crypto.randomUUID();
}

export class ClosedLoopClient {
  private readonly fetch: typeof fetch;

  constructor(private readonly options: ClientOptions) {
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Any route of the document, typed by it. */
  async call<P extends keyof paths, M extends Method>(
    method: M,
    path: P,
    call: Call & { path?: PathParams<Op<P, M>>; query?: Query<Op<P, M>>; body?: Body<Op<P, M>> },
  ): Promise<Answer<Op<P, M>>> {
    const response = await this.send(method, path, call);
    if (response.status === 204) return undefined as Answer<Op<P, M>>;
    return (await response.json()) as Answer<Op<P, M>>;
  }

  private async send(method: Method, template: string, call: Call): Promise<Response> {
    let path = template;
    for (const [name, value] of Object.entries(call.path ?? {})) {
      path = path.replace(`{${name}}`, encodeURIComponent(value));
    }
    const url = new URL(path, this.options.baseUrl);
    for (const [name, value] of Object.entries(call.query ?? {})) {
      for (const item of Array.isArray(value) ? value : [value]) {
        if (item !== undefined && item !== null) url.searchParams.append(name, String(item));
      }
    }
    const headers: Record<string, string> = { Accept: "application/json" };
    if (this.options.token) headers.Authorization = `Bearer ${this.options.token}`;
    if (method === "post") {
      if (this.options.csrfToken) headers["X-CSRF-Token"] = this.options.csrfToken;
      if (call.key !== undefined) {
        headers[call.legacy ? "X-Idempotency-Key" : "Idempotency-Key"] = call.key;
      }
    }
    let body: string | undefined;
    if (call.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(call.body);
    }
    const response = await this.fetch(url, {
      method: method.toUpperCase(),
      headers,
      body: body ?? null,
      credentials: "include",
    });
    if (!response.ok) {
      let refusal: Status | LegacyError | undefined;
      try {
        refusal = (await response.json()) as Status | LegacyError;
      } catch {
        refusal = undefined;
      }
      throw new ApiError(response.status, refusal);
    }
    return response;
  }

  // -- leads ------------------------------------------------------------------------

  createLead(body: RequestOf<"/v1/leads", "post">, key = newKey()) {
    return this.call("post", "/v1/leads", { body, key });
  }

  getLead(leadId: string) {
    return this.call("get", "/v1/leads/{lead_id}", { path: { lead_id: leadId } });
  }

  listLeads(query: QueryOf<"/v1/leads", "get"> = {}) {
    return this.call("get", "/v1/leads", { query });
  }

  updateLeadStatus(
    leadId: string,
    body: RequestOf<"/v1/leads/{lead_id}:updateStatus", "post">,
    key = newKey(),
  ) {
    return this.call("post", "/v1/leads/{lead_id}:updateStatus", {
      path: { lead_id: leadId },
      body,
      key,
    });
  }

  batchUpdateLeadStatus(body: RequestOf<"/v1/leads:batchUpdateStatus", "post">, key = newKey()) {
    return this.call("post", "/v1/leads:batchUpdateStatus", { body, key });
  }

  listStatusChanges(leadId: string, query: QueryOf<"/v1/leads/{lead_id}/statusChanges", "get"> = {}) {
    return this.call("get", "/v1/leads/{lead_id}/statusChanges", {
      path: { lead_id: leadId },
      query,
    });
  }

  // -- bookings ---------------------------------------------------------------------

  createAppointment(body: RequestOf<"/v1/appointments", "post">, key = newKey()) {
    return this.call("post", "/v1/appointments", { body, key });
  }

  getAppointment(appointmentId: string) {
    return this.call("get", "/v1/appointments/{appointment_id}", {
      path: { appointment_id: appointmentId },
    });
  }

  listAppointments(query: QueryOf<"/v1/appointments", "get"> = {}) {
    return this.call("get", "/v1/appointments", { query });
  }

  confirmAppointment(appointmentId: string, key = newKey()) {
    return this.call("post", "/v1/appointments/{appointment_id}:confirm", {
      path: { appointment_id: appointmentId },
      body: {},
      key,
    });
  }

  cancelAppointment(
    appointmentId: string,
    body: RequestOf<"/v1/appointments/{appointment_id}:cancel", "post"> = {},
    key = newKey(),
  ) {
    return this.call("post", "/v1/appointments/{appointment_id}:cancel", {
      path: { appointment_id: appointmentId },
      body,
      key,
    });
  }

  completeAppointment(appointmentId: string, key = newKey()) {
    return this.call("post", "/v1/appointments/{appointment_id}:complete", {
      path: { appointment_id: appointmentId },
      body: {},
      key,
    });
  }

  listAppointmentChanges(
    appointmentId: string,
    query: QueryOf<"/v1/appointments/{appointment_id}/changes", "get"> = {},
  ) {
    return this.call("get", "/v1/appointments/{appointment_id}/changes", {
      path: { appointment_id: appointmentId },
      query,
    });
  }

  // -- messaging --------------------------------------------------------------------

  sendSms(body: RequestOf<"/v1/messages", "post">, key = newKey()) {
    return this.call("post", "/v1/messages", { body, key });
  }

  getMessage(messageId: string) {
    return this.call("get", "/v1/messages/{message_id}", { path: { message_id: messageId } });
  }

  listMessages(leadId: string, query: QueryOf<"/v1/leads/{lead_id}/messages", "get"> = {}) {
    return this.call("get", "/v1/leads/{lead_id}/messages", { path: { lead_id: leadId }, query });
  }

  getProviderStatus() {
    return this.call("get", "/v1/messaging/provider", {});
  }

  listMessageTemplates(query: QueryOf<"/v1/messageTemplates", "get"> = {}) {
    return this.call("get", "/v1/messageTemplates", { query });
  }

  saveMessageTemplate(body: RequestOf<"/v1/messageTemplates", "post">, key = newKey()) {
    return this.call("post", "/v1/messageTemplates", { body, key });
  }

  deleteMessageTemplate(templateId: string, key = newKey()) {
    return this.call("post", "/v1/messageTemplates/{template_id}:delete", {
      path: { template_id: templateId },
      body: {},
      key,
    });
  }

  // -- events -----------------------------------------------------------------------

  /** The URL of the event stream, for an EventSource (which sends the session cookie). */
  eventsUrl(query: QueryOf<"/v1/events", "get"> = {}): string {
    const url = new URL("/v1/events", this.options.baseUrl);
    for (const [name, value] of Object.entries(query)) {
      for (const item of Array.isArray(value) ? value : [value]) {
        if (item !== undefined && item !== null) url.searchParams.append(name, String(item));
      }
    }
    return url.toString();
  }

  /** One Server-Sent Event as the document describes it, from EventSource's MessageEvent. */
  static streamEvent(type: string, id: string, data: string): StreamEvent {
    return { event: type, id, data: JSON.parse(data) } as StreamEvent;
  }

  // -- the original API -------------------------------------------------------------

  legacyConfirmAppointment(body: RequestOf<"/api/bookings/confirm", "post">, key = newKey()) {
    return this.call("post", "/api/bookings/confirm", { body, key, legacy: true });
  }

  legacySendSms(body: RequestOf<"/api/leads/send-sms", "post">, key = newKey()) {
    return this.call("post", "/api/leads/send-sms", { body, key, legacy: true });
  }

  legacySmsHistory(leadId: string) {
    return this.call("get", "/api/leads/{leadId}/sms-history", { path: { leadId } });
  }

  legacyUpdateStatus(body: RequestOf<"/api/leads/update-status", "post">, key = newKey()) {
    return this.call("post", "/api/leads/update-status", { body, key, legacy: true });
  }

  // -- sessions and operations ------------------------------------------------------

  login(token: string) {
    return this.call("post", "/auth/login", { body: { token } });
  }

  session() {
    return this.call("get", "/auth/session", {});
  }

  logout() {
    return this.call("post", "/auth/logout", {});
  }

  healthz() {
    return this.call("get", "/healthz", {});
  }

  openapi() {
    return this.call("get", "/openapi.json", {});
  }
}

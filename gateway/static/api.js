// The gateway's HTTP API: the session and its CSRF token, idempotency keys, and
// refusals read from their google.rpc.Status bodies.
//
//   request() resolves {data, replayed, httpStatus} or throws
//     NetworkError  the request may or may not have reached the server (or no answer in 20 s)
//     ApiError      the server answered with a refusal (reason, message, details)

let session = null;
let onSignedOut = () => {};
const REQUEST_TIMEOUT_MS = 20000;

export class NetworkError extends Error {
  constructor(cause) {
    super("the network is unreachable");
    this.name = "NetworkError";
    this.cause = cause;
  }
}

export class ApiError extends Error {
  constructor(httpStatus, body, headers) {
    const status = body && typeof body === "object" ? body : {};
    super(typeof status.message === "string" && status.message ? status.message : `HTTP ${httpStatus}`);
    this.name = "ApiError";
    this.httpStatus = httpStatus;
    this.code = status.code ?? 0;
    const details = Array.isArray(status.details) ? status.details : [];
    const of = (type) => details.filter((d) => String(d?.["@type"] ?? "").endsWith(`google.rpc.${type}`));
    const info = of("ErrorInfo")[0] ?? {};
    this.reason = info.reason || `HTTP_${httpStatus}`;
    this.domain = info.domain || "";
    this.metadata = info.metadata && typeof info.metadata === "object" ? info.metadata : {};
    this.fieldViolations = of("BadRequest").flatMap((d) => d.fieldViolations ?? []);
    this.preconditionViolations = of("PreconditionFailure").flatMap((d) => d.violations ?? []);
    this.retryAfter = retryAfter(headers, of("RetryInfo")[0]);
    this.replayed = headers?.get("Idempotent-Replayed") === "true";
  }

  /** A structured-clone-safe copy, for storage and other tabs. */
  plain() {
    return {
      httpStatus: this.httpStatus, code: this.code, reason: this.reason, message: this.message,
      domain: this.domain, metadata: this.metadata, fieldViolations: this.fieldViolations,
      preconditionViolations: this.preconditionViolations, retryAfter: this.retryAfter,
      replayed: this.replayed,
    };
  }
}

function retryAfter(headers, info) {
  const header = headers?.get("Retry-After");
  if (header !== null && header !== undefined && /^\d+$/.test(header.trim())) return Number(header);
  const delay = /^([\d.]+)s$/.exec(String(info?.retryDelay ?? ""));
  return delay ? Math.ceil(Number(delay[1])) : null;
}

/** A new idempotency key: one per press, kept for every retry of that press. */
export function newKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function currentSession() {
  return session;
}

/** Called when the gateway says the session is gone (401). */
export function whenSignedOut(callback) {
  onSignedOut = callback;
}

async function raw(method, path, { body, key, csrf = true } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (csrf && method !== "GET" && session?.csrfToken) headers["X-CSRF-Token"] = session.csrfToken;
  if (key) headers["Idempotency-Key"] = key;
  let response;
  let text;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
      // An answer that never comes is a lost connection: the press is sent again
      // with its key (the gateway's own deadline upstream is shorter).
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    text = await response.text();
  } catch (error) {
    throw new NetworkError(error);
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) throw new ApiError(response.status, data, response.headers);
  return { data, replayed: response.headers.get("Idempotent-Replayed") === "true", httpStatus: response.status };
}

/**
 * One call to the JSON API. A CSRF refusal never reached a service, so it is
 * retried once, with the same key, after fetching the session's token again
 * (another tab may have signed in anew).
 */
export async function request(method, path, options = {}) {
  try {
    return await raw(method, path, options);
  } catch (error) {
    if (error instanceof ApiError && error.reason === "CSRF_TOKEN_INVALID") {
      if (await loadSession()) return raw(method, path, options);
    }
    if (error instanceof ApiError && error.httpStatus === 401) {
      session = null;
      onSignedOut(error);
    }
    throw error;
  }
}

export function get(path) {
  return request("GET", path).then((answer) => answer.data);
}

/** The session this browser holds, or null. */
export async function loadSession() {
  try {
    const { data } = await raw("GET", "/auth/session");
    session = data;
  } catch (error) {
    if (error instanceof ApiError && error.httpStatus === 401) session = null;
    else throw error;
  }
  return session;
}

export async function login(token) {
  const { data } = await raw("POST", "/auth/login", { body: { token }, csrf: false });
  session = data;
  return session;
}

export async function logout() {
  try {
    await raw("POST", "/auth/logout");
  } finally {
    session = null;
  }
}

/** "/v1/leads" + {status: "LEAD_STATUS_NEW", pageSize: 100} → "/v1/leads?status=LEAD_STATUS_NEW&pageSize=100" */
export function url(path, query = {}) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

export function segment(id) {
  return encodeURIComponent(id);
}

// The status rules the server enforces, so the console only offers moves that
// can succeed. The server stays the authority: a refused move is shown as refused.
// Values are the contract's enum names, as the /v1 JSON writes them;
// tests/unit/test_console_contract.py holds every list here to the contract
// and to the services' domain rules.
//
//   leads:        NEW → CONTACTED → QUALIFIED → PROPOSAL_SENT → NEGOTIATING → WON
//                 forward skips allowed, never backwards; LOST from any status that
//                 is not final; WON and LOST are final.
//   appointments: PENDING → CONFIRMED → COMPLETED; PENDING | CONFIRMED → CANCELLED.

export const LEAD_FLOW = [
  "LEAD_STATUS_NEW", "LEAD_STATUS_CONTACTED", "LEAD_STATUS_QUALIFIED", "LEAD_STATUS_PROPOSAL_SENT",
  "LEAD_STATUS_NEGOTIATING", "LEAD_STATUS_WON",
];
export const LOST = "LEAD_STATUS_LOST";
export const LEAD_STATUSES = [...LEAD_FLOW, LOST];
export const FINAL = new Set(["LEAD_STATUS_WON", LOST]);

export const LEAD_LABELS = {
  LEAD_STATUS_NEW: "New",
  LEAD_STATUS_CONTACTED: "Contacted",
  LEAD_STATUS_QUALIFIED: "Qualified",
  LEAD_STATUS_PROPOSAL_SENT: "Proposal sent",
  LEAD_STATUS_NEGOTIATING: "Negotiating",
  LEAD_STATUS_WON: "Won",
  LEAD_STATUS_LOST: "Lost",
};

export function isFinal(status) {
  return FINAL.has(status);
}

/** Every status a lead in `status` may move to, in pipeline order, LOST last. */
export function nextStatuses(status) {
  if (isFinal(status)) return [];
  const at = LEAD_FLOW.indexOf(status);
  if (at < 0) return [];
  return [...LEAD_FLOW.slice(at + 1), LOST];
}

export function canMove(from, to) {
  return nextStatuses(from).includes(to);
}

/** What a batch move does to one lead: "move", "unchanged" or "refused". */
export function batchEffect(from, to) {
  if (from === to) return "unchanged";
  return canMove(from, to) ? "move" : "refused";
}

export const PENDING = "APPOINTMENT_STATUS_PENDING";
export const CONFIRMED = "APPOINTMENT_STATUS_CONFIRMED";
export const COMPLETED = "APPOINTMENT_STATUS_COMPLETED";
export const CANCELLED = "APPOINTMENT_STATUS_CANCELLED";

export const APPOINTMENT_MOVES = {
  [PENDING]: [CONFIRMED, CANCELLED],
  [CONFIRMED]: [COMPLETED, CANCELLED],
  [COMPLETED]: [],
  [CANCELLED]: [],
};

export function canAppointment(from, to) {
  return (APPOINTMENT_MOVES[from] ?? []).includes(to);
}

// Twilio's order: a status never moves backwards (the server holds to it too).
export const MESSAGE_RANK = {
  MESSAGE_STATUS_QUEUED: 1, MESSAGE_STATUS_SENDING: 2, MESSAGE_STATUS_SENT: 3,
  MESSAGE_STATUS_DELIVERED: 4, MESSAGE_STATUS_UNDELIVERED: 4, MESSAGE_STATUS_FAILED: 4,
  MESSAGE_STATUS_RECEIVED: 4,
};

export function messageRank(status) {
  return MESSAGE_RANK[status] ?? 0;
}

// The SMS provider's breaker, and which way a message went.
export const BREAKER = {
  CLOSED: "BREAKER_STATE_CLOSED", OPEN: "BREAKER_STATE_OPEN", HALF_OPEN: "BREAKER_STATE_HALF_OPEN",
};
export const OUTBOUND = "DIRECTION_OUTBOUND";
export const INBOUND = "DIRECTION_INBOUND";

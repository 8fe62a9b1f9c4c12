// The status rules the server enforces, so the console only offers moves that
// can succeed. The server stays the authority: a refused move is shown as refused.
//
//   leads:        NEW → CONTACTED → QUALIFIED → PROPOSAL_SENT → NEGOTIATING → WON
//                 forward skips allowed, never backwards; LOST from any status that
//                 is not final; WON and LOST are final.
//   appointments: PENDING → CONFIRMED → COMPLETED; PENDING | CONFIRMED → CANCELLED.

export const LEAD_FLOW = ["NEW", "CONTACTED", "QUALIFIED", "PROPOSAL_SENT", "NEGOTIATING", "WON"];
export const LEAD_STATUSES = [...LEAD_FLOW, "LOST"];
export const FINAL = new Set(["WON", "LOST"]);

export const LEAD_LABELS = {
  NEW: "New",
  CONTACTED: "Contacted",
  QUALIFIED: "Qualified",
  PROPOSAL_SENT: "Proposal sent",
  NEGOTIATING: "Negotiating",
  WON: "Won",
  LOST: "Lost",
};

export function isFinal(status) {
  return FINAL.has(status);
}

/** Every status a lead in `status` may move to, in pipeline order, LOST last. */
export function nextStatuses(status) {
  if (isFinal(status)) return [];
  const at = LEAD_FLOW.indexOf(status);
  if (at < 0) return [];
  return [...LEAD_FLOW.slice(at + 1), "LOST"];
}

export function canMove(from, to) {
  return nextStatuses(from).includes(to);
}

/** What a batch move does to one lead: "move", "unchanged" or "refused". */
export function batchEffect(from, to) {
  if (from === to) return "unchanged";
  return canMove(from, to) ? "move" : "refused";
}

export const APPOINTMENT_MOVES = {
  PENDING: ["CONFIRMED", "CANCELLED"],
  CONFIRMED: ["COMPLETED", "CANCELLED"],
  COMPLETED: [],
  CANCELLED: [],
};

export function canAppointment(from, to) {
  return (APPOINTMENT_MOVES[from] ?? []).includes(to);
}

// Twilio's order: a status never moves backwards (the server holds to it too).
const MESSAGE_RANK = { QUEUED: 1, SENDING: 2, SENT: 3, DELIVERED: 4, UNDELIVERED: 4, FAILED: 4, RECEIVED: 4 };

export function messageRank(status) {
  return MESSAGE_RANK[status] ?? 0;
}

// The realtime stream: GET /v1/events as Server-Sent Events.
//
// The browser's own reconnect sends Last-Event-ID (a composite cursor over the
// three services), and the gateway resumes every service's stream right after
// it: nothing missed, nothing twice. The stream counts as live from its first
// bookmark. If the browser gives up on the stream (the gateway answered an
// error instead of a stream), it is opened again here with the last id in the
// query, so even then nothing is lost. `reset` means a cursor was too old:
// state must be loaded afresh.

export const EVENT_TYPES = [
  "lead.created", "lead.status_changed",
  "appointment.created", "appointment.confirmed", "appointment.cancelled", "appointment.completed",
  "message.created", "message.status_changed",
  "recipient.opted_out", "recipient.opted_in",
  "provider.state_changed",
  "template.saved", "template.deleted",
];

const REOPEN_MIN_MS = 1000;
const REOPEN_MAX_MS = 15000;

/**
 * handlers: {event(type, data), state("connecting"|"live"|"reconnecting"),
 *            fresh() — load state: the stream is live and started from the head,
 *            reset(data), closed() — the browser gave up; resolve false to stop}
 */
export function follow(handlers) {
  let source = null;
  let lastId = "";
  let everLive = false;
  let started = false; // has any stream gone live since the page loaded?
  let attempts = 0;
  let timer = null;
  let stopped = false;

  function open() {
    clearTimeout(timer);
    if (stopped) return;
    source?.close();
    const url = lastId ? `/v1/events?last_event_id=${encodeURIComponent(lastId)}` : "/v1/events";
    source = new EventSource(url);
    handlers.state(everLive ? "reconnecting" : "connecting");
    source.addEventListener("bookmark", (message) => {
      remember(message);
      attempts = 0;
      everLive = true;
      handlers.state("live");
      if (!started) {
        started = true;
        handlers.fresh();
      }
    });
    source.addEventListener("reset", (message) => {
      remember(message);
      handlers.reset(parse(message));
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        remember(message);
        const data = parse(message);
        if (data) handlers.event(type, data);
      });
    }
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        handlers.state("reconnecting");
        reopenLater();
      } else {
        handlers.state("reconnecting"); // the browser reconnects with Last-Event-ID
      }
    });
  }

  function remember(message) {
    if (message.lastEventId) lastId = message.lastEventId;
  }

  async function reopenLater() {
    source?.close();
    const keepGoing = await handlers.closed();
    if (keepGoing === false || stopped) return;
    const wait = Math.min(REOPEN_MAX_MS, REOPEN_MIN_MS * 2 ** attempts);
    attempts += 1;
    timer = setTimeout(open, wait * (0.5 + Math.random() / 2));
  }

  window.addEventListener("online", () => {
    if (!stopped && source?.readyState === EventSource.CLOSED) open();
  });

  open();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      source?.close();
    },
    get lastId() {
      return lastId;
    },
  };
}

function parse(message) {
  try {
    return JSON.parse(message.data);
  } catch {
    return null;
  }
}

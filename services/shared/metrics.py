"""Prometheus metrics of every server, labelled by service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RPCS = Counter(
    "crm_rpc_requests_total", "RPCs served, by outcome.", ["service", "method", "code"]
)
RPC_SECONDS = Histogram(
    "crm_rpc_duration_seconds",
    "Time to serve an RPC (for streams: the stream's life).",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REPLAYS = Counter(
    "crm_idempotent_replays_total", "Calls answered from a stored outcome.", ["service", "method"]
)
EVENTS_WRITTEN = Counter("crm_events_written_total", "Events appended to the log.", ["service"])
EVENTS_DELIVERED = Counter(
    "crm_events_delivered_total", "Events sent to subscribers (bookmarks excluded).", ["service"]
)
DATABASE_UP = Gauge(
    "crm_database_up", "1 while the last probe reached the database, else 0.", ["service"]
)
SUBSCRIBERS = Gauge("crm_subscribers", "Open Subscribe streams.", ["service"])
BREAKER_STATE = Gauge(
    "crm_sms_breaker_state", "The SMS provider's breaker: 0 closed, 1 open, 2 half-open."
)
BREAKER_TRANSITIONS = Counter(
    "crm_sms_breaker_transitions_total", "Breaker state changes, by new state.", ["state"]
)
SMS_SENDS = Counter(
    "crm_sms_provider_calls_total", "Calls to the SMS provider, by result.", ["result"]
)
GROUP_COMMIT_CALLS = Histogram(
    "crm_group_commit_calls",
    "Write calls per PostgreSQL write transaction (group commit; 1: a call alone).",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
KEPT_ROWS = Counter(
    "crm_kept_rows_total",
    "PostgreSQL writes from a kept row or an assumption (a text's consent), by outcome: "
    "written, or misread (the row had changed, or the assumption did not hold; the call "
    "ran again reading).",
    ["service", "outcome"],
)
DB_ROUND_TRIPS = Counter(
    "crm_db_round_trips_total",
    "PostgreSQL round trips of this process's statements sent in batches (services.shared.sql).",
)
GROUP_COMMIT_FLUSHES = Counter(
    "crm_group_commit_flushes_total",
    "Round trips that carried group members held back (group commit), by how they went: "
    "together, or one by one after one of them failed.",
    ["service", "how"],
)

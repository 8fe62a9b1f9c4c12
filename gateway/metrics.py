"""Prometheus metrics of the gateway, served at GET /metrics on CRM_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "crm_gateway_requests_total", "HTTP requests answered, by route and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "crm_gateway_request_duration_seconds",
    "Time to answer an HTTP request (for event streams: the stream's life).",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SSE_STREAMS = Gauge("crm_gateway_sse_streams", "Open /v1/events streams.")
SSE_UPSTREAMS = Gauge("crm_gateway_sse_upstream_streams",
                      "Shared upstream Subscribe streams behind /v1/events (per service per org).")
SSE_CUT_OFF = Counter("crm_gateway_sse_cut_off_total",
                      "/v1/events streams cut off because the browser did not read.")

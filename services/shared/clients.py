"""Channels to the services, for other backends and for the services themselves.

    channel = open_channel("127.0.0.1:50051", token="…")
    leads = leads_pb2_grpc.LeadsServiceStub(channel)
    lead = await leads.CreateLead(request, metadata=idempotency(new_key()))

A channel from here attaches the bearer token to every call, balances
round-robin over every address of a `dns:///` target, gives every call a
deadline (10 s unless the call sets its own; none on the long streams:
Subscribe and the health service's Watch), and retries UNAVAILABLE with
exponential backoff as declared in its service config.
gRPC's own retries resend the same metadata, so one idempotency key covers
every attempt of one logical call.

Those retries are for a server that could not be reached (down, restarting,
draining): the next attempt may reach another replica. An UNAVAILABLE a
service answers itself comes after it retried within the deadline, and carries
gRPC's retry pushback so that the channel does not retry it again.
"""

from __future__ import annotations

import collections
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

DEFAULT_TIMEOUT = "10s"
SERVICES = ("crm.leads.v1.LeadsService", "crm.bookings.v1.BookingsService",
            "crm.messaging.v1.MessagingService")

RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {"name": [{}], "timeout": DEFAULT_TIMEOUT, "retryPolicy": RETRY_POLICY},
            # Streams live as long as the subscriber wants: no default deadline.
            {
                "name": [{"service": s, "method": "Subscribe"} for s in SERVICES]
                + [{"service": "grpc.health.v1.Health", "method": "Watch"}],
                "retryPolicy": RETRY_POLICY,
            },
        ],
    }
)

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 30_000),
    # gRPC's reconnect backoff grows to 120 s by default: after a long outage a
    # caller would stay UNAVAILABLE for minutes once the service is back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_receive_message_length", 1024 * 1024),
]


def new_key() -> str:
    """A fresh idempotency key for one logical call (reuse it on every retry)."""
    return uuid.uuid4().hex


def idempotency(key: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", key), *extra)


def _with_token(details: grpc.aio.ClientCallDetails, header: tuple[str, str]) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if "authorization" not in metadata:
        metadata.add(*header)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files each interceptor under one kind only, hence two classes.
class _UnaryToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _StreamToken(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


def _merged(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The defaults, with the caller's options replacing those of the same name."""
    return list({**dict(CHANNEL_OPTIONS), **dict(options)}.items())


def open_channel(
    target: str,
    *,
    token: str | None = None,
    tls_ca: Path | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel with the token, the retry policy and default deadlines."""
    interceptors = [_UnaryToken(token), _StreamToken(token)] if token else None
    all_options = _merged(options)
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        return grpc.aio.secure_channel(target, credentials, all_options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, all_options, interceptors=interceptors)


class _SyncToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(k == "authorization" for k, _ in metadata):
            metadata.append(self._header)
        return _Details(details.method, details.timeout, metadata, details.credentials,
                        details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _Details(
    collections.namedtuple(
        "_Details", ["method", "timeout", "metadata", "credentials", "wait_for_ready",
                     "compression"]),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


def open_sync_channel(
    target: str,
    *,
    token: str | None = None,
    tls_ca: Path | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """The same, for code that uses the blocking stubs."""
    all_options = _merged(options)
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        channel = grpc.secure_channel(target, credentials, all_options)
    else:
        channel = grpc.insecure_channel(target, all_options)
    return grpc.intercept_channel(channel, _SyncToken(token)) if token else channel

"""The Subscribe RPC, the same for every service.

Turns the positions and bookmarks of `events.follow` into the service's own
`Event` messages. An event is sent as bytes made once, however many
subscribers send it: its stored payload (the `Event` without its cursor) with
the cursor field appended — protobuf reads fields in any order, and the call
interceptor passes bytes through its serializer untouched.

A principal holds at most CRM_SUBSCRIBE_MAX_STREAMS_PER_PRINCIPAL streams (100),
the process at most CRM_SUBSCRIBE_MAX_STREAMS (10,000), as the feed's
`streams` count them: one more is refused RESOURCE_EXHAUSTED / TOO_MANY_STREAMS
before it starts; open ones go on.

A stream delivers its caller's org's events only (and the services' own, as
the SMS provider's state): see services.shared.events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
from crm.common.v1 import common_pb2
from google.protobuf.message import Message

from services.shared import metrics
from services.shared.context import current_call
from services.shared.events import Filter, Tick, follow, start_position
from services.shared.orgs import SYSTEM_SCOPE
from services.shared.protos import now
from services.shared.uow import Storage

E = TypeVar("E", bound=Message)


async def stream(
    storage: Storage,
    context: grpc.aio.ServicerContext,
    event_class: Callable[..., E],  # a generated Event class
    after_cursor: str,
    where: Filter,
    *,
    heartbeat: float,
) -> AsyncIterator[E | bytes]:
    # One generator, no context manager: thousands of these are held open at once.
    call = current_call()
    org, principal = call.caller.org, call.principal
    if org == SYSTEM_SCOPE:
        raise RuntimeError("no caller acts in the system scope")
    streams = storage.feed.streams
    streams.hold(principal)
    try:
        start = await start_position(storage.feed.heads, after_cursor,
                                     context.time_remaining(), org=org)
        delivered = metrics.EVENTS_DELIVERED.labels(storage.service)
        cursor = storage.log.cursor
        async for item in follow(storage.feed, start, where, org=org, heartbeat=heartbeat):
            if isinstance(item, Tick):
                yield event_class(
                    cursor=cursor(item.position),
                    type="bookmark",
                    occurred_at=now(),
                    bookmark=common_pb2.Bookmark(head_cursor=cursor(item.head)),
                )
                continue
            if item.rendered is None:
                item.rendered = item.payload + _cursor_field(cursor(item.position))
            delivered.inc()
            yield item.rendered
    finally:
        streams.release(principal)


def _cursor_field(value: str) -> bytes:
    """Field 1 (`cursor`, a string) of an Event, encoded."""
    data = value.encode()
    length = len(data)
    varint = bytearray()
    while length > 0x7F:
        varint.append((length & 0x7F) | 0x80)
        length >>= 7
    varint.append(length)
    return b"\x0a" + bytes(varint) + data

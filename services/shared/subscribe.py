"""The Subscribe RPC, the same for every service.

Turns the positions and bookmarks of `events.follow` into the service's own
`Event` messages. An event is sent as bytes made once, however many
subscribers send it: its stored payload (the `Event` without its cursor) with
the cursor field appended — protobuf reads fields in any order, and the call
interceptor passes bytes through its serializer untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
from crm.common.v1 import common_pb2
from google.protobuf.message import Message

from services.shared import metrics
from services.shared.events import Filter, Tick, follow, start_position
from services.shared.protos import now
from services.shared.runtime import ServiceRuntime

E = TypeVar("E", bound=Message)


async def stream(
    runtime: ServiceRuntime,
    context: grpc.aio.ServicerContext,
    event_class: type[E],
    after_cursor: str,
    where: Filter,
) -> AsyncIterator[E | bytes]:
    start = await start_position(runtime.db, runtime.log, after_cursor, context.time_remaining())
    delivered = metrics.EVENTS_DELIVERED.labels(runtime.name)
    cursor = runtime.log.cursor
    async for item in follow(runtime.feed, start, where,
                             heartbeat=runtime.settings.heartbeat_seconds):
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

"""The Subscribe RPC, the same for every service.

Turns the positions and bookmarks of `events.follow` into the service's own
`Event` messages. An event read from the shared ring is rendered once, however
many subscribers send it.
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
) -> AsyncIterator[E]:
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
            message = event_class.FromString(item.payload)
            message.cursor = cursor(item.position)  # type: ignore[attr-defined]
            item.rendered = message
        delivered.inc()
        yield item.rendered

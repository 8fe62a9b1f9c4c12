"""Subscribe: bookmarks, exact resume, filters, retention, and clean ends."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads.bootstrap import SPEC as LEADS
from services.shared.db import utcnow
from services.shared.server import RunningService
from tests.integration.conftest import create_lead, move
from tests.support.rpc import refusal
from tests.support.servers import environment, start_in_process, wait_until

Stub = leads_pb2_grpc.LeadsServiceStub


async def take(stream: grpc.aio.UnaryStreamCall, count: int, *, skip_bookmarks: bool = True,
               within: float = 10.0) -> list[pb.Event]:
    """The next `count` messages of a stream (events only, unless told otherwise)."""
    taken: list[pb.Event] = []
    async with asyncio.timeout(within):
        while len(taken) < count:
            event = await stream.read()
            assert event is not grpc.aio.EOF, "the stream ended"
            if skip_bookmarks and event.type == "bookmark":
                continue
            taken.append(event)
    return taken


def cursor_at(log_cursor: str, position: int) -> str:
    """A cursor of the same log as `log_cursor`, at another position."""
    log_id = base64.urlsafe_b64decode(log_cursor + "==").decode().split(":")[0]
    return base64.urlsafe_b64encode(f"{log_id}:{position}".encode()).decode().rstrip("=")


async def test_the_first_message_is_a_bookmark_at_the_head_then_only_new_events(
    leads: Stub,
) -> None:
    earlier = await create_lead(leads, name="Before")
    stream = leads.Subscribe(pb.SubscribeRequest())
    bookmark = await stream.read()
    assert bookmark.type == "bookmark"
    assert bookmark.cursor == bookmark.bookmark.head_cursor
    later = await create_lead(leads, name="After")
    await move(leads, earlier.lead_id, pb.LEAD_STATUS_CONTACTED)
    created, changed = await take(stream, 2)
    assert (created.type, created.lead.lead_id, created.actor) == ("lead.created", later.lead_id,
                                                                    "alice")
    assert (changed.type, changed.lead_id) == ("lead.status_changed", earlier.lead_id)
    assert changed.status_change.to_status == pb.LEAD_STATUS_CONTACTED and changed.lead.version == 2
    stream.cancel()


async def test_resuming_after_any_cursor_gives_exactly_the_events_after_it(leads: Stub) -> None:
    stream = leads.Subscribe(pb.SubscribeRequest())
    start = await stream.read()
    lead = await create_lead(leads)
    for status in (pb.LEAD_STATUS_CONTACTED, pb.LEAD_STATUS_QUALIFIED,
                   pb.LEAD_STATUS_PROPOSAL_SENT, pb.LEAD_STATUS_NEGOTIATING, pb.LEAD_STATUS_WON):
        await move(leads, lead.lead_id, status)
    events = await take(stream, 6)
    stream.cancel()
    cursors = [start.cursor] + [e.cursor for e in events]
    assert len(set(cursors)) == len(cursors)
    for i, cursor in enumerate(cursors):
        resumed = leads.Subscribe(pb.SubscribeRequest(after_cursor=cursor))
        bookmark = await resumed.read()
        assert bookmark.type == "bookmark" and bookmark.cursor == cursor
        assert bookmark.bookmark.head_cursor == events[-1].cursor
        assert await take(resumed, len(events) - i) == events[i:]
        resumed.cancel()


async def test_filters_by_lead_and_type_and_bookmarks_still_arrive(leads: Stub) -> None:
    one, other = await create_lead(leads, name="One"), await create_lead(leads, name="Other")
    stream = leads.Subscribe(pb.SubscribeRequest(lead_ids=[one.lead_id],
                                                 types=["lead.status_changed"]))
    await stream.read()
    await move(leads, other.lead_id, pb.LEAD_STATUS_CONTACTED)
    await move(leads, one.lead_id, pb.LEAD_STATUS_QUALIFIED)
    (event,) = await take(stream, 1)
    assert (event.type, event.lead_id) == ("lead.status_changed", one.lead_id)
    # Only other leads' events go by now, yet heartbeats keep the cursor moving.
    last = await move(leads, other.lead_id, pb.LEAD_STATUS_LOST)
    heartbeat = await take(stream, 1, skip_bookmarks=False)
    assert heartbeat[0].type == "bookmark"
    resumed = leads.Subscribe(pb.SubscribeRequest(after_cursor=heartbeat[0].cursor))
    await resumed.read()
    await move(leads, one.lead_id, pb.LEAD_STATUS_WON)
    (after,) = await take(resumed, 1)
    assert after.lead.status == pb.LEAD_STATUS_WON and last.status == pb.LEAD_STATUS_LOST
    stream.cancel()
    resumed.cancel()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [({"types": ["lead.deleted"]}, "types[0]"), ({"lead_ids": ["x"] * 101}, "lead_ids")],
)
async def test_unknown_event_types_and_oversized_filters_are_refused(
    leads: Stub, request_fields: dict[str, list[str]], field: str
) -> None:
    stream = leads.Subscribe(pb.SubscribeRequest(**request_fields))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stream.read()
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in refusal(failed.value).fields


async def test_a_malformed_cursor_is_invalid_and_a_foreign_or_future_one_out_of_range(
    leads: Stub,
) -> None:
    stream = leads.Subscribe(pb.SubscribeRequest())
    head = (await stream.read()).cursor
    stream.cancel()
    cases = {
        "%%%": (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CURSOR"),
        "b3RoZXItbG9nOjQ": (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_UNKNOWN"),
    }
    cases[cursor_at(head, 999_999)] = (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_UNKNOWN")
    for cursor, (code, reason) in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await leads.Subscribe(pb.SubscribeRequest(after_cursor=cursor)).read()
        assert (failed.value.code(), refusal(failed.value).reason) == (code, reason), cursor


async def test_a_cursor_older_than_the_retention_window_is_out_of_range(
    leads: Stub, leads_server: RunningService
) -> None:
    stream = leads.Subscribe(pb.SubscribeRequest())
    old = (await stream.read()).cursor
    await create_lead(leads)
    (kept,) = await take(stream, 1)
    stream.cancel()
    async with leads_server.runtime.storage.db.transaction(write=True) as conn:
        purged = await leads_server.runtime.storage.log.purge(
            conn, older_than=utcnow() + timedelta(1))
        assert purged == 1
        await conn.commit()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await leads.Subscribe(pb.SubscribeRequest(after_cursor=old)).read()
    assert (failed.value.code(), refusal(failed.value).reason) == (
        grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED")
    resumed = leads.Subscribe(pb.SubscribeRequest(after_cursor=kept.cursor))
    assert (await resumed.read()).type == "bookmark"
    resumed.cancel()


@pytest.fixture
async def small_ring_server(database_url: str, tmp_path: Path) -> AsyncIterator[RunningService]:
    env = environment(database_url, tmp_path, CRM_EVENT_RING_SIZE="4")
    running = await start_in_process(LEADS, env)
    yield running
    await running.stop(grace=1, drain=0)


async def test_a_subscriber_far_behind_reads_the_log_in_pages_without_gaps(
    small_ring_server: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    stub = Stub(channel_for(small_ring_server.target))
    start = stub.Subscribe(pb.SubscribeRequest())
    origin = (await start.read()).cursor
    start.cancel()
    created = [await create_lead(stub, name=f"Lead {i}") for i in range(30)]
    stalled = stub.Subscribe(pb.SubscribeRequest(after_cursor=origin))
    events = await take(stalled, 30)
    assert [e.lead.lead_id for e in events] == [lead.lead_id for lead in created]
    tail = await create_lead(stub, name="Live")
    assert (await take(stalled, 1))[0].lead.lead_id == tail.lead_id
    stalled.cancel()


async def test_concurrent_writers_produce_one_order_every_subscriber_agrees_on(
    leads: Stub,
) -> None:
    first, second = leads.Subscribe(pb.SubscribeRequest()), leads.Subscribe(pb.SubscribeRequest())
    await first.read()
    await second.read()
    created = await asyncio.gather(*(create_lead(leads, name=f"L{i}") for i in range(40)))
    one, two = await take(first, 40), await take(second, 40)
    assert one == two
    assert {e.lead.lead_id for e in one} == {lead.lead_id for lead in created}
    # Positions need not be gap-free (a sequence's, on PostgreSQL): resuming
    # after any cursor of that order gives exactly the rest of it.
    for i in (0, 13, 39):
        resumed = leads.Subscribe(pb.SubscribeRequest(after_cursor=one[i].cursor))
        await resumed.read()
        assert await take(resumed, 39 - i) == one[i + 1:]
        resumed.cancel()
    first.cancel()
    second.cancel()


async def test_a_feed_nobody_follows_reads_nothing_and_its_next_subscribers_miss_nothing(
    leads: Stub, leads_server: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While nobody subscribes, commits do not make the feed read the log; the
    next subscribers wake it, and one resuming from before those commits gets
    every event since its cursor, one from the head only what comes after."""
    feed = leads_server.runtime.storage.feed
    first = leads.Subscribe(pb.SubscribeRequest())
    origin = (await first.read()).cursor
    first.cancel()
    await wait_until(lambda: feed.subscribers == 0)
    await asyncio.sleep(0.1)  # a read the cancel found under way has ended
    reads = 0
    tail = feed._tail

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await tail()

    monkeypatch.setattr(feed, "_tail", counted)
    unseen = [await create_lead(leads, name=f"Unseen {i}") for i in range(12)]
    await asyncio.sleep(0.2)
    assert reads == 0
    resumed = leads.Subscribe(pb.SubscribeRequest(after_cursor=origin))
    assert (await resumed.read()).type == "bookmark"
    fresh = leads.Subscribe(pb.SubscribeRequest())
    await fresh.read()
    assert [e.lead.lead_id for e in await take(resumed, 12)] == [x.lead_id for x in unseen]
    live = await create_lead(leads, name="Live")
    assert [e.lead.lead_id for e in await take(resumed, 1)] == [live.lead_id]
    assert [e.lead.lead_id for e in await take(fresh, 1)] == [live.lead_id]
    assert reads > 0
    resumed.cancel()
    fresh.cancel()


async def test_a_cancelled_stream_leaves_no_subscriber_behind(
    leads: Stub, leads_server: RunningService
) -> None:
    streams = [leads.Subscribe(pb.SubscribeRequest()) for _ in range(5)]
    for stream in streams:
        await stream.read()
    assert leads_server.runtime.storage.feed.subscribers == 5
    for stream in streams:
        stream.cancel()
    await wait_until(lambda: leads_server.runtime.storage.feed.subscribers == 0)


async def test_shutdown_ends_streams_cleanly(
    database_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    running = await start_in_process(LEADS, environment(database_url, tmp_path))
    stub = Stub(channel_for(running.target))
    stream = stub.Subscribe(pb.SubscribeRequest())
    await stream.read()
    await running.stop(grace=5, drain=0)
    assert await stream.read() is grpc.aio.EOF
    assert await stream.code() is grpc.StatusCode.OK


async def test_streams_opened_at_once_share_reads_of_the_head_never_one_older_than_their_call(
    leads: Stub, leads_server: RunningService
) -> None:
    """Batches of streams opened at once while leads are created: each batch's
    streams never deliver the lead committed before their calls were sent (a
    head read begun before a call is not shared with it), every one delivers
    the lead created once they are all live, and a hundred streams cost fewer
    reads of the head, one at a time."""
    heads = leads_server.runtime.storage.feed.heads
    reads = reading = most_at_once = 0
    read_once = heads._read_once

    async def counted(org: str) -> Any:
        nonlocal reads, reading, most_at_once
        reads += 1
        reading += 1
        most_at_once = max(most_at_once, reading)
        try:
            return await read_once(org)
        finally:
            reading -= 1

    heads._read_once = counted  # type: ignore[method-assign]
    batches: list[tuple[str, list[grpc.aio.UnaryStreamCall]]] = []
    for i in range(5):
        before = await create_lead(leads, name=f"Before batch {i}")
        batches.append((before.lead_id, [leads.Subscribe(pb.SubscribeRequest())
                                         for _ in range(20)]))
    for _, streams in batches:
        for stream in streams:
            assert (await stream.read()).type == "bookmark"  # live
    last = await create_lead(leads, name="Last")
    for before, streams in batches:
        for stream in streams:
            seen: list[str] = []
            async with asyncio.timeout(10):
                while not seen or seen[-1] != last.lead_id:
                    event = await stream.read()
                    assert event is not grpc.aio.EOF, "the stream ended"
                    if event.type == "lead.created":
                        seen.append(event.lead.lead_id)
            assert before not in seen
            stream.cancel()
    # One read at a time (unshared: one a stream, twenty at once), fewer than streams.
    assert most_at_once == 1 and reads < 100, (most_at_once, reads)

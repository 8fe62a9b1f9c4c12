"""Message templates: saved, changed, listed by name and deleted, each once per
idempotency key, announced on the event stream, refused by name when wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.messaging.templates import MAX_TEMPLATES
from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.support.rpc import refusal

Stub = messaging_pb2_grpc.MessagingServiceStub


async def save(stub: Stub, name: str, body: str, template_id: str = "",
               key: str | None = None) -> pb.MessageTemplate:
    return await stub.SaveMessageTemplate(
        pb.SaveMessageTemplateRequest(template_id=template_id, name=name, body=body),
        metadata=idempotency(key or new_key()))


async def listed(stub: Stub, page_size: int = 0, page_token: str = "") -> list[pb.MessageTemplate]:
    answer = await stub.ListMessageTemplates(
        pb.ListMessageTemplatesRequest(page_size=page_size, page_token=page_token))
    return list(answer.templates)


async def test_a_template_is_saved_changed_listed_by_name_and_deleted(messaging: Stub) -> None:
    confirmed = await save(messaging, "  Confirmed ", "See you {appointment_time}, {first_name}!")
    assert (confirmed.name, confirmed.version, confirmed.created_by) == ("Confirmed", 1, "alice")
    reminder = await save(messaging, "A reminder", "Hi {first_name}, talk soon.")
    assert [t.name for t in await listed(messaging)] == ["A reminder", "Confirmed"]

    changed = await save(messaging, "Confirmed", "See you {appointment_date}, {name}.",
                         template_id=confirmed.template_id)
    assert (changed.template_id, changed.version) == (confirmed.template_id, 2)
    assert changed.body == "See you {appointment_date}, {name}."

    deleted = await messaging.DeleteMessageTemplate(
        pb.DeleteMessageTemplateRequest(template_id=reminder.template_id),
        metadata=idempotency(new_key()))
    assert deleted.template_id == reminder.template_id
    assert [t.template_id for t in await listed(messaging)] == [confirmed.template_id]


async def test_a_save_sent_again_with_its_key_makes_one_template(messaging: Stub) -> None:
    key = new_key()
    first = await save(messaging, "Confirmed", "See you {appointment_time}!", key=key)
    again = await save(messaging, "Confirmed", "See you {appointment_time}!", key=key)
    assert again == first
    assert len(await listed(messaging)) == 1


@pytest.mark.parametrize(("name", "body", "field", "words"), [
    ("", "Hi", "name", "is required"),
    ("Hello", "  ", "body", "is required"),
    ("Hello", "Hi {frist_name}", "body", "unknown placeholder {frist_name}"),
    ("x" * 101, "Hi", "name", "at most 100 characters"),
    ("Hello", "a" * 1601, "body", "at most 1600 characters"),
    ("Hello", "Hi\x00", "body", "control characters"),
])
async def test_a_bad_template_is_refused_naming_the_field(
    messaging: Stub, name: str, body: str, field: str, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await save(messaging, name, body)
    refused = refusal(failed.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in refused.fields[field]


async def test_changing_or_deleting_a_template_that_does_not_exist_is_not_found(
    messaging: Stub
) -> None:
    for call in (
        save(messaging, "Gone", "Hi", template_id="no-such-template"),
        messaging.DeleteMessageTemplate(
            pb.DeleteMessageTemplateRequest(template_id="no-such-template"),
            metadata=idempotency(new_key())),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        refused = refusal(failed.value)
        assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND,
                                                  "TEMPLATE_NOT_FOUND")


async def test_templates_page_by_name_and_stop_at_the_limit(messaging: Stub) -> None:
    await asyncio.gather(*(save(messaging, f"Template {i:03d}", "Hi {first_name}")
                           for i in range(5)))
    first = await messaging.ListMessageTemplates(pb.ListMessageTemplatesRequest(page_size=3))
    rest = await listed(messaging, page_size=3, page_token=first.next_page_token)
    names = [t.name for t in [*first.templates, *rest]]
    assert names == [f"Template {i:03d}" for i in range(5)]
    assert MAX_TEMPLATES == 200  # the limit the contract states


async def test_saves_and_deletions_are_announced_to_subscribers(messaging: Stub) -> None:
    stream = messaging.Subscribe(pb.SubscribeRequest(types=["template.saved",
                                                            "template.deleted"]))
    assert (await stream.read()).type == "bookmark"
    saved = await save(messaging, "Confirmed", "See you {appointment_time}!")
    await messaging.DeleteMessageTemplate(
        pb.DeleteMessageTemplateRequest(template_id=saved.template_id),
        metadata=idempotency(new_key()))
    seen: list[pb.Event] = []
    async with asyncio.timeout(10):
        while len(seen) < 2:
            event = await stream.read()
            if event.type != "bookmark":
                seen.append(event)
    assert [(e.type, e.template.template_id, e.actor) for e in seen] == [
        ("template.saved", saved.template_id, "alice"),
        ("template.deleted", saved.template_id, "alice")]
    stream.cancel()


async def test_the_provider_status_tells_the_longest_text_accepted(
    messaging: Stub, start_messaging: Callable[..., Awaitable[RunningService]],
    channel_for: Callable[..., grpc.aio.Channel],
) -> None:
    assert (await messaging.GetProviderStatus(pb.GetProviderStatusRequest())).max_segments == 1
    longer = await start_messaging(CRM_SMS_MAX_SEGMENTS="3")
    stub = Stub(channel_for(longer.target))
    assert (await stub.GetProviderStatus(pb.GetProviderStatusRequest())).max_segments == 3

"""Drill: a same-key retry storm across two replicas of every service.

Each logical call is sent many times at once, with one idempotency key, to
both replicas of its service. Effects must equal the number of distinct keys,
and every answer for a key must be the same answer.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from crm.bookings.v1 import bookings_pb2, bookings_pb2_grpc
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from google.protobuf.message import Message

from services.shared.clients import idempotency, new_key
from services.shared.protos import timestamp
from tests.drills.conftest import report
from tests.integration.messaging.conftest import FROM, SID, TOKEN
from tests.support.rpc import refusal
from tests.support.servers import ServiceProcess, environment
from tests.support.twilio_double import TwilioDouble

KEYS = 12
COPIES = 6


async def storm(call: Callable[[int, str], Awaitable[Message]]) -> tuple[int, list[set[bytes]]]:
    """Send each of KEYS logical calls COPIES times at once; (attempts, answers per key)."""
    attempts = 0

    async def until_answered(i: int, key: str) -> bytes:
        nonlocal attempts
        for retry in range(100):
            attempts += 1
            try:
                return (await call(i, key)).SerializeToString(deterministic=True)
            except grpc.aio.AioRpcError as error:
                if refusal(error).reason != "IDEMPOTENCY_KEY_IN_USE":
                    raise
                # As a well-behaved client does: backoff with full jitter.
                await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2**retry)))
        raise AssertionError(f"key {key} never answered")

    keys = [new_key() for _ in range(KEYS)]
    answers = await asyncio.gather(*(until_answered(i, key) for i, key in enumerate(keys)
                                     for _ in range(COPIES)))
    return attempts, [set(answers[i * COPIES:(i + 1) * COPIES]) for i in range(KEYS)]


async def test_a_retry_storm_on_two_replicas_of_each_service_makes_one_effect_per_key(
    postgres_url: str, tmp_path: Path, channel_for: Callable[..., grpc.aio.Channel]
) -> None:
    async with TwilioDouble(account_sid=SID, auth_token=TOKEN) as twilio:
        base = environment(postgres_url, tmp_path)
        leads = [ServiceProcess("leads", base) for _ in range(2)]
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in leads))
        downstream = {**base, "CRM_LEADS_TARGET": leads[0].target,
                      "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN,
                      "TWILIO_FROM_NUMBER": FROM, "TWILIO_API_BASE_URL": twilio.base_url}
        others = [ServiceProcess(name, downstream) for name in ("bookings", "bookings",
                                                                  "messaging", "messaging")]
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in others))
        try:
            lead_stubs = [leads_pb2_grpc.LeadsServiceStub(channel_for(p.target, retries=False))
                          for p in leads]
            booking_stubs = [bookings_pb2_grpc.BookingsServiceStub(
                channel_for(p.target, retries=False)) for p in others[:2]]
            sms_stubs = [messaging_pb2_grpc.MessagingServiceStub(
                channel_for(p.target, retries=False)) for p in others[2:]]
            figures: dict[str, Any] = {}

            def create(i: int, key: str) -> Awaitable[Message]:
                return lead_stubs[i % 2].CreateLead(
                    leads_pb2.CreateLeadRequest(name=f"storm {i}", phone="+14155550111"),
                    metadata=idempotency(key))

            attempts, answers = await storm(create)
            listed = await lead_stubs[0].ListLeads(leads_pb2.ListLeadsRequest(page_size=200))
            assert len(listed.leads) == KEYS and all(len(a) == 1 for a in answers)
            figures["leads"] = (attempts, len(listed.leads))
            lead_id = listed.leads[0].lead_id

            start = datetime(2027, 1, 4, 9, tzinfo=UTC)
            pending = [await booking_stubs[0].CreateAppointment(
                bookings_pb2.CreateAppointmentRequest(
                    lead_id=lead_id, agent_id=f"agent-{i}",
                    start_time=timestamp(start), end_time=timestamp(start + timedelta(hours=1))),
                metadata=idempotency(new_key())) for i in range(KEYS)]

            def confirm(i: int, key: str) -> Awaitable[Message]:
                return booking_stubs[i % 2].ConfirmAppointment(
                    bookings_pb2.ConfirmAppointmentRequest(
                        appointment_id=pending[i].appointment_id),
                    metadata=idempotency(key))

            attempts, answers = await storm(confirm)
            confirmed = await booking_stubs[1].ListAppointments(
                bookings_pb2.ListAppointmentsRequest(
                    status=bookings_pb2.APPOINTMENT_STATUS_CONFIRMED, page_size=200))
            assert len(confirmed.appointments) == KEYS and all(len(a) == 1 for a in answers)
            changes = [await booking_stubs[0].ListAppointmentChanges(
                bookings_pb2.ListAppointmentChangesRequest(appointment_id=a.appointment_id))
                for a in pending]
            assert all(len(c.changes) == 1 for c in changes), "one confirm recorded per key"
            figures["bookings"] = (attempts, len(confirmed.appointments))

            def text(i: int, key: str) -> Awaitable[Message]:
                return sms_stubs[i % 2].SendSms(
                    messaging_pb2.SendSmsRequest(lead_id=lead_id, body=f"storm {i}"),
                    metadata=idempotency(key))

            attempts, answers = await storm(text)
            assert len(twilio.sent) == KEYS and all(len(a) == 1 for a in answers)
            figures["messaging"] = (attempts, len(twilio.sent))
            for service, (calls, effects) in figures.items():
                report(f"retry storm {service}", replicas=2, keys=KEYS, calls=calls,
                       effects=effects, duplicated=effects - KEYS, answers_per_key=1)
        finally:
            for process in (*leads, *others):
                process.kill()

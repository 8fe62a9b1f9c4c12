"""The messaging service with a real leads service, and Twilio as a local double."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2 as pb
from crm.messaging.v1 import messaging_pb2_grpc

from services.messaging.api import MessagingApi
from services.messaging.bootstrap import SPEC as MESSAGING
from services.shared.clients import idempotency, new_key
from services.shared.server import RunningService
from tests.support import leaks
from tests.support.servers import environment, start_in_process
from tests.support.twilio_double import TwilioDouble

SID, TOKEN, FROM = "AC" + "a" * 32, "twilio-auth-token-for-tests", "+15005550006"
leaks.watch({TOKEN: "TWILIO_AUTH_TOKEN"})
LEAD_PHONE = "+14155550111"


def twilio_env(double: TwilioDouble) -> dict[str, str]:
    return {
        "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM_NUMBER": FROM,
        "TWILIO_API_BASE_URL": double.base_url,
        # Fast enough for tests; the shapes are the production ones.
        "CRM_SMS_RETRY_BASE_SECONDS": "0.01",
        "CRM_SMS_PROVIDER_TIMEOUT_SECONDS": "2",
        "CRM_SMS_BREAKER_RESET_SECONDS": "0.5",
        "CRM_SMS_BREAKER_FAIL_MAX": "3",
    }


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioDouble]:
    async with TwilioDouble(account_sid=SID, auth_token=TOKEN) as double:
        yield double


@pytest.fixture
def new_database_url(new_database: Callable[[str], str]) -> Callable[[str], str]:
    return new_database


@pytest.fixture
async def leads_for_messaging(
    new_database: Callable[[str], str], tmp_path: Path
) -> AsyncIterator[RunningService]:
    from services.leads.bootstrap import SPEC as LEADS

    running = await start_in_process(LEADS, environment(new_database("leads"), tmp_path))
    yield running
    await running.stop(grace=1, drain=0)


@pytest.fixture
def messaging_env(
    new_database: Callable[[str], str], tmp_path: Path, leads_for_messaging: RunningService,
    twilio: TwilioDouble,
) -> dict[str, str]:
    return environment(new_database("messaging"), tmp_path,
                       CRM_LEADS_TARGET=leads_for_messaging.target, **twilio_env(twilio))


@pytest.fixture
async def start_messaging(
    messaging_env: dict[str, str],
) -> AsyncIterator[Callable[..., object]]:
    started: list[RunningService] = []

    async def start(**overrides: str) -> RunningService:
        running = await start_in_process(MESSAGING, {**messaging_env, **overrides})
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(grace=1, drain=0)


@pytest.fixture
async def messaging_server(start_messaging: Callable[..., object]) -> RunningService:
    return await start_messaging()  # type: ignore[misc, no-any-return]


@pytest.fixture
def messaging(
    messaging_server: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> messaging_pb2_grpc.MessagingServiceStub:
    return messaging_pb2_grpc.MessagingServiceStub(channel_for(messaging_server.target))


@pytest.fixture
def webhooks(
    messaging_server: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> messaging_pb2_grpc.MessagingServiceStub:
    """The messaging service as the gateway calls it with Twilio's webhooks: a service."""
    return messaging_pb2_grpc.MessagingServiceStub(
        channel_for(messaging_server.target, "gateway"))


@pytest.fixture
def sender(messaging_server: RunningService) -> MessagingApi:
    found = messaging_server.servicer
    assert isinstance(found, MessagingApi)
    return found


@pytest.fixture
async def lead(
    leads_for_messaging: RunningService, channel_for: Callable[..., grpc.aio.Channel]
) -> leads_pb2.Lead:
    stub = leads_pb2_grpc.LeadsServiceStub(channel_for(leads_for_messaging.target))
    return await stub.CreateLead(
        leads_pb2.CreateLeadRequest(name="Ada Lovelace", phone=LEAD_PHONE),
        metadata=idempotency(new_key()),
    )


async def send(stub: messaging_pb2_grpc.MessagingServiceStub, lead_id: str, body: str = "Hi Ada",
               key: str | None = None, **call: object) -> pb.Message:
    return await stub.SendSms(pb.SendSmsRequest(lead_id=lead_id, body=body),
                              metadata=idempotency(key or new_key()), **call)  # type: ignore[arg-type]

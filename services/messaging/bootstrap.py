"""Assembles the messaging service: the provider behind its breaker, the leads
client, the sender and its recovery sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from crm.messaging.v1 import messaging_pb2_grpc

from services.messaging import messages as convert
from services.messaging.adapters import SqlMessagingUnitOfWork, shared
from services.messaging.api import MessagingApi
from services.messaging.breaker import BreakerSnapshot, BreakerState, ProviderBreaker
from services.messaging.providers import ConsoleProvider, SmsProvider, TwilioProvider, is_transient
from services.messaging.sending import SmsSender
from services.messaging.settings import SmsSettings
from services.shared import metrics
from services.shared.clients import open_channel
from services.shared.db import retrying
from services.shared.lead_lookup import LeadLookup
from services.shared.runtime import ServiceRuntime
from services.shared.server import ServiceSpec

log = logging.getLogger(__name__)
_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


def provider_from(sms: SmsSettings) -> SmsProvider:
    if not sms.uses_twilio:
        return ConsoleProvider()
    return TwilioProvider(
        account_sid=sms.twilio_account_sid, auth_token=sms.twilio_auth_token,
        from_number=sms.twilio_from_number, api_base_url=sms.twilio_api_base_url,
        timeout=sms.provider_timeout_seconds,
    )


async def build(runtime: ServiceRuntime) -> MessagingApi:
    sms = SmsSettings.from_env(runtime.settings.environ)
    settings = runtime.settings
    provider = provider_from(sms)
    pending: set[asyncio.Task[None]] = set()

    def on_change(snapshot: BreakerSnapshot) -> None:
        metrics.BREAKER_TRANSITIONS.labels(snapshot.state.value).inc()
        log.warning("the SMS provider's breaker is %s", snapshot.state.value,
                    extra={"failure_count": snapshot.failure_count})
        task = asyncio.get_running_loop().create_task(
            _record_breaker_change(runtime, provider.name, snapshot))
        pending.add(task)
        task.add_done_callback(pending.discard)

    breaker = ProviderBreaker(sms.breaker_fail_max, sms.breaker_reset_seconds,
                              is_failure=is_transient, on_change=on_change)
    metrics.BREAKER_STATE.set_function(lambda: _GAUGE[breaker.snapshot().state])
    channel = open_channel(settings.targets["leads"], token=settings.service_token,
                           tls_ca=settings.tls.ca)
    sender = SmsSender(runtime, provider=provider, breaker=breaker, leads=LeadLookup(channel),
                       sms=sms)
    sweep = asyncio.create_task(_sweep(sender, settings.housekeeping_seconds),
                                name="sms-recovery")

    async def close() -> None:
        sweep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweep
        for task in list(pending):
            with contextlib.suppress(Exception):
                await task
        await channel.close()
        await provider.close()

    runtime.parts["closers"] = [close]
    runtime.parts["sender"] = sender
    log.info("SMS through %s", provider.name, extra={"max_segments": sms.max_segments})
    return MessagingApi(runtime, sender=sender, provider=provider, breaker=breaker)


async def _record_breaker_change(runtime: ServiceRuntime, provider: str,
                                 snapshot: BreakerSnapshot) -> None:
    status = convert.provider_status(provider, snapshot)

    async def write() -> None:
        async with runtime.db.transaction(write=True) as conn:
            uow = runtime.unit_of_work(conn)
            assert isinstance(uow, SqlMessagingUnitOfWork)
            uow.records.append(convert.provider_record(status, actor="messaging"))
            await uow.commit()

    try:
        await retrying(write, time_remaining=10)
    except Exception:
        log.warning("could not record the breaker's change", exc_info=True)


async def _sweep(sender: SmsSender, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sender.recover_abandoned()
        except Exception:
            log.warning("the SMS recovery sweep failed; will try again", exc_info=True)


SPEC = ServiceSpec(
    name="messaging",
    service_name="crm.messaging.v1.MessagingService",
    tables=shared,
    migrations=Path(__file__).parent / "migrations",
    uow_class=SqlMessagingUnitOfWork,
    build=build,
    register=messaging_pb2_grpc.add_MessagingServiceServicer_to_server,
)

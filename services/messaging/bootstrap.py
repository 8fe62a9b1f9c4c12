"""Assembles the messaging service: the provider behind its breaker, the leads
client, the sender and its recovery sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from crm.messaging.v1 import messaging_pb2_grpc

from services.messaging import messages as convert
from services.messaging import service
from services.messaging.adapters import SqlMessagingUnitOfWork, shared
from services.messaging.api import MessagingApi
from services.messaging.breaker import BreakerSnapshot, BreakerState, ProviderBreaker
from services.messaging.providers import ConsoleProvider, SmsProvider, TwilioProvider, is_transient
from services.messaging.sending import SmsSender
from services.messaging.settings import SmsSettings
from services.shared import metrics
from services.shared.clients import open_channel
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


async def build(runtime: ServiceRuntime[SqlMessagingUnitOfWork]) -> MessagingApi:
    settings = runtime.settings
    sms = SmsSettings.from_env(settings.environ)
    provider = provider_from(sms)
    runtime.closers.append(provider.close)
    recording: set[asyncio.Task[None]] = set()

    def on_change(snapshot: BreakerSnapshot) -> None:
        metrics.BREAKER_TRANSITIONS.labels(snapshot.state.value).inc()
        log.warning("the SMS provider's breaker is %s", snapshot.state.value,
                    extra={"failure_count": snapshot.failure_count})
        task = asyncio.get_running_loop().create_task(
            _record_breaker_change(runtime, provider.name, snapshot, sms.max_segments))
        recording.add(task)
        task.add_done_callback(recording.discard)

    breaker = ProviderBreaker(sms.breaker_fail_max, sms.breaker_reset_seconds,
                              is_failure=is_transient, on_change=on_change)
    metrics.BREAKER_STATE.set_function(lambda: _GAUGE[breaker.snapshot().state])
    channel = open_channel(settings.targets["leads"], token=settings.service_token,
                           tls_ca=settings.tls.ca)
    runtime.closers.append(channel.close)
    sender = SmsSender(provider=provider, breaker=breaker, sms=sms, public_url=settings.public_url)
    api = MessagingApi(runtime.units, sender=sender, leads=LeadLookup(channel),
                       region=settings.default_region,
                       heartbeat_seconds=settings.heartbeat_seconds)
    sweep = asyncio.create_task(_sweep(api, settings.housekeeping_seconds), name="sms-recovery")

    async def stop_sweeping() -> None:
        sweep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweep
        for task in list(recording):
            with contextlib.suppress(Exception):
                await task

    runtime.closers.append(stop_sweeping)
    log.info("SMS through %s", provider.name, extra={"max_segments": sms.max_segments})
    return api


async def _record_breaker_change(runtime: ServiceRuntime[SqlMessagingUnitOfWork], provider: str,
                                 snapshot: BreakerSnapshot, max_segments: int) -> None:
    try:
        await service.record_provider_state(runtime.units, provider, snapshot, max_segments)
    except Exception:
        log.warning("could not record the breaker's change", exc_info=True)


async def _sweep(api: MessagingApi, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await api.recover_abandoned()
        except Exception:
            log.warning("the SMS recovery sweep failed; will try again", exc_info=True)


SPEC = ServiceSpec(
    name="messaging",
    service_name="crm.messaging.v1.MessagingService",
    tables=shared,
    migrations=Path(__file__).parent / "migrations",
    uow_class=SqlMessagingUnitOfWork,
    events=convert.event_record,
    build=build,
    register=messaging_pb2_grpc.add_MessagingServiceServicer_to_server,
)

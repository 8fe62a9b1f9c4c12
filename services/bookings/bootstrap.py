"""Assembles the bookings service from its parts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from crm.bookings.v1 import bookings_pb2_grpc

from services.bookings import messages
from services.bookings.adapters import SqlBookingsUnitOfWork, shared
from services.bookings.api import BookingsApi
from services.shared.clients import open_channel
from services.shared.config import Env, integer
from services.shared.lead_lookup import LeadLookup
from services.shared.runtime import ServiceRuntime
from services.shared.server import ServiceSpec

# How far in the past an appointment may start: a booking made for "now", or
# sent a little late, is not refused for the seconds it took to arrive.
DEFAULT_PAST_GRACE = 300


async def build(runtime: ServiceRuntime[SqlBookingsUnitOfWork]) -> BookingsApi:
    settings = runtime.settings
    channel = open_channel(settings.targets["leads"], token=settings.service_token,
                           tls_ca=settings.tls.ca)
    runtime.closers.append(channel.close)
    env = Env(settings.environ)
    grace = env.get("CRM_BOOKING_PAST_GRACE_SECONDS", integer(0, 86400), DEFAULT_PAST_GRACE)
    return BookingsApi(runtime.units, LeadLookup(channel),
                       heartbeat_seconds=settings.heartbeat_seconds,
                       past_grace=timedelta(seconds=grace))


SPEC = ServiceSpec(
    name="bookings",
    service_name="crm.bookings.v1.BookingsService",
    tables=shared,
    migrations=Path(__file__).parent / "migrations",
    uow_class=SqlBookingsUnitOfWork,
    events=messages.event_record,
    build=build,
    register=bookings_pb2_grpc.add_BookingsServiceServicer_to_server,
)

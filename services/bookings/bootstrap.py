"""Assembles the bookings service from its parts."""

from __future__ import annotations

from pathlib import Path

from crm.bookings.v1 import bookings_pb2_grpc

from services.bookings.adapters import SqlBookingsUnitOfWork, shared
from services.bookings.api import BookingsApi
from services.shared.clients import open_channel
from services.shared.lead_lookup import LeadLookup
from services.shared.runtime import ServiceRuntime
from services.shared.server import ServiceSpec


async def build(runtime: ServiceRuntime) -> BookingsApi:
    settings = runtime.settings
    channel = open_channel(settings.targets["leads"], token=settings.service_token,
                           tls_ca=settings.tls.ca)
    runtime.parts.setdefault("closers", []).append(channel.close)
    leads = runtime.parts["leads"] = LeadLookup(channel)
    return BookingsApi(runtime, leads)


SPEC = ServiceSpec(
    name="bookings",
    service_name="crm.bookings.v1.BookingsService",
    tables=shared,
    migrations=Path(__file__).parent / "migrations",
    uow_class=SqlBookingsUnitOfWork,
    build=build,
    register=bookings_pb2_grpc.add_BookingsServiceServicer_to_server,
)

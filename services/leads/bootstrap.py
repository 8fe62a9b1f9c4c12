"""Assembles the leads service from its parts."""

from __future__ import annotations

from pathlib import Path

from crm.leads.v1 import leads_pb2_grpc

from services.leads import messages
from services.leads.adapters import SqlLeadsUnitOfWork, shared
from services.leads.api import LeadsApi
from services.shared.runtime import ServiceRuntime
from services.shared.server import ServiceSpec


async def build(runtime: ServiceRuntime[SqlLeadsUnitOfWork]) -> LeadsApi:
    settings = runtime.settings
    return LeadsApi(runtime.units, region=settings.default_region,
                    heartbeat_seconds=settings.heartbeat_seconds)


SPEC = ServiceSpec(
    name="leads",
    service_name="crm.leads.v1.LeadsService",
    tables=shared,
    migrations=Path(__file__).parent / "migrations",
    uow_class=SqlLeadsUnitOfWork,
    events=messages.event_record,
    build=build,
    register=leads_pb2_grpc.add_LeadsServiceServicer_to_server,
)

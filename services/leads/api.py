"""The gRPC entrypoint of the leads service: proto in → command → result → proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads import messages, service
from services.leads.adapters import SqlLeadsUnitOfWork
from services.shared import subscribe
from services.shared.entrypoint import Entrypoint, caller, idempotent, key
from services.shared.events import Filter
from services.shared.paging import PageRequest
from services.shared.uow import Units

Context: TypeAlias = grpc.aio.ServicerContext


class LeadsApi(Entrypoint[SqlLeadsUnitOfWork], leads_pb2_grpc.LeadsServiceServicer):
    def __init__(self, units: Units[SqlLeadsUnitOfWork], *, region: str,
                 heartbeat_seconds: float) -> None:
        super().__init__(units)
        self.region = region
        self.heartbeat_seconds = heartbeat_seconds

    @idempotent
    async def CreateLead(self, request: pb.CreateLeadRequest, context: Context) -> pb.Lead:
        command = service.CreateLead(
            name=request.name, phone=request.phone, email=request.email, region=self.region,
            caller=caller(), key=key(request),
        )
        return await self.run_command(context, service.create_lead, command, messages.lead)

    async def GetLead(self, request: pb.GetLeadRequest, context: Context) -> pb.Lead:
        query = service.GetLead(lead_id=request.lead_id, caller=caller())
        return await self.run_query(context, service.get_lead, query, messages.lead)

    async def ListLeads(self, request: pb.ListLeadsRequest, context: Context
                        ) -> pb.ListLeadsResponse:
        query = service.ListLeads(
            status=messages.status_from(request.status) if request.status else None,
            page=PageRequest(request.page_size, request.page_token), caller=caller(),
            phone=request.phone, region=self.region,
        )
        return await self.run_query(context, service.list_leads, query, messages.leads_page)

    @idempotent
    async def UpdateLeadStatus(self, request: pb.UpdateLeadStatusRequest, context: Context
                               ) -> pb.Lead:
        command = service.UpdateStatus(
            lead_id=request.lead_id,
            status=messages.status_from(request.status),
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            caller=caller(), key=key(request),
        )
        return await self.run_command(context, service.update_status, command, messages.lead)

    @idempotent
    async def BatchUpdateLeadStatus(
        self, request: pb.BatchUpdateLeadStatusRequest, context: Context
    ) -> pb.BatchUpdateLeadStatusResponse:
        command = service.BatchUpdateStatus(
            lead_ids=list(request.lead_ids), status=messages.status_from(request.status),
            caller=caller(), key=key(request),
        )
        return await self.run_command(context, service.batch_update_status, command,
                                      messages.batch_result)

    async def ListStatusChanges(self, request: pb.ListStatusChangesRequest, context: Context
                                ) -> pb.ListStatusChangesResponse:
        query = service.ListStatusChanges(
            lead_id=request.lead_id, page=PageRequest(request.page_size, request.page_token),
            caller=caller(),
        )
        return await self.run_query(context, service.list_status_changes, query,
                                    messages.status_changes_page)

    # Events go out as bytes made once for every subscriber (see shared.subscribe).
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.Event | bytes]:
        where = Filter.of(
            lead_ids=request.lead_ids, types=request.types, known_types=messages.EVENT_TYPES
        )
        async for event in subscribe.stream(self.units.storage, context, pb.Event,
                                            request.after_cursor, where,
                                            heartbeat=self.heartbeat_seconds):
            yield event

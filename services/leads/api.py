"""The gRPC entrypoint of the leads service: proto in → command → result → proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from crm.leads.v1 import leads_pb2 as pb
from crm.leads.v1 import leads_pb2_grpc

from services.leads import messages, service
from services.leads.adapters import SqlLeadsUnitOfWork
from services.shared import paging, subscribe
from services.shared.context import current_call
from services.shared.events import Filter
from services.shared.idempotency import idempotent, reads
from services.shared.runtime import ServiceRuntime

Context: TypeAlias = grpc.aio.ServicerContext


class LeadsApi(leads_pb2_grpc.LeadsServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.region = runtime.settings.default_region

    @idempotent
    async def CreateLead(
        self, request: pb.CreateLeadRequest, context: Context, uow: SqlLeadsUnitOfWork
    ) -> pb.Lead:
        command = service.CreateLead(
            name=request.name, phone=request.phone, email=request.email,
            actor=current_call().principal,
        )
        return messages.lead(await service.create_lead(command, uow, region=self.region))

    @reads
    async def GetLead(
        self, request: pb.GetLeadRequest, context: Context, uow: SqlLeadsUnitOfWork
    ) -> pb.Lead:
        return messages.lead(await service.get_lead(request.lead_id, uow))

    @reads
    async def ListLeads(
        self, request: pb.ListLeadsRequest, context: Context, uow: SqlLeadsUnitOfWork
    ) -> pb.ListLeadsResponse:
        wanted = messages.status_from(request.status) if request.status else None
        size = paging.page_size(request.page_size)
        query = {"list": "leads", "status": request.status}
        after = paging.decode_time_and_id(request.page_token, query)
        found = await uow.leads.newest(wanted, list(after) if after else None, size + 1)
        page = found[:size]
        token = ""
        if len(found) > size:
            token = paging.encode_time_and_id(page[-1].created_at, page[-1].lead_id, query)
        return pb.ListLeadsResponse(leads=[messages.lead(x) for x in page], next_page_token=token)

    @idempotent
    async def UpdateLeadStatus(
        self, request: pb.UpdateLeadStatusRequest, context: Context, uow: SqlLeadsUnitOfWork
    ) -> pb.Lead:
        call = current_call()
        command = service.UpdateStatus(
            lead_id=request.lead_id,
            status=messages.status_from(request.status),
            actor=call.principal,
            idempotency_key=call.idempotency_key,
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
        )
        return messages.lead(await service.update_status(command, uow))

    @idempotent
    async def BatchUpdateLeadStatus(
        self, request: pb.BatchUpdateLeadStatusRequest, context: Context, uow: SqlLeadsUnitOfWork
    ) -> pb.BatchUpdateLeadStatusResponse:
        call = current_call()
        command = service.BatchUpdateStatus(
            lead_ids=list(request.lead_ids),
            status=messages.status_from(request.status),
            actor=call.principal,
            idempotency_key=call.idempotency_key,
        )
        result = await service.batch_update_status(command, uow)
        return pb.BatchUpdateLeadStatusResponse(
            updated_leads=[messages.lead(x) for x in result.updated],
            unchanged_lead_ids=result.unchanged,
        )

    @reads
    async def ListStatusChanges(
        self, request: pb.ListStatusChangesRequest, context: Context, uow: SqlLeadsUnitOfWork
    ) -> pb.ListStatusChangesResponse:
        lead_id = service.check_id(request.lead_id)
        size = paging.page_size(request.page_size)
        query = {"list": "status_changes", "lead_id": lead_id}
        after = paging.decode(request.page_token, query)
        found = await uow.leads.list_changes(lead_id, int(after[0]) if after else None, size + 1)
        if not found and not await uow.leads.exists(lead_id):
            await service.get_lead(lead_id, uow)  # raises LEAD_NOT_FOUND
        page = found[:size]
        token = paging.encode([page[-1][0]], query) if len(found) > size else ""
        return pb.ListStatusChangesResponse(
            status_changes=[messages.status_change(change) for _, change in page],
            next_page_token=token,
        )

    # Events go out as bytes made once for every subscriber (see shared.subscribe).
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.Event | bytes]:
        where = Filter.of(
            lead_ids=request.lead_ids, types=request.types, known_types=messages.EVENT_TYPES
        )
        async for event in subscribe.stream(
            self.runtime, context, pb.Event, request.after_cursor, where
        ):
            yield event

